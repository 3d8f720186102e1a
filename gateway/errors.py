"""Errors of the gateway's own routes (``/v1/...``) in OpenAI's shape, so that every OpenAI SDK
reads them: ``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status.

Jina's own routes keep FastAPI's ``{"detail": ...}``; ``refusal`` picks the shape by path, so the
token check and the body limit answer each route in the shape its clients expect."""

from typing import Optional

API_PREFIX = '/v1'

# OpenAI's error types, by status: what its SDKs map to exception classes.
TYPES = {400: 'invalid_request_error', 401: 'invalid_request_error', 404: 'invalid_request_error',
         409: 'invalid_request_error', 413: 'invalid_request_error', 422: 'invalid_request_error',
         429: 'rate_limit_error', 500: 'server_error', 503: 'server_error'}


class APIError(Exception):
    """Raised by a ``/v1`` route: answered with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {'error': {'message': message, 'type': TYPES.get(status, 'invalid_request_error'), 'param': param, 'code': code}}


def refusal(path: str, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None):
    """A JSONResponse for a refused request to ``path``: OpenAI's shape under /v1, FastAPI's elsewhere."""
    from starlette.responses import JSONResponse

    body = error_body(status, message, code=code) if is_api_path(path) else {'detail': message}
    return JSONResponse(body, status_code=status, headers=headers)


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + '/')


async def api_error(request, error: APIError):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(error.status, error.message, error.param, error.code), status_code=error.status)
