"""The speech-to-image client library: calls to the service over gRPC and HTTP, and its jobs.

    from s2i.client import generate
    docs = generate(['speech.mp3'], prompts=['a red fox'], parameters={'steps': 20})
    docs[0].matches[0].png  # PNG bytes, with the generation parameters inside
    docs[0].error_code      # '' or a code of s2i/contracts/errors.py, when that input failed

Over gRPC, ``generate()`` keeps one channel per host open for the whole process, shared by its
threads; ``with Connection(host) as flow: flow.generate(...)`` gives you its lifetime and timeout.
``call_flow()`` is ``generate()`` with plain dicts (over HTTP without docarray or torch).

``follow_job(host, audio_path=..., on_event=print)`` runs one job on the gateway's HTTP port
(``POST /v1/jobs``) and follows its events over WebSocket to the end; it returns the job's record.

A refused request raises ServiceError, whose ``code`` is an ``s2i.contracts.errors.ErrorCode``.
The command line (``s2i-client``, ``python client.py``) is s2i/cli/, built on this package.
Importing it imports neither docarray, torch nor jina: each call imports what it needs.
"""

from s2i.client.errors import ExecutorUnavailable, JobInterrupted, JobRefused, ServiceError
from s2i.client.flow import (
    DEFAULT_HOST,
    DEFAULT_HTTP_HOST,
    Connection,
    build_docs,
    call_flow,
    endpoint_for,
    environment_token,
    generate,
    save_images,
    save_pngs,
    seed_on_documents,
    token_or_environment,
)
from s2i.client.jobs import TERMINAL_EVENTS, cancel_job, follow_job, job_error, job_events, submit_job

__all__ = [
    'DEFAULT_HOST', 'DEFAULT_HTTP_HOST', 'TERMINAL_EVENTS', 'Connection', 'ExecutorUnavailable', 'JobInterrupted',
    'JobRefused', 'ServiceError', 'build_docs', 'call_flow', 'cancel_job', 'endpoint_for', 'environment_token',
    'follow_job', 'generate', 'job_error', 'job_events', 'save_images', 'save_pngs', 'seed_on_documents', 'submit_job',
    'token_or_environment',
]
