"""A document's uri cannot make the server read files or fetch URLs it was not told to; the gateway
component (gateway/) refuses requests without the token before any executor sees them."""

import http.server
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from docarray import DocList
from jina import Client

from s2i import client
from executors.whisper.executor import WhisperExecutor
from s2i.contracts.documents import PromptDoc
from s2i.contracts.params import quote
from s2i.runtime import INTERNAL_KEY_PARAMETER, UNAUTHENTICATED, internal_key
from s2i.serve import DEFAULTS, load_flow

from conftest import ENGLISH_CLIP, ROOT, free_port
from recording_flow import received, running_recording_flow
from servers import call_executor_port

TOKEN = 'test-token-6f1c'
PATHS_OFF = 'server-side audio paths are off (input_dir is not set)'


# --- uri: files and URLs ---------------------------------------------------------------------------

class RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Serves the English clip at /clip.wav, and /redirect points elsewhere; every request is recorded."""

    seen = []

    def do_GET(self):
        RecordingHandler.seen.append(self.path)
        if self.path == '/redirect':
            self.send_response(302)
            self.send_header('Location', 'http://example.com/clip.wav')
            self.end_headers()
            return
        body = ENGLISH_CLIP.read_bytes()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def audio_server():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'127.0.0.1:{server.server_address[1]}'
    server.shutdown()


@pytest.fixture(scope='module')
def input_dir(tmp_path_factory) -> Path:
    """An input directory with one clip, a symlink that leads out of it, and a secret beside it."""
    root = tmp_path_factory.mktemp('uris')
    (root / 'inputs').mkdir()
    (root / 'inputs' / 'clip.wav').write_bytes(ENGLISH_CLIP.read_bytes())
    (root / 'secret.wav').write_bytes(ENGLISH_CLIP.read_bytes())  # decodable: only the policy stops it
    (root / 'inputs' / 'escape.wav').symlink_to(root / 'secret.wav')
    return root / 'inputs'


@pytest.fixture(scope='module')
def default_whisper():
    return WhisperExecutor(model='tiny.en', device='cpu')  # config.yml's defaults: no paths, no URLs


@pytest.fixture(scope='module')
def opened_whisper(input_dir, audio_server):
    return WhisperExecutor(model='tiny.en', device='cpu', input_dir=str(input_dir), allowed_url_hosts=[audio_server])


def transcribe(executor, *uris):
    docs = [PromptDoc(uri=uri) for uri in uris] + [PromptDoc(blob=ENGLISH_CLIP.read_bytes())]
    *results, inline = executor.transcribe(DocList[PromptDoc](docs), {})
    assert inline.error == '' and 'fox' in inline.text.lower()  # the inline clip beside them still works
    return results


@pytest.mark.slow
def test_a_malformed_uri_is_its_own_documents_error_and_the_rest_of_the_request_is_transcribed(opened_whisper, audio_server):
    malformed = [
        'http://[::1', 'http://127.0.0.1:99999/x', 'http://127.0.0.1:abc/x', 'http://[zz]/', 'clip\x00.wav',
        f'http://{audio_server}/a b.wav', f'http://{audio_server}/x\r\nHost: evil',  # allowed hosts, unsendable paths
    ]
    for uri, doc in zip(malformed, transcribe(opened_whisper, *malformed)):
        assert doc.error.startswith(f'malformed audio uri {quote(uri)}: '), doc.error
        assert doc.text == ''


@pytest.mark.slow
def test_by_default_no_uri_reads_a_server_file_or_fetches_a_url(default_whisper, audio_server):
    RecordingHandler.seen.clear()
    passwd, relative, file_uri, url, other_scheme = transcribe(
        default_whisper, '/etc/passwd', '../secret.wav', 'file:///etc/passwd', f'http://{audio_server}/clip.wav', 'ftp://127.0.0.1/x.wav',
    )
    assert passwd.error.startswith(PATHS_OFF) and relative.error.startswith(PATHS_OFF)
    assert file_uri.error.startswith("audio uri scheme 'file' is not accepted")
    assert url.error == f"audio URL host '{audio_server}' is not allowed (allowed_url_hosts: none)"
    assert other_scheme.error.startswith("audio uri scheme 'ftp' is not accepted")
    assert RecordingHandler.seen == []  # nothing was fetched


@pytest.mark.slow
def test_paths_are_read_only_inside_the_input_directory(opened_whisper, input_dir):
    inside, absolute_inside, passwd, dotdot, symlink, missing = transcribe(
        opened_whisper, 'clip.wav', str(input_dir / 'clip.wav'), '/etc/passwd', '../secret.wav', 'escape.wav', 'nothing.wav',
    )
    assert inside.error == '' and 'fox' in inside.text.lower()
    assert absolute_inside.error == '' and 'fox' in absolute_inside.text.lower()
    assert passwd.error == "audio path '/etc/passwd' is outside the input directory"
    assert dotdot.error == "audio path '../secret.wav' is outside the input directory"
    assert symlink.error == "audio path 'escape.wav' is outside the input directory"
    assert missing.error == "audio path 'nothing.wav' is not a file in the input directory"


@pytest.mark.slow
def test_urls_are_fetched_only_from_allowed_hosts_and_redirects_are_not_followed(opened_whisper, audio_server):
    RecordingHandler.seen.clear()
    other_port = f'127.0.0.1:{free_port()}'
    allowed, redirect, not_allowed = transcribe(
        opened_whisper, f'http://{audio_server}/clip.wav', f'http://{audio_server}/redirect', f'http://{other_port}/clip.wav',
    )
    assert allowed.error == '' and 'fox' in allowed.text.lower()
    assert redirect.error == 'audio URL redirects (HTTP 302); redirects are not followed'
    assert not_allowed.error == f"audio URL host '{other_port}' is not allowed (allowed_url_hosts: {audio_server})"
    assert sorted(RecordingHandler.seen) == ['/clip.wav', '/redirect']  # fetched side by side: in either order


# --- token authentication ----------------------------------------------------------------------------

def test_with_a_token_an_executor_works_only_for_requests_that_carry_the_gateways_key(default_whisper, monkeypatch):
    monkeypatch.setenv('S2I_AUTH_TOKEN', TOKEN)
    clip = lambda: DocList[PromptDoc]([PromptDoc(blob=ENGLISH_CLIP.read_bytes())])  # noqa: E731
    for parameters in ({}, {INTERNAL_KEY_PARAMETER: internal_key('another token')}, {INTERNAL_KEY_PARAMETER: TOKEN}):
        (refused,) = default_whisper.transcribe(clip(), parameters)
        assert refused.error == UNAUTHENTICATED and refused.text == ''
    (heard,) = default_whisper.transcribe(clip(), {INTERNAL_KEY_PARAMETER: internal_key()})
    assert heard.error == '' and 'fox' in heard.text.lower()


@pytest.fixture(scope='module')
def token_flow(tmp_path_factory):
    """tests/recording_flow.py: the gateway component, with S2I_AUTH_TOKEN set, in front of executors that record what reaches them."""
    with running_recording_flow(tmp_path_factory.mktemp('auth') / 'requests.log', token=TOKEN) as flow:
        yield flow


@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_the_right_token_is_let_in(token_flow, protocol):
    (doc,) = client.generate(prompts=[f'right token over {protocol}'], host=token_flow[protocol], token=TOKEN)
    assert doc.text == f'right token over {protocol}'
    assert f'right token over {protocol}' in received(token_flow)


@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['grpc', 'http'])
@pytest.mark.parametrize('token', ['wrong-token', ''], ids=['wrong', 'missing'])
def test_a_wrong_or_missing_token_is_refused_before_any_executor(token_flow, protocol, token, monkeypatch):
    monkeypatch.delenv('S2I_AUTH_TOKEN', raising=False)  # '' must mean "send none", not "use the environment"
    prompt = f'{token or "no"} token over {protocol}'
    with pytest.raises(Exception) as refused:
        client.generate(prompts=[prompt], host=token_flow[protocol], token=token)
    assert UNAUTHENTICATED in str(refused.value)
    assert prompt not in received(token_flow)


@pytest.mark.slow
def test_the_token_is_checked_before_the_parameters(token_flow):
    with pytest.raises(Exception) as refused:
        client.generate(prompts=['unknown key, no token'], parameters={'step': 1}, host=token_flow['grpc'], token='wrong-token')
    assert UNAUTHENTICATED in str(refused.value)  # a caller without the token learns nothing about the keys


@pytest.mark.slow
@pytest.mark.parametrize('token, code', [(None, 'UNAUTHENTICATED'), (TOKEN, 'UNIMPLEMENTED')], ids=['no token', 'token'])
def test_an_unknown_grpc_method_answers_as_if_it_existed_until_the_token_is_right(token_flow, token, code):
    import grpc

    metadata = [('authorization', f'Bearer {token}')] if token else []
    with grpc.insecure_channel(token_flow['grpc'].removeprefix('grpc://')) as channel:
        unary = channel.unary_unary('/jina.NoSuchService/call')
        streaming = channel.stream_stream('/jina.JinaRPC/NoSuchMethod')
        for call in (lambda: unary(b'', metadata=metadata, timeout=30), lambda: list(streaming(iter([b'']), metadata=metadata, timeout=30))):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code().name == code, refused.value.details()
            if token is None:
                assert refused.value.details() == UNAUTHENTICATED  # nothing about the server's methods or internals


@pytest.mark.slow
def test_a_connection_sends_its_token_and_raises_when_refused(token_flow):
    with client.Connection(token_flow['grpc'], token=TOKEN) as connection:
        (doc,) = connection.generate(prompts=['right token, open channel'])
    assert doc.text == 'right token, open channel' and 'right token, open channel' in received(token_flow)
    with client.Connection(token_flow['grpc'], token='wrong-token') as connection:
        with pytest.raises(RuntimeError, match=re.escape(UNAUTHENTICATED)):
            connection.generate(prompts=['wrong token, open channel'])
    assert 'wrong token, open channel' not in received(token_flow)


@pytest.mark.slow
def test_over_plain_http_a_refusal_is_401_and_the_health_routes_stay_open(token_flow):
    body = {'data': [{'text': 'raw http'}]}
    refused = requests.post(f'{token_flow["http"]}/text2image', json=body, timeout=30)
    assert refused.status_code == 401 and refused.json() == {'detail': UNAUTHENTICATED, 'code': 'invalid_api_key'}
    assert requests.get(f'{token_flow["http"]}/status', timeout=30).status_code == 401  # Jina's debug route too
    assert requests.get(f'{token_flow["http"]}/', timeout=30).status_code == 200
    assert requests.get(f'{token_flow["http"]}/dry_run', timeout=30).status_code == 200
    allowed = requests.post(f'{token_flow["http"]}/text2image', json=body, headers={'Authorization': f'Bearer {TOKEN}'}, timeout=30)
    assert allowed.status_code == 200 and 'raw http' in received(token_flow)


@pytest.mark.slow
def test_health_checks_need_no_token(token_flow):
    for protocol in ('grpc', 'http'):
        assert Client(host=token_flow[protocol]).is_flow_ready()
    ping = subprocess.run([str(Path(sys.executable).parent / 'jina'), 'ping', 'flow', token_flow['grpc'], '--timeout', '10000'],
                          capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0, ping.stdout[-2000:] + ping.stderr[-2000:]


@pytest.mark.slow
def test_the_cli_sends_its_token_and_says_when_it_is_refused(token_flow, tmp_path):
    def run_cli(*options):
        env = {k: v for k, v in os.environ.items() if k != 'S2I_AUTH_TOKEN'}
        command = [sys.executable, str(ROOT / 'client.py'), '--host', token_flow['grpc'], '--json', '--out', str(tmp_path), *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)

    right = run_cli('--token', TOKEN, '--text', 'cli with token')
    assert right.returncode == 0, right.stderr
    assert 'cli with token' in received(token_flow)
    wrong = run_cli('--token', 'nope', '--text', 'cli with a wrong token')
    assert wrong.returncode != 0
    assert 'refused the request' in wrong.stderr and UNAUTHENTICATED in wrong.stderr
    assert 'cli with a wrong token' not in received(token_flow)


@pytest.fixture
def unset_settings(monkeypatch):
    """flow.yml's settings unset for this test (and restored after: loading flow.yml fills in their defaults)."""
    for name in DEFAULTS:
        monkeypatch.setenv(name, '')  # empty is unset to apply_defaults; monkeypatch restores the real value


