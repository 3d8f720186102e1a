"""bench/gpu: the GPU bench, proven on the CPU before a GPU sees it (issue 22).

The GPU machine has torch, transformers and numpy but no jina, docarray, faster-whisper,
CTranslate2, PyAV or numba: the bench runs here with those imports failing, as they will there.
"""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from executors.whisper.backends import EncoderWindow
from conftest import ROOT

RUN = ROOT / 'bench' / 'gpu' / 'run.sh'
# Installed here, absent on the GPU machine: importing any of them in the bench must fail here too.
ABSENT_ON_THE_GPU_MACHINE = ('jina', 'docarray', 'faster_whisper', 'ctranslate2', 'av', 'numba', 'llvmlite')
SECTIONS = ('sd15', 'sd15_batch', 'turbo', 'whisper', 'sdxl', 'sd15_low_memory', 'sd15_compiled', 'sdxl_compiled')


def gpu_machine_env(tmp_path, **extra) -> dict:
    """This Python, with a sitecustomize that makes the packages the GPU machine lacks unimportable."""
    shim = tmp_path / 'absent_packages'
    shim.mkdir()
    # None in sys.modules: `import jina` raises ModuleNotFoundError and importlib.util.find_spec('jina')
    # is None, as for a package that is not installed (libraries probe optional packages both ways).
    (shim / 'sitecustomize.py').write_text(f'import sys\nsys.modules.update(dict.fromkeys({ABSENT_ON_THE_GPU_MACHINE!r}))\n')
    env = {k: v for k, v in os.environ.items() if k != 'OUT'}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(shim), BENCH_SITE=str(tmp_path / 'site'), **extra)
    return env


def run_bench(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(RUN), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_the_gpu_machines_missing_packages_cannot_be_imported_in_the_bench_env(tmp_path):
    env = gpu_machine_env(tmp_path)
    for name in ABSENT_ON_THE_GPU_MACHINE:
        found = subprocess.run([sys.executable, '-c', f'import importlib.util; assert importlib.util.find_spec({name!r}) is None; import {name}'],
                               env=env, capture_output=True, text=True)
        assert found.returncode != 0 and 'ModuleNotFoundError' in found.stderr, name


@pytest.mark.slow  # the whole tiny bench in a subprocess: about 15 s
def test_tiny_bench_measures_every_section_without_jina_faster_whisper_or_numba(tmp_path):
    out = tmp_path / 'out'
    run = run_bench(gpu_machine_env(tmp_path), '--tiny', '--out', str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / 'bench_gpu.json').read_text())
    assert (out / 'bench_gpu.log').read_text().strip()

    # A CPU run names no GPU, so none of its figures can pass for GPU figures.
    assert report['machine']['gpu'] is None and report['machine']['device'] == 'cpu'
    settings = report['settings']
    assert settings['tiny'] is True and settings['batch_sizes'] == [1, 4, 8] and settings['turbo']['steps'] == [1, 4]
    assert settings['turbo']['guidance_scale'] == 0.0
    assert report['complete'] is True
    sections = report['sections']
    assert {name: sections[name]['status'] for name in SECTIONS} == {name: 'measured' for name in SECTIONS}

    def timed(figures):
        assert figures['median_s'] > 0 and figures['first_call_s'] > 0 and figures['images_per_s'] > 0
        assert 'peak_gpu_gib' in figures
        return figures

    for variant in ('eager', 'channels_last', 'channels_last+fused_qkv'):
        timed(sections['sd15'][variant])
    for batch in (1, 4, 8):
        timed(sections['sd15_batch'][f'batch{batch}'])
    assert sections['sd15_batch']['batch8_vs_batch1'] > 0
    for model in ('sd_turbo', 'sdxl_turbo'):
        for steps in (1, 4):
            timed(sections['turbo'][model][f'steps{steps}'])
    timed(sections['sdxl']['eager'])
    timed(sections['sd15_low_memory']['low_memory'])
    for name in ('sd15_compiled', 'sdxl_compiled'):
        assert isinstance(timed(sections[name]['compiled'])['compile_s'], float)

    whisper = sections['whisper']
    for seconds in (4, 30):
        clip = whisper[f'clip{seconds}s']
        # the short window is the Whisper executor's own default window for that clip
        assert clip['short_window']['frames'] == EncoderWindow().frames(seconds * 16000)
        assert clip['full_window']['frames'] == EncoderWindow.FULL_FRAMES
        for window in ('short_window', 'full_window'):
            assert clip[window]['encoder_s'] > 0 and clip[window]['decoder_s'] > 0 and clip[window]['decoder_tokens'] > 0
    assert whisper['clip4s']['short_window']['frames'] < EncoderWindow.FULL_FRAMES


