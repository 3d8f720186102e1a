"""The container test: build the image, run it as Docker Compose and as one container, send real requests.

    make container-test          (= .venv/bin/python scripts/container_test.py)

On a Linux machine where we are root (CI), it installs what is missing with apt (Docker, Compose,
mmdebstrap), starts the Docker daemon if none answers (and stops only that one at the end), makes a
stand-in for `python:3.11-slim` from Debian when the image cannot be pulled (no registry here; see
scripts/container/make_base_image.sh), then:

1. builds the project's image with the tiny model baked in (PRELOAD_MODELS=1, S2I_SD_MODEL=tiny);
2. runs the Compose stack that deploy/export.py generates for S2I_DEVICE=cpu, on free ports of
   127.0.0.1 and with a token, and sends English and German clips, a text prompt and a bad file
   through the project's client over gRPC and HTTP, checking every answer;
3. crashes the stable-diffusion container during a request (SIGKILL to its main process) and checks
   that the client gets a clear error naming it, that the restart policy brings it back, and that
   requests succeed again;
4. runs the image as one container (`docker run`), waits for its health check, and asks it again,
   this time through the openai-whisper backend (the image has no ffmpeg program).

Everything it starts is removed at the end, whatever happened; a failure prints the containers'
logs first. Only 127.0.0.1 is spoken to. Settings: S2I_TEST_IMAGE (default s2i:test),
TORCH_INDEX_URL (passed to the build), S2I_TEST_KEEP=1 (leave the stack running after a failure).
"""

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = 'python:3.11-slim'  # the Dockerfile's FROM
IMAGE = os.environ.get('S2I_TEST_IMAGE', 's2i:test')
PROJECT = 's2i-container-test'  # the Compose project; also the prefix of every container made here
SINGLE = f'{PROJECT}-single'
ENGLISH_CLIP = ROOT / 'examples' / 'fox_in_snow_en.wav'
GERMAN_CLIP = ROOT / 'examples' / 'dog_in_snow_de.wav'
NOT_AUDIO = b'RIFF\x00\x00\x00\x00WAVEthis is not audio at all'
# Small and quick on the tiny model; the images must come back at exactly this size.
PARAMETERS = {'steps': 4, 'width': 128, 'height': 128, 'seed': 7}
# Long enough that the crash lands while Stable Diffusion works on it (seconds on 2 cores).
SLOW_PARAMETERS = {'steps': 200, 'width': 512, 'height': 512, 'seed': 7}

# Bounded waits, in seconds.
DAEMON_START_S = 60
STACK_HEALTHY_S = 600  # the gateway's check waits for the whole chain; first check after 30 s
RESTARTED_S = 60  # the restart policy brings the container back at once
SERVING_AGAIN_S = 300  # the restarted executor loads its model again
SINGLE_HEALTHY_S = 600


class ContainerTestFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ContainerTestFailed(message)


# Commands.

def run(command: List[str], timeout: float = 300, check_rc: bool = True, env: Optional[Dict[str, str]] = None,
        capture: bool = True, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, timeout=timeout, env={**os.environ, **(env or {})}, input=input,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
    )
    if check_rc and result.returncode != 0:
        output = result.stdout.decode(errors='replace')[-4000:] if capture else ''
        raise ContainerTestFailed(f'`{" ".join(command)}` exited with {result.returncode}\n{output}')
    return result


def output(command: List[str], timeout: float = 60) -> str:
    return run(command, timeout=timeout).stdout.decode().strip()


def succeeds(command: List[str], timeout: float = 60) -> bool:
    try:
        return run(command, timeout=timeout, check_rc=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):  # not installed, or hung
        return False


def free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(what: str, seconds: float, ready: Callable[[], bool], every: float = 2) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise ContainerTestFailed(f'{what}: not after {seconds:.0f} s')
        time.sleep(every)


# Phases, timed.

