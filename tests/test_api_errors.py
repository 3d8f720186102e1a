"""Each error code a client can get, provoked in-process (tests/gateway_app.py) against a scripted Flow
(tests/fake_flow.py), answered with the HTTP status and OpenAI type of its row in s2i/contracts/errors.py
and with the code itself as the body's ``code``. The executors' codes come from documents the fake Flow
fails as an executor would (``error``, ``error_code``, ``error_param``): the gateway answers by the code,
never by the message. A code added to ErrorCode fails test_every_code_is_provoked_here_or_listed_with_why
until it has a provocation here."""

import json

import pytest

from fake_flow import (
    AUDIO, IMAGE_REQUEST, GENERATOR, TEXT_JOB, TRANSCRIBER, Failure, FakeFlow, audio_form, image_form, job_events, stored_failure,
)
from gateway.jobs.runner import JobLimits
from gateway.limits import RequestLimits
from gateway_app import gateway_client
from image_files import png_bytes
from s2i.contracts.errors import ERRORS, ErrorCode

TOKEN = 'errors-token'
OTHER_SITE = 'https://evil.example'
NO_SUCH_JOB = '0' * 32


def answer(send, flow=None, **harness):
    """What ``send(client)`` gets from a gateway over ``flow`` (a plain FakeFlow by default) set up with ``harness``."""
    with gateway_client(flow=flow or FakeFlow(), **harness) as client:
        return send(client)


def scripted(send, code: ErrorCode, param: str = ''):
    """A provocation: ``send`` to a Flow whose executors fail each document with ``code`` and ``param``."""
    return lambda: answer(send, FakeFlow(failure=Failure(code, param)))


# What a client sends

def generate(**fields):
    return lambda client: client.post('/v1/images/generations', json={**IMAGE_REQUEST, **fields})


def transcribe(**fields):
    return lambda client: client.post('/v1/audio/transcriptions', **audio_form(**fields))


def translate(client):
    return client.post('/v1/audio/translations', **audio_form())


def edit(client):
    return client.post('/v1/images/edits', **image_form(png_bytes(size=(64, 64)), prompt='a woodcut'))


def edit_with_a_mask(client):
    files = {'image': ('photo.png', png_bytes(size=(64, 64))), 'mask': ('mask.png', png_bytes(size=(64, 64)))}
    return client.post('/v1/images/edits', files=files, data={'prompt': 'a woodcut'})


def malformed_json(client):
    return client.post('/v1/images/generations', content=b'{"prompt": ', headers={'content-type': 'application/json'})


def cancelled_twice(client):
    job = client.post('/v1/jobs', json=TEXT_JOB).json()
    client.delete(f'/v1/jobs/{job["id"]}')
    job_events(client, job['id'])  # until it has ended
    return client.delete(f'/v1/jobs/{job["id"]}')


def one_job_too_many(client):
    client.post('/v1/jobs', json=TEXT_JOB)
    return client.post('/v1/jobs', json=TEXT_JOB)


