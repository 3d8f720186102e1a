"""Start the speech-to-image Flow: ``python -m s2i.serve``.

The same as ``jina flow --uses flow.yml`` run from the repository root (both read the S2I_*
variables; see README.md), plus a ready line with the addresses, SIGTERM handling, and an exit
instead of a hang when an executor fails to start.
"""

import logging
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

FLOW_YML = Path(__file__).resolve().parent.parent / 'flow.yml'
READY_LINE = 'speech-to-image Flow ready'

# The settings flow.yml reads for Jina itself, and their documented defaults. Executors read their
# own variables (S2I_SD_MODEL, S2I_WHISPER_*, S2I_DEVICE) with their defaults beside their code.
DEFAULTS = {
    'S2I_HOST': '127.0.0.1',  # 0.0.0.0 to serve other machines: set S2I_AUTH_TOKEN, put TLS in front
    'S2I_PORT': '8321',  # gRPC
    'S2I_HTTP_PORT': '8322',
    'S2I_SD_REPLICAS': '1',
}


def apply_defaults() -> None:
    """Give each unset (or empty) setting of DEFAULTS its default in the environment."""
    for name, value in DEFAULTS.items():
        if not os.environ.get(name):
            os.environ[name] = value


class _ExitWhenFlowAborts(logging.Handler):
    """jina 3.34: when an executor fails to start, ``Flow.close()`` joins a gateway process that
    keeps retrying that executor forever, so a failed start never returns. The server exits
    instead, once the executors' own errors are on the screen."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith('Flow is aborted'):
            for child in multiprocessing.active_children():
                child.kill()
            print('speech-to-image Flow failed to start: see the executor errors above', file=sys.stderr, flush=True)
            os._exit(1)


def load_flow(path=FLOW_YML):
    """The Flow of ``flow.yml`` with the S2I_* settings now in the environment (defaults for the rest)."""
    from jina import Flow

    apply_defaults()
    # `uses:` and `py_modules:` paths in flow.yml are relative to the repository root.
    return Flow.load_config(str(path), extra_search_paths=[str(Path(path).resolve().parent)])


def main() -> None:
    flow = load_flow()
    flow.logger.logger.addHandler(_ExitWhenFlowAborts())  # after loading: JinaLogger resets handlers
    # SIGTERM (docker stop, kill, a supervisor) must close the Flow like Ctrl+C does; by default
    # it would end only this process and orphan the executors, still holding their ports.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with flow:
        print(
            f'{READY_LINE}: grpc://{os.environ["S2I_HOST"]}:{os.environ["S2I_PORT"]} '
            f'http://{os.environ["S2I_HOST"]}:{os.environ["S2I_HTTP_PORT"]}',
            flush=True,
        )
        flow.block(stop_event=stop)


if __name__ == '__main__':
    main()
