"""The web page: speak, upload or type, and watch the transcript and the images arrive.

    GET /ui, /ui/           the page (static/index.html); open, like its files: it asks for the token itself
    GET /ui/<file>          its styles and scripts, from static/ only, by exact name
    GET /ui/schema.json     what the page is built from (open): the parameter models' JSON schemas, from
                            which it builds its settings form, and where each error code shows on it
    GET /ui/parameters      the executors' parameter schemas as configured (their defaults): needs the token

The page talks to the job API (POST /v1/jobs, WS /v1/jobs/{id}/events, DELETE /v1/jobs/{id}), and for an
image to the Flow's own HTTP routes (POST /caption, /tag, /restyle), with the
token from its own field, as ``Authorization: Bearer`` and, on the WebSocket, as the subprotocol
``bearer.<token>``. It loads nothing from any other host. It reads an error's ``code`` (s2i/contracts/errors.py)
to place it, and shows its message as text.

``router`` holds the routes; they take the API keys and the Flow from the app (gateway/dependencies.py),
and refuse with CodedErrors that the app's error handlers answer (gateway/errors.py).
"""

from functools import lru_cache
from pathlib import Path
from typing import Any, Dict

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from gateway.dependencies import get_flow, require_key
from gateway.flow_client import FlowClient
from s2i.contracts.errors import ERRORS, PAGE_PLACES, CodedError, ErrorCode
from s2i.contracts.stable_diffusion import GenerationParams, RestyleParams
from s2i.contracts.whisper import TranscriptionParams

STATIC = Path(__file__).parent / 'static'
CONTENT_TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
}
# Everything the page may load from here: no default-src beyond this server, no inline scripts. Its
# WebSockets too: CSP 3's 'self' takes ws: and wss: to this same host and port, and no other.
SECURITY_HEADERS = {
    'Content-Security-Policy': "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                               "connect-src 'self'; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-cache',
}


def static_files() -> Dict[str, Path]:
    """The page's files by name (``app.js``): the only paths /ui/<file> answers, so nothing else is reachable."""
    return {path.name: path for path in sorted(STATIC.iterdir()) if path.suffix in CONTENT_TYPES and path.is_file()}


@lru_cache(maxsize=1)
def page_schema() -> Dict[str, Any]:
    """What the page builds itself from. ``settings``: every generation parameter is a settings field
    (a field added to GenerationParams shows up on the page by itself); ``restyle``: /restyle's
    parameters (its strength); ``transcription``: Whisper's (the spoken language). ``errors``: each
    code's place on the page, one of ``places``. (The models' schemas name their bounds as JSON Schema
    does, optional fields' too: s2i.contracts.params.StandardBounds.)"""
    return {
        'settings': GenerationParams.model_json_schema(),
        'restyle': RestyleParams.model_json_schema(),
        'transcription': TranscriptionParams.model_json_schema(),
        'places': list(PAGE_PLACES),
        'errors': {code.value: {'page': kind.page} for code, kind in ERRORS.items()},
    }


def served(path: Path) -> Response:
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)


FILES = static_files()
router = APIRouter(prefix='/ui')


@router.get('', include_in_schema=False)
@router.get('/', include_in_schema=False)
async def page() -> Response:
    return served(FILES['index.html'])


@router.get('/schema.json', include_in_schema=False)
async def schema() -> Response:
    return JSONResponse(page_schema(), headers=SECURITY_HEADERS)


@router.get('/parameters', include_in_schema=False, dependencies=[Depends(require_key)])
async def parameters(flow: FlowClient = Depends(get_flow)) -> Dict[str, Any]:
    """What each executor takes, with its configured defaults. The token is checked here (require_key),
    as the token middleware lets every GET under /ui through."""
    schemas = await flow.schemas() or []
    return {'object': 'list', 'data': [{'executor': schema.executor, 'json_schema': schema.json_schema}
                                       for schema in schemas]}


@router.get('/{name}', include_in_schema=False)
async def file(name: str) -> Response:
    if name not in FILES:
        raise CodedError(f'no file {name[:40]!r} in the page', ErrorCode.NOT_FOUND)
    return served(FILES[name])


def ui_router(guard=None) -> APIRouter:
    """``router``, for a gateway that still asks for it by calling this: ``guard`` is no longer used, as the
    routes take the API keys and the Flow from the app (gateway/dependencies.py)."""
    return router
