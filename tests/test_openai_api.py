"""The OpenAI-compatible API (gateway/routes/audio.py, images.py, models.py) through the official ``openai`` SDK, against
the real service (tests/front_door.py): bundled Whisper base, tiny random-weight Stable Diffusion."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from s2i.encoding import PARAMETERS_CHUNK
from tests.conftest import DATA, GERMAN_CLIP
from tests.front_door import SECOND_KEY, TOKEN

SILENCE = DATA / 'silence_3s.wav'
FAST = {'steps': 2}  # the tiny model draws noise either way
# openai 3.x marks audio.translations.create deprecated (OpenAI's newer models do not translate); whisper-1 still does.
SDK_DEPRECATES_TRANSLATIONS = pytest.mark.filterwarnings('ignore:deprecated:DeprecationWarning')


@pytest.fixture(scope='module')
def client(front_door) -> openai.OpenAI:
    return openai.OpenAI(base_url=front_door.api, api_key=TOKEN, max_retries=0)


def png_of(entry) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(entry.b64_json)))


def generate(client, **kwargs):
    extra_body = {**FAST, **kwargs.pop('extra_body', {})}
    return client.images.generate(**{'prompt': 'a red fox in the snow', 'size': '64x64', **kwargs}, extra_body=extra_body)


# Audio

@SDK_DEPRECATES_TRANSLATIONS
def test_translation_of_german_speech_is_english(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        text = client.audio.translations.create(model='whisper-1', file=audio).text.lower()
    assert 'snow' in text and 'sun' in text and 'schnee' not in text  # base hears "a small one", not "a small dog"


def test_transcription_keeps_the_spoken_language(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        text = client.audio.transcriptions.create(model='whisper-1', file=audio).text
    assert 'Hund' in text and 'Schnee' in text


def test_verbose_json_gives_language_duration_and_segments(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        answer = client.audio.transcriptions.create(model='whisper-1', file=audio, response_format='verbose_json')
    assert answer.language == 'de'
    assert answer.duration > 0
    assert answer.segments and 'Hund' in ''.join(segment.text for segment in answer.segments)
    assert all(0 <= segment.start < segment.end <= answer.duration + 0.5 for segment in answer.segments)


@SDK_DEPRECATES_TRANSLATIONS
def test_translation_verbose_json_is_one_english_segment_over_the_speech(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        answer = client.audio.translations.create(model='whisper-1', file=audio, response_format='verbose_json')
    assert answer.language == 'en'
    [segment] = answer.segments
    assert segment.text == answer.text and 'snow' in answer.text.lower()
    assert 0 <= segment.start < segment.end <= answer.duration + 0.5


def test_language_hint_is_taken(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        answer = client.audio.transcriptions.create(model='whisper-1', file=audio, language='de', response_format='verbose_json')
    assert answer.language == 'de' and 'Hund' in answer.text


def test_text_format_is_plain_text(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        text = client.audio.transcriptions.create(model='whisper-1', file=audio, response_format='text')
    assert isinstance(text, str) and 'Hund' in text and not text.lstrip().startswith('{')


def test_srt_format_has_numbered_cues_with_comma_times(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        srt = client.audio.transcriptions.create(model='whisper-1', file=audio, response_format='srt')
    lines = srt.splitlines()
    assert lines[0] == '1'
    assert lines[1].startswith('00:00:') and ' --> 00:00:' in lines[1] and ',' in lines[1]
    assert 'Hund' in srt


def test_vtt_format_starts_with_webvtt_and_uses_dot_times(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        vtt = client.audio.transcriptions.create(model='whisper-1', file=audio, response_format='vtt')
    lines = vtt.splitlines()
    assert lines[0] == 'WEBVTT'
    assert lines[2].startswith('00:00:') and ' --> ' in lines[2] and '.' in lines[2]
    assert 'Hund' in vtt


def test_prompt_is_accepted_and_changes_nothing(client):
    with open(GERMAN_CLIP, 'rb') as audio:
        text = client.audio.transcriptions.create(model='whisper-1', file=audio, prompt='Schneehund').text
    assert 'Hund' in text


def test_unknown_response_format_is_refused(client):
    with open(GERMAN_CLIP, 'rb') as audio, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model='whisper-1', file=audio, response_format='xml')
    assert refused.value.param == 'response_format'


def test_silence_is_no_speech(client):
    with open(SILENCE, 'rb') as audio, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model='whisper-1', file=audio)
    assert refused.value.code == 'no_speech'


def test_text_file_is_unreadable_audio(client):
    with open(DATA / 'not_audio.wav', 'rb') as audio, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model='whisper-1', file=audio)
    assert refused.value.code == 'audio_unreadable' and 'could not decode audio' in refused.value.message


def test_temperature_other_than_0_is_refused_with_why(client):
    with open(GERMAN_CLIP, 'rb') as audio, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model='whisper-1', file=audio, temperature=0.5)
    assert refused.value.param == 'temperature' and 'beam search' in refused.value.message


def test_word_timestamps_are_refused(client):
    with open(GERMAN_CLIP, 'rb') as audio, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model='whisper-1', file=audio, response_format='verbose_json',
                                           timestamp_granularities=['word'])
    assert refused.value.param == 'timestamp_granularities[]'


def test_unknown_audio_model_is_not_found(client):
    with open(GERMAN_CLIP, 'rb') as audio, pytest.raises(openai.NotFoundError) as refused:
        client.audio.transcriptions.create(model='gpt-4o-transcribe', file=audio)
    assert refused.value.code == 'model_not_found' and 'whisper-1' in refused.value.message


@SDK_DEPRECATES_TRANSLATIONS
def test_unknown_audio_field_is_refused(client):
    with open(GERMAN_CLIP, 'rb') as audio, pytest.raises(openai.BadRequestError) as refused:
        client.audio.translations.create(model='whisper-1', file=audio, extra_body={'language': 'de'})
    assert refused.value.param == 'language'


# Images

def test_images_come_as_pngs_with_their_parameters(client):
    answer = generate(client, n=2, size='256x256', response_format='b64_json', extra_body={'seed': 7})
    assert answer.created > 0 and len(answer.data) == 2
    for entry, seed in zip(answer.data, (7, 8)):
        image = png_of(entry)
        assert image.format == 'PNG' and image.size == (256, 256)
        recorded = json.loads(image.text[PARAMETERS_CHUNK])
        assert (recorded['seed'], recorded['steps'], recorded['width'], recorded['height']) == (seed, 2, 256, 256)
        echoed = entry.model_dump()
        assert (echoed['seed'], echoed['steps'], echoed['width'], echoed['height']) == (seed, 2, 256, 256)
        assert entry.revised_prompt == 'a red fox in the snow'


def test_same_seed_draws_the_same_pixels(client):
    first, second = (png_of(generate(client, extra_body={'seed': 3}).data[0]) for _ in range(2))
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_extra_parameters_are_echoed(client):
    extras = {'seed': 1, 'guidance_scale': 3.0, 'negative_prompt': 'blurry', 'scheduler': 'euler'}
    [entry] = generate(client, extra_body=extras).data
    echoed = entry.model_dump()
    assert {key: echoed[key] for key in extras} == extras


def test_url_format_gives_where_the_image_is_stored(client):
    [entry] = generate(client, response_format='url', extra_body={'seed': 5}).data
    assert entry.b64_json is None and Path(entry.url).read_bytes().startswith(b'\x89PNG')


@pytest.mark.parametrize('size', ['12x', 'x64', '64', 'big', '64x64x64'])
def test_malformed_size_is_refused(client, size):
    with pytest.raises(openai.BadRequestError) as refused:
        generate(client, size=size)
    assert refused.value.param == 'size'


def test_size_the_executor_refuses_names_size(client):
    with pytest.raises(openai.BadRequestError) as refused:
        generate(client, size='100x100')
    assert refused.value.param == 'size' and 'multiple of 8' in refused.value.message


def test_out_of_range_steps_are_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        generate(client, extra_body={'steps': 0})
    assert refused.value.param == 'steps'


def test_unknown_extra_field_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as refused:
        generate(client, extra_body={'cfg': 3})
    assert refused.value.param == 'cfg' and "'cfg'" in refused.value.message


def test_unknown_image_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as refused:
        generate(client, model='dall-e-3')
    assert refused.value.code == 'model_not_found'


def test_sd_model_id_is_accepted(client, tiny_sd_dir):
    assert len(generate(client, model=tiny_sd_dir).data) == 1


# Models and keys

def test_models_list_whisper_and_the_sd_model(client, tiny_sd_dir):
    ids = {model.id for model in client.models.list()}
    assert {'whisper-1', tiny_sd_dir} <= ids


def test_model_by_id(client, tiny_sd_dir):
    assert client.models.retrieve('whisper-1').owned_by == 'whisper'
    assert client.models.retrieve(tiny_sd_dir).id == tiny_sd_dir
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve('dall-e-3')


def test_wrong_key_is_refused(front_door):
    wrong = openai.OpenAI(base_url=front_door.api, api_key='not-the-key', max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401


def test_second_key_works(front_door):
    second = openai.OpenAI(base_url=front_door.api, api_key=SECOND_KEY, max_retries=0)
    assert 'whisper-1' in {model.id for model in second.models.list()}
