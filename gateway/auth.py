"""The token: with S2I_AUTH_TOKEN set when the gateway starts, every request needs
``authorization: Bearer <key>`` (an HTTP header, gRPC metadata, or for a browser's WebSocket the
subprotocol ``bearer.<key>``). Health checks, the page's files and CORS preflights stay open.

S2I_AUTH_TOKEN may hold several keys, comma-separated. A job belongs to the key that submitted it,
and limits count per key; logs and job records name a key by the start of its SHA-256, never by itself.
"""

import hashlib
import hmac
from typing import Any, Dict, Mapping, Optional

from starlette.websockets import WebSocketClose

from gateway.errors import refusal
from s2i.contracts.errors import ErrorCode
from s2i.runtime import INTERNAL_KEY_PARAMETER, UNAUTHENTICATED

ANONYMOUS = 'anonymous'  # the owner of every job when the service has no token
OPEN_HTTP_ROUTES = frozenset({('GET', '/'), ('GET', '/dry_run')})  # readiness probe, jina ping
OPEN_HTTP_PAGES = '/ui'  # GET /ui and its files: the page asks for the token itself, and sends it with every request
POLICY_VIOLATION = 1008  # the WebSocket close code for a refused connection


def api_keys(token: Optional[str]) -> Dict[str, str]:
    """The keys ``token`` holds (one, or several separated by commas), each with its name: the start of
    its SHA-256, so that logs and job records never hold a key itself."""
    keys = [key.strip() for key in (token or '').split(',') if key.strip()]
    return {key: 'key-' + hashlib.sha256(key.encode()).hexdigest()[:12] for key in keys}


def key_owner(authorization: Optional[str], keys: Dict[str, str]) -> Optional[str]:
    """The name of the key an ``authorization`` value (``Bearer <key>``) carries, None if none of
    ``keys``; ANONYMOUS when there are no keys."""
    if not keys:
        return ANONYMOUS
    scheme, _, given = (authorization or '').partition(' ')
    if scheme.lower() != 'bearer':
        return None
    given = given.strip().encode()
    # compare_digest, against every key: the time taken does not reveal how much of a guess was right.
    matches = [name for key, name in keys.items() if hmac.compare_digest(given, key.encode())]
    return matches[0] if matches else None


def is_authorized(authorization: Optional[str], token: Optional[str]) -> bool:
    """Whether an ``authorization`` value carries ``token``, or one of its keys (always, without a token)."""
    return key_owner(authorization, api_keys(token)) is not None


class ApiKeys:
    """The keys of S2I_AUTH_TOKEN, as the gateway checks them."""

    def __init__(self, token: Optional[str]):
        self.names = api_keys(token)

    def owner(self, authorization: Optional[str]) -> Optional[str]:
        """Who sends a request with this ``authorization`` (header or metadata); None: nobody we know."""
        return key_owner(authorization, self.names)


def signed(parameters: Optional[Mapping[str, Any]], key: Optional[str]) -> dict:
    """``parameters`` with the gateway's internal ``key`` (none without a token) in place of any a client
    sent: the executors answer only requests that come through the gateway."""
    parameters = dict(parameters or {})
    parameters.pop(INTERNAL_KEY_PARAMETER, None)  # a client's own guess never travels on
    if key:
        parameters[INTERNAL_KEY_PARAMETER] = key
    return parameters


def bearer_subprotocol(protocols: str) -> str:
    """``bearer.<token>`` among a WebSocket's requested subprotocols, as an authorization value."""
    for protocol in protocols.split(','):
        if protocol.strip().startswith('bearer.'):
            return 'Bearer ' + protocol.strip()[len('bearer.'):]
    return ''


def is_open(scope) -> bool:
    """Requests any caller may send: the readiness probes, CORS preflights (they carry no credentials by
    design; the request they precede does) and the page's files."""
    method, path = scope.get('method'), scope['path']
    if (method, path) in OPEN_HTTP_ROUTES or method == 'OPTIONS':
        return True
    return method == 'GET' and (path == OPEN_HTTP_PAGES or path.startswith(OPEN_HTTP_PAGES + '/'))


class RequireToken:
    """ASGI middleware: HTTP requests and WebSocket connections without a key are refused; the routes
    read who sent them from ``scope['state']['owner']`` (``request.state.owner``)."""

    def __init__(self, app, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope['type'] in ('http', 'websocket'):
            owner = ANONYMOUS if is_open(scope) else self.keys.owner(authorization_of(scope))
            if owner is None:
                await refuse(scope, receive, send)
                return
            scope.setdefault('state', {})['owner'] = owner
        await self.app(scope, receive, send)


def authorization_of(scope) -> str:
    headers = dict(scope['headers'])  # lower-case byte names
    authorization = headers.get(b'authorization', b'').decode('latin-1')
    if not authorization and scope['type'] == 'websocket':
        # Browsers cannot set headers on a WebSocket: they may send the token as a subprotocol instead.
        authorization = bearer_subprotocol(headers.get(b'sec-websocket-protocol', b'').decode('latin-1'))
    return authorization


async def refuse(scope, receive, send) -> None:
    if scope['type'] == 'websocket':
        await WebSocketClose(code=POLICY_VIOLATION, reason=UNAUTHENTICATED)(scope, receive, send)
        return
    await refusal(scope['path'], ErrorCode.INVALID_API_KEY, UNAUTHENTICATED)(scope, receive, send)

