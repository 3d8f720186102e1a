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

from s2i.serve_settings import ServeSettings
from s2i.settings import variable_names, warn_unknown_variables

FLOW_YML = Path(__file__).resolve().parent.parent / 'flow.yml'
READY_LINE = 'speech-to-image Flow ready'

# The settings flow.yml reads for Jina itself (s2i/serve_settings.py), by variable, with their defaults
# as text. Executors read their own (S2I_SD_MODEL, S2I_WHISPER_*, S2I_DEVICE) through their settings classes.
DEFAULTS = {variable_names(ServeSettings, name)[0]: str(field.default) for name, field in ServeSettings.model_fields.items()}


def apply_defaults() -> ServeSettings:
    """The settings, checked, each unset (or empty) one given its default in the environment, where
    flow.yml reads it; a bad value stops the start, naming its variable."""
    settings = ServeSettings.load()
    for name in ServeSettings.model_fields:
        os.environ[variable_names(ServeSettings, name)[0]] = str(getattr(settings, name))
    return settings


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
    warn_unknown_variables()  # a misspelt S2I_ variable would otherwise change nothing, silently
    flow = load_flow()
    flow.logger.logger.addHandler(_ExitWhenFlowAborts())  # after loading: JinaLogger resets handlers
    # SIGTERM (docker stop, kill, a supervisor) must close the Flow like Ctrl+C does; by default
    # it would end only this process and orphan the executors, still holding their ports.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with flow:
        settings = ServeSettings.load()
        print(f'{READY_LINE}: grpc://{settings.host}:{settings.port} http://{settings.host}:{settings.http_port}', flush=True)
        flow.block(stop_event=stop)


if __name__ == '__main__':
    main()
