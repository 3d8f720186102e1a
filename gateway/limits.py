"""What the gateway refuses before any executor works: too much, or what its transport cannot carry.

Each refusal names its limit and setting. The limits are the gateway's settings (gateway/settings.py):
a request is refused whole, at the door, so that one caller cannot make the executors (or the
gateway itself) hold gigabytes, and so that documents are never dropped on the way (Jina's HTTP
route answers only the first ``request_size`` documents of a longer request: above the limit, a
request is refused, never cut short).
"""

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from gateway.errors import refusal
from gateway.settings import default
from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import ErrorCode
from s2i.contracts.params import MAX_QUOTED_CHARS, quote


@dataclass(frozen=True)
class RequestLimits:
    """The request limits among the gateway's settings (their defaults and meaning: GatewaySettings)."""

    max_documents: int = default('max_documents')  # Jina's own clients send 100 per request by default
    max_request_bytes: int = default('max_request_bytes')
    max_depth: int = default('max_depth')

    def __post_init__(self):
        for name in ('max_documents', 'max_request_bytes', 'max_depth'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')

    def too_many_documents(self, count: int) -> Optional[str]:
        if count > self.max_documents:
            return (f'too many documents: {count} in one request, the limit is {self.max_documents} '
                    f'(max_documents); send them in several requests')
        return None

    @property
    def too_large(self) -> str:
        return f'request too large: more than {self.max_request_bytes} bytes (max_request_bytes)'


def unsendable(value: Any, where: str, max_depth: int, depth: int = 0) -> Optional[str]:
    """Why ``value`` (JSON read from a client) cannot travel to the executors; None when it can.

    Jina carries parameters as a protobuf Struct (numbers are doubles; NaN and infinity do not
    parse back) and documents as protobuf messages (strings are UTF-8): without this check, each of
    these failed deep in Jina's serialiser as an HTTP 500 without a message."""
    if depth > max_depth:
        return f'{where[:MAX_QUOTED_CHARS]}... is nested more than {max_depth} levels deep (max_depth)'
    if isinstance(value, float) and not math.isfinite(value):
        return f'{where} must be a finite number, got {value!r}'  # NaN, Infinity, or 1e400 read as infinity
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return f'{where} is too large a number ({quote(value)}): integers travel as doubles'
    if isinstance(value, str):
        try:
            value.encode('utf-8')
        except UnicodeEncodeError as e:
            return f'{where} is not valid text: {e.reason} at position {e.start} (a lone UTF-16 surrogate?)'
    if isinstance(value, Mapping):
        for key, inner in value.items():
            inside = f'{where}.{key}'[:MAX_QUOTED_CHARS * 2]  # a path of keys, as long as the client likes: cut
            if problem := unsendable(key, f'{where} key', max_depth, depth + 1) or unsendable(inner, inside, max_depth, depth + 1):
                return problem
    elif isinstance(value, (list, tuple)):
        for index, inner in enumerate(value):
            if problem := unsendable(inner, f'{where}[{index}]', max_depth, depth + 1):
                return problem
    return None


def invalid_document(doc: Any, index: int, max_depth: int) -> Optional[str]:
    """Why document ``index`` of an HTTP request is not a PromptDoc the executors can read; None if it is.

    The HTTP route builds documents from the executors' JSON schemas, which lose the int32 ranges and
    the tensor checks of s2i/contracts/documents.py: validate against the real type."""
    from pydantic import ValidationError

    fields = doc.model_dump(exclude_none=True) if hasattr(doc, 'model_dump') else dict(doc)
    if problem := unsendable(fields, f'data[{index}]', max_depth):
        return problem
    try:
        PromptDoc.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        field = '.'.join(str(part) for part in first['loc'])
        return f'data[{index}].{field}: {first["msg"]}, got {quote(first.get("input"))}'
    except (ValueError, TypeError) as e:  # docarray's own tensor parsing
        return f'data[{index}]: {type(e).__name__}: {str(e)[:MAX_QUOTED_CHARS]}'
    return None


class BodyTooLarge(Exception):
    """Raised into the app by LimitBody's ``receive`` when the body goes past the byte limit."""


class LimitBody:
    """ASGI middleware: an HTTP body over the byte limit is refused with 413, whether it announces its
    length (Content-Length: before anything reads it) or streams in chunks (counted as the app reads
    them). It streams: the gateway never holds a body twice, and a multipart file goes on to Starlette's
    spooled temporary file as it arrives."""

    def __init__(self, app, limits: RequestLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        announced = dict(scope['headers']).get(b'content-length', b'').decode('latin-1')
        if announced.isdigit() and int(announced) > self.limits.max_request_bytes:
            return await self._refuse(scope, receive, send)
        size, too_large, answering = 0, False, False

        async def counted():
            nonlocal size, too_large
            message = await receive()
            if message['type'] == 'http.request':
                size += len(message.get('body', b''))
                if size > self.limits.max_request_bytes:
                    too_large = True
                    raise BodyTooLarge(self.limits.too_large)
            return message

        async def unless_too_large(message):
            nonlocal answering
            if too_large and not answering:
                return  # the app's own answer to a body it could not finish reading (FastAPI's 400): ours goes instead
            answering = answering or message['type'] == 'http.response.start'
            await send(message)

        try:
            await self.app(scope, counted, unless_too_large)
        except BodyTooLarge:
            pass
        if too_large and not answering:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        await refusal(scope['path'], ErrorCode.INPUT_TOO_LARGE, self.limits.too_large)(scope, receive, send)