def test_the_default_ports_are_outside_linuxs_ephemeral_port_range():
    # 32768-60999 (net.ipv4.ip_local_port_range): an outgoing connection may hold such a port at start-up.
    assert all(int(DEFAULTS[name]) < 32768 for name in ('S2I_PORT', 'S2I_HTTP_PORT'))


def test_serve_binds_loopback_unless_told_otherwise_and_the_executors_always(unset_settings, monkeypatch):
    assert load_flow().host == '127.0.0.1'
    monkeypatch.setenv('S2I_HOST', '0.0.0.0')
    assert load_flow().host == '0.0.0.0'
    import yaml  # the executors' own host, which a Flow binds them to (checked in jina 3.34), whatever S2I_HOST says

    executors = yaml.safe_load((ROOT / 'flow.yml').read_text())['executors']
    assert {executor['name']: executor['host'] for executor in executors} == {
        'whisper': '127.0.0.1', 'stable_diffusion': '127.0.0.1', 'caption': '127.0.0.1', 'clip': '127.0.0.1',
        'store': '127.0.0.1'}  # only the gateway serves other machines


# --- the real Flow with a token: the executors' own ports, and the HTTP health check --------------

@contextmanager
def real_flow_with_token(tiny_sd_dir: str):
    """`python -m s2i.serve` (flow.yml's five executors, tiny models) with S2I_AUTH_TOKEN set."""
    from s2i.serve import READY_LINE

    from servers import flow_on_free_ports

    server, hosts = flow_on_free_ports([sys.executable, '-m', 's2i.serve'], S2I_SD_MODEL=tiny_sd_dir, S2I_AUTH_TOKEN=TOKEN,
                                       S2I_WHISPER_MODEL='tiny.en', S2I_DEVICE='cpu')
    try:
        server.wait_for(READY_LINE)
        yield {**hosts, 'server': server}
    finally:
        server.kill()


