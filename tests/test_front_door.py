"""The gateway's front door in-process (tests/gateway_app.py): which browser pages may use it, what a job
submission must look like, and the refusals that come before any executor works."""

import json

import pytest
from starlette.websockets import WebSocketDisconnect

from executors.whisper.audio import AudioPolicy
from fake_flow import AUDIO, Failure, FakeFlow, job_events
from gateway.routes.jobs import BAD_REQUEST_CLOSE, TOO_SLOW_CLOSE
from gateway.jobs.store import FOLLOWER_BACKLOG_BYTES
from gateway.limits import RequestLimits
from gateway_app import gateway_client
from s2i.contracts.errors import ErrorCode
from s2i.contracts.events import JOB_EVENT, JobRecord

SELF = 'http://127.0.0.1:8322'  # the test client's own origin: it asks for Host 127.0.0.1:8322
WS = 'ws://127.0.0.1:8322'
OTHER_SITE = 'https://evil.example'
TEXT_JOB = {'prompt': 'a red fox in the snow', 'size': '64x64', 'steps': 1}


@pytest.fixture
def door():
    with gateway_client() as client:  # no token: the default, where only the origin check stands
        yield client


def jobs_listed(client) -> list:
    return client.get('/v1/jobs').json()['data']


# --- Origin: WebSockets --------------------------------------------------------------------------------

def test_a_page_of_another_site_cannot_open_the_events_websocket(door):
    with pytest.raises(WebSocketDisconnect) as refused:
        with door.websocket_connect(WS + '/v1/events', headers={'origin': OTHER_SITE}):
            pass
    assert refused.value.code == 1008


# Host and port decide, not the scheme: behind a TLS proxy the page is https://host while the gateway hears http.
@pytest.mark.parametrize('origin', [SELF, 'http://127.0.0.1:8322/', 'https://127.0.0.1:8322', None])
def test_the_page_itself_and_programs_without_an_origin_open_the_events_websocket(door, origin):
    headers = {'origin': origin} if origin else {}
    with door.websocket_connect(WS + '/v1/events', headers=headers) as ws:
        door.post('/v1/jobs', json=TEXT_JOB)
        assert json.loads(ws.receive_text())['kind'] == 'queued'


@pytest.mark.parametrize('origin', ['null', 'http://127.0.0.1:8323', 'http://localhost:8322', 'http://127.0.0.1.evil.example:8322'])
def test_an_origin_that_differs_in_port_or_host_or_is_null_is_another_site(door, origin):
    with pytest.raises(WebSocketDisconnect) as refused:
        with door.websocket_connect(WS + '/v1/events', headers={'origin': origin}):
            pass
    assert refused.value.code == 1008


def test_an_origin_listed_in_the_setting_may_open_websockets_and_submit():
    with gateway_client(allowed_origins=['https://studio.example.com']) as client:
        with client.websocket_connect(WS + '/v1/events', headers={'origin': 'https://studio.example.com'}):
            pass
        answer = client.post('/v1/jobs', json=TEXT_JOB, headers={'origin': 'https://Studio.Example.com:443'})
        assert answer.status_code == 202, answer.text
        assert client.post('/v1/jobs', json=TEXT_JOB, headers={'origin': OTHER_SITE}).status_code == 403


# --- Origin: requests that change something ------------------------------------------------------------

def test_a_cross_site_form_post_without_preflight_is_refused_and_makes_no_job(door):
    answer = door.post('/v1/jobs', content=json.dumps(TEXT_JOB), headers={'origin': OTHER_SITE, 'content-type': 'text/plain'})
    assert answer.status_code == 403
    assert answer.json()['error']['code'] == 'origin_not_allowed'
    answer = door.post('/v1/jobs', files={'file': ('a.wav', b'RIFF')}, headers={'origin': OTHER_SITE})
    assert answer.status_code == 403
    assert jobs_listed(door) == []


def test_a_cross_site_delete_or_image_request_is_refused(door):
    job = door.post('/v1/jobs', json=TEXT_JOB).json()
    assert door.delete(f'/v1/jobs/{job["id"]}', headers={'origin': OTHER_SITE}).status_code == 403
    assert door.get(f'/v1/jobs/{job["id"]}').json()['status'] in {'queued', 'running'}
    answer = door.post('/v1/images/generations', json={'prompt': 'a fox'}, headers={'origin': OTHER_SITE})
    assert answer.status_code == 403 and answer.json()['error']['code'] == 'origin_not_allowed'


def test_the_page_itself_submits_jobs(door):
    answer = door.post('/v1/jobs', json=TEXT_JOB, headers={'origin': SELF})
    assert answer.status_code == 202, answer.text
    assert [job['id'] for job in jobs_listed(door)] == [answer.json()['id']]


