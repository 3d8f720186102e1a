"""The service's contracts: what the gateway, the executors, the client, the CLI and the page agree on.

- ``errors``: every error code, with its HTTP status, OpenAI type, gRPC status, CLI exit status and
  the place on the page where it shows.
- ``params``: the base of the executors' request-parameter models and their field types.
- ``whisper``, ``stable_diffusion``, ``caption``, ``clip``, ``store``: each executor's parameter
  model, the one home of its fields, defaults and ranges. The gateway's routes, the CLI's flags, the
  page's settings form and the docs' tables are derived from them.
- ``documents``: the DocArray document types that travel through the Flow.

Only ``documents`` imports docarray (which imports torch when it is installed); the others need
pydantic alone, so a client can read the contracts without the service's heavy dependencies.
"""
