"""Devices, caches, models on a device and the token: what the executors, the gateway and the client share.
(Settings: s2i/settings.py and each component's settings class.)"""

import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Optional

# When set, the gateway refuses requests without "authorization: Bearer <token>", and the client sends it.
AUTH_TOKEN_VARIABLE = 'S2I_AUTH_TOKEN'
# What a refused request is told, over gRPC (UNAUTHENTICATED) and HTTP (401) alike.
UNAUTHENTICATED = 'missing or wrong token: send "authorization: Bearer <token>" (S2I_AUTH_TOKEN)'
# What a client is told of an internal failure, whose details (a traceback, server paths) are logged.
DETAILS_LOGGED = 'the details are in the service log'
# What the gateway answers (HTTP 503, code executor_unavailable) when an executor behind it is down.
EXECUTOR_UNAVAILABLE = 'executor of the Flow could not be reached; try again'

# With a token, the gateway puts a key derived from it into the parameters of every request it
# forwards, and the executors refuse requests without it: a caller that reaches an executor's port
# directly, around the gateway, gets nothing. Derived, so the key is not the token itself.
INTERNAL_KEY_PARAMETER = '__s2i_internal_key__'


def internal_key(token: Optional[str] = None) -> Optional[str]:
    """The key the gateway sends and the executors expect, from ``token`` (default: S2I_AUTH_TOKEN);
    None without a token (nothing to check)."""
    token = token or os.environ.get(AUTH_TOKEN_VARIABLE)
    return hmac.new(token.encode(), b'speech-to-image executors', hashlib.sha256).hexdigest() if token else None


def from_the_gateway(parameters: dict) -> bool:
    """Whether a request reached an executor through the gateway (always, without a token)."""
    key = internal_key()
    return key is None or hmac.compare_digest(str(parameters.get(INTERNAL_KEY_PARAMETER, '')).encode(), key.encode())


def resolve_device(device: Optional[str]) -> str:
    """'auto' (or empty) picks CUDA when a GPU is usable, else the CPU; anything else is used as given.

    A GPU asked for by name that CUDA cannot use stops the start (no silent CPU run); 'auto' in a
    container that was given GPUs but cannot use them runs on the CPU with a warning. The usual cause
    of both: an NVIDIA driver older than the CUDA that torch was built for."""
    import torch

    if device in (None, '', 'auto'):
        if torch.cuda.is_available():
            return 'cuda'
        if os.environ.get('NVIDIA_VISIBLE_DEVICES', 'void') not in ('', 'void', 'none'):  # set by NVIDIA's runtime
            logging.getLogger(__name__).warning(f'this container was given GPUs but runs on the CPU: {cuda_problem()}')
        return 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'device {device!r} was asked for, but CUDA cannot be used here: {cuda_problem()}')
    return device


def cuda_problem() -> str:
    """Why torch cannot use CUDA, in its own words, with the CUDA version it was built for."""
    import torch

    built_for = f'torch {torch.__version__} is built for CUDA {torch.version.cuda}' if torch.version.cuda else \
        f'torch {torch.__version__} is a CPU-only build'
    try:
        torch.cuda.init()
        reason = 'no GPU is visible'
    except Exception as e:  # e.g. "The NVIDIA driver on your system is too old (found version 12020)"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f'{reason}; {built_for} (a newer NVIDIA driver, or an image built with another torch: README, "Deploy")'


def cache_dir() -> Path:
    """Models this service assembles or writes itself: $S2I_CACHE, default ~/.cache/s2i."""
    return Path(os.environ.get('S2I_CACHE') or Path.home() / '.cache' / 's2i')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests and benchmarks)."""
    import socket
    from contextlib import closing

    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class LazyModel:
    """A model loaded once, at start-up or (an executor's ``load_at_start: false``) at the first request
    that needs it, so that a Flow whose users never ask for it starts without its weights. A model
    that cannot be loaded fails the documents that needed it, never the Flow."""

    def __init__(self, load, name: str, logger: logging.Logger):
        import threading

        self.load = load  # () -> whatever the executor keeps (a model, its processor, ...)
        self.name = name
        self.logger = logger
        self.loaded = None
        self.loading = threading.Lock()  # two first requests at once load it once

    def get(self):
        with self.loading:
            if self.loaded is None:
                self.loaded = self.load()
            return self.loaded

    def ready_for(self, docs) -> bool:
        """Whether the model is loaded (loading it now if need be); if it cannot be, each of ``docs`` says why."""
        from s2i.contracts.documents import mark_failed
        from s2i.contracts.errors import ErrorCode

        try:
            self.get()
            return True
        except Exception as e:
            self.logger.error(f'loading the {self.name} model failed', exc_info=True)
            mark_failed(docs, f'the {self.name} model could not be loaded: {str(e).splitlines()[0][:200]}', ErrorCode.MODEL_UNAVAILABLE)
            return False


def built_once(folder_name: str, write, is_built) -> str:
    """``cache_dir()/folder_name``, written by ``write(folder)`` the first time (a tiny model): into a
    staging folder that is renamed into place, so replicas starting together never read half a model."""
    import tempfile

    folder = cache_dir() / folder_name
    if not is_built(str(folder)):
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(dir=folder.parent, prefix=f'.{folder_name}-')
        write(staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another replica finished first; its copy is identical
            pass
    return str(folder)


def ready_on_device(model, model_id: str, device, dtype, tiny_warning: Optional[str], logger: logging.Logger):
    """``model`` moved to ``device`` for inference, with one log line of what it holds (and a banner
    if it is a tiny random-weight model): each executor reports its memory when its model loads."""
    import torch

    if tiny_warning:
        logger.warning(f'\n{"!" * 78}\n!!  {model_id}: {tiny_warning.upper()}\n{"!" * 78}')
    model.to(device).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = f', GPU memory allocated {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB' if device.type == 'cuda' else ''
    logger.info(f'loaded {model_id} as {type(model).__name__} on {device} ({dtype}): {weights / 2**20:.1f} MiB of weights{memory}')
    return model


def unloadable(what: str, model_id: str, variable: str, folder: str, error: Exception) -> RuntimeError:
    """The start-up (or first-use) error for a model that cannot be loaded: which one, why, and what to set."""
    return RuntimeError(
        f'Could not load the {what} model {model_id!r}: {error}\n'
        f'Set {variable} to a local {folder}, or to a Hugging Face model id that this machine can download '
        f'(or has in its cache; pre-download with `huggingface-cli download <id>`). {variable}=tiny runs a '
        'tiny random-weight model that checks the wiring and gives noise.'
    )
