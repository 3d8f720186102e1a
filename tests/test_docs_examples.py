"""Every shell and Python example of the README and docs/ runs as pasted from a fresh clone, against
a live service (``python -m s2i.serve`` with the tiny models) that has a token, set in the shell's
S2I_AUTH_TOKEN as a reader who set it would have it: the run that fails an example which forgets to
send it. Without a token the service takes any request, whatever it carries, so an example runs
without one unless it cannot even start with S2I_AUTH_TOKEN unset (``os.environ['S2I_AUTH_TOKEN']``,
``${S2I_AUTH_TOKEN:?}``), which a quick check refuses. Examples that never call the service run
without the variable. (Each example runs once: both runs took 8 minutes, most of the suite's time.)

Each example runs on its own, in a copy of the checkout (its tracked files, and its .venv linked),
with a PATH that does not lead into the venv (a reader's shell outside it) and with curl failing on
an HTTP error status, so a refused request fails the example. The service listens on free ports:
the examples' 8321 and 8322 are rewritten to them, and S2I_PORT / S2I_HTTP_PORT say them to the
client's defaults. An example that cannot run here says why in a comment right before its block
(``<!-- example: needs-gpu -->``); it is skipped with that reason.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from markdown_it import MarkdownIt

from conftest import ROOT
from s2i.serve import READY_LINE
from tests.servers import flow_on_free_ports

pytestmark = pytest.mark.slow

PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LANGUAGES = {'sh': 'shell', 'bash': 'shell', 'console': 'console', 'python': 'python'}
MARK = re.compile(r'<!--\s*example:\s*([\w-]+)\s*-->')
SKIPPED = {  # the marks an example may carry, and why it does not run here
    'needs-gpu': 'needs a GPU',
    'needs-network': 'needs the network (it downloads)',
    'needs-docker': 'needs Docker',
    'needs-kubernetes': 'needs a Kubernetes cluster',
    'starts-service': 'starts a server that runs until it is stopped',
    'takes-minutes': 'takes minutes (the test suite, the demo)',
}
DEFAULT_PORTS = {'grpc': 8321, 'http': 8322}
TOKEN = 'docs-example-token'
EXAMPLE_SECONDS = 300


@dataclass(frozen=True)
class Example:
    page: str  # relative to the checkout
    line: int  # of the opening fence, 1-based
    language: str  # shell, console or python
    code: str
    mark: Optional[str]  # the reason it is skipped, if it is

    @property
    def calls_the_service(self) -> bool:
        """Whether it talks to the service (its ports, the command line, the client library): it runs
        with the token; the others run without the variable."""
        return bool(re.search(r'\b(8321|8322)\b|s2i-client|s2i\.client', self.code))

    def __str__(self) -> str:
        return f'{self.page}:{self.line}'


def documented_examples() -> List[Example]:
    """The fenced sh, bash, console and python blocks of the README and docs/, each with its mark."""
    parser, found = MarkdownIt('commonmark'), []
    for page in PAGES:
        previous = None
        for token in parser.parse(page.read_text(encoding='utf-8')):
            language = LANGUAGES.get(token.info.strip().split(' ')[0]) if token.type == 'fence' else None
            if language:
                mark = MARK.search(previous.content) if previous is not None and previous.type == 'html_block' else None
                found.append(Example(str(page.relative_to(ROOT)), token.map[0] + 1, language, token.content,
                                     mark.group(1) if mark else None))
            previous = token
    return found


EXAMPLES = documented_examples()


@dataclass
class Service:
    ports: Dict[str, int]
    token: Optional[str]


@pytest.fixture(scope='module')
def service(tiny_sd_dir, tmp_path_factory):
    """The whole service as the docs run it, with the tiny models and a token."""
    settings = dict(S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu', S2I_CAPTION_MODEL='tiny', S2I_CLIP_MODEL='tiny',
                    S2I_JOBS_DB=str(tmp_path_factory.mktemp('jobs') / 'jobs.sqlite3'), S2I_AUTH_TOKEN=TOKEN,
                    COLUMNS='1000')  # one log record per line, for wait_for
    server, hosts = flow_on_free_ports([sys.executable, '-m', 's2i.serve'], **settings)
    try:
        server.wait_for(READY_LINE)
        yield Service({name: int(host.rsplit(':', 1)[1]) for name, host in hosts.items()}, TOKEN)
    finally:
        server.kill()


def fresh_clone(folder: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore) copied into ``folder``, its .venv linked."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split('\0')
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    (folder / '.venv').symlink_to(ROOT / '.venv')
    return folder


def reader_environment(service: Service, home: Path, with_token: bool) -> Dict[str, str]:
    """A reader's shell: no S2I_* settings but the service's ports (and, ``with_token``, its token),
    not inside the venv, and curl failing on an HTTP error status."""
    venv_bin = str(ROOT / '.venv' / 'bin')
    env = {k: v for k, v in os.environ.items() if not k.startswith('S2I_') and k != 'VIRTUAL_ENV'}
    env['PATH'] = os.pathsep.join(p for p in env.get('PATH', '').split(os.pathsep) if p and Path(p).resolve() != Path(venv_bin).resolve())
    env.update(S2I_PORT=str(service.ports['grpc']), S2I_HTTP_PORT=str(service.ports['http']), CURL_HOME=str(home))
    (home / '.curlrc').write_text('fail-with-body\n')
    if with_token:
        env['S2I_AUTH_TOKEN'] = service.token
    return env


def on_service_ports(code: str, service: Service) -> str:
    for name, port in DEFAULT_PORTS.items():
        code = re.sub(rf'\b(127\.0\.0\.1|localhost):{port}\b', rf'\g<1>:{service.ports[name]}', code)
    return code


def command_for(example: Example, code: str) -> List[str]:
    if example.language == 'python':
        return ['.venv/bin/python', '-c', code]
    if example.language == 'console':  # the lines after a "$ " prompt (and their continuations); the rest is output
        code = '\n'.join(line[2:] for line in code.splitlines() if line.startswith('$ '))
    return ['bash', '-e', '-o', 'pipefail', '-c', code]


NEEDS_THE_VARIABLE = re.compile(r"environ\[['\"]S2I_AUTH_TOKEN|\$\{S2I_AUTH_TOKEN:?\?|\bset -u\b|set -o nounset")


def test_no_example_needs_s2i_auth_token_set():
    """A reader without a token has S2I_AUTH_TOKEN unset: no example may fail on that alone."""
    needing = [str(example) for example in EXAMPLES if NEEDS_THE_VARIABLE.search(example.code)]
    assert needing == []


def test_the_docs_have_examples_and_know_every_mark():
    assert len(EXAMPLES) > 10
    unknown = [f'{example}: {example.mark}' for example in EXAMPLES if example.mark and example.mark not in SKIPPED]
    assert unknown == [], f'unknown example marks; known: {", ".join(SKIPPED)}'


def as_param(example: Example):
    """A marked example is skipped before the service is started for it."""
    marks = [pytest.mark.skip(reason=SKIPPED[example.mark])] if example.mark in SKIPPED else []
    return pytest.param(example, marks=marks, id=str(example))


@pytest.mark.parametrize('example', [as_param(example) for example in EXAMPLES])
def test_the_example_runs_as_pasted(example, service, tmp_path):
    clone = fresh_clone(tmp_path / 'speech-to-image')
    home = tmp_path / 'home'
    home.mkdir()
    code = on_service_ports(example.code, service)
    environment = reader_environment(service, home, with_token=example.calls_the_service)
    result = subprocess.run(command_for(example, code), cwd=clone, env=environment,
                            capture_output=True, text=True, timeout=EXAMPLE_SECONDS)
    assert result.returncode == 0, (
        f'{example} failed (exit status {result.returncode}) {"with" if example.calls_the_service else "without"} a token:\n'
        f'{code}\n--- output ---\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    )