# Each code a client gets as an HTTP answer, and how to get it
PROVOKED = {
    ErrorCode.INVALID_API_KEY: lambda: answer(generate(), token=TOKEN),
    ErrorCode.ORIGIN_NOT_ALLOWED: lambda: answer(lambda client: client.post('/v1/images/generations', json=IMAGE_REQUEST,
                                                                             headers={'origin': OTHER_SITE})),
    ErrorCode.INVALID_REQUEST: lambda: answer(malformed_json),
    ErrorCode.INVALID_PARAMETER: lambda: answer(generate(steps=0)),
    ErrorCode.UNKNOWN_PARAMETER: lambda: answer(generate(stepz=3)),
    ErrorCode.DUPLICATE_FIELD: lambda: answer(lambda client: client.post('/v1/jobs', files={'file': ('a.wav', AUDIO)},
                                                                         data={'n': ['1', '2']})),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: lambda: answer(lambda client: client.post('/v1/jobs', content=json.dumps(TEXT_JOB),
                                                                                headers={'content-type': 'text/plain'})),
    ErrorCode.INPUT_TOO_LARGE: lambda: answer(generate(prompt='x' * 2000), request_limits=RequestLimits(max_request_bytes=1000)),
    ErrorCode.NOT_FOUND: lambda: answer(lambda client: client.get(f'/v1/jobs/{NO_SUCH_JOB}')),
    ErrorCode.METHOD_NOT_ALLOWED: lambda: answer(lambda client: client.put('/v1/models')),
    ErrorCode.MODEL_NOT_FOUND: lambda: answer(transcribe(model='gpt-4o-transcribe')),
    ErrorCode.UNSUPPORTED: lambda: answer(edit_with_a_mask),
    ErrorCode.RATE_LIMITED: lambda: answer(one_job_too_many, FakeFlow(hold_generation=True), limits=JobLimits(max_active_jobs_per_key=1)),
    ErrorCode.MISSING_INPUT: scripted(generate(), ErrorCode.MISSING_INPUT, 'prompt'),
    ErrorCode.AUDIO_UNREADABLE: scripted(transcribe(), ErrorCode.AUDIO_UNREADABLE, 'file'),
    ErrorCode.AUDIO_TOO_LONG: scripted(transcribe(), ErrorCode.AUDIO_TOO_LONG, 'file'),
    ErrorCode.UNKNOWN_LANGUAGE: scripted(transcribe(language='xx'), ErrorCode.UNKNOWN_LANGUAGE, 'language'),
    ErrorCode.NO_SPEECH: scripted(transcribe(), ErrorCode.NO_SPEECH, 'file'),
    ErrorCode.LANGUAGE_UNCERTAIN: scripted(transcribe(), ErrorCode.LANGUAGE_UNCERTAIN, 'language'),
    ErrorCode.CANNOT_TRANSLATE: scripted(translate, ErrorCode.CANNOT_TRANSLATE, 'model'),
    ErrorCode.IMAGE_UNREADABLE: scripted(edit, ErrorCode.IMAGE_UNREADABLE, 'image'),
    ErrorCode.PROMPT_TOO_LONG: scripted(generate(), ErrorCode.PROMPT_TOO_LONG, 'prompt'),
    ErrorCode.EXECUTOR_UNAVAILABLE: lambda: answer(generate(), FakeFlow(unreachable=GENERATOR)),
    ErrorCode.MODEL_UNAVAILABLE: scripted(generate(), ErrorCode.MODEL_UNAVAILABLE),
    ErrorCode.OUT_OF_MEMORY: scripted(generate(), ErrorCode.OUT_OF_MEMORY),
    ErrorCode.INTERRUPTED: scripted(generate(), ErrorCode.INTERRUPTED),
    ErrorCode.STORE_FAILED: lambda: answer(generate(response_format='url'), FakeFlow(failure=stored_failure())),
    ErrorCode.CANCELLED: scripted(generate(), ErrorCode.CANCELLED),  # the executor's stream was closed
    ErrorCode.JOB_ENDED: lambda: answer(cancelled_twice, FakeFlow(hold_generation=True)),
    ErrorCode.INTERNAL_ERROR: scripted(generate(), ErrorCode.INTERNAL_ERROR),
}
# Codes a client reads in a job's record and its failed event, never as an HTTP status (their tests are below).
IN_JOB_RECORDS_ONLY = {ErrorCode.JOB_TIMEOUT}
# Codes no HTTP client can get, each with why. None today: a code only gRPC or the CLI answers goes here.
NO_HTTP_CLIENT_GETS = set()


@pytest.mark.parametrize('code', PROVOKED, ids=lambda code: code.value)
def test_each_code_is_answered_with_its_status_type_and_code(code):
    answered = PROVOKED[code]()
    assert answered.status_code == ERRORS[code].http_status, answered.text
    error = answered.json()['error']
    assert (error['type'], error['code']) == (ERRORS[code].openai_type, code.value)
    assert error['message']


def test_every_code_is_provoked_here_or_listed_with_why():
    groups = [set(PROVOKED), IN_JOB_RECORDS_ONLY, NO_HTTP_CLIENT_GETS]
    assert set.union(*groups) == set(ErrorCode)
    assert sum(map(len, groups)) == len(ErrorCode)  # each code in one group


@pytest.mark.parametrize('send, failure, param', [
    (transcribe(language='xx'), Failure(ErrorCode.UNKNOWN_LANGUAGE, 'language'), 'language'),
    (generate(negative_prompt='blur'), Failure(ErrorCode.PROMPT_TOO_LONG, 'negative_prompt'), 'negative_prompt'),
    (generate(), Failure(ErrorCode.INVALID_PARAMETER, 'width'), 'size'),  # the executor's key, named by the field sent
    (generate(n=2), Failure(ErrorCode.INVALID_PARAMETER, 'num_images'), 'n'),
])
def test_a_failed_documents_param_names_the_field_the_client_sent(send, failure, param):
    error = answer(send, FakeFlow(failure=failure)).json()['error']
    assert (error['code'], error['param']) == (failure.code.value, param)


