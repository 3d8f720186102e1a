"""StableDiffusionExecutor on a tiny random-weight pipeline: wiring, parameters, determinism, errors."""

import io

import numpy as np
import pytest
from docarray import DocList
from PIL import Image

from executors.stable_diffusion.executor import StableDiffusionExecutor
from s2i.contracts.documents import ParameterSchema, PromptDoc
from s2i.encoding import read_png_parameters
from s2i.contracts.params import MAX_SEED
from s2i.tiny_sd import TINY_VERSION, TINY_WARNING

from conftest import draw, pixels

SMALL = {'width': 64, 'height': 64, 'steps': 2}


@pytest.fixture(scope='module')
def sd(tiny_sd_dir):
    return StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', max_num_images=4, request_defaults={'width': 64, 'height': 64, 'steps': 2})


def generate(sd, parameters=None, prompts=('a red fox in the snow',)) -> DocList[PromptDoc]:
    return draw(sd, prompts, parameters)


def only_image(sd, **parameters):
    (doc,) = generate(sd, parameters)
    assert doc.error == ''
    (image,) = doc.matches
    return image


class UNetCalls:
    """Counts UNet forward passes and the batch size each one saw."""

    def __init__(self, unet):
        self.batch_sizes = []
        self.handle = unet.register_forward_hook(lambda module, args, output: self.batch_sizes.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_each_document_gets_the_requested_number_of_images_of_the_requested_size(sd):
    docs = generate(sd, {'num_images': 3, 'width': 64, 'height': 96}, prompts=('a fox', 'a lighthouse'))
    for doc in docs:
        assert doc.error == ''
        assert len(doc.matches) == 3
        for image in doc.matches:
            assert Image.open(io.BytesIO(image.png)).size == (64, 96)
            assert (image.width, image.height) == (64, 96)


def test_same_seed_and_parameters_give_identical_pixels(sd):
    first, second = only_image(sd, seed=1234), only_image(sd, seed=1234)
    assert np.array_equal(pixels(first), pixels(second))


def test_different_seeds_give_different_pixels(sd):
    assert not np.array_equal(pixels(only_image(sd, seed=1)), pixels(only_image(sd, seed=2)))


def test_image_i_of_a_document_uses_seed_plus_i_and_can_be_regenerated_alone(sd):
    (doc,) = generate(sd, {'seed': 10, 'num_images': 2})
    assert [image.seed for image in doc.matches] == [10, 11]
    alone = only_image(sd, seed=11)
    # Batched and single convolutions round differently on the CPU: at most one level of 255.
    assert np.abs(pixels(doc.matches[1]) - pixels(alone)).max() <= 1


def test_a_documents_own_seed_overrides_the_requests_and_is_checked_per_document(sd):
    docs = DocList[PromptDoc]([
        PromptDoc(text='a red fox', seed=5), PromptDoc(text='a red fox'), PromptDoc(text='a red fox', seed=MAX_SEED),
    ])
    own, from_request, too_high = sd.generate(docs, {**SMALL, 'seed': 9, 'num_images': 2})
    assert [image.seed for image in own.matches] == [5, 6]
    assert [image.seed for image in from_request.matches] == [9, 10]
    assert too_high.error.startswith(f'invalid seed: seed + num_images - 1 must be at most {MAX_SEED}') and not too_high.matches
    assert (too_high.error_code, too_high.error_param) == ('invalid_parameter', 'seed')
    # The same seed gives the same pixels whether it came with the document or the request.
    (from_document,) = sd.generate(DocList[PromptDoc]([PromptDoc(text='a red fox', seed=5)]), {**SMALL, 'seed': 9})
    (from_request,) = generate(sd, {**SMALL, 'seed': 5}, prompts=('a red fox',))
    assert np.array_equal(pixels(from_document.matches[0]), pixels(from_request.matches[0]))


def test_without_a_seed_each_image_reports_the_random_seed_it_used(sd):
    image = only_image(sd)
    assert np.array_equal(pixels(image), pixels(only_image(sd, seed=image.seed)))


def test_png_carries_every_generation_parameter_and_the_model(sd, tiny_sd_dir):
    image = only_image(sd, seed=5, steps=3, guidance_scale=4.0, negative_prompt='blurry', scheduler='ddim')
    embedded = read_png_parameters(image.png)
    assert embedded == image.parameters
    assert embedded['prompt'] == 'a red fox in the snow'
    assert {k: embedded[k] for k in ('seed', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler', 'width', 'height')} == {
        'seed': 5, 'steps': 3, 'guidance_scale': 4.0, 'negative_prompt': 'blurry', 'scheduler': 'ddim', 'width': 64, 'height': 64,
    }
    assert embedded['model'] == tiny_sd_dir
    assert embedded['device'] == 'cpu' and embedded['dtype'] == 'float32'


def test_images_of_the_tiny_model_say_they_are_noise(sd):
    assert only_image(sd).parameters['warning'] == TINY_WARNING


def test_steps_sets_the_number_of_denoising_passes(sd):
    with UNetCalls(sd.pipe.unet) as calls:
        only_image(sd, steps=3)
    assert len(calls.batch_sizes) == 3


def test_guidance_scale_above_one_runs_classifier_free_guidance(sd):
    with UNetCalls(sd.pipe.unet) as guided:
        only_image(sd, seed=3, guidance_scale=7.5)
    with UNetCalls(sd.pipe.unet) as unguided:
        only_image(sd, seed=3, guidance_scale=1.0)
    assert guided.batch_sizes == [2, 2] and unguided.batch_sizes == [1, 1]


def test_negative_prompt_changes_the_image(sd):
    plain, negative = only_image(sd, seed=3), only_image(sd, seed=3, negative_prompt='blurry, dark')
    assert not np.array_equal(pixels(plain), pixels(negative))


def test_each_scheduler_gives_its_own_image_and_the_png_names_it(sd):
    images = {name: only_image(sd, seed=4, steps=3, scheduler=name) for name in ('euler', 'euler_a', 'ddim', 'dpm++')}
    for name, image in images.items():
        assert read_png_parameters(image.png)['scheduler'] == name
    names = list(images)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not np.array_equal(pixels(images[first]), pixels(images[second])), (first, second)


def test_images_come_back_as_png_bytes_with_no_stored_location_yet(sd):
    image = only_image(sd, seed=9)
    assert image.png.startswith(b'\x89PNG') and image.data_uri is None and image.url == ''


def test_the_parameters_endpoint_describes_this_executors_keys_and_configured_defaults(sd):
    (schema,) = sd.describe_parameters(DocList[ParameterSchema](), parameters={})
    assert schema.executor == sd.metas.name
    assert {'steps', 'seed', 'width', 'scheduler'} <= set(schema.keys)
    assert schema.json_schema['properties']['steps']['default'] == 2  # this executor's request_defaults


@pytest.mark.parametrize(
    'parameters, key',
    [({'num_images': 5}, 'num_images'), ({'width': 60}, 'width'), ({'steps': 0}, 'steps'), ({'scheduler': 'x'}, 'scheduler')],
)
def test_invalid_parameters_give_every_document_an_error_naming_the_key(sd, parameters, key):
    docs = generate(sd, parameters, prompts=('a', 'b'))
    for doc in docs:
        assert doc.error.startswith('invalid parameters: ') and key in doc.error
        assert (doc.error_code, doc.error_param) == ('invalid_parameter', key)
        assert len(doc.matches) == 0


def test_documents_with_an_error_pass_through_untouched_while_the_others_are_drawn(sd):
    docs = DocList[PromptDoc]([
        PromptDoc(text='a fox', error='no speech detected'),
        PromptDoc(text='a fox'),
        PromptDoc(text='   '),
    ])
    sd.generate(docs, {})
    assert docs[0].error == 'no speech detected' and len(docs[0].matches) == 0
    assert docs[1].error == '' and len(docs[1].matches) == 1
    assert docs[2].error == 'nothing to draw: the document has no text prompt' and len(docs[2].matches) == 0
    assert (docs[2].error_code, docs[2].error_param) == ('missing_input', 'prompt')


def test_a_failing_generation_fails_its_documents_and_the_executor_keeps_serving(sd, monkeypatch):
    def failing_pipeline(*args, **kwargs):
        raise RuntimeError('injected failure in /home/someone/.venv/lib/python3.11/site-packages/torch/nn/functional.py')

    with monkeypatch.context() as patch:
        patch.setattr(type(sd.pipe), '__call__', failing_pipeline)
        (failed,) = generate(sd)
    # The exception's text goes to the log, not to the client: it may hold internal paths.
    assert failed.error == 'image generation failed: RuntimeError; the details are in the service log'
    assert failed.error_code == 'internal_error'
    assert len(only_image(sd).png) > 0


def test_batches_larger_than_max_batch_size_are_split_and_all_images_come_back(tiny_sd_dir):
    sd = StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', max_batch_size=2, request_defaults={'width': 64, 'height': 64, 'steps': 1})
    with UNetCalls(sd.pipe.unet) as calls:
        docs = generate(sd, {'num_images': 3, 'guidance_scale': 1.0}, prompts=('a', 'b'))
    assert [len(doc.matches) for doc in docs] == [3, 3]
    assert calls.batch_sizes == [2, 2, 2]


def test_an_unloadable_model_fails_at_start_naming_the_model_and_the_fix():
    with pytest.raises(RuntimeError) as error:
        StableDiffusionExecutor(model='/nonexistent/sd-model', device='cpu')
    message = str(error.value)
    assert "Could not load the Stable Diffusion model '/nonexistent/sd-model'" in message
    assert 'S2I_SD_MODEL' in message


def test_model_name_tiny_builds_the_tiny_pipeline_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_CACHE', str(tmp_path))
    sd = StableDiffusionExecutor(model='tiny', device='cpu', request_defaults={'width': 64, 'height': 64, 'steps': 1})
    assert (tmp_path / f'tiny-sd-v{TINY_VERSION}' / 'model_index.json').is_file()
    image = only_image(sd)
    assert image.parameters['model'] == 'tiny' and image.parameters['warning'] == TINY_WARNING


@pytest.fixture(scope='module')
def reference_pixels(sd):
    return pixels(only_image(sd, seed=21, width=128, height=128))


@pytest.mark.parametrize('setting', ['channels_last', 'fuse_qkv', 'low_memory'])
def test_speed_settings_keep_the_pixels(tiny_sd_dir, reference_pixels, setting):
    fast = StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', **{setting: True}, request_defaults={'width': 64, 'height': 64, 'steps': 2})
    assert np.abs(pixels(only_image(fast, seed=21, width=128, height=128)) - reference_pixels).max() <= 1


@pytest.mark.slow
def test_compiled_unet_keeps_the_pixels(tiny_sd_dir, reference_pixels):
    compiled = StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', compile_unet=True, request_defaults={'width': 128, 'height': 128, 'steps': 2})
    assert np.abs(pixels(only_image(compiled, seed=21)) - reference_pixels).max() <= 1


def test_warm_up_runs_the_pipeline_once_at_start(tiny_sd_dir, monkeypatch):
    from diffusers import UNet2DConditionModel

    calls, forward = [], UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, 'forward', lambda unet, *a, **k: calls.append(1) or forward(unet, *a, **k))
    StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', request_defaults={'width': 64, 'height': 64}, warmup=False)
    assert len(calls) == 0
    StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', request_defaults={'width': 64, 'height': 64}, warmup=True)
    assert len(calls) == 2  # the warm-up's two denoising steps


def test_a_setting_the_executor_does_not_have_stops_it_at_start_naming_it(tiny_sd_dir):
    # e.g. a config.yml written for the old request-default settings: `steps: 30` instead of `request_defaults`
    with pytest.raises(TypeError, match='StableDiffusionExecutor has no setting.s. steps: see its config.yml'):
        StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', steps=30)
