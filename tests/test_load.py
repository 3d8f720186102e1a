"""The real server (`python -m s2i.serve`: flow.yml, token on, two SD replicas, tiny models) under
bounded load on 127.0.0.1: every request gets its images or its documented error, once, matched to
the right request; a replica killed mid-load costs no client an error; a SIGTERM mid-request
finishes each request or fails it with gRPC UNAVAILABLE, and the server exits.

Nothing here asserts how long anything takes: the only limits are far beyond any run seen, and
turn a hang into a failure instead of a stuck suite."""

import json
import os
import random
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import psutil
import pytest
from docarray import DocList
from jina import Client

from s2i import client
from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import ErrorCode
from s2i.encoding import read_png_parameters
from s2i.runtime import EXECUTOR_UNAVAILABLE, INTERNAL_KEY_PARAMETER, internal_key
from s2i.serve import READY_LINE

from audio_files import flac_bomb
from image_files import big_single_colour_png, data_uri, png_bytes
from conftest import ENGLISH_CLIP, ROOT, free_port
from servers import Server, executor_ports

pytestmark = pytest.mark.slow
TOKEN = 'load-test-token'
SMALL = {'width': 64, 'height': 64, 'steps': 1, 'seed': 7}  # equal parameters: dynamic batching merges them
JOB_SIZE = {'size': '64x64', 'steps': 1, 'seed': 7}  # SMALL as a job's fields
CONCURRENCY = 16
HANG_LIMIT = 600  # seconds: a run still waiting on a request this long has hung (the 500 take well under a minute)
ERRORS = {
    'bad parameters': 'invalid parameters: width must be a multiple of 8, got 65',
    'empty prompt': 'nothing to draw: the document has no text prompt',
    'empty audio': 'empty audio: the file has 0 bytes',
}


@dataclass
class Request:
    number: int
    kind: str  # 'text', 'text over http', 'audio', or a key of ERRORS
    doc: PromptDoc
    parameters: Dict
    protocol: str = 'grpc'
    results: Optional[List[PromptDoc]] = None
    failure: str = ''  # the exception a client got instead of results
    error: Optional[BaseException] = None  # that exception itself
    seconds: float = 0.0


def make_request(number: int) -> Request:
    text = f'request {number}: a red fox'
    if number % 20 == 0:
        return Request(number, 'bad parameters', PromptDoc(text=text), {**SMALL, 'width': 65})
    if number % 20 == 1:
        return Request(number, 'empty prompt', PromptDoc(text=''), SMALL)
    if number % 20 == 2:
        return Request(number, 'empty audio', PromptDoc(blob=b''), SMALL)
    if number % 100 == 3:
        return Request(number, 'audio', PromptDoc(blob=ENGLISH_CLIP.read_bytes()), SMALL)
    if number % 20 == 4:
        return Request(number, 'text over http', PromptDoc(text=text), SMALL, protocol='http')
    return Request(number, 'text', PromptDoc(text=text), SMALL)


def send(request: Request, hosts: Dict[str, str]) -> Request:
    """The request through the client, all its documents in one request (or, for the raw-HTTP attacks, as bytes)."""
    if request.kind in RAW_HTTP:
        return send_raw(request, hosts)
    docs = request.doc if isinstance(request.doc, DocList) else DocList[PromptDoc]([request.doc])
    started = time.perf_counter()
    try:
        request.results = list(client.generate(
            docs=docs, parameters=request.parameters, host=hosts[request.protocol], token=TOKEN, request_size=len(docs),
        ))
    except Exception as e:  # the tests judge these: each one must be a documented error, never a silent loss
        request.failure, request.error = f'{type(e).__name__}: {e}', e
    request.seconds = time.perf_counter() - started
    return request


def run_load(requests: List[Request], hosts: Dict[str, str], on_progress=None) -> List[Request]:
    pool = ThreadPoolExecutor(CONCURRENCY)
    futures = [pool.submit(send, request, hosts) for request in requests]
    if on_progress:
        on_progress(futures)
    _, not_done = wait(futures, timeout=HANG_LIMIT)
    pool.shutdown(wait=False, cancel_futures=True)  # a hung request fails the test; the server's teardown ends it
    assert not not_done, f'{len(not_done)} requests still unanswered after {HANG_LIMIT} s: the server hangs'
    return requests