def test_the_origin_is_checked_before_the_token():
    with gateway_client(token='a-token') as client:
        answer = client.post('/v1/jobs', json=TEXT_JOB, headers={'origin': OTHER_SITE, 'authorization': 'Bearer a-token'})
        assert answer.status_code == 403
        answer = client.post('/v1/jobs', json=TEXT_JOB, headers={'origin': SELF, 'authorization': 'Bearer a-token'})
        assert answer.status_code == 202


# --- What a job submission must look like --------------------------------------------------------------

@pytest.mark.parametrize('content_type', ['text/plain', None, 'application/octet-stream'])
def test_a_json_job_needs_a_json_content_type(door, content_type):
    headers = {'content-type': content_type} if content_type else {}
    answer = door.post('/v1/jobs', content=json.dumps(TEXT_JOB), headers=headers)
    assert answer.status_code == 415
    assert answer.json()['error']['code'] == 'unsupported_media_type'
    assert door.post('/v1/jobs', content=json.dumps(TEXT_JOB), headers={'content-type': 'application/json; charset=utf-8'}).status_code == 202


def test_job_audio_over_whispers_limit_is_refused_at_submission_with_its_code(door):
    limit = AudioPolicy.max_bytes
    answer = door.post('/v1/jobs', files={'file': ('big.wav', b'\0' * (limit + 1))})
    assert answer.status_code == 413
    error = answer.json()['error']
    assert (error['code'], error['param']) == ('input_too_large', 'file')
    assert error['message'] == f'audio too large: {limit + 1} bytes, the limit is {limit} bytes (max_audio_bytes)'
    assert jobs_listed(door) == []


def test_two_audio_files_in_one_job_are_refused_not_one_chosen(door):
    answer = door.post('/v1/jobs', files=[('file', ('a.wav', b'RIFF-a')), ('file', ('b.wav', b'RIFF-b'))])
    assert answer.status_code == 400
    error = answer.json()['error']
    assert (error['param'], error['code']) == ('file', 'duplicate_field')
    assert 'given 2 times' in error['message']
    answer = door.post('/v1/jobs', files={'file': ('a.wav', b'RIFF')}, data={'n': ['1', '2']})
    assert answer.status_code == 400 and answer.json()['error']['param'] == 'n'
    assert jobs_listed(door) == []


def test_a_prompt_with_a_lone_surrogate_is_refused_and_the_job_list_stays_readable(door):
    answer = door.post('/v1/jobs', content=b'{"prompt": "a\\ud800b"}', headers={'content-type': 'application/json'})
    assert answer.status_code == 400
    assert answer.json()['error']['param'] == 'prompt'
    assert 'surrogate' in answer.json()['error']['message']
    listed = door.get('/v1/jobs?limit=100')
    assert listed.status_code == 200 and listed.json()['data'] == []


@pytest.mark.parametrize('size', ['²x64', '64x٦٤', '６４x64', '64x64x64', 'x64', '64 x64'])
def test_a_size_with_other_than_ascii_digits_is_a_400_naming_size(door, size):
    for answer in (door.post('/v1/jobs', json={**TEXT_JOB, 'size': size}),
                   door.post('/v1/images/generations', json={'prompt': 'a fox', 'size': size})):
        assert answer.status_code == 400, answer.text
        assert answer.json()['error']['param'] == 'size'


@pytest.mark.parametrize('n', [10**30, 2**53 + 2])
def test_an_absurd_n_is_a_400_naming_n(door, n):
    for answer in (door.post('/v1/jobs', json={**TEXT_JOB, 'n': n}),
                   door.post('/v1/images/generations', json={'prompt': 'a fox', 'n': n})):
        assert answer.status_code == 400, answer.text
        assert answer.json()['error']['param'] == 'n'
    assert jobs_listed(door) == []


# --- Following a job -----------------------------------------------------------------------------------

@pytest.mark.parametrize('after', [str(2**63), str(2**64 + 5), '-1', '1.5', 'abc'])
def test_an_after_out_of_range_or_not_a_number_closes_cleanly_with_4400(door, after):
    job = door.post('/v1/jobs', json=TEXT_JOB).json()
    with door.websocket_connect(WS + f'/v1/jobs/{job["id"]}/events?after={after}') as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == BAD_REQUEST_CLOSE


