"""Servers that tests start in their own process: a command, its output, and a bounded wait for a line.

A Flow runs in a fresh interpreter: Jina forks its executors, and forking a test process that has
already run torch (as earlier tests in a session do) can stall in torch's thread pool."""

import os
import re
import signal
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple


class Server:
    """``command`` in its own process group (so its children go down with it); a thread collects its output."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd=None):
        self.process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: the executors go down with it
        )
        self.lines: List[Optional[str]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._collect_output, daemon=True).start()

    def _collect_output(self) -> None:
        with self.process.stdout as output:  # closed at the end of output: never left to the garbage collector
            for line in output:
                with self.changed:
                    self.lines.append(line)
                    self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # end of output
            self.changed.notify_all()

    def wait_for(self, pattern: str, limit: float = 240, since: int = 0) -> re.Match:
        """The first output line matching ``pattern`` (from line ``since`` on), waiting for it at most ``limit`` seconds."""
        deadline, checked = time.monotonic() + limit, since
        with self.changed:
            while True:
                for line in self.lines[checked:]:
                    assert line is not None, f'the server exited before printing {pattern!r}:\n{self.output()[-3000:]}'
                    if match := re.search(pattern, line):
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                assert remaining > 0, f'no {pattern!r} from the server within {limit} s:\n{self.output()[-3000:]}'
                self.changed.wait(remaining)

    def output(self) -> str:
        return ''.join(line for line in self.lines if line)

    def kill(self) -> None:
        """SIGKILL to the whole process group, then reap the process."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


def wait_until_ready(server: Server, host: str, limit: float = 300) -> None:
    """Until the Flow or gateway at ``host`` answers Jina's readiness check, at most ``limit`` seconds."""
    from jina import Client

    deadline = time.monotonic() + limit
    while not Client(host=host).is_flow_ready(timeout=2000):
        assert server.process.poll() is None, f'the server exited:\n{server.output()[-3000:]}'
        assert time.monotonic() < deadline, f'{host} was not ready within {limit} s:\n{server.output()[-3000:]}'
        time.sleep(1)


def listening(port: int, host: str = '127.0.0.1') -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def executor_ports(server: Server, hosts: Dict[str, str]) -> Dict[int, int]:
    """The Flow's processes that listen on a port other than its gateway's (``hosts``): {pid: port}."""
    import psutil

    gateway_ports = {int(host.rsplit(':', 1)[1]) for name, host in hosts.items() if name in ('grpc', 'http')}
    found = {}
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            connections = process.net_connections('tcp')
        except psutil.NoSuchProcess:
            continue
        for port in {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN} - gateway_ports:
            found[process.pid] = port
    return found


def only_these_settings(**settings: str) -> Dict[str, str]:
    """This process's environment without its own S2I_* variables (but the tests' S2I_STORE), plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('S2I_') or k == 'S2I_STORE'}
    env.update(settings)
    return env


def flow_on_free_ports(command: Sequence[str], **settings: str) -> Tuple[Server, Dict[str, str]]:
    """``command`` (a Flow) started from the repository root on free S2I_PORT / S2I_HTTP_PORT with
    ``settings``, and its hosts: {'grpc': 'grpc://127.0.0.1:P', 'http': 'http://127.0.0.1:Q'}."""
    from conftest import ROOT, free_port

    grpc_port, http_port = free_port(), free_port()
    env = only_these_settings(S2I_PORT=str(grpc_port), S2I_HTTP_PORT=str(http_port), **settings)
    return Server(command, env=env, cwd=ROOT), {'grpc': f'grpc://127.0.0.1:{grpc_port}', 'http': f'http://127.0.0.1:{http_port}'}


def call_executor_port(port: int, endpoint: str, parameters: dict, docs, doc_type):
    """One request straight to an executor's own gRPC port, as a caller around the gateway could send
    it: the whole response, its documents read as ``doc_type``."""
    import grpc
    from docarray import DocList
    from jina.proto.serializer import DataRequestProto
    from jina.types.request.data import DataRequest

    request = DataRequest()
    request.header.exec_endpoint = endpoint
    request.parameters = parameters
    request.data.docs = DocList[doc_type](docs)
    with grpc.insecure_channel(f'127.0.0.1:{port}') as channel:
        call = channel.unary_unary('/jina.JinaSingleDataRequestRPC/process_single_data',
                                   request_serializer=DataRequestProto.SerializeToString,
                                   response_deserializer=DataRequestProto.FromString)
        response = call(request, timeout=60)
    response.document_array_cls = DocList[doc_type]
    return response