@pytest.fixture(scope='module')
def real_flow(tiny_sd_dir):
    with real_flow_with_token(tiny_sd_dir) as flow:
        yield flow


def ask_for_parameters(port: int, parameters: dict):
    """/parameters straight to an executor's port, as a caller around the gateway can: the whole response."""
    from s2i.contracts.documents import ParameterSchema
    from s2i.contracts.params import PARAMETERS_ENDPOINT

    return call_executor_port(port, PARAMETERS_ENDPOINT, parameters, [], ParameterSchema)


def executors_by_name(flow: dict) -> dict:
    """{executor name: (pid, port)} of the Flow's executor processes, each asked with the gateway's key."""
    from servers import executor_ports

    named = {}
    for pid, port in executor_ports(flow['server'], flow).items():
        (schema,) = ask_for_parameters(port, {INTERNAL_KEY_PARAMETER: internal_key(TOKEN)}).docs
        named[schema.executor] = (pid, port)
    return named


@pytest.mark.slow
def test_with_a_token_no_executor_port_tells_a_caller_around_the_gateway_its_parameters(real_flow):
    from jina.proto import jina_pb2

    ports = {name: port for name, (pid, port) in executors_by_name(real_flow).items()}
    assert sorted(ports) == ['caption', 'clip', 'stable_diffusion', 'store', 'whisper']
    for name, port in ports.items():
        for parameters in ({}, {INTERNAL_KEY_PARAMETER: internal_key('another token')}, {INTERNAL_KEY_PARAMETER: TOKEN}):
            refused = ask_for_parameters(port, parameters)
            assert len(refused.docs) == 0, name  # no keys, no ranges, no model
            assert refused.header.status.code == jina_pb2.StatusProto.ERROR and UNAUTHENTICATED in refused.header.status.description


