"""The limits and the validation every route shares, in-process (tests/gateway_app.py, tests/fake_flow.py):
bodies over the byte limit, audio over Whisper's limit, the media types a job takes,
a form field sent twice, the active-job limits, and one refusal for a bad generation field whichever route
carries it. Each refusal names its field or limit, and comes before the Flow sees anything. The document
count (max_documents) is checked on Jina's own routes, which only the real Flow serves: test_gateway_limits.py."""

import pytest

from executors.whisper.audio import AudioPolicy
from fake_flow import AUDIO, TEXT_JOB, FakeFlow, image_form
from gateway.jobs.runner import JobLimits
from gateway.limits import RequestLimits
from gateway_app import gateway_client
from image_files import png_bytes

MAX_BYTES = 20_000
SMALL_BODIES = RequestLimits(max_request_bytes=MAX_BYTES)
KEYS = 'limits-key,limits-second-key'


def error_of(answer) -> dict:
    return answer.json()['error']


def jobs_listed(client) -> list:
    return client.get('/v1/jobs', headers=bearer()).json()['data']


def bearer(key: str = 'limits-key') -> dict:
    return {'authorization': f'Bearer {key}'}


def audio_of(size: int, **fields):
    return lambda: {'files': {'file': ('speech.wav', b'\0' * size)}, 'data': {'model': 'whisper-1', **fields}}


# Every POST route, with a request of about ``size`` bytes
BODIES = {
    '/v1/jobs': lambda size: {'files': {'file': ('speech.wav', b'\0' * size)}},
    '/v1/audio/transcriptions': lambda size: audio_of(size)(),
    '/v1/audio/translations': lambda size: audio_of(size)(),
    '/v1/images/generations': lambda size: {'json': {'prompt': 'x' * size}},
    '/v1/images/edits': lambda size: image_form(b'\0' * size, prompt='a woodcut'),
    '/v1/images/variations': lambda size: image_form(b'\0' * size),
}


# --- Bytes and documents ---------------------------------------------------------------------------------

@pytest.mark.parametrize('route', BODIES)
def test_a_body_over_the_byte_limit_is_refused_before_the_flow_sees_it(route):
    flow = FakeFlow()
    with gateway_client(flow=flow, request_limits=SMALL_BODIES) as client:
        answer = client.post(route, **BODIES[route](MAX_BYTES + 1000))
        assert answer.status_code == 413, answer.text
        assert error_of(answer)['code'] == 'input_too_large'
        assert str(MAX_BYTES) in error_of(answer)['message']  # it names the limit
        assert (flow.sent, jobs_listed(client)) == ([], [])