def problems_with(request: Request) -> List[str]:
    """What is wrong with a request's answer: nothing when it got exactly its own images or its documented error."""
    if request.failure:
        return [f'{request.number}: no answer: {request.failure}']
    if len(request.results) != 1:
        return [f'{request.number}: {len(request.results)} documents back for 1 sent']
    (doc,) = request.results
    if doc.id != request.doc.id:
        return [f'{request.number}: got document {doc.id}, sent {request.doc.id}']
    if request.kind in ERRORS:
        return [] if doc.error == ERRORS[request.kind] and len(doc.matches) == 0 else [f'{request.number}: {doc.error!r}']
    if doc.error or len(doc.matches) != 1:
        return [f'{request.number}: error {doc.error!r}, {len(doc.matches)} images']
    expected_prompt = doc.text if request.kind == 'audio' else request.doc.text
    if request.kind == 'audio' and 'fox' not in doc.text.lower():
        return [f'{request.number}: heard {doc.text!r}']
    if read_png_parameters(doc.matches[0].png)['prompt'] != expected_prompt:
        return [f'{request.number}: an image of another request']
    return []


def latency_report(requests: List[Request]) -> str:
    seconds = np.array([r.seconds for r in requests])
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99])
    kinds = {kind: sum(r.kind == kind for r in requests) for kind in sorted({r.kind for r in requests})}
    return (f'{len(requests)} requests at concurrency {CONCURRENCY}: p50 {p50:.3f} s, p95 {p95:.3f} s, '
            f'p99 {p99:.3f} s, max {seconds.max():.3f} s; {kinds}')


class SpeechToImageServer(Server):
    """`python -m s2i.serve` with the tiny models and the token on, on free loopback ports."""

    def __init__(self, tiny_sd_dir: str, sd_replicas: int):
        grpc_port, http_port = free_port(), free_port()
        self.hosts = {'grpc': f'grpc://127.0.0.1:{grpc_port}', 'http': f'http://127.0.0.1:{http_port}'}
        super().__init__([sys.executable, '-m', 's2i.serve'], cwd=ROOT, env={
            **os.environ, 'S2I_SD_MODEL': tiny_sd_dir, 'S2I_WHISPER_MODEL': 'tiny.en', 'S2I_DEVICE': 'cpu',
            'S2I_HOST': '127.0.0.1', 'S2I_PORT': str(grpc_port), 'S2I_HTTP_PORT': str(http_port),
            'S2I_SD_REPLICAS': str(sd_replicas), 'S2I_AUTH_TOKEN': TOKEN,
            'S2I_CAPTION_MODEL': 'tiny', 'S2I_CLIP_MODEL': 'tiny',  # loaded, so that images sent to them are decoded
        })

    def image_drawing_processes(self) -> List[int]:
        """The server's processes that answer a text prompt with an image when asked directly: its SD replicas.

        Each executor serves the same gRPC protocol as the gateway, on a port of its own, and answers
        only requests that carry the key the gateway derives from the token."""
        drawing = []
        for pid, port in executor_ports(self, self.hosts).items():
            with client.Connection(f'grpc://127.0.0.1:{port}', token='', timeout=HANG_LIMIT) as executor:
                try:
                    (doc,) = executor.generate(prompts=['which process draws?'],
                                               parameters={**SMALL, INTERNAL_KEY_PARAMETER: internal_key(TOKEN)})
                except RuntimeError:  # an executor without /text2image may refuse the request
                    continue
            if doc.matches:
                drawing.append(pid)
        return drawing


@pytest.fixture(scope='module')
def server(tiny_sd_dir):
    running = SpeechToImageServer(tiny_sd_dir, sd_replicas=2)
    try:
        running.wait_for(READY_LINE)
        yield running
    finally:
        # SIGKILL to the group: after the replica test, a SIGTERM would wait Jina's timeout_ctrl
        # (60 s) for the dead replica to confirm its shutdown (see the README, "Limits and errors").
        running.kill()


def test_500_mixed_requests_at_concurrency_16_each_get_their_own_answer_exactly_once(server, capsys):
    requests = run_load([make_request(number) for number in range(500)], server.hosts)
    problems = [problem for request in requests for problem in problems_with(request)]
    with capsys.disabled():
        print(f'\nload: {latency_report(requests)}')
    assert problems == []
    answered = [r.results[0].id for r in requests]
    assert len(set(answered)) == len(requests)  # no duplicates, none missing


# --- hostile load: every attack of issue 10 mixed with good requests ------------------------------------

