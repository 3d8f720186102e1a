"""The defaults of the S2I_* settings that flow.yml reads for Jina itself (s2i/serve_settings.py, ServeSettings).

Jina's YAML has no syntax for defaults. flow.yml names this module (`gateway: py_modules:`), and
Jina imports it after its first pass over the `${{ ENV.* }}` variables and before its Flow parser
expands them again, so an unset S2I_HOST, S2I_PORT, S2I_HTTP_PORT or S2I_SD_REPLICAS gets its
default on every path, `jina flow --uses flow.yml` included, and a bad value stops the start naming it.
"""

from s2i.serve import apply_defaults

apply_defaults()
