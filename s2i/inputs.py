"""Where the server may read a client's input file from: the one sandbox rule that audio
(executors/whisper/audio.py) and images (s2i/images.py) share."""

import os
from typing import Optional


def path_under(root: str, path: str) -> Optional[str]:
    """The real path of ``path`` (taken relative to ``root``), or None when it leads outside ``root``.

    ``..`` and symlinks anywhere on the way are resolved before the containment check, so neither a
    link nor a climb can reach a file outside. Raises ValueError for a path holding a NUL byte."""
    root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(root, path))
    return resolved if os.path.commonpath([resolved, root]) == root else None
