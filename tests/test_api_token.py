"""The token on every route, in-process (tests/gateway_app.py, tests/fake_flow.py): with S2I_AUTH_TOKEN set,
each /v1 route and WebSocket wants one of its keys and refuses a request without one before the Flow sees
it; the page and the readiness probe stay open; a job belongs to the key that submitted it."""

import pytest
from starlette.websockets import WebSocketDisconnect

from fake_flow import IMAGE_REQUEST, TEXT_JOB, WS, FakeFlow, audio_form, image_form
from gateway_app import gateway_client
from image_files import png_bytes

TOKEN, SECOND_KEY = 'api-token', 'api-second-key'
KEYS = f'{TOKEN},{SECOND_KEY}'  # S2I_AUTH_TOKEN may hold several keys
NO_SUCH_JOB = '0' * 32

# Every HTTP route behind the token: method, path ({job}: a job of TOKEN's), a valid request, its success status.
ROUTES = {
    'transcriptions': ('POST', '/v1/audio/transcriptions', audio_form, 200),
    'translations': ('POST', '/v1/audio/translations', audio_form, 200),
    'generations': ('POST', '/v1/images/generations', lambda: {'json': IMAGE_REQUEST}, 200),
    'edits': ('POST', '/v1/images/edits', lambda: image_form(png_bytes(size=(64, 64)), prompt='a woodcut'), 200),
    'variations': ('POST', '/v1/images/variations', lambda: image_form(png_bytes(size=(64, 64))), 200),
    'models': ('GET', '/v1/models', dict, 200),
    'model': ('GET', '/v1/models/whisper-1', dict, 200),
    'submit a job': ('POST', '/v1/jobs', lambda: {'json': TEXT_JOB}, 202),
    'look up a job': ('GET', '/v1/jobs/{job}', dict, 200),
    'list jobs': ('GET', '/v1/jobs', dict, 200),
    'cancel a job': ('DELETE', '/v1/jobs/{job}', dict, 202),
    'page parameters': ('GET', '/ui/parameters', dict, 200),
}
WEBSOCKETS = ['/v1/events', '/v1/jobs/{job}/events']
WRONG = {'no token': {}, 'a wrong key': {'authorization': 'Bearer not-the-token'}, 'another scheme': {'authorization': f'Basic {TOKEN}'},
         'the key alone': {'authorization': TOKEN}}


def bearer(key: str = TOKEN) -> dict:
    return {'authorization': f'Bearer {key}'}


def send(client, route: str, headers: dict, job_id: str = NO_SUCH_JOB):
    method, path, request, _ = ROUTES[route]
    return client.request(method, path.format(job=job_id), headers=headers, **request())


@pytest.fixture
def flow():
    return FakeFlow(hold_generation=True)  # a job that starts stays running: the test decides when it ends


@pytest.fixture
def guarded(flow):
    with gateway_client(token=KEYS, flow=flow) as client:
        yield client


@pytest.mark.parametrize('wrong', WRONG)
@pytest.mark.parametrize('route', ROUTES)
def test_every_route_refuses_a_request_without_a_key_before_the_flow_sees_it(guarded, flow, route, wrong):
    answer = send(guarded, route, WRONG[wrong])
    assert answer.status_code == 401, answer.text
    error = answer.json()['error']
    assert (error['type'], error['code']) == ('invalid_request_error', 'invalid_api_key')
    assert answer.headers['www-authenticate'] == 'Bearer'
    assert flow.sent == []
    assert guarded.get('/v1/jobs', headers=bearer()).json()['data'] == []


@pytest.mark.parametrize('route', ROUTES)
def test_every_route_answers_a_request_with_a_key(guarded, route):
    job = guarded.post('/v1/jobs', json=TEXT_JOB, headers=bearer()).json()
    answer = send(guarded, route, bearer(), job['id'])
    assert answer.status_code == ROUTES[route][3], answer.text


def test_each_key_of_the_token_is_a_key(guarded):
    for key in (TOKEN, SECOND_KEY):
        answer = guarded.post('/v1/images/generations', json=IMAGE_REQUEST, headers=bearer(key))
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize('wrong', WRONG)
@pytest.mark.parametrize('path', WEBSOCKETS)
def test_every_websocket_without_a_key_is_closed_as_a_policy_violation(guarded, path, wrong):
    job = guarded.post('/v1/jobs', json=TEXT_JOB, headers=bearer()).json()
    with pytest.raises(WebSocketDisconnect) as refused:
        with guarded.websocket_connect(WS + path.format(job=job['id']), headers=WRONG[wrong]) as ws:
            ws.receive_json()
    assert refused.value.code == 1008


def test_a_websocket_takes_the_key_in_its_header_or_as_a_bearer_subprotocol(guarded):
    with guarded.websocket_connect(f'{WS}/v1/events', headers=bearer()) as by_header:
        with guarded.websocket_connect(f'{WS}/v1/events', subprotocols=['json', f'bearer.{SECOND_KEY}']) as by_subprotocol:
            assert by_subprotocol.accepted_subprotocol == f'bearer.{SECOND_KEY}'  # browsers require the echo
            mine = guarded.post('/v1/jobs', json=TEXT_JOB, headers=bearer()).json()
            theirs = guarded.post('/v1/jobs', json=TEXT_JOB, headers=bearer(SECOND_KEY)).json()
            assert by_subprotocol.receive_json()['job'] == theirs['id']  # each key hears its own jobs only
        assert by_header.receive_json()['job'] == mine['id']


@pytest.mark.parametrize('path', ['/ui', '/ui/', '/ui/app.js'])
def test_the_page_stays_open_it_asks_for_the_key_itself(guarded, path):
    assert guarded.get(path).status_code == 200


@pytest.mark.parametrize('path', ['/', '/dry_run'])
def test_the_readiness_probes_pass_the_token_check(guarded, path):
    # In-process no route serves them (Jina's adapter adds them): 404 says the token check let them through.
    assert guarded.get(path).status_code == 404
    assert guarded.get('/status').status_code == 401  # Jina's other routes want the key


def test_a_caller_without_a_key_learns_nothing_from_the_body_limit_or_the_routes(guarded):
    oversized = guarded.post('/v1/jobs', content=b'x' * 100, headers={'content-type': 'application/json', 'content-length': str(2**40)})
    unknown_route = guarded.get('/v1/no-such-route')
    assert (oversized.status_code, unknown_route.status_code) == (401, 401)


def test_another_keys_job_is_as_unknown_as_a_missing_one(guarded):
    job = guarded.post('/v1/jobs', json=TEXT_JOB, headers=bearer()).json()
    for method in ('GET', 'DELETE'):
        answer = guarded.request(method, f'/v1/jobs/{job["id"]}', headers=bearer(SECOND_KEY))
        assert answer.status_code == 404, answer.text
        assert answer.json()['error']['code'] == 'not_found'
    assert guarded.get('/v1/jobs', headers=bearer(SECOND_KEY)).json()['data'] == []
    assert guarded.get(f'/v1/jobs/{job["id"]}', headers=bearer()).json()['status'] in {'queued', 'running'}
    with pytest.raises(WebSocketDisconnect) as refused:
        with guarded.websocket_connect(f'{WS}/v1/jobs/{job["id"]}/events', headers=bearer(SECOND_KEY)) as ws:
            ws.receive_json()
    assert refused.value.code == 4404