@pytest.mark.parametrize('route', BODIES)
def test_a_streamed_body_over_the_byte_limit_is_refused_as_it_arrives(route):
    def chunks():  # no Content-Length: only counting what arrives finds it too large
        for _ in range(MAX_BYTES // 1000 + 10):
            yield b'x' * 1000

    flow = FakeFlow()
    media_type = 'application/json' if route == '/v1/images/generations' else 'multipart/form-data; boundary=b'
    with gateway_client(flow=flow, request_limits=SMALL_BODIES) as client:
        answer = client.post(route, content=chunks(), headers={'content-type': media_type})
        assert answer.status_code == 413, answer.text
        assert error_of(answer)['code'] == 'input_too_large'
        assert flow.sent == []


def test_job_audio_over_whispers_limit_is_refused_at_submission():
    limit = AudioPolicy.max_bytes
    with gateway_client() as client:
        answer = client.post('/v1/jobs', files={'file': ('big.wav', b'\0' * (limit + 1))})
        assert answer.status_code == 413, answer.text
        assert (error_of(answer)['code'], error_of(answer)['param']) == ('input_too_large', 'file')
        assert jobs_listed(client) == []


# --- What a request must look like ----------------------------------------------------------------------

@pytest.mark.parametrize('content_type', ['text/plain', None, 'application/octet-stream', 'application/xml'])
def test_a_job_is_json_a_form_or_multipart_and_nothing_else(content_type):
    headers = {'content-type': content_type} if content_type else {}
    with gateway_client() as client:
        answer = client.post('/v1/jobs', content=b'{"prompt": "a red fox"}', headers=headers)
        assert answer.status_code == 415, answer.text
        assert error_of(answer)['code'] == 'unsupported_media_type'
        assert jobs_listed(client) == []
        ok = client.post('/v1/jobs', content=b'{"prompt": "a red fox"}', headers={'content-type': 'application/json; charset=utf-8'})
        assert ok.status_code == 202, ok.text


PNG = png_bytes(size=(64, 64))
TWICE = {
    'job n': ('/v1/jobs', {'files': {'file': ('a.wav', AUDIO)}, 'data': {'n': ['1', '2']}}, 'n'),
    'job file': ('/v1/jobs', {'files': [('file', ('a.wav', AUDIO)), ('file', ('b.wav', AUDIO))]}, 'file'),
    'transcription language': ('/v1/audio/transcriptions', audio_of(len(AUDIO), language=['en', 'de'])(), 'language'),
    'translation model': ('/v1/audio/translations', audio_of(len(AUDIO), model=['whisper-1', 'whisper-1'])(), 'model'),
    'edit prompt': ('/v1/images/edits', image_form(PNG, prompt=['a woodcut', 'an etching']), 'prompt'),
    'variation image': ('/v1/images/variations', {'files': [('image', ('a.png', PNG)), ('image', ('b.png', PNG))]}, 'image'),
}


@pytest.mark.parametrize('case', TWICE)
def test_a_form_field_sent_twice_is_refused_not_one_of_its_values_chosen(case):
    route, request, field = TWICE[case]
    flow = FakeFlow()
    with gateway_client(flow=flow) as client:
        answer = client.post(route, **request)
        assert answer.status_code == 400, answer.text
        assert (error_of(answer)['code'], error_of(answer)['param']) == ('duplicate_field', field)
        assert (flow.sent, jobs_listed(client)) == ([], [])


# --- One refusal for a generation field, whichever route carries it --------------------------------------

GENERATION_ROUTES = {'/v1/jobs': 202, '/v1/images/generations': 200}
REQUEST = {'prompt': 'a red fox', 'size': '64x64', 'steps': 2}
REFUSED = [
    ('steps', True),  # a JSON boolean is not a number of steps
    ('seed', '12'),  # nor is a JSON string a seed
    ('n', True),
    ('guidance_scale', '7.5'),
    ('steps', 2.5),
    ('steps', 0),
    ('size', '64x60'),  # the executor's height, named by the field the client sent
    ('scheduler', 'fastest'),
]


@pytest.mark.parametrize('route', GENERATION_ROUTES)
@pytest.mark.parametrize('field, value', REFUSED)
def test_a_bad_generation_field_is_refused_alike_on_every_route(route, field, value):
    flow = FakeFlow()
    with gateway_client(flow=flow) as client:
        answer = client.post(route, json={**REQUEST, field: value})
        assert answer.status_code == 400, answer.text
        assert (error_of(answer)['code'], error_of(answer)['param']) == ('invalid_parameter', field)
        assert (flow.sent, jobs_listed(client)) == ([], [])


@pytest.mark.parametrize('route', GENERATION_ROUTES)
def test_an_unknown_field_is_refused_alike_on_every_route(route):
    with gateway_client() as client:
        answer = client.post(route, json={**REQUEST, 'stepz': 3})
        assert answer.status_code == 400, answer.text
        assert (error_of(answer)['code'], error_of(answer)['param']) == ('unknown_parameter', 'stepz')


@pytest.mark.parametrize('route', GENERATION_ROUTES)
def test_good_generation_fields_are_taken_alike_on_every_route(route):
    fields = {'n': 2, 'seed': 12, 'steps': 3.0, 'guidance_scale': 7, 'scheduler': 'ddim', 'negative_prompt': 'blur'}
    with gateway_client(flow=FakeFlow(hold_generation=True)) as client:
        answer = client.post(route, json={**REQUEST, **fields})
        assert answer.status_code == GENERATION_ROUTES[route], answer.text


# --- Active jobs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('limits, second_key', [
    (JobLimits(max_active_jobs_per_key=1), 'limits-key'),
    (JobLimits(max_active_jobs=1), 'limits-second-key'),  # the service's limit holds across keys
])
def test_a_job_over_an_active_limit_is_a_429_that_says_when_to_retry(limits, second_key):
    with gateway_client(token=KEYS, flow=FakeFlow(hold_generation=True), limits=limits) as client:
        assert client.post('/v1/jobs', json=TEXT_JOB, headers=bearer()).status_code == 202
        answer = client.post('/v1/jobs', json=TEXT_JOB, headers=bearer(second_key))
        assert answer.status_code == 429, answer.text
        assert error_of(answer)['code'] == 'rate_limited'
        assert int(answer.headers['retry-after']) >= 1
