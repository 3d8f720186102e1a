"""Job callbacks (gateway.jobs.webhooks) against a real HTTP receiver on a free localhost port."""

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Dict, List, Optional

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

import gateway.jobs.webhooks
from gateway.jobs.webhooks import Webhooks

RECORD = {'id': 'job-42', 'status': 'succeeded', 'result': {'images': 2, 'text': 'a red fox ünder the moon'}}
SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'  # Standard Webhooks: whsec_ and the base64 of 24 random bytes
OTHER_SECRET = 'whsec_Sk9CQlpfa2V5X29mX2Fub3RoZXJfcmVjZWl2ZXI='
TOLERANCE = 5 * 60  # seconds: how old a delivery the receivers' library still accepts
ATTEMPTS = 3


class Receiver:
    """Answers each POST with the next status of ``statuses`` (the last one repeats); records every request."""

    def __init__(self, statuses: List[int]):
        self.statuses, self.requests = list(statuses), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                receiver.requests.append({'path': self.path, 'headers': dict(self.headers), 'body': body})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header('Location', '/elsewhere')
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.host = f'127.0.0.1:{self.server.server_address[1]}'
        self.url = f'http://{self.host}/hooks/s2i'
        threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_answering():
    """``receiver_answering([500, 200])``: a started Receiver, shut down after the test."""
    receivers = []

    def start(statuses: List[int]) -> Receiver:
        receivers.append(Receiver(statuses))
        return receivers[-1]

    yield start
    for receiver in receivers:
        receiver.close()


def webhooks_for(host: str, secret: Optional[str] = None) -> Webhooks:
    return Webhooks(allowed_hosts=[host], secret=secret, attempts=ATTEMPTS, first_delay=0.05, timeout=5)


def deliver(webhooks: Webhooks, url: str, record: Dict = RECORD) -> bool:
    return asyncio.run(webhooks.deliver(url, record))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def verified(request: Dict, secret: str = SECRET) -> Dict:
    """What a receiver does: the Standard Webhooks library checks the raw body and the headers, then parses."""
    return Webhook(secret).verify(request['body'], request['headers'])


def delivered_signed(receiver_answering) -> Dict:
    receiver = receiver_answering([200])
    assert deliver(webhooks_for(receiver.host, SECRET), receiver.url) is True
    [request] = receiver.requests
    return request


def test_record_is_delivered_once_as_json_with_a_signature_that_verifies(receiver_answering):
    request = delivered_signed(receiver_answering)

    assert request['path'] == '/hooks/s2i'
    assert verified(request) == RECORD
    assert request['headers']['Content-Type'] == 'application/json'
    assert request['headers']['X-S2I-Event'] == 'job.finished'
    assert request['headers']['X-S2I-Job'] == 'job-42'
    assert request['headers']['webhook-signature'].startswith('v1,')
    with pytest.raises(WebhookVerificationError):
        verified(request, OTHER_SECRET)


def test_a_tampered_body_does_not_verify(receiver_answering):
    request = delivered_signed(receiver_answering)
    tampered = request['body'].replace(b'"succeeded"', b'"failed"')
    assert tampered != request['body']

    with pytest.raises(WebhookVerificationError, match='No matching signature'):
        verified({**request, 'body': tampered})


def test_a_replayed_delivery_older_than_the_tolerance_does_not_verify(receiver_answering, monkeypatch):
    # A delivery captured 6 minutes ago, sent again now: the gateway's clock is set back while it signs.
    captured_at = time.time() - TOLERANCE - 60
    monkeypatch.setattr(gateway.jobs.webhooks, 'time', SimpleNamespace(time=lambda: captured_at))
    request = delivered_signed(receiver_answering)
    monkeypatch.undo()

    with pytest.raises(WebhookVerificationError, match='too old'):
        verified(request)


def test_a_replay_with_a_fresh_timestamp_does_not_verify(receiver_answering):
    request = delivered_signed(receiver_answering)
    headers = dict(request['headers'], **{'webhook-timestamp': str(int(request['headers']['webhook-timestamp']) + 1)})

    with pytest.raises(WebhookVerificationError, match='No matching signature'):
        verified({**request, 'headers': headers})


def test_retries_keep_the_delivery_id_and_each_attempt_verifies(receiver_answering):
    receiver = receiver_answering([500, 503, 200])
    webhooks = webhooks_for(receiver.host, SECRET)

    assert deliver(webhooks, receiver.url) is True
    assert deliver(webhooks, receiver.url) is True  # the same record again: another delivery, another id

    first, second, third, another = receiver.requests
    assert first['headers']['webhook-id'] == second['headers']['webhook-id'] == third['headers']['webhook-id']
    assert another['headers']['webhook-id'] != first['headers']['webhook-id']
    assert all(verified(request) == RECORD for request in receiver.requests)


def test_signature_is_absent_without_a_secret(receiver_answering):
    receiver = receiver_answering([200])

    assert deliver(webhooks_for(receiver.host), receiver.url) is True

    [request] = receiver.requests
    assert 'webhook-signature' not in request['headers']
    assert request['headers']['webhook-id']  # still there: a receiver can drop duplicates
    assert json.loads(request['body']) == RECORD
    with pytest.raises(WebhookVerificationError, match='Missing required headers'):
        verified(request)