MALFORMED_URIS = ['http://[::1', 'http://h:99999/x', 'http://h:abc/x', 'http://[zz]/', '/audio\x00.wav', 'http://h/a b\r\nX: y']
ONE_MB = 'x' * 2**20


def attack(number: int) -> Request:
    """One request of an attacker: each kind's documented error is in ATTACKS."""
    kinds = list(ATTACKS)
    kind = kinds[number % len(kinds)]
    doc, parameters, protocol = ATTACKS[kind][0](number), SMALL, 'grpc'
    if kind == 'huge negative prompt':
        parameters = {**SMALL, 'negative_prompt': ONE_MB}
    elif kind == 'huge bad scheduler':
        parameters = {**SMALL, 'scheduler': 's' * 200_000}
    elif kind.endswith('over http'):
        protocol = 'http'
    return Request(number, kind, doc, parameters, protocol)


def too_many_documents(number: int) -> DocList[PromptDoc]:
    return DocList[PromptDoc](PromptDoc(text=f'attacker {number}, document {i}') for i in range(101))


@dataclass(frozen=True)
class RawPost:
    """A raw HTTP POST of an attacker, and the status and words its answer must have."""

    path: str
    status: int
    words: str
    body: bytes = b''
    headers: Tuple[Tuple[str, str], ...] = (('Content-Type', 'application/json'),)
    files: Optional[Dict[str, Tuple[str, bytes]]] = None

    def __call__(self, hosts: Dict[str, str]) -> str:
        import requests

        answer = requests.post(f'{hosts["http"]}{self.path}', data=self.body or None, files=self.files, timeout=HANG_LIMIT,
                               headers={**dict(self.headers), 'Authorization': f'Bearer {TOKEN}'})
        said = answer.json()
        said = said.get('detail') or said.get('error', {}).get('message', '') if isinstance(said, dict) else ''
        return '' if answer.status_code == self.status and self.words in said else f'HTTP {answer.status_code}: {answer.text[:300]}'