class Timings:
    def __init__(self):
        self.phases: List[tuple] = []

    @contextmanager
    def phase(self, name: str):
        print(f'\n=== {name}', flush=True)
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - start))
            print(f'=== {name}: {time.monotonic() - start:.0f} s', flush=True)

    def report(self) -> None:
        print('\nphase timings:')
        for name, seconds in self.phases:
            print(f'  {seconds:7.0f} s  {name}')
        print(f'  {sum(s for _, s in self.phases):7.0f} s  total')


# 1. Tools, daemon and base image.

def apt_install(packages: List[str]) -> None:
    if not packages:
        return
    check(shutil.which('apt-get') is not None, f'missing {packages} and no apt-get to install them')
    sudo = [] if os.geteuid() == 0 else ['sudo']
    print(f'installing {" ".join(packages)} with apt', flush=True)
    run([*sudo, 'apt-get', 'update', '-qq'], timeout=300)
    run([*sudo, 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', *packages], timeout=900,
        env={'DEBIAN_FRONTEND': 'noninteractive'})


def compose_command() -> Optional[List[str]]:
    if succeeds(['docker', 'compose', 'version']):
        return ['docker', 'compose']
    if shutil.which('docker-compose'):
        return ['docker-compose']
    return None


def install_tools() -> List[str]:
    """Installs what is missing; returns the Compose command."""
    missing = []
    if not shutil.which('docker') or not shutil.which('dockerd'):
        missing.append('docker.io')
    if not (shutil.which('docker') and compose_command()):
        missing.append('docker-compose')
    if not (shutil.which('mmdebstrap') or shutil.which('debootstrap')) and not succeeds(['docker', 'image', 'inspect', BASE_IMAGE]):
        missing.append('mmdebstrap')
    apt_install(missing)
    compose = compose_command()
    check(compose is not None, 'no Docker Compose after installing docker-compose')
    print(f'docker {output(["docker", "--version"])}; compose: {" ".join(compose)}', flush=True)
    return compose


class Daemon:
    """The Docker daemon: the one running, or one started here (and stopped by stop(), by its PID)."""

    def __init__(self):
        self.process: Optional[subprocess.Popen] = None
        self.log: Optional[Path] = None

    def ensure(self) -> None:
        if succeeds(['docker', 'info'], timeout=30):
            print('using the running Docker daemon', flush=True)
            return
        self.log = Path(tempfile.mkdtemp(prefix='s2i-dockerd-')) / 'dockerd.log'
        print(f'starting dockerd (log: {self.log})', flush=True)
        self.process = subprocess.Popen(['dockerd'], stdout=self.log.open('wb'), stderr=subprocess.STDOUT, start_new_session=True)
        wait_until('the Docker daemon answering', DAEMON_START_S,
                   lambda: self.process.poll() is None and succeeds(['docker', 'info'], timeout=10), every=0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        print(f'stopping the dockerd started here (pid {self.process.pid})', flush=True)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ensure_base_image() -> None:
    if succeeds(['docker', 'image', 'inspect', BASE_IMAGE]):
        print(f'{BASE_IMAGE}: present', flush=True)
        return
    if succeeds(['docker', 'pull', BASE_IMAGE], timeout=600):
        return
    print(f'{BASE_IMAGE} cannot be pulled: making a stand-in from Debian', flush=True)
    run([str(ROOT / 'scripts' / 'container' / 'make_base_image.sh'), BASE_IMAGE], timeout=900, capture=False)


# 2. The image.

def build_image() -> None:
    # A `# syntax=` line makes BuildKit fetch its frontend from a registry first: offline, it fails.
    syntax = re.search(r'^#\s*syntax\s*=.*', (ROOT / 'Dockerfile').read_text(), re.MULTILINE | re.IGNORECASE)
    check(syntax is None, f'the Dockerfile asks BuildKit for a frontend image ({syntax and syntax.group(0)}): offline builds fail')
    build_args = {'PRELOAD_MODELS': '1', 'S2I_SD_MODEL': 'tiny'}
    if os.environ.get('TORCH_INDEX_URL'):
        build_args['TORCH_INDEX_URL'] = os.environ['TORCH_INDEX_URL']
    # The legacy builder unless the buildx plugin is there: the Docker 20.10 of Debian has none.
    env = {} if succeeds(['docker', 'buildx', 'version']) else {'DOCKER_BUILDKIT': '0'}
    command = ['docker', 'build', '-t', IMAGE, *[f'--build-arg={k}={v}' for k, v in build_args.items()], str(ROOT)]
    run(command, timeout=1800, env=env, capture=False)
    size = int(output(['docker', 'image', 'inspect', '-f', '{{.Size}}', IMAGE]))
    print(f'{IMAGE}: {size / 1e9:.1f} GB', flush=True)
    ffmpeg = run(['docker', 'run', '--rm', '--entrypoint', 'sh', IMAGE, '-c', 'command -v ffmpeg'], check_rc=False)
    check(ffmpeg.returncode != 0, f'the image has an ffmpeg program ({ffmpeg.stdout.decode().strip()}); only INSTALL_FFMPEG=1 adds it')


# 3. The Compose stack.

class Stack:
    def __init__(self, compose: List[str], token: str):
        self.folder = Path(tempfile.mkdtemp(prefix='s2i-compose-'))
        self.grpc_port, self.http_port = free_ports(2)
        self.token = token
        self.base = [*compose, '-p', PROJECT, '-f', str(self.folder / 'docker-compose.yml')]

    def compose(self, *args: str, timeout: float = 300, check_rc: bool = True) -> subprocess.CompletedProcess:
        return run([*self.base, *args], timeout=timeout, check_rc=check_rc, env={'S2I_AUTH_TOKEN': self.token})

    def export(self) -> dict:
        env = {'S2I_SD_MODEL': 'tiny', 'S2I_DEVICE': 'cpu', 'S2I_PORT': str(self.grpc_port), 'S2I_HTTP_PORT': str(self.http_port)}
        run([sys.executable, str(ROOT / 'deploy' / 'export.py'), '--image', IMAGE, '--out', str(self.folder)], env=env)
        path = self.folder / 'docker-compose.yml'
        stack = yaml.safe_load(path.read_text())
        # What the exporter must give a CPU-only stack on this host (issue 11: 2, 4, 8).
        for name, service in stack['services'].items():
            check('deploy' not in service, f'{name}: a CPU-only stack reserves no GPU, got {service.get("deploy")}')
            check(service.get('restart') in ('always', 'unless-stopped', 'on-failure'), f'{name}: no restart policy')
            for port in service.get('ports', []):
                check(str(port).startswith('127.0.0.1:'), f'{name}: port {port} is not published on 127.0.0.1 only')
            check('S2I_AUTH_TOKEN=${S2I_AUTH_TOKEN:-}' in service.get('environment', []), f'{name}: no S2I_AUTH_TOKEN from the shell')
        published = {p for s in stack['services'].values() for p in s.get('ports', [])}
        check(published == {f'127.0.0.1:{p}:{p}' for p in (self.grpc_port, self.http_port)}, f'published ports: {published}')
        return stack

    def container(self, service: str) -> str:
        container = self.compose('ps', '-q', service).stdout.decode().strip()
        check(bool(container), f'no container for {service}')
        return container

    def up(self) -> None:
        self.compose('up', '-d', timeout=600)
        gateway = self.container('gateway')
        wait_until('the gateway container healthy', STACK_HEALTHY_S, lambda: healthy(gateway) and self.all_running(), every=3)

    def all_running(self) -> bool:
        ids = self.compose('ps', '-q').stdout.decode().split()
        states = output(['docker', 'inspect', '-f', '{{.Name}} {{.State.Status}}', *ids]).splitlines()
        stopped = [s for s in states if not s.endswith(' running')]
        check(not any(s.endswith(' exited') or s.endswith(' dead') for s in stopped), f'containers stopped: {stopped}')
        return not stopped

    def logs(self) -> None:
        print(f'\n--- docker compose logs ({PROJECT})', flush=True)
        print(self.compose('logs', '--no-color', '--tail', '300', timeout=120, check_rc=False).stdout.decode(errors='replace'))

    def down(self) -> None:
        self.compose('down', '--volumes', '--remove-orphans', '--timeout', '20', timeout=300, check_rc=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def healthy(container: str) -> bool:
    status = output(['docker', 'inspect', '-f', '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}', container])
    check(not status.startswith(('exited', 'dead')), f'container {container[:12]} stopped: {status}')
    return status == 'running healthy'


# 4. Requests through the project's client.

def image_size(png: bytes) -> tuple:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(png)) as image:
        return image.size


def check_images(label: str, doc, parameters: dict) -> None:
    check(not doc.error, f'{label}: error {doc.error!r}')
    check(len(doc.matches) == 1, f'{label}: {len(doc.matches)} images, expected 1')
    size = image_size(doc.matches[0].png)
    check(size == (parameters['width'], parameters['height']), f'{label}: image {size}, expected {parameters["width"]}x{parameters["height"]}')


def speech_and_bad_file(host: str, token: str, parameters: dict = PARAMETERS) -> None:
    """The English and German clips and a file that is not audio, in one request; a text prompt alone."""
    from docarray import DocList

    from s2i.client import generate
    from s2i.contracts.documents import PromptDoc

    docs = DocList[PromptDoc]([PromptDoc(blob=ENGLISH_CLIP.read_bytes()), PromptDoc(blob=GERMAN_CLIP.read_bytes()), PromptDoc(blob=NOT_AUDIO)])
    english, german, bad = generate(docs=docs, parameters=parameters, host=host, token=token)
    print(f'  {host} english: ({english.language}) {english.text!r}  german: ({german.language}) {german.transcript!r} -> {german.text!r}'
          f'  not audio: {bad.error!r}', flush=True)
    check_images(f'{host} English clip', english, parameters)
    check('fox' in english.text.lower(), f'{host}: English clip heard as {english.text!r}')
    # The image's store: the results volume, a record per document (the failed one's too).
    for label, doc in (('English', english), ('not audio', bad)):
        check(doc.result_url.startswith('/models/results/') and doc.result_url.endswith('/result.json'),
              f'{host} {label}: kept at {doc.result_url!r}, expected a record under /models/results/')
    check_images(f'{host} German clip', german, parameters)
    # Whisper base hears "Ein kleiner Hund spielt im Schnee" but translates it as "A small one ... in the
    # snow": the checks of tests/test_whisper.py, not "dog".
    heard = german.language == 'de' and 'Hund' in german.transcript
    check(heard and 'snow' in german.text.lower() and 'schnee' not in german.text.lower(),
          f'{host}: German clip gave ({german.language}) {german.transcript!r} -> {german.text!r}')
    check(bad.error_code == 'audio_unreadable' and not bad.matches,
          f'{host}: not audio gave {bad.error_code} {bad.error!r}, {len(bad.matches)} images')
    text_prompt(host, token, parameters)


def text_prompt(host: str, token: str, parameters: dict = PARAMETERS) -> None:
    from s2i.client import generate

    (doc,) = generate(prompts=['a lighthouse in a storm, oil painting'], parameters=parameters, host=host, token=token)
    check_images(f'{host} text prompt', doc, parameters)


def job_followed(http: str, token: str) -> None:
    """A job through the gateway container's own routes: its events over WebSocket, then its record."""
    from s2i.client import follow_job

    kinds = []
    record = follow_job(http, token, audio_path=GERMAN_CLIP, fields={'size': '128x128', 'steps': 4, 'seed': 7},
                        on_event=lambda event: kinds.append(event['kind']))
    check(record['status'] == 'succeeded' and len(record['images']) == 1, f'{http} job: {record["status"]} {record.get("error")!r}')
    check(kinds.index('transcribed') < kinds.index('progress') < kinds.index('image') and kinds[-1] == 'succeeded',
          f'{http} job events in the wrong order: {kinds}')
    print(f'  {http} job: {" ".join(dict.fromkeys(kinds))}; heard {record["transcript"]!r}', flush=True)


def refused_without_token(host: str) -> None:
    from s2i.client import generate
    from s2i.runtime import UNAUTHENTICATED

    try:
        generate(prompts=['no token'], parameters=PARAMETERS, host=host, token='')
    except Exception as e:  # noqa: BLE001 - what the client raises is what is checked
        check(UNAUTHENTICATED in str(e), f'{host} without a token: {type(e).__name__}: {e}')
        print(f'  {host} without a token: refused ({type(e).__name__})', flush=True)
        return
    raise ContainerTestFailed(f'{host} answered a request without the token')


def outcome(host: str, token: str, parameters: dict) -> str:
    """What the client gives back for one text prompt: 'ok', the document's error, or the exception."""
    from s2i.client import generate

    try:
        (doc,) = generate(prompts=['a red fox in the snow'], parameters=parameters, host=host, token=token)
    except Exception as e:  # noqa: BLE001
        return f'raised {type(e).__name__}: {e}'
    return f'document error: {doc.error}' if doc.error else 'ok'


def crash_during_request(stack: Stack, grpc: str, http: str) -> None:
    """SIGKILL stable-diffusion's main process during a request, as a crash would (exit 137).

    Not `docker kill`: Docker counts that as a manual stop and no restart policy applies to it."""
    container = stack.container('stable-diffusion')
    restarts = int(output(['docker', 'inspect', '-f', '{{.RestartCount}}', container]))
    answers: Dict[str, str] = {}
    request = threading.Thread(target=lambda: answers.update(grpc=outcome(grpc, stack.token, SLOW_PARAMETERS)))
    request.start()
    time.sleep(3)
    check(request.is_alive(), f'the slow request finished before the crash: {answers}')
    pid = output(['docker', 'inspect', '-f', '{{.State.Pid}}', container])
    print(f'  killing stable-diffusion (pid {pid}) during the request', flush=True)
    os.kill(int(pid), signal.SIGKILL)
    request.join(timeout=120)
    check(not request.is_alive(), 'the request in flight got no answer within 120 s of the crash')
    answers['http'] = outcome(http, stack.token, PARAMETERS)  # at once: the executor is still starting
    for protocol, answer in answers.items():
        print(f'  {protocol} request during the crash: {answer}', flush=True)
        check(answer != 'ok', f'{protocol}: a request answered while stable-diffusion was down')
        check(re.search(r'stable.diffusion', answer) is not None, f'{protocol}: the error does not name stable-diffusion: {answer}')
    wait_until('stable-diffusion restarted by its policy', RESTARTED_S,
               lambda: output(['docker', 'inspect', '-f', '{{.State.Status}} {{.RestartCount}}', container]) == f'running {restarts + 1}', every=1)
    print('  restarted by its policy; waiting for it to serve', flush=True)
    start = time.monotonic()
    wait_until('requests succeeding after the restart', SERVING_AGAIN_S, lambda: outcome(grpc, stack.token, PARAMETERS) == 'ok', every=3)
    print(f'  serving again {time.monotonic() - start:.0f} s after the restart', flush=True)
    speech_and_bad_file(http, stack.token)


# 5. One container.

class SingleContainer:
    def __init__(self, token: str):
        self.grpc_port, self.http_port = free_ports(2)
        self.token = token

    def start(self) -> None:
        run(['docker', 'rm', '-f', '-v', SINGLE], check_rc=False)
        run([
            'docker', 'run', '-d', '--name', SINGLE,
            '-p', f'127.0.0.1:{self.grpc_port}:8321', '-p', f'127.0.0.1:{self.http_port}:8322',
            '-e', 'S2I_SD_MODEL=tiny', '-e', 'S2I_DEVICE=cpu', '-e', 'S2I_WHISPER_BACKEND=openai-whisper',
            '-e', 'S2I_AUTH_TOKEN', IMAGE,
        ], env={'S2I_AUTH_TOKEN': self.token})
        wait_until(f'{SINGLE} healthy', SINGLE_HEALTHY_S, lambda: healthy(SINGLE), every=3)

    def logs(self) -> None:
        print(f'\n--- docker logs {SINGLE}', flush=True)
        print(run(['docker', 'logs', '--tail', '300', SINGLE], check_rc=False).stdout.decode(errors='replace'))

    def remove(self) -> None:
        run(['docker', 'rm', '-f', '-v', SINGLE], check_rc=False)


class ContainerTest:
    """The test's phases, timed, and what each leaves running for the teardown to stop."""

    def __init__(self):
        self.timings = Timings()
        self.daemon = Daemon()
        self.token = secrets.token_hex(16)
        self.stack: Optional[Stack] = None
        self.single: Optional[SingleContainer] = None

    def prepare(self) -> List[str]:
        """The tools, the daemon and the image; the Compose command."""
        with self.timings.phase('tools'):
            compose = install_tools()
        with self.timings.phase('Docker daemon'):
            self.daemon.ensure()
        with self.timings.phase(f'base image {BASE_IMAGE}'):
            ensure_base_image()
        with self.timings.phase(f'build {IMAGE}'):
            build_image()
        return compose

    def compose_stack(self, compose: List[str]) -> None:
        self.stack = Stack(compose, self.token)
        grpc, http = f'grpc://127.0.0.1:{self.stack.grpc_port}', f'http://127.0.0.1:{self.stack.http_port}'
        with self.timings.phase('Compose stack up and healthy'):
            self.stack.export()
            self.stack.up()
        with self.timings.phase('Compose: requests over gRPC and HTTP, a job'):
            for host in (grpc, http):
                refused_without_token(host)
                speech_and_bad_file(host, self.token)
            job_followed(http, self.token)
        with self.timings.phase('Compose: stable-diffusion crashes during a request'):
            crash_during_request(self.stack, grpc, http)
        with self.timings.phase('Compose down'):
            self.stack.down()
            self.stack = None

    def single_container(self) -> None:
        self.single = SingleContainer(self.token)
        with self.timings.phase('single container up and healthy'):
            self.single.start()
        with self.timings.phase('single container: requests'):
            speech_and_bad_file(f'http://127.0.0.1:{self.single.http_port}', self.token)
            text_prompt(f'grpc://127.0.0.1:{self.single.grpc_port}', self.token)

    def teardown(self, failed: bool) -> None:
        """Logs of what failed; everything stopped unless S2I_TEST_KEEP asks to look at it."""
        with self.timings.phase('teardown'):
            running = [part for part in (self.stack, self.single) if part is not None]
            for part in running if failed else ():
                part.logs()
            if failed and os.environ.get('S2I_TEST_KEEP'):
                print('S2I_TEST_KEEP: leaving the containers and the daemon running', flush=True)
                return
            if self.stack is not None:
                self.stack.down()
            if self.single is not None:
                self.single.remove()
            self.daemon.stop()


def main() -> int:
    test = ContainerTest()
    failed = True
    try:
        test.compose_stack(test.prepare())
        test.single_container()
        failed = False
    except (ContainerTestFailed, subprocess.TimeoutExpired) as e:
        print(f'\nFAILED: {e}', file=sys.stderr, flush=True)
    finally:
        test.teardown(failed)
        test.timings.report()
    print('container test: FAILED' if failed else 'container test: passed', flush=True)
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