def test_sections_past_the_deadline_are_skipped_and_say_why(tmp_path):
    out = tmp_path / 'from_env'
    run = run_bench(gpu_machine_env(tmp_path, OUT=str(out)), '--tiny', '--budget-s', '0')  # the folder from $OUT
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / 'bench_gpu.json').read_text())
    assert report['complete'] is False
    for name in SECTIONS:
        assert report['sections'][name]['status'] == 'skipped'
        assert 'time' in report['sections'][name]['reason']


def test_an_unknown_section_is_refused_by_name(tmp_path):
    run = run_bench(gpu_machine_env(tmp_path), '--tiny', '--out', str(tmp_path / 'out'), '--sections', 'sd15,sd3')
    assert run.returncode == 2 and 'no section sd3' in run.stdout + run.stderr


def test_wheels_dry_run_lists_each_wheel_it_would_fetch_and_the_tree_size(tmp_path):
    wanted = [line.split('#')[0].strip() for line in (ROOT / 'bench' / 'gpu' / 'wheels.txt').read_text().splitlines()]
    wanted = [line for line in wanted if line]
    # no network: a pip that it called would find no index
    env = {**os.environ, 'PIP_INDEX_URL': 'http://127.0.0.1:9/simple', 'PIP_NO_INDEX': '1'}
    run = subprocess.run(['bash', str(ROOT / 'bench' / 'gpu' / 'wheels.sh'), '--dry-run'], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert {'diffusers', 'pillow', 'openai-whisper'} <= {w.split('==')[0] for w in wanted}
    for requirement in wanted:
        assert requirement in run.stdout
    assert 'openai-whisper' in run.stdout and 'py3-none-any' in run.stdout
    assert 'working tree:' in run.stdout and 'of the 64 MiB' in run.stdout


def fake_wheel(folder, distribution: str, package: str, source: str):
    wheel = folder / f'{distribution}-9.9-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as archive:
        archive.writestr(f'{package}/__init__.py', source)
        archive.writestr(f'{distribution}-9.9.dist-info/METADATA', f'Metadata-Version: 2.1\nName: {distribution}\nVersion: 9.9\n')
    return wheel


def test_wheels_install_what_is_missing_and_leave_installed_packages_alone(tmp_path):
    wheels, site = tmp_path / 'wheels', tmp_path / 'site'
    wheels.mkdir()
    fake_wheel(wheels, 's2i_bench_probe', 's2i_bench_probe', 'ANSWER = 42\n')
    fake_wheel(wheels, 'numpy', 'numpy', 'raise ImportError("the shipped wheel shadowed the installed numpy")\n')
    install = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu' / 'install_wheels.py'), str(wheels), str(site)],
                             capture_output=True, text=True, timeout=60)
    assert install.returncode == 0, install.stderr
    probe = subprocess.run([sys.executable, '-c', 'import numpy, s2i_bench_probe; print(s2i_bench_probe.ANSWER, numpy.__version__)'],
                           env={**os.environ, 'PYTHONPATH': str(site)}, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    import numpy

    assert probe.stdout.split() == ['42', numpy.__version__]
