"""The speech-to-image client's command line, from a checkout: ``python client.py --help``.

The client itself is ``s2i/client.py`` (installed as the ``s2i-client`` command and importable as
``s2i.client``); this file keeps ``python client.py ...`` and ``from client import generate`` working.
"""

import sys

from s2i.client import Connection, build_docs, generate, main, save_images  # noqa: F401  (the public API)

if __name__ == '__main__':
    sys.exit(main())
