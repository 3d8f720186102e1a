"""A real ``redis-server`` for the tests, on a free 127.0.0.1 port, with nothing saved to disk."""

import shutil
import time
from contextlib import contextmanager
from typing import Iterator

from servers import Server

from s2i.runtime import free_port

START_LIMIT = 30  # seconds for the server to answer PING


@contextmanager
def running_redis_server() -> Iterator[str]:
    """Starts ``redis-server`` and yields its URL (redis://127.0.0.1:P/0); stops it on the way out.
    Raises FileNotFoundError if the binary is not installed."""
    import redis

    binary = shutil.which('redis-server')
    if binary is None:
        raise FileNotFoundError('redis-server is not installed (apt-get install redis-server)')
    port = free_port()
    server = Server([binary, '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'])
    url = f'redis://127.0.0.1:{port}/0'
    try:
        client, deadline = redis.Redis.from_url(url, socket_timeout=2), time.monotonic() + START_LIMIT
        while True:
            assert server.process.poll() is None, f'redis-server exited:\n{server.output()[-3000:]}'
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, f'redis-server did not answer PING within {START_LIMIT} s:\n{server.output()[-3000:]}'
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        server.kill()
