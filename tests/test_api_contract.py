"""The /v1 contract in-process (tests/gateway_app.py) against a scripted Flow (tests/fake_flow.py): what each
route answers a valid request, and what it sends to which executor with which parameters. The real-Flow
tests (test_openai_api.py, test_jobs.py) keep what crosses processes."""

import base64
import io

import pytest
from PIL import Image

from fake_flow import (
    AUDIO, ENGLISH, FIRST_SEED, GENERATOR, GERMAN, INTERROGATED, MODELS, STORED_IN, TEXT_JOB, TRANSCRIBER, WS, FakeFlow,
    audio_form, image_form, job_events,
)
from gateway_app import gateway_client
from image_files import png_bytes

ACTIVE = {'queued', 'running'}


@pytest.fixture
def flow():
    return FakeFlow()


@pytest.fixture
def client(flow):
    with gateway_client(flow=flow) as client:
        yield client


@pytest.fixture
def jobs():
    """A gateway whose jobs, should they start, stay running until cancelled: a job's state is the test's."""
    with gateway_client(flow=FakeFlow(hold_generation=True)) as client:
        yield client


def decoded(b64_json: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64_json)))
    assert image.format == 'PNG'
    return image


# --- Audio ---------------------------------------------------------------------------------------------

SEGMENTS = [{'id': i, 'start': start, 'end': end, 'text': text} for i, (start, end, text) in enumerate(ENGLISH.segments)]
SRT = '1\n00:00:00,000 --> 00:00:01,500\nA red fox runs\n\n2\n00:00:01,500 --> 00:00:03,250\nthrough the snow.\n'
VTT = 'WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nA red fox runs\n\n00:00:01.500 --> 00:00:03.250\nthrough the snow.\n'
VERBOSE = {'task': 'transcribe', 'language': 'en', 'duration': 3.25, 'text': ENGLISH.transcript, 'segments': SEGMENTS}


@pytest.mark.parametrize('response_format, media_type, expected', [
    ('json', 'application/json', {'text': ENGLISH.transcript}),
    ('text', 'text/plain', ENGLISH.transcript),
    ('srt', 'text/plain', SRT),
    ('vtt', 'text/vtt', VTT),
    ('verbose_json', 'application/json', VERBOSE),
])
def test_a_transcription_answers_the_transcript_in_each_format(client, response_format, media_type, expected):
    answer = client.post('/v1/audio/transcriptions', **audio_form(response_format=response_format))
    assert answer.status_code == 200, answer.text
    assert answer.headers['content-type'].split(';')[0] == media_type
    assert (answer.json() if media_type == 'application/json' else answer.text) == expected


def test_a_transcription_sends_the_audio_and_its_language_hint_to_whisper_alone(client, flow):
    answer = client.post('/v1/audio/transcriptions', **audio_form(language='de', response_format='verbose_json'))
    assert answer.status_code == 200, answer.text
    [sent] = flow.sent
    assert (sent.executor, sent.endpoint, [doc.blob for doc in sent.docs]) == (TRANSCRIBER, '/generate', [AUDIO])
    assert sent.docs[0].language == 'de' or sent.parameters.get('language') == 'de'
    assert answer.json()['language'] == 'de'


def test_a_translation_answers_the_english_text_as_one_segment_over_the_speech():
    with gateway_client(flow=FakeFlow(speech=GERMAN)) as client:
        answer = client.post('/v1/audio/translations', **audio_form(response_format='verbose_json'))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {'task': 'translate', 'language': 'en', 'duration': 4.5, 'text': GERMAN.english,
                                 'segments': [{'id': 0, 'start': 0.0, 'end': 4.5, 'text': GERMAN.english}]}
        assert client.post('/v1/audio/translations', **audio_form()).json() == {'text': GERMAN.english}


def test_audio_routes_take_whisper_by_its_own_model_name_too(client):
    answer = client.post('/v1/audio/transcriptions', **audio_form(model=MODELS[TRANSCRIBER]))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {'text': ENGLISH.transcript}


# --- Images --------------------------------------------------------------------------------------------

