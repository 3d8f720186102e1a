"""/restyle (image-to-image on the text-to-image weights) and best_of candidates, on the tiny
random-weight pipeline: sizes, parameters, determinism, and every per-document error."""

import io

import numpy as np
import pytest
from docarray import DocList
from PIL import Image

from executors.stable_diffusion.executor import NO_IMAGE, NO_STYLE, StableDiffusionExecutor
from s2i.contracts.stable_diffusion import restyle_size
from s2i.contracts.documents import ParameterSchema, PromptDoc
from s2i.encoding import read_png_parameters
from s2i.images import ImageError, ImagePolicy, document_image

from conftest import draw, pixels

STYLE = 'as a Van Gogh painting'


@pytest.fixture(scope='module')
def sd(tiny_sd_dir):
    return StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', warmup=False,
                                   request_defaults={'width': 64, 'height': 64, 'steps': 2})


def png_bytes(width: int, height: int) -> bytes:
    """A smooth colour gradient: a real picture's worth of structure, the same every time."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format='PNG')
    return out.getvalue()


PHOTO = png_bytes(96, 64)


def restyle(sd, *docs: PromptDoc, **parameters) -> DocList[PromptDoc]:
    return sd.restyle(DocList[PromptDoc](docs), parameters)


def restyled(sd, image: bytes = PHOTO, text: str = STYLE, **parameters) -> PromptDoc:
    (doc,) = restyle(sd, PromptDoc(image=image, text=text), **parameters)
    assert doc.error == ''
    return doc


def test_restyle_returns_num_images_pngs_of_the_input_images_size(sd):
    doc = restyled(sd, num_images=2, seed=40)
    assert len(doc.matches) == 2
    for image in doc.matches:
        assert Image.open(io.BytesIO(image.png)).size == (96, 64) and (image.width, image.height) == (96, 64)


def test_width_and_height_in_the_request_set_the_output_size(sd):
    (image,) = restyled(sd, width=64, height=128).matches
    assert Image.open(io.BytesIO(image.png)).size == (64, 128)


def test_the_default_size_keeps_the_aspect_rounded_down_to_8_and_fits_max_pixels():
    assert restyle_size(96, 64, 1024 * 1024) == (96, 64)
    assert restyle_size(100, 70, 1024 * 1024) == (96, 64)
    assert restyle_size(2000, 1000, 512 * 512) == (720, 360)


def test_documents_of_different_sizes_in_one_request_each_keep_their_own(sd):
    wide, tall = restyle(sd, PromptDoc(image=PHOTO, text=STYLE), PromptDoc(image=png_bytes(64, 80), text=STYLE))
    assert [(m.width, m.height) for m in wide.matches] == [(96, 64)]
    assert [(m.width, m.height) for m in tall.matches] == [(64, 80)]


def test_png_parameters_record_strength_mode_seed_and_the_input_size(sd):
    (image,) = restyled(sd, image=png_bytes(100, 70), seed=7, strength=0.5).matches
    recorded = read_png_parameters(image.png)
    assert recorded == image.parameters
    assert {k: recorded[k] for k in ('mode', 'strength', 'seed', 'prompt', 'width', 'height', 'input_width', 'input_height')} == {
        'mode': 'restyle', 'strength': 0.5, 'seed': 7, 'prompt': STYLE, 'width': 96, 'height': 64,
        'input_width': 100, 'input_height': 70,
    }
    assert image.seed == 7 and recorded['pipeline'] == 'StableDiffusionImg2ImgPipeline'


def test_same_seed_and_input_give_identical_pixels(sd):
    first, second = restyled(sd, seed=3).matches[0], restyled(sd, seed=3).matches[0]
    assert np.array_equal(pixels(first), pixels(second))


def test_a_different_strength_gives_different_pixels(sd):
    light, full = restyled(sd, seed=3, strength=0.5).matches[0], restyled(sd, seed=3, strength=1.0).matches[0]
    assert not np.array_equal(pixels(light), pixels(full))


@pytest.mark.parametrize('strength', [0, -0.1, 1.5])
def test_strength_out_of_range_fails_every_document(sd, strength):
    docs = restyle(sd, PromptDoc(image=PHOTO, text=STYLE), PromptDoc(image=PHOTO, text=STYLE), strength=strength)
    for doc in docs:
        assert doc.error.startswith('invalid parameters: strength') and not doc.matches


def test_too_few_steps_for_the_strength_is_refused_before_any_work(sd):
    (doc,) = restyle(sd, PromptDoc(image=PHOTO, text=STYLE), steps=2, strength=0.4)
    assert doc.error.startswith('invalid parameters: steps x strength must be at least 1')


@pytest.mark.parametrize('bad', [b'not an image at all', PHOTO[: len(PHOTO) // 2]], ids=['not-an-image', 'truncated-png'])
def test_a_bad_image_fails_its_document_and_the_others_still_get_their_images(sd, bad):
    broken, good = restyle(sd, PromptDoc(image=bad, text=STYLE), PromptDoc(image=PHOTO, text=STYLE))
    with pytest.raises(ImageError) as reading:
        document_image(PromptDoc(image=bad), ImagePolicy())
    assert broken.error == str(reading.value) and not broken.matches
    assert (broken.error_code, broken.error_param) == ('image_unreadable', 'image')
    assert good.error == '' and len(good.matches) == 1


def test_an_image_without_a_style_prompt_gets_the_documented_error(sd):
    (doc,) = restyle(sd, PromptDoc(image=PHOTO))
    assert doc.error == NO_STYLE == 'nothing to restyle with: send a style prompt (text) or speech (audio)'
    assert (doc.error_code, doc.error_param) == ('missing_input', 'prompt')


def test_a_style_prompt_without_an_image_gets_an_error(sd):
    (doc,) = restyle(sd, PromptDoc(text=STYLE))
    assert doc.error == NO_IMAGE and not doc.matches
    assert (doc.error_code, doc.error_param) == ('missing_input', 'image')


def test_best_of_draws_that_many_candidates_with_consecutive_seeds(sd):
    (doc,) = draw(sd, ['a red fox'], {'best_of': 3, 'num_images': 1, 'seed': 20})
    assert [image.seed for image in doc.matches] == [20, 21, 22]
    for image in doc.matches:
        assert image.parameters['best_of'] == 3 and image.parameters['num_images'] == 1


def test_best_of_applies_to_restyle_too(sd):
    doc = restyled(sd, best_of=2, seed=5)
    assert [(image.seed, image.parameters['best_of']) for image in doc.matches] == [(5, 2), (6, 2)]


def test_best_of_below_num_images_is_refused(sd):
    (doc,) = draw(sd, ['a red fox'], {'best_of': 1, 'num_images': 2})
    assert doc.error.startswith('invalid parameters: best_of must be at least num_images') and not doc.matches


def test_best_of_over_the_configured_maximum_is_refused(sd):
    (doc,) = draw(sd, ['a red fox'], {'best_of': 9})
    assert doc.error == 'invalid parameters: best_of must be between 1 and 8, got 9'


def test_a_configured_step_count_too_low_for_restyle_still_starts_and_serves_text_to_image(tiny_sd_dir):
    sd = StableDiffusionExecutor(model=tiny_sd_dir, device='cpu', warmup=False, request_defaults={'width': 64, 'height': 64, 'steps': 1})
    (drawn,) = draw(sd, ['a red fox'])
    assert drawn.error == '' and len(drawn.matches) == 1
    (refused,) = restyle(sd, PromptDoc(image=PHOTO, text=STYLE))
    assert refused.error.startswith('invalid parameters: steps x strength must be at least 1')


def test_the_parameters_endpoint_describes_strength_and_best_of(sd):
    (schema,) = sd.describe_parameters(DocList[ParameterSchema](), parameters={})
    assert {'strength', 'best_of'} <= set(schema.keys)
    assert schema.json_schema['properties']['strength']['default'] == 0.6
