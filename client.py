"""The speech-to-image client's command line, from a checkout: ``python client.py --help``.

The command line is ``s2i/cli/`` (installed as the ``s2i-client`` command); the library it calls is
``s2i/client/`` (``from s2i.client import generate``). This file keeps ``python client.py ...`` and
``from client import generate`` working.
"""

import sys

from s2i.cli import main
from s2i.client import Connection, build_docs, generate, save_images  # noqa: F401  (the public API)

if __name__ == '__main__':
    sys.exit(main())