def cross_site_websocket(hosts: Dict[str, str]) -> str:
    """Another site's page opening the events of every job: refused at the handshake (HTTP 403)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(hosts['http'].replace('http://', 'ws://') + '/v1/events', open_timeout=HANG_LIMIT,
                     additional_headers={'Authorization': f'Bearer {TOKEN}', 'Origin': OTHER_SITE}):
            return 'a cross-site WebSocket was accepted'
    except InvalidStatus as e:
        return '' if e.response.status_code == 403 else f'handshake answered {e.response.status_code}'


STALLED_READERS = ExitStack()  # their WebSockets stay open, unread, until the attack ends


def stalled_events_reader(hosts: Dict[str, str]) -> str:
    """A reader of every job's events that stops reading, while a job of its key runs to its end: the
    gateway keeps at most FOLLOWER_BACKLOG_BYTES for it (its job still ends, the server's memory stays bounded)."""
    import requests
    from websockets.sync.client import connect

    headers = {'Authorization': f'Bearer {TOKEN}'}
    # max_queue=1: the client takes one message off the socket, then none; the rest waits on the server.
    STALLED_READERS.enter_context(connect(hosts['http'].replace('http://', 'ws://') + '/v1/events', additional_headers=headers,
                                          open_timeout=HANG_LIMIT, max_queue=1))
    submitted = requests.post(f'{hosts["http"]}/v1/jobs', data=TEXT_JOB, timeout=HANG_LIMIT,
                              headers={**headers, 'Content-Type': 'application/json'})
    if submitted.status_code != 202:
        return f'HTTP {submitted.status_code}: {submitted.text[:300]}'
    deadline = time.monotonic() + HANG_LIMIT
    while time.monotonic() < deadline:
        status = requests.get(f'{hosts["http"]}/v1/jobs/{submitted.json()["id"]}', headers=headers, timeout=HANG_LIMIT).json()['status']
        if status in ('succeeded', 'failed', 'cancelled'):
            return '' if status == 'succeeded' else f'its job {status}'
        time.sleep(0.2)
    return f'its job did not end within {HANG_LIMIT} s'


def caption_one_small_image(hosts: Dict[str, str]) -> None:
    import requests

    answer = requests.post(f'{hosts["http"]}/caption', json={'data': [{'image_uri': data_uri(png_bytes())}]},
                           headers={'Authorization': f'Bearer {TOKEN}'}, timeout=HANG_LIMIT)
    assert answer.status_code == 200 and answer.json()['data'][0]['caption'], answer.text[:300]


def image_decode_pressure(hosts: Dict[str, str]) -> str:
    """Eight 6000 x 6000 single-colour PNGs (1.3 MB of request) to caption: once 2.2 GB of decoded pixels;
    now each is decoded in its batch, shrunk to the model's size, within the request's pixel budget."""
    import requests

    uri = data_uri(big_single_colour_png())
    answer = requests.post(f'{hosts["http"]}/caption', json={'data': [{'image_uri': uri}] * 8}, timeout=HANG_LIMIT,
                           headers={'Authorization': f'Bearer {TOKEN}'})
    if answer.status_code != 200:
        return f'HTTP {answer.status_code}: {answer.text[:300]}'
    docs = answer.json()['data']
    wrong = [doc.get('error') for doc in docs if not doc.get('caption') and not (doc.get('error') or '').startswith('too many image pixels')]
    return '' if len(docs) == 8 and not wrong else f'{len(docs)} documents back, wrong: {wrong}'


OTHER_SITE = 'https://evil.example'
TEXT_JOB = json.dumps({'prompt': 'a fox', **JOB_SIZE}).encode()
RAW_HTTP = {  # kind: the attack, which returns '' when it got its documented answer
    'NaN over raw http': RawPost('/text2image', 400, 'parameters.steps must be a finite number',
                                 b'{"data": [{"text": "a"}], "parameters": {"steps": NaN}}'),
    'body over the limit over raw http': RawPost('/text2image', 413, 'request too large',
                                                 b'{"data": [{"text": "' + b'x' * 64 * 2**20 + b'"}]}'),
    'cross-site job over raw http': RawPost('/v1/jobs', 403, 'cross-site request refused', TEXT_JOB,
                                            (('Content-Type', 'text/plain'), ('Origin', OTHER_SITE))),
    'cross-site text2image over raw http': RawPost('/text2image', 403, 'cross-site request refused', b'{"data": [{"text": "a"}]}',
                                                   (('Content-Type', 'application/json'), ('Origin', OTHER_SITE))),
    'text/plain job over raw http': RawPost('/v1/jobs', 415, 'the body must be JSON', TEXT_JOB, (('Content-Type', 'text/plain'),)),
    'oversized job audio over raw http': RawPost('/v1/jobs', 413, 'audio too large', headers=(),
                                                 files={'file': ('big.wav', b'\0' * (25 * 2**20 + 1))}),
    'lone surrogate job over raw http': RawPost('/v1/jobs', 400, 'prompt is not valid text', b'{"prompt": "a\\ud800b"}'),
    'unicode digits size over raw http': RawPost('/v1/images/generations', 400, 'size must be', '{"prompt": "a", "size": "²x64"}'.encode()),
    'cross-site websocket over raw http': cross_site_websocket,
    'image decode pressure over raw http': image_decode_pressure,
    'stalled events reader over raw http': stalled_events_reader,
}

URI_REFUSALS = ('malformed audio uri', 'audio URL host', 'server-side audio paths are off')  # the defaults allow no URL or path
ATTACKS = {  # kind: (its document(s), what its answer must say)
    'malformed uri': (lambda n: PromptDoc(uri=MALFORMED_URIS[n % len(MALFORMED_URIS)]), URI_REFUSALS),
    'huge prompt': (lambda n: PromptDoc(text=ONE_MB), 'prompt too long: 1048576 characters'),
    'huge negative prompt': (lambda n: PromptDoc(text=f'attacker {n}'), 'negative_prompt'),
    'huge bad scheduler': (lambda n: PromptDoc(text=f'attacker {n}'), 'invalid parameters: scheduler must be'),
    'flac bomb': (lambda n: PromptDoc(blob=flac_bomb()), 'audio too long'),
    'too many documents': (too_many_documents, 'too many documents: 101 in one request'),
    'too many documents over http': (too_many_documents, 'too many documents: 101 in one request'),
    **{kind: (lambda n: None, None) for kind in RAW_HTTP},  # RAW_HTTP holds their requests and answers
}


def send_raw(request: Request, hosts: Dict[str, str]) -> Request:
    """A raw HTTP or WebSocket attack; its failure is what differed from its documented answer."""
    request.failure = RAW_HTTP[request.kind](hosts)
    request.results = []
    return request


def attack_problems(request: Request) -> List[str]:
    """An attacker must get its documented error, short, for its own documents only."""
    if request.kind in RAW_HTTP:
        return [f'{request.number} {request.kind}: {request.failure}'] if request.failure else []
    expected = ATTACKS[request.kind][1]
    if request.kind.startswith('too many documents'):
        return [] if expected in request.failure else [f'{request.number} {request.kind}: {request.failure[:300] or "answered"}']
    if request.failure or len(request.results) != 1:
        return [f'{request.number} {request.kind}: {request.failure[:300] or len(request.results)}']
    (doc,) = request.results
    said = any(e in doc.error for e in expected) if isinstance(expected, tuple) else expected in doc.error
    if doc.id != request.doc.id or doc.matches or not said or len(doc.error) > 400:
        return [f'{request.number} {request.kind}: {doc.error[:300]!r}, {len(doc.matches)} images']
    return []


class MemoryWatch:
    """The peak of the server's total resident memory (all its processes), sampled while a load runs."""

    def __init__(self, server: Server):
        import threading

        self.root = psutil.Process(server.process.pid)
        self.peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stopped.wait(0.1):
            total = 0
            for process in (self.root, *self.root.children(recursive=True)):
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self) -> 'MemoryWatch':
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


