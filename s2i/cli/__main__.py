"""``python -m s2i.cli``: the same as ``s2i-client``."""

import sys

from s2i.cli import main

sys.exit(main())
