"""Stable Diffusion's limits: prompt length, image size, GPU memory. Each answers its own document."""

from typing import Optional

import pytest
import torch

from executors.stable_diffusion.executor import OUT_OF_MEMORY, StableDiffusionExecutor

from conftest import draw


# --- Stable Diffusion: prompts, sizes, out of memory ----------------------------------------------

@pytest.fixture(scope='module')
def sd(tiny_sd_dir):
    return StableDiffusionExecutor(
        model=tiny_sd_dir, device='cpu', request_defaults={'width': 64, 'height': 64, 'steps': 1},
        max_num_images=4, max_pixels=96 * 96, max_prompt_chars=12_000, warmup=False,
    )


def test_a_10000_character_prompt_is_truncated_and_each_image_says_so(sd):
    long_prompt = 'a red fox in the snow, ' * 435  # 10,005 characters
    long, short = draw(sd, [long_prompt, 'a lighthouse'])
    assert long.error == ''
    truncated = long.matches[0].parameters['truncated']['prompt']
    assert truncated['limit'] == 77 and truncated['tokens'] > 77
    # The tokenizer's decoding spaces punctuation ("snow ,"): compare without spaces.
    used, asked = truncated['used'].replace(' ', ''), long_prompt.replace(' ', '')
    assert asked.startswith(used) and 0 < len(used) < len(asked)
    assert long.matches[0].parameters['prompt'] == long_prompt  # what was asked, next to what was used
    assert short.error == '' and 'truncated' not in short.matches[0].parameters


def test_a_negative_prompt_past_the_text_encoders_window_is_reported_too(sd):
    (doc,) = draw(sd, ['a fox'], {'negative_prompt': 'blurry, ' * 100})
    assert set(doc.matches[0].parameters['truncated']) == {'negative_prompt'}


def test_a_prompt_over_max_prompt_chars_is_rejected_and_the_other_document_still_drawn(sd):
    huge, fine = draw(sd, ['x' * 12_001, 'a lighthouse'])
    assert huge.error == 'prompt too long: 12001 characters, the limit is 12000 (max_prompt_chars)'
    assert (huge.error_code, huge.error_param) == ('prompt_too_long', 'prompt')
    assert len(huge.matches) == 0
    assert fine.error == '' and len(fine.matches) == 1


def test_a_negative_prompt_over_max_prompt_chars_fails_every_document_before_any_work(sd, monkeypatch):
    # 1 MB of negative prompt once cost 3 s per 64x64 image, and requests batched with it waited.
    calls = pipeline_calls(sd, monkeypatch)
    docs = draw(sd, ['a fox', 'a barn'], {'negative_prompt': 'blurry ' * 150_000})
    for doc in docs:
        assert doc.error == 'invalid parameters: negative_prompt too long: 1050000 characters, the limit is 12000 (max_prompt_chars)'
        assert doc.error_param == 'negative_prompt'
        assert len(doc.matches) == 0
    assert calls == []


def test_sizes_over_max_pixels_are_invalid_parameters(sd):
    (doc,) = draw(sd, ['a fox'], {'width': 128, 'height': 128})
    assert doc.error == 'invalid parameters: width x height must be at most 9216 pixels (max_pixels), got 128x128'
    (doc,) = draw(sd, ['a fox'], {'width': 96, 'height': 96})
    assert doc.error == '' and doc.matches[0].width == 96


def pipeline_calls(sd, monkeypatch, out_of_memory_above: Optional[int] = None) -> list:
    """The batch sizes the pipeline is called with from now on. Batches of more than
    ``out_of_memory_above`` images raise CUDA out-of-memory (constructible on the CPU)."""
    pipeline_class = type(sd.pipe)
    real_call, batch_sizes = pipeline_class.__call__, []

    def call(pipe, prompt, **kwargs):
        batch_sizes.append(len(prompt))
        if out_of_memory_above is not None and len(prompt) > out_of_memory_above:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return real_call(pipe, prompt=prompt, **kwargs)

    monkeypatch.setattr(pipeline_class, '__call__', call)
    return batch_sizes


def test_out_of_memory_retries_the_batch_in_halves_and_every_document_gets_its_images(sd, monkeypatch):
    batch_sizes = pipeline_calls(sd, monkeypatch, out_of_memory_above=1)
    docs = draw(sd, ['a fox', 'a barn', 'a boat', 'a tree'], {'seed': 5})
    assert batch_sizes == [4, 2, 1, 1, 2, 1, 1]
    for doc in docs:
        assert doc.error == '' and len(doc.matches) == 1 and doc.matches[0].batch_size == 1


def test_out_of_memory_on_one_image_is_a_clear_error_and_the_executor_keeps_serving(sd, monkeypatch):
    with monkeypatch.context() as patch:
        pipeline_calls(sd, patch, out_of_memory_above=0)
        first, second = draw(sd, ['a fox', 'a barn'])
    for doc in (first, second):
        assert doc.error.startswith(f'{OUT_OF_MEMORY} for a 64x64 image: ask for a smaller width and height')
        assert doc.error_code == 'out_of_memory'
        assert len(doc.matches) == 0
    (after,) = draw(sd, ['a fox'])
    assert after.error == '' and len(after.matches) == 1