@pytest.mark.parametrize(
    'secret',
    [
        'receiver-shared-secret',  # a password, not a Standard Webhooks secret
        'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',  # no whsec_
        'whsec_not base64 at all!',
        'whsec_c2hvcnQ=',  # 5 bytes
        'whsec_====',
    ],
)
def test_a_secret_that_is_not_a_standard_webhooks_one_is_refused_with_how_to_make_one(secret):
    with pytest.raises(ValueError) as refused:
        Webhooks(secret=secret)

    message = str(refused.value)
    assert message.startswith(
        'S2I_WEBHOOK_SECRET must be a Standard Webhooks secret: whsec_ and the base64 of at least 24 random bytes'
    )
    assert "print('whsec_'+base64.b64encode(os.urandom(32)).decode())" in message
    assert secret not in message  # a secret is never repeated, not even in a log


@pytest.mark.parametrize('secret', [SECRET, SECRET + '\n', OTHER_SECRET, OTHER_SECRET.rstrip('=')])
def test_a_standard_webhooks_secret_padded_or_not_signs_what_the_library_verifies(secret, receiver_answering):
    receiver = receiver_answering([200])

    assert deliver(webhooks_for(receiver.host, secret), receiver.url) is True

    [request] = receiver.requests
    assert verified(request, secret) == RECORD


def test_server_errors_are_retried_until_delivered(receiver_answering):
    receiver = receiver_answering([500, 500, 200])

    assert deliver(webhooks_for(receiver.host), receiver.url) is True

    assert len(receiver.requests) == 3
    assert all(json.loads(r['body']) == RECORD for r in receiver.requests)


def test_too_many_requests_is_retried(receiver_answering):
    receiver = receiver_answering([429, 200])

    assert deliver(webhooks_for(receiver.host), receiver.url) is True
    assert len(receiver.requests) == 2


def test_a_client_error_is_not_retried(receiver_answering):
    receiver = receiver_answering([400, 200])

    assert deliver(webhooks_for(receiver.host), receiver.url) is False
    assert len(receiver.requests) == 1


def test_delivery_gives_up_after_the_attempts(receiver_answering):
    receiver = receiver_answering([503])

    assert deliver(webhooks_for(receiver.host), receiver.url) is False
    assert len(receiver.requests) == ATTEMPTS


def test_a_redirect_is_not_followed(receiver_answering):
    receiver = receiver_answering([302, 200])

    assert deliver(webhooks_for(receiver.host), receiver.url) is False
    assert [r['path'] for r in receiver.requests] == ['/hooks/s2i']  # /elsewhere is never asked for


def test_a_host_outside_the_allow_list_is_refused_and_never_called(receiver_answering):
    receiver = receiver_answering([200])
    webhooks = webhooks_for('hooks.example.com')

    assert webhooks.refusal(receiver.url) == (
        f"callback_url host '{receiver.host}' is not allowed (webhook_hosts: hooks.example.com)"
    )
    assert deliver(webhooks, receiver.url) is False
    assert receiver.requests == []


def test_with_an_empty_allow_list_the_refusal_says_how_to_allow_a_host(receiver_answering):
    receiver = receiver_answering([200])
    webhooks = Webhooks()

    refusal = webhooks.refusal(receiver.url)
    assert f"callback_url host '{receiver.host}' is not allowed (webhook_hosts: none)" in refusal
    assert 'webhook_hosts in gateway/config.yml' in refusal and 'S2I_WEBHOOK_HOSTS' in refusal
    assert deliver(webhooks, receiver.url) is False
    assert receiver.requests == []


def test_the_allow_list_is_checked_again_at_delivery(receiver_answering):
    receiver = receiver_answering([200])
    webhooks = webhooks_for(receiver.host)
    assert webhooks.refusal(receiver.url) is None

    webhooks.allowed_hosts = ('hooks.example.com',)  # the configuration changed after the job was submitted

    assert deliver(webhooks, receiver.url) is False
    assert receiver.requests == []


@pytest.mark.parametrize(
    'url, refusal',
    [
        ('ftp://hooks.example.com/x', "callback_url must be an http or https URL, got 'ftp://hooks.example.com/x'"),
        ('file:///etc/passwd', "callback_url must be an http or https URL, got 'file:///etc/passwd'"),
        ('http:///no-host', "callback_url names no host: 'http:///no-host'"),
        (
            'http://hooks.example.com@127.0.0.1/x',
            'callback_url must not hold a user name or password (user:password@host); they are never sent',
        ),
        ('http://hooks.example.com:99999/x', "malformed callback_url 'http://hooks.example.com:99999/x': Port out of range"),
    ],
)
def test_urls_that_are_not_allowed_hosts_over_http_are_refused(url, refusal):
    webhooks = webhooks_for('hooks.example.com')

    assert webhooks.refusal(url).startswith(refusal)
    assert deliver(webhooks, url) is False


def test_a_host_is_allowed_on_any_port_or_on_the_listed_one():
    assert webhooks_for('hooks.example.com').refusal('https://HOOKS.example.com:8443/x') is None
    assert webhooks_for('hooks.example.com:8443').refusal('https://hooks.example.com:8443/x') is None
    assert webhooks_for('hooks.example.com:8443').refusal('https://hooks.example.com/x') is not None


def test_a_receiver_that_is_down_fails_after_the_attempts_without_raising():
    host = f'127.0.0.1:{closed_port()}'

    assert deliver(webhooks_for(host), f'http://{host}/hooks') is False


def test_a_record_that_is_not_json_is_not_sent_and_does_not_raise(receiver_answering):
    receiver = receiver_answering([200])

    assert deliver(webhooks_for(receiver.host), receiver.url, {'id': 'job-1', 'when': object()}) is False
    assert receiver.requests == []


def test_the_delay_doubles_from_the_first_and_is_capped():
    webhooks = Webhooks(first_delay=1.0)

    assert [webhooks.delay_before(attempt) for attempt in (2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0]
    assert webhooks.delay_before(100) == 60.0
