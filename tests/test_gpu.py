"""CUDA fast paths: fp16 diffusion and float16 CTranslate2 Whisper. Skipped where no GPU is visible (CI)."""

import io

import numpy as np
import pytest
import torch
from docarray import DocList
from PIL import Image

from executors.stable_diffusion.executor import StableDiffusionExecutor
from executors.whisper.executor import WhisperExecutor
from s2i.docs import PromptDoc

from conftest import ENGLISH_CLIP

pytestmark = pytest.mark.gpu


def test_stable_diffusion_runs_in_fp16_on_cuda_and_is_deterministic(tiny_sd_dir):
    sd = StableDiffusionExecutor(model=tiny_sd_dir, device='auto', width=64, height=64, steps=2)
    assert sd.device.type == 'cuda' and sd.dtype == torch.float16
    assert sd.pipe.unet.dtype == torch.float16

    def draw():
        (doc,) = sd.generate(DocList[PromptDoc]([PromptDoc(text='a red fox')]), {'seed': 3})
        return np.asarray(Image.open(io.BytesIO(doc.matches[0].png)))

    first = draw()
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, draw())


def test_faster_whisper_runs_in_float16_on_cuda():
    whisper = WhisperExecutor(model='base', device='auto')
    assert whisper.backend.model.model.device == 'cuda'
    (doc,) = whisper.transcribe(DocList[PromptDoc]([PromptDoc(blob=ENGLISH_CLIP.read_bytes())]), {})
    assert 'fox' in doc.text.lower()
