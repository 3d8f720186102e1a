"""Where the server may read a client's input file from: the one sandbox rule that audio
(executors/whisper/audio.py) and images (s2i/images.py) share."""

import os
from typing import Optional, Type

from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote


def path_under(root: str, path: str) -> Optional[str]:
    """The real path of ``path`` (taken relative to ``root``), or None when it leads outside ``root``.

    ``..`` and symlinks anywhere on the way are resolved before the containment check, so neither a
    link nor a climb can reach a file outside. Raises ValueError for a path holding a NUL byte."""
    root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(root, path))
    return resolved if os.path.commonpath([resolved, root]) == root else None


def read_under(root: Optional[str], path: str, kind: str, limit: int, setting: str, error: Type[CodedError],
               send_inline: str) -> bytes:
    """The file at ``path`` under the input folder ``root``, at most ``limit`` + 1 bytes (a file that grew
    since its size was checked is caught by the caller's own check). ``error`` for a path that is off,
    outside, not a file or too large; ValueError for a malformed one (a NUL byte)."""
    if not root:
        raise error(f'server-side {kind} paths are off (input_dir is not set): {send_inline}')
    resolved = path_under(root, path)  # ".." and symlinks resolved before the check
    if resolved is None:
        raise error(f'{kind} path {quote(path)} is outside the input directory')
    if not os.path.isfile(resolved):
        raise error(f'{kind} path {quote(path)} is not a file in the input directory')
    if problem := too_large(kind, os.path.getsize(resolved), limit, setting):
        raise error(problem, ErrorCode.INPUT_TOO_LARGE)
    with open(resolved, 'rb') as file:
        return file.read(limit + 1)


def checked_file(data: bytes, kind: str, limit: int, setting: str, error: Type[CodedError]) -> bytes:
    """``data``, unless it is empty (``error`` with its own code) or over ``limit`` (``error``, input_too_large)."""
    if not data:
        raise error(f'empty {kind}: the file has 0 bytes')
    if problem := too_large(kind, len(data), limit, setting):
        raise error(problem, ErrorCode.INPUT_TOO_LARGE)
    return data


def too_large(kind: str, size: int, limit: int, setting: str) -> Optional[str]:
    """What to tell a client of a ``kind`` file of ``size`` bytes over the ``limit`` of ``setting``; None within it."""
    return f'{kind} too large: {size} bytes, the limit is {limit} bytes ({setting})' if size > limit else None