@pytest.mark.parametrize('send, code, message', [
    (transcribe(), ErrorCode.OUT_OF_MEMORY, 'no speech detected'),  # another code's wording changes nothing
    (transcribe(), ErrorCode.NO_SPEECH, 'the GPU ran out of memory'),
    (generate(), ErrorCode.MODEL_UNAVAILABLE, 'invalid parameters: steps must be at least 1'),
])
def test_a_failed_documents_code_decides_the_answer_not_its_message(send, code, message):
    answered = answer(send, FakeFlow(failure=Failure(code, message=message)))
    assert (answered.status_code, answered.json()['error']['code']) == (ERRORS[code].http_status, code.value)
    assert message in answered.json()['error']['message']  # the executor's words reach the client


def test_a_failure_without_a_code_from_an_older_executor_is_an_internal_error():
    answered = answer(generate(), FakeFlow(failure=Failure(None, message='something broke')))
    assert (answered.status_code, answered.json()['error']['code']) == (500, ErrorCode.INTERNAL_ERROR.value)


def test_images_made_but_not_stored_still_come_back_as_b64_json():
    answered = answer(generate(n=2), FakeFlow(failure=stored_failure()))
    assert answered.status_code == 200, answered.text
    assert [bool(item['b64_json']) for item in answered.json()['data']] == [True, True]


def test_a_refused_request_never_reaches_the_flow():
    flow = FakeFlow()
    for provocation in (generate(steps=0), generate(stepz=3), transcribe(model='gpt-4o-transcribe'), edit_with_a_mask):
        assert answer(provocation, flow).status_code >= 400
    assert flow.sent == []


# --- Codes in a job's failed event and record --------------------------------------------------------

def test_a_job_running_past_max_job_seconds_fails_with_job_timeout():
    with gateway_client(flow=FakeFlow(hold_generation=True), limits=JobLimits(max_job_seconds=0.05)) as client:
        job = client.post('/v1/jobs', json=TEXT_JOB).json()
        last = job_events(client, job['id'])[-1]
        record = client.get(f'/v1/jobs/{job["id"]}').json()
    assert (last['kind'], last['error_code']) == ('failed', ErrorCode.JOB_TIMEOUT.value)
    assert (record['status'], record['error_code']) == ('failed', ErrorCode.JOB_TIMEOUT.value)
    assert 'max_job_seconds' in record['error']  # the message names the setting to raise


@pytest.mark.parametrize('failure', [
    Failure(ErrorCode.NO_SPEECH, 'file', 'no speech: the clip is silent', executor=TRANSCRIBER),
    Failure(ErrorCode.OUT_OF_MEMORY, message='the GPU ran out of memory', executor=GENERATOR),
], ids=lambda failure: failure.code.value)
def test_a_jobs_failed_document_gives_the_job_its_code_and_message(failure):
    with gateway_client(flow=FakeFlow(failure=failure)) as client:
        job = client.post('/v1/jobs', files={'file': ('speech.wav', AUDIO)}, data={'size': '64x64', 'steps': '1'}).json()
        last = job_events(client, job['id'])[-1]
        record = client.get(f'/v1/jobs/{job["id"]}').json()
    assert (last['kind'], last['error_code'], last['error']) == ('failed', failure.code.value, failure.message)
    assert (record['status'], record['error_code'], record['error']) == ('failed', failure.code.value, failure.message)


def test_a_job_whose_images_were_not_stored_succeeds_with_them_and_the_stores_code():
    with gateway_client(flow=FakeFlow(failure=stored_failure())) as client:
        job = client.post('/v1/jobs', json={**TEXT_JOB, 'n': 2}).json()
        assert job_events(client, job['id'])[-1]['kind'] == 'succeeded'
        record = client.get(f'/v1/jobs/{job["id"]}').json()
    assert [bool(image['b64_json']) for image in record['images']] == [True, True]
    assert record['store_error_code'] == ErrorCode.STORE_FAILED.value