# Bytes, the whole server (gateway, Whisper, two SD replicas, caption with its tiny model loaded, clip, store) under
# attack: 3.29-3.56 GiB measured here (2.9-3.1 GiB under good load alone). Until issue 21 caption and clip ran without
# their models and the bound was 4 GiB (3.4 GiB measured in CI); a loaded model costs about 0.25 GiB, and CI measured
# about 0.6 GiB more than this machine, so the bound moved by that much, and the attack's own share is bounded apart.
MEMORY_LIMIT = 4.5 * 2**30
ATTACK_MEMORY_LIMIT = 2**30  # what the attackers may add to the peak of the same good load alone: 0.35-0.65 GiB measured


def test_hostile_load_good_requests_get_their_images_attackers_their_errors_and_memory_stays_bounded(server, capsys):
    good = 160
    caption_one_small_image(server.hosts)  # its model loads at its first request: in both measurements, not the attack's
    with MemoryWatch(server) as calm:
        alone = run_load([make_request(number) for number in range(good)], server.hosts)
    assert [problem for request in alone for problem in problems_with(request)] == []
    mixed = [make_request(number) for number in range(good, 2 * good)] + [attack(number) for number in range(good)]
    random.Random(0).shuffle(mixed)  # attackers interleaved with good requests
    with MemoryWatch(server) as memory:
        run_load(mixed, server.hosts)
    STALLED_READERS.close()
    goods = [r for r in mixed if r.kind not in ATTACKS]
    attackers = [r for r in mixed if r.kind in ATTACKS]
    with capsys.disabled():
        print(f'\ngood requests alone: {latency_report(alone)}')
        print(f'good requests among {len(attackers)} attackers: {latency_report(goods)}')
        print(f'peak memory of the server: {calm.peak / 2**30:.2f} GiB under good load, {memory.peak / 2**30:.2f} GiB under attack')
    assert [problem for request in goods for problem in problems_with(request)] == []
    assert [problem for request in attackers for problem in attack_problems(request)] == []
    answered = [doc.id for r in mixed if r.results for doc in r.results]
    assert len(answered) == len(set(answered))  # nothing duplicated
    assert memory.peak < MEMORY_LIMIT
    assert memory.peak - calm.peak < ATTACK_MEMORY_LIMIT
    after = run_load([Request(n, 'text', PromptDoc(text=f'after the attack {n}'), SMALL) for n in range(16)], server.hosts)
    assert [problem for request in after for problem in problems_with(request)] == []


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a killed child stays a zombie until reaped
    except psutil.NoSuchProcess:
        return False