@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_with_a_token_the_gateway_still_refuses_unknown_parameters(real_flow, protocol):
    with pytest.raises(Exception) as refused:
        client.generate(prompts=['a typo'], parameters={'stepz': 1}, host=real_flow[protocol], token=TOKEN)
    assert "unknown parameter(s) 'stepz'; known: " in str(refused.value) and 'steps' in str(refused.value)


@pytest.mark.slow
def test_http_dry_run_fails_once_the_only_stable_diffusion_replica_is_dead(tiny_sd_dir):
    """GET /dry_run (Jina's HTTP readiness check, open without the token) answers as `jina ping flow` does."""
    import signal

    with real_flow_with_token(tiny_sd_dir) as flow:  # its own: this test kills an executor
        http = flow['http']
        assert requests.get(f'{http}/dry_run', timeout=60).status_code == 200
        pid, port = executors_by_name(flow)['stable_diffusion']
        os.kill(pid, signal.SIGKILL)
        answer = requests.get(f'{http}/dry_run', timeout=60)
        ready_over_http = Client(host=http).is_flow_ready(timeout=30000)
        ping = subprocess.run([str(Path(sys.executable).parent / 'jina'), 'ping', 'flow', flow['grpc'], '--timeout', '10000'],
                              capture_output=True, text=True, timeout=120)
    assert answer.status_code == 503
    assert answer.json()['description'] == 'the stable_diffusion executor of the Flow could not be reached; try again'
    assert not ready_over_http
    assert ping.returncode == 1  # what the manifests' readiness probes run: the same answer
