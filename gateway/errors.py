"""How the gateway answers an error: by its code (s2i/contracts/errors.py), never by its message.

A route of ours raises a ``CodedError`` (or a subclass: ParameterError, FlowFailure): its HTTP status
and OpenAI type come from the code's row of ERRORS, and the answer is OpenAI's
``{"error": {"message", "type", "param", "code"}}``, so that every OpenAI SDK reads it, with our
ErrorCode as ``code``. Jina's own routes keep FastAPI's shape, with the code beside it:
``{"detail": message, "code": code}``; ``refusal`` picks the shape by path, so the token check and the
body limit answer each route in the shape its clients expect. The status is the code's, on every route.
"""

import traceback
from typing import Optional

from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from s2i.contracts.errors import ERRORS, CodedError, ErrorCode, known_code
from s2i.contracts.params import MAX_QUOTED_CHARS, quote

API_PREFIX, PAGE_PREFIX = '/v1', '/ui'
# Starlette's own refusals (no route, wrong method, a form it cannot parse), by status.
CODE_OF_STATUS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.INPUT_TOO_LARGE,
                  415: ErrorCode.UNSUPPORTED_MEDIA_TYPE}
RETRY_AFTER_SECONDS = 5  # what a 429 suggests: a job takes seconds at least
# What an answer with one of these codes says besides its body, whichever route gives it.
HEADERS_OF_CODE = {ErrorCode.INVALID_API_KEY: {'WWW-Authenticate': 'Bearer'},
                   ErrorCode.RATE_LIMITED: {'Retry-After': str(RETRY_AFTER_SECONDS)}}


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + '/')


def is_our_path(path: str) -> bool:
    """Our own routes (the API and the page) answer in OpenAI's shape; Jina's in FastAPI's."""
    return is_api_path(path) or path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + '/')


def error_body(code: ErrorCode, message: str, param: Optional[str] = None) -> dict:
    code = ErrorCode(code)
    return {'error': {'message': message, 'type': ERRORS[code].openai_type, 'param': param, 'code': code.value}}


def refusal(path: str, code: ErrorCode, message: str, param: Optional[str] = None,
            headers: Optional[dict] = None) -> JSONResponse:
    """The answer to a refused request to ``path``: OpenAI's shape under /v1, FastAPI's elsewhere."""
    code = ErrorCode(code)
    body = error_body(code, message, param) if is_api_path(path) else {'detail': message, 'code': code.value}
    headers = {**HEADERS_OF_CODE.get(code, {}), **(headers or {})}
    return JSONResponse(body, status_code=ERRORS[code].http_status, headers=headers or None)


async def coded_error(request, error: CodedError) -> JSONResponse:
    """What the routes raise: OpenAI's shape on ours (under /v1 and /ui alike), FastAPI's on Jina's."""
    if not is_our_path(request.url.path):
        return refusal(request.url.path, error.code, error.message)
    headers = HEADERS_OF_CODE.get(error.code)
    return JSONResponse(error_body(error.code, error.message, error.param), status_code=error.kind.http_status, headers=headers)


async def invalid_request(request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without its echo of the input (twice, whole): the first problem, quoted short.
    Under /v1, a 400 naming the field (invalid_parameter), or invalid_request when no field is to blame."""
    first = error.errors()[0]
    where = '.'.join(str(part) for part in first['loc'])
    message = f'invalid request: {where}: {first["msg"]}, got {quote(first.get("input"))}'
    if not is_api_path(request.url.path):
        return refusal(request.url.path, ErrorCode.INVALID_REQUEST, message)
    # ('body',) is the body as a whole, ('body', 10) a place in JSON that does not parse: no field to blame
    named = len(first['loc']) > 1 and isinstance(first['loc'][-1], str) and first['type'] != 'json_invalid'
    field = first['loc'][-1] if named else None
    code = ErrorCode.INVALID_PARAMETER if field else ErrorCode.INVALID_REQUEST
    return refusal(request.url.path, code, message, param=field)


async def http_error(request, error: HTTPException) -> JSONResponse:
    """Starlette's HTTP errors (unknown paths, wrong methods; on Jina's routes an executor's failure, a
    500) by the code their status stands for; a status outside the table keeps FastAPI's own answer."""
    fallback = ErrorCode.INTERNAL_ERROR if error.status_code >= 500 else ErrorCode.INVALID_REQUEST
    code = CODE_OF_STATUS.get(error.status_code, fallback)
    if not is_api_path(request.url.path) and ERRORS[code].http_status != error.status_code:
        return await http_exception_handler(request, error)  # e.g. Jina's 499 for a client that left
    return refusal(request.url.path, code, str(error.detail), headers=getattr(error, 'headers', None))


async def too_deep(request, error: RecursionError) -> JSONResponse:
    return refusal(request.url.path, ErrorCode.INVALID_REQUEST, 'invalid request: the JSON is nested too deeply')


async def unparsable_body(request, error: Exception) -> JSONResponse:
    """A 400 for what docarray raised while FastAPI read the body into documents; anything else stays a 500."""
    frames = traceback.walk_tb(error.__traceback__)
    if not any(frame.f_globals.get('__name__') == 'fastapi.dependencies.utils' for frame, _ in frames):
        raise error
    message = f'invalid request: {type(error).__name__}: {str(error)[:MAX_QUOTED_CHARS]}'
    return refusal(request.url.path, ErrorCode.INVALID_REQUEST, message)


def add_error_handlers(app) -> None:
    """Every error the app's routes raise, answered in the shape of the route's surface."""
    app.add_exception_handler(CodedError, coded_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)  # under /v1: unknown paths, wrong methods
    app.add_exception_handler(RecursionError, too_deep)
    for error in (TypeError, ValueError):  # docarray's own field parsing, e.g. a 200-deep tensor
        app.add_exception_handler(error, unparsable_body)


def document_error(doc, input_field: Optional[str] = None) -> CodedError:
    """A failed document's error as a route answers it: its code, and the field to blame (the one the
    executor named, else ``input_field`` for an error of the input itself: the audio, the image)."""
    code = known_code(doc.error_code)
    param = doc.error_param or (input_field if ERRORS[code].page == 'input' else None)
    return CodedError(doc.error, code, param)