def test_a_replica_killed_mid_load_costs_no_client_an_error_and_the_other_replica_serves_on(server, capsys):
    replicas = server.image_drawing_processes()
    assert len(replicas) == 2 and all(is_alive(pid) for pid in replicas)

    def kill_first_replica_once_load_runs(futures):
        while sum(f.done() for f in futures) < 30:  # mid-load: some answered, most still to come
            time.sleep(0.05)
        os.kill(replicas[0], signal.SIGKILL)

    requests = run_load([Request(n, 'text', PromptDoc(text=f'after kill {n}'), SMALL) for n in range(120)],
                        server.hosts, on_progress=kill_first_replica_once_load_runs)
    assert not is_alive(replicas[0]) and is_alive(replicas[1])
    failed = [r for r in requests if r.failure]
    with capsys.disabled():
        print(f'\nreplica killed: {latency_report(requests)}; {len(requests) - len(failed)} answered, {len(failed)} failed: '
              f'{sorted({r.failure.splitlines()[0][:160] for r in failed})}')
    # The README's promise: the gateway retries the dead replica's requests on the other one, so every
    # client gets its images.
    assert [problem for request in requests for problem in problems_with(request)] == []
    later = run_load([Request(n, 'text', PromptDoc(text=f'later {n}'), SMALL) for n in range(20)], server.hosts)
    assert [problem for request in later for problem in problems_with(request)] == []
    # Jina restarts no replica; the Flow serves on with one, and its health check (a dry run through
    # the executors) says it is ready, since the gateway retries the dry run on the live replica.
    assert Client(host=server.hosts['grpc']).is_flow_ready()


def test_with_every_replica_dead_a_job_fails_naming_the_unreachable_executor(server):
    """After the test above: the last replica goes too. A job says which executor it could not reach."""
    import requests
    from websockets.sync.client import connect

    for pid in server.image_drawing_processes():
        os.kill(pid, signal.SIGKILL)
    headers = {'Authorization': f'Bearer {TOKEN}'}
    submitted = requests.post(f'{server.hosts["http"]}/v1/jobs', json={'prompt': 'a fox', **JOB_SIZE}, headers=headers, timeout=HANG_LIMIT)
    assert submitted.status_code == 202, submitted.text
    with connect(submitted.json()['events'], additional_headers=headers, open_timeout=HANG_LIMIT) as events:
        kinds = []
        while not kinds or kinds[-1] not in ('succeeded', 'failed', 'cancelled'):
            event = json.loads(events.recv(timeout=HANG_LIMIT))
            kinds.append(event['kind'])
    assert kinds[-1] == 'failed'
    assert event['error'] == f'the stable_diffusion {EXECUTOR_UNAVAILABLE}'
    answer = requests.post(f'{server.hosts["http"]}/v1/images/generations', json={'prompt': 'a fox', 'size': '64x64'},
                           headers=headers, timeout=HANG_LIMIT)
    assert answer.status_code == 503 and answer.json()['error']['message'] == f'the stable_diffusion {EXECUTOR_UNAVAILABLE}'


# --- graceful shutdown: a separate `python -m s2i.serve`, stopped with SIGTERM mid-request ----------------

def test_sigterm_mid_request_finishes_or_fails_each_request_with_unavailable_and_the_server_exits(tiny_sd_dir):
    server = SpeechToImageServer(tiny_sd_dir, sd_replicas=1)
    pool = ThreadPoolExecutor(12)
    try:
        server.wait_for(READY_LINE)
        # 12 requests, at most 4 images a pipeline call (max_batch_size): one replica needs three or more
        # calls in a row, so when the first answer is back the others are still queued or being drawn.
        slow = {'width': 256, 'height': 256, 'steps': 20, 'seed': 1}
        requests = [Request(n, 'text', PromptDoc(text=f'in flight {n}'), slow) for n in range(12)]
        futures = [pool.submit(send, request, server.hosts) for request in requests]
        first, _ = wait(futures, timeout=HANG_LIMIT, return_when=FIRST_COMPLETED)
        assert first, f'no answer within {HANG_LIMIT} s: the server hangs'
        server.process.send_signal(signal.SIGTERM)
        in_flight = sum(not future.done() for future in futures)
        server.process.wait(timeout=HANG_LIMIT)  # nothing hangs: the server exits
        _, not_done = wait(futures, timeout=HANG_LIMIT)
        assert not not_done, 'a client was left waiting after the server exited'
        print(f'SIGTERM with {in_flight} of {len(requests)} in flight: {sum(not r.failure for r in requests)} finished, '
              f'failures: {sorted({r.failure[:160] for r in requests if r.failure})}')
        assert in_flight > 0, 'every request was answered before the SIGTERM: nothing was tested'
        for request in requests:  # each one finished, or its client was told the server went away
            if request.failure:  # the gateway gone (ConnectionError), or the executor behind it (ExecutorUnavailable, one)
                assert isinstance(request.error, ConnectionError), request.failure
            elif request.results and request.results[0].error_code == ErrorCode.INTERRUPTED:  # stopped between two steps
                assert len(request.results[0].matches) == 0
            else:
                assert problems_with(request) == []
        assert server.process.returncode == 0, server.output()[-3000:]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.kill()
