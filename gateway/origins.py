"""Which web pages may use this service from a browser: the ``Origin`` check.

A browser lets any page send a form POST, or open a WebSocket, to any address, the user's own
127.0.0.1 included, and reads what a WebSocket receives. Without a token (the default), a page on
another site open in the same browser could then submit jobs and read every job's transcript and
images. A browser always sends ``Origin`` with a WebSocket handshake and with a cross-site POST, and a
page cannot forge it, so the gateway lets through:

- requests without ``Origin``: programs (curl, the SDKs, client.py), and browsers' own same-site GETs;
- same-origin requests: the page at /ui, served by this gateway (``Origin`` names the ``Host`` asked for);
- the origins listed in the gateway's ``allowed_origins`` setting (S2I_ALLOWED_ORIGINS, comma-separated,
  each ``scheme://host[:port]``, e.g. ``https://studio.example.com``).

Anything else is refused before the token check and before any route: a WebSocket handshake with close
code 1008, and a POST, PUT, PATCH or DELETE with HTTP 403, code ``origin_not_allowed``. GETs stay open:
without CORS headers, which this gateway never sends, a page on another site cannot read their answers.
"""

from typing import Iterable, Optional, Tuple
from urllib.parse import urlsplit

from starlette.websockets import WebSocketClose

from gateway.errors import refusal
from s2i.contracts.errors import ErrorCode
from s2i.contracts.params import quote

ORIGINS_VARIABLE = 'S2I_ALLOWED_ORIGINS'
STATE_CHANGING = frozenset({'POST', 'PUT', 'PATCH', 'DELETE'})
DEFAULT_PORTS = {'http': 80, 'ws': 80, 'https': 443, 'wss': 443}


def origin_key(origin: str) -> Optional[Tuple[str, int]]:
    """``(host, port)`` of an origin such as ``http://LocalHost:8322`` (lower-case host, default port
    filled in); None for what names no host (``null``, from sandboxed frames and files)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port over 65535, a malformed IPv6 address
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def host_key(host: str, origin: str) -> Optional[Tuple[str, int]]:
    """The ``Host`` header as an origin of the same scheme as ``origin`` would name it."""
    scheme = urlsplit(origin.strip()).scheme or 'http'
    return origin_key(f'{scheme}://{host}')


class CheckOrigin:
    """ASGI middleware: refuses cross-site WebSocket handshakes and state-changing requests (see above)."""

    def __init__(self, app, allowed_origins: Iterable[str] = ()):
        self.app = app
        self.allowed = {key for key in map(origin_key, allowed_origins) if key is not None}

    async def __call__(self, scope, receive, send):
        if scope['type'] == 'websocket' or (scope['type'] == 'http' and scope.get('method') in STATE_CHANGING):
            headers = dict(scope['headers'])  # lower-case byte names
            origin = headers.get(b'origin')
            if origin is not None and not self.allows(origin.decode('latin-1'), headers.get(b'host', b'').decode('latin-1')):
                await self._refuse(scope, receive, send, origin.decode('latin-1'))
                return
        await self.app(scope, receive, send)

    def allows(self, origin: str, host: str) -> bool:
        key = origin_key(origin)
        return key is not None and (key == host_key(host, origin) or key in self.allowed)

    async def _refuse(self, scope, receive, send, origin: str) -> None:
        message = (f'cross-site request refused: origin {quote(origin)} is not this service\'s own; list it in '
                   f'allowed_origins (gateway/config.yml) or {ORIGINS_VARIABLE} to allow it')
        if scope['type'] == 'websocket':
            # 1008: policy violation; a close reason holds at most 123 bytes, so it names the setting, not the origin
            await WebSocketClose(code=1008, reason=f'cross-site WebSocket refused: origin not in {ORIGINS_VARIABLE}')(scope, receive, send)
            return
        await refusal(scope['path'], ErrorCode.ORIGIN_NOT_ALLOWED, message)(scope, receive, send)
