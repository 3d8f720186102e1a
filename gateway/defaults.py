"""The documented defaults of the S2I_* settings that flow.yml reads for Jina itself.

Jina's YAML has no syntax for defaults. flow.yml names this module (`gateway: py_modules:`), and
Jina imports it after its first pass over the `${{ ENV.* }}` variables and before its Flow parser
expands them again, so an unset S2I_HOST, S2I_PORT, S2I_HTTP_PORT or S2I_SD_REPLICAS gets its
default (s2i/serve.py, DEFAULTS) on every path, `jina flow --uses flow.yml` included.
"""

from s2i.serve import apply_defaults

apply_defaults()