def test_a_generation_answers_n_pngs_of_the_asked_size_with_their_parameters(client):
    answer = client.post('/v1/images/generations', json={'prompt': 'a red fox', 'n': 2, 'size': '64x128', 'steps': 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body['created'], int)
    assert [decoded(item['b64_json']).size for item in body['data']] == [(64, 128), (64, 128)]
    assert [item['seed'] for item in body['data']] == [FIRST_SEED, FIRST_SEED + 1]  # image i gets seed + i
    assert all((item['revised_prompt'], item['steps'], item['width'], item['height']) == ('a red fox', 2, 64, 128)
               for item in body['data'])


def test_a_generation_sends_n_size_and_the_extras_as_the_executors_parameters(client, flow):
    extras = {'steps': 3, 'seed': 7, 'guidance_scale': 5.0, 'negative_prompt': 'blur', 'scheduler': 'ddim'}
    answer = client.post('/v1/images/generations', json={'prompt': 'a red fox', 'n': 2, 'size': '64x128', **extras})
    assert answer.status_code == 200, answer.text
    [sent] = flow.sent
    assert (sent.executor, sent.endpoint, [doc.text for doc in sent.docs]) == (None, '/generate', ['a red fox'])
    assert sent.parameters.items() >= {'num_images': 2, 'width': 64, 'height': 128, **extras}.items()
    assert [item['seed'] for item in answer.json()['data']] == [7, 8]


def test_a_generation_in_url_format_answers_where_each_image_is_stored(client, flow):
    answer = client.post('/v1/images/generations', json={'prompt': 'a red fox', 'n': 2, 'size': '64x64', 'response_format': 'url'})
    assert answer.status_code == 200, answer.text
    urls = [item['url'] for item in answer.json()['data']]
    assert [url.startswith(STORED_IN) and url.endswith(f'/{index}.png') for index, url in enumerate(urls)] == [True, True]
    assert all('b64_json' not in item for item in answer.json()['data'])
    assert flow.sent[0].parameters['presign_seconds'] == 3600  # an S3 store's links last an hour, as OpenAI's do


def test_an_edit_redraws_the_image_at_its_own_size_after_the_prompt(client, flow):
    photo = png_bytes(size=(80, 64))
    answer = client.post('/v1/images/edits', **image_form(photo, prompt='in the style of a woodcut', strength='0.5', steps='4'))
    assert answer.status_code == 200, answer.text
    [item] = answer.json()['data']
    assert decoded(item['b64_json']).size == (80, 64)
    assert (item['revised_prompt'], item['strength']) == ('in the style of a woodcut', 0.5)
    [sent] = flow.sent
    assert (sent.endpoint, sent.docs[0].image, sent.docs[0].text) == ('/restyle', photo, 'in the style of a woodcut')
    assert sent.parameters.items() >= {'strength': 0.5, 'steps': 4}.items()


def test_a_variation_redraws_the_image_after_what_the_flow_sees_in_it(client, flow):
    photo = png_bytes(size=(64, 64))
    answer = client.post('/v1/images/variations', **image_form(photo, n='2'))
    assert answer.status_code == 200, answer.text
    assert [item['revised_prompt'] for item in answer.json()['data']] == [INTERROGATED, INTERROGATED]
    assert [sent.endpoint for sent in flow.sent] == ['/interrogate', '/restyle']
    assert (flow.sent[1].docs[0].image, flow.sent[1].docs[0].text) == (photo, INTERROGATED)


# --- Models --------------------------------------------------------------------------------------------

def test_the_model_list_has_whisper_1_and_the_models_the_flow_loaded(client):
    answer = client.get('/v1/models')
    assert answer.status_code == 200, answer.text
    assert answer.json()['object'] == 'list'
    cards = {card['id']: card for card in answer.json()['data']}
    assert {card['object'] for card in cards.values()} == {'model'}
    owners = {model_id: card['owned_by'] for model_id, card in cards.items()}
    assert owners.items() >= {'whisper-1': TRANSCRIBER, MODELS[TRANSCRIBER]: TRANSCRIBER, MODELS[GENERATOR]: GENERATOR}.items()


@pytest.mark.parametrize('model_id, owner', [('whisper-1', TRANSCRIBER), (MODELS[GENERATOR], GENERATOR)])  # the second holds a slash
def test_a_model_is_found_by_its_id(client, model_id, owner):
    answer = client.get(f'/v1/models/{model_id}')
    assert answer.status_code == 200, answer.text
    assert {key: answer.json()[key] for key in ('id', 'object', 'owned_by')} == {'id': model_id, 'object': 'model', 'owned_by': owner}


# --- Jobs ----------------------------------------------------------------------------------------------

def test_a_text_job_is_accepted_at_once_with_where_to_follow_it(jobs):
    answer = jobs.post('/v1/jobs', json=TEXT_JOB)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job['status'] == 'queued'
    assert job['events'] == f'{WS}/v1/jobs/{job["id"]}/events'


def test_an_audio_job_is_accepted_as_a_multipart_form(jobs):
    answer = jobs.post('/v1/jobs', files={'file': ('speech.wav', AUDIO)}, data={'language': 'en', 'size': '64x64', 'steps': '2'})
    assert answer.status_code == 202, answer.text
    record = jobs.get(f'/v1/jobs/{answer.json()["id"]}').json()
    assert (record['input'], record['language']) == ('audio', 'en')
    assert record['parameters'].items() >= {'width': 64, 'height': 64, 'steps': 2}.items()


def test_a_jobs_record_holds_what_was_asked_and_not_its_key(jobs):
    job = jobs.post('/v1/jobs', json={**TEXT_JOB, 'n': 2, 'seed': 5}).json()
    answer = jobs.get(f'/v1/jobs/{job["id"]}')
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert (record['id'], record['prompt'], record['response_format']) == (job['id'], TEXT_JOB['prompt'], 'b64_json')
    assert record['status'] in ACTIVE
    assert record['parameters'].items() >= {'num_images': 2, 'width': 64, 'height': 64, 'steps': 2, 'seed': 5}.items()
    assert 'owner' not in record


def test_the_job_list_is_newest_first_and_takes_a_limit(jobs):
    submitted = [jobs.post('/v1/jobs', json=TEXT_JOB).json()['id'] for _ in range(3)]
    listed = jobs.get('/v1/jobs').json()
    assert listed['object'] == 'list'
    assert [job['id'] for job in listed['data']] == submitted[::-1]
    assert [job['id'] for job in jobs.get('/v1/jobs?limit=2').json()['data']] == submitted[:0:-1]


def test_a_cancelled_job_ends_cancelled_and_its_events_replay_from_any_seq(jobs):
    job = jobs.post('/v1/jobs', json=TEXT_JOB).json()
    answer = jobs.delete(f'/v1/jobs/{job["id"]}')
    assert answer.status_code == 202, answer.text
    assert answer.json()['id'] == job['id'] and answer.json()['status'] in {'cancelled', 'cancelling'}
    events = job_events(jobs, job['id'])
    assert (events[0]['kind'], events[-1]['kind']) == ('queued', 'cancelled')
    assert [event['seq'] for event in events] == list(range(1, len(events) + 1))
    assert {event['job'] for event in events} == {job['id']}
    assert job_events(jobs, job['id'], after=1) == events[1:]  # a client that saw seq 1 misses nothing, sees nothing twice
    assert jobs.get(f'/v1/jobs/{job["id"]}').json()['status'] == 'cancelled'


def test_the_owner_stream_carries_each_new_job_as_it_is_queued(jobs):
    with jobs.websocket_connect(f'{WS}/v1/events') as ws:
        job = jobs.post('/v1/jobs', json=TEXT_JOB).json()
        event = ws.receive_json()
    assert (event['kind'], event['job']) == ('queued', job['id'])


def test_a_text_job_runs_through_the_flow_and_its_events_tell_each_step(client, flow):
    job = client.post('/v1/jobs', json={**TEXT_JOB, 'n': 2, 'steps': 3}).json()
    events = job_events(client, job['id'])
    assert [event['kind'] for event in events] == ['queued', 'started', *['progress'] * 3, 'image', 'image', 'succeeded']
    assert [(event['step'], event['steps']) for event in events if event['kind'] == 'progress'] == [(1, 3), (2, 3), (3, 3)]
    images = [event for event in events if event['kind'] == 'image']
    assert [(image['index'], decoded(image['b64_json']).size) for image in images] == [(0, (64, 64)), (1, (64, 64))]
    [stream] = [sent for sent in flow.sent if sent.endpoint == '/generate_stream']
    assert stream.docs[0].text == TEXT_JOB['prompt']
    assert stream.parameters.items() >= {'num_images': 2, 'steps': 3, 'width': 64, 'height': 64}.items()
    record = client.get(f'/v1/jobs/{job["id"]}').json()
    assert (record['status'], record['error_code']) == ('succeeded', '')
    assert [image['url'].startswith(STORED_IN) for image in record['images']] == [True, True]  # the store kept them


def test_an_audio_job_is_transcribed_before_anything_is_drawn(client, flow):
    job = client.post('/v1/jobs', files={'file': ('speech.wav', AUDIO)}, data={'size': '64x64', 'steps': '1'}).json()
    events = job_events(client, job['id'])
    assert [event['kind'] for event in events] == ['queued', 'started', 'transcribed', 'progress', 'image', 'succeeded']
    heard = events[2]
    assert (heard['language'], heard['transcript'], heard['text']) == ('en', ENGLISH.transcript, ENGLISH.english)
    assert [(sent.executor, sent.endpoint) for sent in flow.sent][:2] == [(TRANSCRIBER, '/generate'), (GENERATOR, '/generate_stream')]
    assert (flow.sent[0].docs[0].blob, flow.sent[1].docs[0].text) == (AUDIO, ENGLISH.english)  # drawn from the English text
    record = client.get(f'/v1/jobs/{job["id"]}').json()
    assert (record['transcript'], record['text'], record['status']) == (ENGLISH.transcript, ENGLISH.english, 'succeeded')


# --- The page ------------------------------------------------------------------------------------------

def test_the_page_gets_each_executors_parameters_from_the_flow(client, flow):
    answer = client.get('/ui/parameters')
    assert answer.status_code == 200, answer.text
    served = {item['executor']: sorted(item['json_schema']['properties']) for item in answer.json()['data']}
    assert served == {schema.executor: schema.keys for schema in client.portal.call(flow.schemas)}