def test_an_events_reader_that_falls_behind_is_closed_with_4408_and_the_gateway_keeps_serving(door):
    job = door.post('/v1/jobs', json=TEXT_JOB).json()
    store = door.app.state.jobs.store
    chunk = 'x' * 2**20

    async def publish_faster_than_anyone_reads():  # no await yields to the relay in between: it cannot keep up
        for step in range(FOLLOWER_BACKLOG_BYTES // len(chunk) + 2):
            await store.publish(job['id'], {'kind': 'progress', 'step': step, 'padding': chunk})

    with door.websocket_connect(WS + '/v1/events') as ws:
        door.portal.call(publish_faster_than_anyone_reads)
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                ws.receive_text()
    assert closed.value.code == TOO_SLOW_CLOSE and 'MiB of events' in closed.value.reason
    assert door.post('/v1/jobs', json=TEXT_JOB).status_code == 202
    with door.websocket_connect(WS + '/v1/events') as ws:  # a new follower gets the events from here on
        door.post('/v1/jobs', json=TEXT_JOB)
        assert json.loads(ws.receive_text())['kind'] == 'queued'


# --- Bodies over the byte limit ------------------------------------------------------------------------

@pytest.mark.parametrize('route', ['/v1/jobs', '/v1/images/generations'])
def test_a_streamed_body_over_the_byte_limit_is_a_413_whatever_the_route_would_have_said(route):
    def chunks():  # no Content-Length: only counting what arrives finds it too large
        for _ in range(40):
            yield b'x' * 1000

    with gateway_client(request_limits=RequestLimits(max_request_bytes=20_000)) as client:
        for headers in ({'content-type': 'application/json'}, {'content-type': 'multipart/form-data; boundary=b'}):
            answer = client.post(route, content=chunks(), headers=headers)
            assert answer.status_code == 413, answer.text
            assert answer.json()['error']['code'] == 'input_too_large'
        files = {'file': ('a.wav', b'RIFF' + b'\0' * 30_000)}
        assert client.post('/v1/jobs', files=files).status_code == 413  # announced: refused before it is read
        assert client.post('/v1/jobs', json=TEXT_JOB).status_code == 202


# --- The page ------------------------------------------------------------------------------------------

def test_the_page_may_open_websockets_to_this_gateway_only(door):
    policy = dict(part.strip().split(' ', 1) for part in door.get('/ui').headers['content-security-policy'].split(';'))
    assert policy['connect-src'] == "'self'"  # CSP 3's 'self' covers ws: and wss: to the same host and port


def test_the_job_list_leaves_image_bytes_out_and_the_job_itself_has_them(door):
    job = door.post('/v1/jobs', json=TEXT_JOB).json()
    store = door.app.state.jobs.store
    image = {'index': 0, 'seed': 7, 'width': 64, 'height': 64, 'b64_json': 'iVBORw0KGgo='}

    async def succeed_with_an_image():  # as the job runner ends a job
        await store.finish(job['id'], {'kind': 'succeeded', 'job': job['id']}, images=[image])

    door.portal.call(succeed_with_an_image)
    [listed] = door.get('/v1/jobs').json()['data']
    assert listed['status'] == 'succeeded' and listed['images'] == [{k: v for k, v in image.items() if k != 'b64_json'}]
    assert door.get(f'/v1/jobs/{job["id"]}').json()['images'] == [image]


# --- What a job publishes: s2i/contracts/events.py ------------------------------------------------------

def test_an_audio_jobs_events_and_record_follow_the_published_schema():
    with gateway_client(flow=FakeFlow()) as client:
        job = client.post('/v1/jobs', files={'file': ('speech.wav', AUDIO)}, data={'size': '64x64', 'steps': '2', 'n': '2'}).json()
        events = [JOB_EVENT.validate_python(event) for event in job_events(client, job['id'])]
        record = JobRecord.model_validate(client.get(f'/v1/jobs/{job["id"]}').json())
    kinds = [event.kind for event in events]
    assert kinds[:3] == ['queued', 'started', 'transcribed'] and kinds[-3:] == ['image', 'image', 'succeeded']
    assert set(kinds[3:-3]) == {'progress'}
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert (record.status, record.error, record.error_code, len(record.images)) == ('succeeded', '', '', 2)


@pytest.mark.parametrize('code', [ErrorCode.OUT_OF_MEMORY, None])  # None: an executor that gives no code
def test_a_failed_jobs_last_event_and_record_carry_its_error_code(code):
    with gateway_client(flow=FakeFlow(failure=Failure(code, executor='stable_diffusion'))) as client:
        job = client.post('/v1/jobs', json=TEXT_JOB).json()
        last = JOB_EVENT.validate_python(job_events(client, job['id'])[-1])
        record = JobRecord.model_validate(client.get(f'/v1/jobs/{job["id"]}').json())
    expected = code or ErrorCode.INTERNAL_ERROR
    assert (last.kind, last.error_code) == ('failed', expected)
    assert (record.status, record.error_code, record.error) == ('failed', expected.value, last.error)
