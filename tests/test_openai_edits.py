"""/v1/images/edits and /v1/images/variations (gateway/routes/images.py) through the official ``openai``
SDK, against the real service (tests/front_door.py): tiny random-weight Stable Diffusion, BLIP and CLIP."""

import base64
import io

import openai
import pytest
from PIL import Image

from s2i.encoding import read_png_parameters
from tests.front_door import TOKEN

FAST = {'steps': 2, 'strength': 0.5}  # one denoising step: the tiny model draws noise either way
# openai 3.x marks images.create_variation deprecated (OpenAI's newer image models make none).
SDK_DEPRECATES_VARIATIONS = pytest.mark.filterwarnings('ignore:deprecated:DeprecationWarning')


@pytest.fixture(scope='module')
def client(front_door) -> openai.OpenAI:
    return openai.OpenAI(base_url=front_door.api, api_key=TOKEN, max_retries=0)


@pytest.fixture(scope='module')
def png_path(tmp_path_factory):
    """A 96x64 PNG: its size is not the executor's default, so keeping it is the route's doing."""
    path = tmp_path_factory.mktemp('edits') / 'gradient.png'
    Image.linear_gradient('L').resize((96, 64)).convert('RGB').save(path)
    return path


def png_bytes(entry) -> bytes:
    return base64.b64decode(entry.b64_json)


def edit(client, image_path, **kwargs):
    extra_body = {**FAST, **kwargs.pop('extra_body', {})}
    with open(image_path, 'rb') as image:
        return client.images.edit(**{'image': image, 'prompt': 'as an oil painting', **kwargs}, extra_body=extra_body)


def test_edit_restyles_the_image_at_its_own_size(client, png_path):
    answer = edit(client, png_path, n=2, response_format='b64_json', extra_body={'seed': 5})
    assert len(answer.data) == 2
    for entry, seed in zip(answer.data, (5, 6)):
        png = png_bytes(entry)
        assert Image.open(io.BytesIO(png)).size == (96, 64)
        recorded = read_png_parameters(png)
        assert (recorded['mode'], recorded['seed'], recorded['strength']) == ('restyle', seed, 0.5)
        echoed = entry.model_dump()
        assert (echoed['seed'], echoed['strength'], echoed['width'], echoed['height']) == (seed, 0.5, 96, 64)
        assert entry.revised_prompt == 'as an oil painting'


def test_edit_size_resizes_the_image(client, png_path):
    [entry] = edit(client, png_path, size='64x64').data
    assert Image.open(io.BytesIO(png_bytes(entry))).size == (64, 64)


def test_text_file_as_image_is_unreadable(client, tmp_path):
    text = tmp_path / 'notes.png'
    text.write_text('not an image at all')
    with pytest.raises(openai.BadRequestError) as refused:
        edit(client, text)
    assert refused.value.param == 'image' and refused.value.code == 'image_unreadable'
    assert 'not an image this service reads' in refused.value.message


def test_mask_is_refused_as_no_inpainting(client, png_path):
    with open(png_path, 'rb') as mask, pytest.raises(openai.BadRequestError) as refused:
        edit(client, png_path, mask=mask)
    assert refused.value.param == 'mask' and 'inpainting' in refused.value.message


def test_more_than_one_image_is_refused(client, png_path):
    with open(png_path, 'rb') as first, open(png_path, 'rb') as second, pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=[first, second], prompt='as an oil painting', extra_body=FAST)
    assert refused.value.param == 'image' and 'exactly one image' in refused.value.message


def test_strength_0_is_refused_by_name(client, png_path):
    with pytest.raises(openai.BadRequestError) as refused:
        edit(client, png_path, extra_body={'strength': 0})
    assert refused.value.param == 'strength' and 'strength' in refused.value.message


def test_unknown_extra_form_field_is_refused_by_name(client, png_path):
    with pytest.raises(openai.BadRequestError) as refused:
        edit(client, png_path, extra_body={'denoise': 0.3})
    assert refused.value.param == 'denoise'


@SDK_DEPRECATES_VARIATIONS
def test_variation_restyles_after_the_interrogated_prompt(client, png_path):
    with open(png_path, 'rb') as image:
        answer = client.images.create_variation(image=image, n=1, extra_body={**FAST, 'seed': 9})
    [entry] = answer.data
    png = png_bytes(entry)
    assert Image.open(io.BytesIO(png)).size == (96, 64)
    recorded = read_png_parameters(png)
    assert recorded['mode'] == 'restyle' and recorded['seed'] == 9
    assert entry.revised_prompt and entry.revised_prompt == recorded['prompt']
