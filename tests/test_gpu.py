"""CUDA fast paths: fp16 diffusion and float16 CTranslate2 Whisper. Skipped where no GPU is visible (CI)."""


import numpy as np
import pytest
import torch
from docarray import DocList

from executors.stable_diffusion.executor import StableDiffusionExecutor
from executors.whisper.executor import WhisperExecutor
from s2i.contracts.documents import PromptDoc

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


# Real vision weights: they need downloads (Hugging Face), so they run only where a GPU (and the hub) is.

def red_square_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new('RGB', (224, 224), (220, 20, 20)).save(buffer, format='PNG')
    return buffer.getvalue()


def test_real_clip_tags_a_red_square_as_red_in_fp16():
    from executors.clip.executor import ClipExecutor

    clip = ClipExecutor(device='auto', load_at_start=True, interrogator_at_startup=False)  # openai/clip-vit-large-patch14
    assert clip.model.dtype == torch.float16
    docs = DocList[PromptDoc]([PromptDoc(image=red_square_png())])
    clip.tag(docs, {'labels': ['a red square', 'a green forest', 'a blue sky']})
    assert docs[0].tags[0].label == 'a red square'


def test_real_blip_captions_a_red_square_in_fp16():
    from executors.caption.executor import CaptionExecutor

    captioner = CaptionExecutor(device='auto')  # Salesforce/blip-image-captioning-large
    docs = DocList[PromptDoc]([PromptDoc(image=red_square_png())])
    captioner.caption(docs, {})
    assert 'red' in docs[0].caption.lower()
