"""Start the speech-to-image Flow: ``python -m s2i.serve``.

flow.yml reads its settings from S2I_* environment variables; Jina has no syntax for defaults,
so this module fills in the ones that are not set before loading it.
"""

import logging
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

from s2i.runtime import AUTH_TOKEN_VARIABLE

FLOW_YML = Path(__file__).resolve().parent.parent / 'flow.yml'
READY_LINE = 'speech-to-image Flow ready'

DEFAULTS = {
    'S2I_WHISPER_BACKEND': 'faster-whisper',  # or openai-whisper
    'S2I_WHISPER_MODEL': 'base',  # bundled multilingual base when installed; any size name or local path
    'S2I_SD_MODEL': 'stable-diffusion-v1-5/stable-diffusion-v1-5',  # hub id, local folder, or "tiny"
    'S2I_DEVICE': 'auto',  # auto | cpu | cuda | cuda:N
    'S2I_HOST': '127.0.0.1',  # 0.0.0.0 to serve other machines: put a proxy with auth in front
    'S2I_PORT': '54321',  # gRPC
    'S2I_HTTP_PORT': '54322',
    'S2I_SD_REPLICAS': '1',
}


def apply_defaults() -> None:
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
    # Executors' `uses:` paths are relative to the repository root.
    flow = Flow.load_config(str(path), extra_search_paths=[str(Path(path).resolve().parent)])
    if os.environ.get(AUTH_TOKEN_VARIABLE):
        from s2i.gateway import TokenAuthGateway

        # Here rather than in flow.yml: `jina export` (deploy/) could not name this class's image,
        # and without a token the stock gateway is the same minus the check.
        flow = flow.config_gateway(uses=TokenAuthGateway)  # returns a configured copy
    return flow


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
