"""What the client raises when the service refuses or fails a request: the error's code, from the
contracts' table (s2i/contracts/errors.py), never read from its message.

A refusal's code comes from the answer itself: over HTTP, the body's ``error.code`` (or, from a
gateway that sends none, the first code of the table with that HTTP status); over gRPC, the call's
trailing metadata's ``s2i-error-code`` (or its status, by the table's ``grpc_status``). A failed
document carries its own ``error_code``.
"""

from typing import List, Optional

from s2i.contracts.errors import ERRORS, GRPC_CODE_METADATA, CodedError, ErrorCode


class ServiceError(CodedError, RuntimeError):
    """The service answered, and refused the request or failed it: ``code`` (an ErrorCode), ``message``
    (the service's words, for people) and ``param`` (the request field to blame, if one is)."""


class ExecutorUnavailable(ServiceError, ConnectionError):
    """The gateway answered, but an executor behind it is down: this request failed, later ones may not."""

    code = ErrorCode.EXECUTOR_UNAVAILABLE


class JobRefused(ServiceError):
    """The jobs API refused a request: its HTTP ``status``, ``code`` and the gateway's ``message``."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message, code_or_status(code, status), param)
        self.status = status


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C while following a job: the job was asked to cancel; ``cancel_error`` says why it could not be."""

    def __init__(self, job_id: str, cancel_error: str = ''):
        super().__init__(job_id)
        self.job_id, self.cancel_error = job_id, cancel_error


def code_or_status(code: Optional[str], http_status: int) -> ErrorCode:
    """An HTTP answer's code; from an answer without one (or with one this client does not know), its status's."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code_for_http_status(http_status)


def code_for_http_status(status: int) -> ErrorCode:
    """The code for an HTTP status that came without one (see most_general)."""
    return most_general([code for code, kind in ERRORS.items() if kind.http_status == status])


def grpc_code(error) -> ErrorCode:
    """A gRPC refusal's code (``error``: a grpc.RpcError): the gateway's, in the trailing metadata; from a
    gateway that sends none (or one this client does not know), the code its status stands for."""
    try:
        return ErrorCode(dict(error.trailing_metadata() or ()).get(GRPC_CODE_METADATA))
    except ValueError:
        name = error.code().name
        return most_general([code for code, kind in ERRORS.items() if kind.grpc_status == name])


def most_general(codes: List[ErrorCode]) -> ErrorCode:
    """Of the codes a status stands for, the most general: internal_error where it is one of them (500
    and INTERNAL also stand for store_failed), else the first the table lists (invalid_request for 400,
    executor_unavailable for 503); internal_error for a status the table does not use."""
    if not codes or ErrorCode.INTERNAL_ERROR in codes:
        return ErrorCode.INTERNAL_ERROR
    return codes[0]


def service_error(message: str, code: ErrorCode, param: Optional[str] = None) -> ServiceError:
    """The exception for a refusal with ``code``: ExecutorUnavailable for an executor that is down."""
    kind = ExecutorUnavailable if code == ErrorCode.EXECUTOR_UNAVAILABLE else ServiceError
    return kind(message, code, param)


def http_refusal(answer) -> ServiceError:
    """The ServiceError for an HTTP error answer (a ``requests`` response): OpenAI's ``{"error":
    {"message", "code", "param"}}``, or Jina's routes' ``{"detail": ..., "code": ...}``; plain text gives the status alone."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    status = answer.status_code
    error = body.get('error') if isinstance(body, dict) else None
    if isinstance(error, dict):
        return service_error(str(error.get('message')), code_or_status(error.get('code'), status), error.get('param'))
    if isinstance(body, dict) and 'detail' in body:  # Jina's own routes: FastAPI's shape, with the code beside it
        return service_error(str(body['detail']), code_or_status(body.get('code'), status))
    return service_error(f'HTTP {status}: {answer.text[:200]}', code_for_http_status(status))
