"""CUDA fast paths: fp16 diffusion and float16 CTranslate2 Whisper. Skipped where no GPU is visible (CI)."""


import numpy as np
import pytest
import torch
from docarray import DocList

from executors.stable_diffusion.executor import StableDiffusionExecutor
from executors.whisper.executor import WhisperExecutor
from s2i.docs import PromptDoc

from conftest import ENGLISH_CLIP, draw, pixels

pytestmark = pytest.mark.gpu


def test_stable_diffusion_runs_in_fp16_on_cuda_and_is_deterministic(tiny_sd_dir):
    sd = StableDiffusionExecutor(model=tiny_sd_dir, device='auto', request_defaults={'width': 64, 'height': 64, 'steps': 2})
    assert sd.device.type == 'cuda' and sd.dtype == torch.float16
    assert sd.pipe.unet.dtype == torch.float16

    def red_fox():
        (doc,) = draw(sd, ['a red fox'], {'seed': 3})
        return pixels(doc.matches[0])

    first = red_fox()
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, red_fox())


def test_faster_whisper_runs_in_float16_on_cuda():
    whisper = WhisperExecutor(model='base', device='auto')
    assert whisper.backend.model.model.device == 'cuda'
    (doc,) = whisper.transcribe(DocList[PromptDoc]([PromptDoc(blob=ENGLISH_CLIP.read_bytes())]), {})
    assert 'fox' in doc.text.lower()
