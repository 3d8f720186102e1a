"""The real server (`python -m s2i.serve`: flow.yml, token on, two SD replicas, tiny models) under
bounded load on 127.0.0.1: every request gets its images or its documented error, once, matched to
the right request; a replica killed mid-load and a SIGTERM mid-request lose nothing silently.

The server runs in its own interpreter: Jina forks the executors, and a fork of a process that has
already run torch (as earlier tests in this session do) can stall in torch's thread pool."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pytest
from docarray import DocList
from jina import Client

import client
from s2i.docs import PromptDoc
from s2i.encoding import read_png_parameters
from s2i.serve import READY_LINE

from conftest import ENGLISH_CLIP, ROOT, free_port

pytestmark = pytest.mark.slow
TOKEN = 'load-test-token'
SMALL = {'width': 64, 'height': 64, 'steps': 1, 'seed': 7}  # equal parameters: dynamic batching merges them
CONCURRENCY = 16
TIME_LIMIT = 300  # seconds for the whole load run: past it, the test fails instead of hanging
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
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


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
    started = time.perf_counter()
    try:
        request.results = list(client.generate(
            docs=DocList[PromptDoc]([request.doc]), parameters=request.parameters, host=hosts[request.protocol], token=TOKEN,
        ))
    except Exception as e:  # the test counts these: each one must be a clear error, never a silent loss
        request.failure = f'{type(e).__name__}: {e}'
    request.seconds = time.perf_counter() - started
    return request


def run_load(requests: List[Request], hosts: Dict[str, str], on_progress=None) -> List[Request]:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = [pool.submit(send, request, hosts) for request in requests]
        if on_progress:
            on_progress(futures)
        done, not_done = wait(futures, timeout=TIME_LIMIT, return_when=FIRST_EXCEPTION)
        for future in not_done:
            future.cancel()
        assert not not_done, f'{len(not_done)} requests still unanswered after {TIME_LIMIT} s'
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


class Server:
    """`python -m s2i.serve` with the tiny models on free loopback ports; a thread collects its output."""

    def __init__(self, tiny_sd_dir: str, sd_replicas: int):
        grpc_port, http_port = free_port(), free_port()
        self.hosts = {'grpc': f'grpc://127.0.0.1:{grpc_port}', 'http': f'http://127.0.0.1:{http_port}'}
        env = {
            **os.environ, 'S2I_SD_MODEL': tiny_sd_dir, 'S2I_WHISPER_MODEL': 'tiny.en', 'S2I_DEVICE': 'cpu',
            'S2I_HOST': '127.0.0.1', 'S2I_PORT': str(grpc_port), 'S2I_HTTP_PORT': str(http_port),
            'S2I_SD_REPLICAS': str(sd_replicas), 'S2I_AUTH_TOKEN': TOKEN, 'COLUMNS': '1000',  # one log line per line
        }
        self.process = subprocess.Popen(
            [sys.executable, '-m', 's2i.serve'], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,  # its own process group: the executors go down with it
        )
        self.lines: List[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._collect_output, daemon=True).start()

    def _collect_output(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # end of output
            self.changed.notify_all()

    def wait_for(self, pattern: str, limit: float = 240) -> re.Match:
        """The first output line matching ``pattern``, waiting for it at most ``limit`` seconds."""
        deadline, checked = time.monotonic() + limit, 0
        with self.changed:
            while True:
                for line in self.lines[checked:]:
                    assert line is not None, f'the server exited before printing {pattern!r}:\n{self.output()[-3000:]}'
                    if match := re.search(pattern, line):
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                assert remaining > 0, f'no {pattern!r} from the server within {limit} s'
                self.changed.wait(remaining)

    def output(self) -> str:
        return ''.join(line for line in self.lines if line)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


@pytest.fixture(scope='module')
def server(tiny_sd_dir):
    running = Server(tiny_sd_dir, sd_replicas=2)
    try:
        running.wait_for(READY_LINE)
        yield running
    finally:
        # SIGKILL to the group: after the replica test, a SIGTERM would wait Jina's timeout_ctrl
        # (60 s) for the dead replica to confirm its shutdown (see the README, "Limits and errors").
        running.kill()


@pytest.fixture(scope='module')
def flow(server):
    return server.hosts


def test_500_mixed_requests_at_concurrency_16_each_get_their_own_answer_exactly_once(flow, capsys):
    requests = run_load([make_request(number) for number in range(500)], flow)
    problems = [problem for request in requests for problem in problems_with(request)]
    with capsys.disabled():
        print(f'\nload: {latency_report(requests)}')
    assert problems == []
    answered = [r.results[0].id for r in requests]
    assert len(set(answered)) == len(requests)  # no duplicates, none missing


def is_alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().split(')')[-1].split()[0] != 'Z'  # a killed child stays a zombie until reaped
    except FileNotFoundError:
        return False


def test_a_replica_killed_mid_load_loses_no_request_silently_and_the_other_replica_serves_on(server, flow, capsys):
    # Jina's log names each replica's process: "stable_diffusion/rep-0@<pid>".
    replicas = [int(server.wait_for(rf'stable_diffusion/rep-{i}@(\d+)').group(1)) for i in range(2)]
    assert all(is_alive(pid) for pid in replicas)

    def kill_first_replica_once_load_runs(futures):
        while sum(f.done() for f in futures) < 30:  # mid-load: some answered, most still to come
            time.sleep(0.05)
        os.kill(replicas[0], signal.SIGKILL)

    requests = run_load([Request(n, 'text', PromptDoc(text=f'after kill {n}'), SMALL) for n in range(120)], flow,
                        on_progress=kill_first_replica_once_load_runs)
    assert not is_alive(replicas[0]) and is_alive(replicas[1])
    failed = [r for r in requests if r.failure]
    answered = [r for r in requests if not r.failure]
    with capsys.disabled():
        print(f'\nreplica killed: {latency_report(requests)}; {len(answered)} answered with images, {len(failed)} failed: '
              f'{sorted({r.failure.splitlines()[0][:160] for r in failed})}')
    for request in answered:
        assert problems_with(request) == []
    for request in failed:  # a request the dead replica held: the client is told, with a gRPC status
        assert 'BadServerFlow' in request.failure or 'ConnectionError' in request.failure or 'StatusCode' in request.failure
    # after the kill, the surviving replica answers everything
    later = run_load([Request(n, 'text', PromptDoc(text=f'later {n}'), SMALL) for n in range(20)], flow)
    assert [p for r in later for p in problems_with(r)] == []
    # Jina restarts no replica; the Flow serves on with one, and its health check (a dry run through
    # the executors) says it is ready, since the gateway retries the dry run on the live replica.
    assert Client(host=flow['grpc']).is_flow_ready()


# --- graceful shutdown: a separate `python -m s2i.serve`, stopped with SIGTERM mid-request ----------------

def test_sigterm_mid_request_answers_or_fails_every_request_and_the_server_exits(tiny_sd_dir):
    server = Server(tiny_sd_dir, sd_replicas=1)
    try:
        server.wait_for(READY_LINE)
        slow = {'width': 256, 'height': 256, 'steps': 20, 'seed': 1}  # seconds each on the CPU: still running at SIGTERM
        requests = [Request(n, 'text', PromptDoc(text=f'in flight {n}'), slow) for n in range(6)]
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(send, request, server.hosts) for request in requests]
            server.wait_for(r'step 5/20')  # the first batch is being generated
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=120)  # nothing hangs: the server exits
            done, not_done = wait(futures, timeout=120)
        assert not not_done, 'a client was left waiting after the server exited'
        for request in requests:  # each one finished, or its client was told the server went away
            if request.failure:
                assert 'StatusCode.UNAVAILABLE' in request.failure
            else:
                assert problems_with(request) == []
        print(f'SIGTERM: {sum(not r.failure for r in requests)} finished, failures: {[r.failure[:120] for r in requests if r.failure]}')
        assert server.process.returncode == 0, server.output()[-3000:]
    finally:
        server.kill()
