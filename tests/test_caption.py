"""CaptionExecutor on a tiny random-weight BLIP model: captions, prefixes, batching, parameters and errors.

The tiny model's captions are noise, so these tests check their shape and determinism, not their words."""

import base64
import io

import pytest
import torch
from docarray import DocList
from PIL import Image

from executors.caption.executor import NO_IMAGE, CaptionExecutor
from s2i.contracts.documents import ParameterSchema, PromptDoc
from s2i.tiny_blip import write_tiny_blip

from image_files import peak_growth_of_big_images


@pytest.fixture(scope='module')
def tiny_blip_dir(tmp_path_factory) -> str:
    return write_tiny_blip(str(tmp_path_factory.mktemp('tiny-blip')))


@pytest.fixture(scope='module')
def captioner(tiny_blip_dir) -> CaptionExecutor:
    return CaptionExecutor(model=tiny_blip_dir, device='cpu', request_defaults={'max_new_tokens': 12})


def png(color='red', size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', size, color).save(buffer, 'PNG')
    return buffer.getvalue()


def image_doc(color='red', **fields) -> PromptDoc:
    return PromptDoc(image=png(color), **fields)


def caption(captioner, *docs, **parameters) -> DocList[PromptDoc]:
    return captioner.caption(DocList[PromptDoc](docs), parameters)


def only_caption(captioner, doc, **parameters) -> str:
    (done,) = caption(captioner, doc, **parameters)
    assert done.error == ''
    return done.caption


def test_a_good_image_gets_a_non_empty_stripped_caption(captioner):
    text = only_caption(captioner, image_doc())
    assert isinstance(text, str) and text and text == text.strip()


def test_the_same_image_gets_the_same_caption_from_a_fresh_executor(captioner, tiny_blip_dir):
    first = only_caption(captioner, image_doc('green'))
    assert only_caption(captioner, image_doc('green')) == first
    again = CaptionExecutor(model=tiny_blip_dir, device='cpu', request_defaults={'max_new_tokens': 12})
    assert only_caption(again, image_doc('green')) == first


def test_each_image_of_a_batch_gets_its_own_caption(captioner):
    alone = [only_caption(captioner, image_doc(color)) for color in ('red', 'blue')]
    assert alone[0] != alone[1]  # the tiny model does look at the image
    assert [doc.caption for doc in caption(captioner, image_doc('red'), image_doc('blue'))] == alone


def test_a_caption_continues_the_prefix(captioner):
    text = only_caption(captioner, image_doc(), caption_prefix='A photograph of')
    assert text.startswith('a photograph of')  # as BLIP returns it: lowercased
    assert len(text) > len('a photograph of')


def test_a_blank_prefix_gives_the_unconditional_caption(captioner):
    assert only_caption(captioner, image_doc(), caption_prefix='  ') == only_caption(captioner, image_doc())


def test_max_new_tokens_bounds_the_caption(captioner):
    short = only_caption(captioner, image_doc(), max_new_tokens=3)
    assert short and len(short) < len(only_caption(captioner, image_doc(), max_new_tokens=12))


def test_an_image_uri_is_captioned_as_its_bytes_are(captioner):
    uri = 'data:image/png;base64,' + base64.b64encode(png('blue')).decode()
    assert only_caption(captioner, PromptDoc(image_uri=uri)) == only_caption(captioner, image_doc('blue'))


def test_in_a_batch_of_three_only_the_bad_image_gets_an_error(captioner):
    docs = caption(captioner, image_doc('red'), PromptDoc(image=b'not an image'), image_doc('blue'))
    assert [bool(doc.caption) for doc in docs] == [True, False, True]
    assert [bool(doc.error) for doc in docs] == [False, True, False]
    assert 'image' in docs[1].error


def test_a_document_without_an_image_gets_the_documented_error(captioner):
    (doc,) = caption(captioner, PromptDoc(text='a fox'))
    assert doc.error == NO_IMAGE == 'no image to caption: send image (bytes) or image_uri'
    assert (doc.error_code, doc.error_param) == ('missing_input', 'image')
    assert doc.caption == ''


def test_a_document_with_an_error_passes_through(captioner):
    (doc,) = caption(captioner, image_doc(error='transcription failed'))
    assert doc.error == 'transcription failed' and doc.caption == ''


def test_a_failed_batch_is_retried_so_only_the_failing_image_gets_an_error(captioner, monkeypatch):
    poison = captioner.processor(images=[Image.new('RGB', (40, 30), 'black')], return_tensors='pt')['pixel_values'][0]
    generate = captioner.model.generate

    def failing_on_black(pixel_values, **kwargs):
        if any(torch.equal(row, poison) for row in pixel_values):
            raise RuntimeError('this image breaks the model')
        return generate(pixel_values=pixel_values, **kwargs)

    expected = [only_caption(captioner, image_doc(color)) for color in ('red', 'blue')]
    monkeypatch.setattr(captioner.model, 'generate', failing_on_black)
    docs = caption(captioner, image_doc('red'), image_doc('black'), image_doc('blue'))
    assert [docs[0].caption, docs[2].caption] == expected
    assert docs[0].error == docs[2].error == ''
    assert docs[1].error.startswith('captioning failed: RuntimeError') and docs[1].caption == ''
    assert docs[1].error_code == 'internal_error'


@pytest.mark.parametrize('parameters, named', [
    ({'max_new_tokens': 0}, 'max_new_tokens'),
    ({'max_new_tokens': 2.5}, 'max_new_tokens'),
    ({'num_beams': 100}, 'num_beams'),
    ({'caption_prefix': 5}, 'caption_prefix'),
    ({'caption_prefix': 'x' * 201}, 'caption_prefix'),
])
def test_invalid_parameters_fail_every_document_naming_the_key(captioner, parameters, named):
    docs = caption(captioner, image_doc(), image_doc('blue'), **parameters)
    for doc in docs:
        assert doc.error.startswith('invalid parameters:') and named in doc.error
        assert (doc.error_code, doc.error_param) == ('invalid_parameter', named)
        assert doc.caption == ''


def test_interrogate_captions_only_the_documents_without_a_caption(captioner):
    docs = captioner.caption_to_interrogate(
        DocList[PromptDoc]([image_doc(caption='a red square'), image_doc()]), {}
    )
    assert docs[0].caption == 'a red square'
    assert docs[1].caption == only_caption(captioner, image_doc())


def test_parameters_lists_the_keys_and_the_model(captioner, tiny_blip_dir):
    (schema,) = captioner.describe_parameters(DocList[ParameterSchema]())
    assert schema.keys == ['caption_prefix', 'max_new_tokens', 'num_beams']
    assert schema.model == tiny_blip_dir
    assert schema.json_schema['properties']['max_new_tokens']['default'] == 12  # the configured default


def test_tiny_builds_the_tiny_model_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_CACHE', str(tmp_path))
    tiny = CaptionExecutor(model='tiny', device='cpu')
    (schema,) = tiny.describe_parameters(DocList[ParameterSchema]())
    assert schema.model == 'tiny'
    assert only_caption(tiny, image_doc(), max_new_tokens=4)


def test_an_unknown_setting_stops_the_start(tiny_blip_dir):
    with pytest.raises(TypeError, match='max_new_tokens'):
        CaptionExecutor(model=tiny_blip_dir, device='cpu', max_new_tokens=10)


def test_an_invalid_request_default_stops_the_start(tiny_blip_dir):
    with pytest.raises(ValueError, match='num_beams'):
        CaptionExecutor(model=tiny_blip_dir, device='cpu', request_defaults={'num_beams': 0})


def test_a_served_executor_captions_over_grpc(tiny_blip_dir):
    from jina import Deployment

    from conftest import free_port

    settings = {'model': tiny_blip_dir, 'device': 'cpu', 'request_defaults': {'max_new_tokens': 8}}
    with Deployment(uses=CaptionExecutor, uses_with=settings, port=free_port(), include_gateway=False) as served:
        docs = DocList[PromptDoc]([image_doc(), PromptDoc(image=b'junk'), PromptDoc()])
        captioned = served.post('/caption', inputs=docs, parameters={'caption_prefix': 'a photo of'},
                                return_type=DocList[PromptDoc])
    assert captioned[0].error == '' and captioned[0].caption.startswith('a photo of')
    assert captioned[1].error and captioned[2].error == NO_IMAGE


def test_a_lazy_model_loads_at_the_first_request_and_a_missing_one_fails_only_its_documents(tiny_blip_dir, tmp_path):
    lazy = CaptionExecutor(model=tiny_blip_dir, device='cpu', load_at_start=False)
    assert only_caption(lazy, image_doc())  # loaded now, and captions like an eager one

    missing = CaptionExecutor(model=str(tmp_path / 'no-such-model'), device='cpu', load_at_start=False)
    [doc] = caption(missing, image_doc())
    assert doc.error.startswith('the captioning model could not be loaded: ') and not doc.caption
    assert doc.error_code == 'model_unavailable'


def test_the_image_limits_are_the_executor_s_settings(tiny_blip_dir):
    strict = CaptionExecutor(model=tiny_blip_dir, device='cpu', max_image_pixels=100)
    [doc] = caption(strict, image_doc())  # 40 x 30 = 1200 pixels
    assert doc.error.startswith('image too large: it declares 40 x 30 pixels, the limit is 100 pixels (max_image_pixels)')
    assert (doc.error_code, doc.error_param) == ('input_too_large', 'image')


@pytest.mark.slow  # 24 big images decoded: about 8 s
def test_a_request_of_big_images_is_decoded_a_batch_at_a_time_and_shrunk(tiny_blip_dir):
    # Eight 6000 x 6000 single-colour PNGs (120 kB each, 108 MB each once decoded), in batches of two.
    # Measured: 1.5 GB when all were decoded before the first batch (issue 21), 138 MB now.
    settings = {'model': tiny_blip_dir, 'device': 'cpu', 'batch_size': 2, 'request_defaults': {'max_new_tokens': 4}}
    grown_mb, errors = peak_growth_of_big_images(CaptionExecutor, 'caption', settings, {}, count=8)
    assert errors == [''] * 8
    assert grown_mb < 400


def test_an_image_past_max_request_pixels_gets_the_documented_error_and_the_others_their_captions(tiny_blip_dir):
    frugal = CaptionExecutor(model=tiny_blip_dir, device='cpu', max_request_pixels=2500, request_defaults={'max_new_tokens': 4})
    docs = caption(frugal, image_doc('red'), image_doc('blue'), image_doc('green'))  # 40 x 30 = 1200 pixels each
    assert [bool(doc.caption) for doc in docs] == [True, True, False]
    assert docs[2].error == (
        'too many image pixels in one request: this image decodes to 40 x 30 pixels, 2400 were decoded before it, '
        'the limit is 2500 pixels per request (max_request_pixels); send it in another request'
    )
