"""Token authentication for the Flow's gateway: ``S2I_AUTH_TOKEN`` in the gateway's environment.

Clients send ``authorization: Bearer <token>`` (gRPC metadata, or the HTTP ``Authorization``
header); anything else is refused in the gateway, before any executor sees the request.
Health checks stay open: the Flow's own readiness probes (gRPC health, ``GET /``) and
``jina ping`` / ``Client.is_flow_ready`` (dry_run, on both protocols) send no token.
``python -m s2i.serve`` puts this gateway in front when S2I_AUTH_TOKEN is set (s2i/serve.py).
"""

import hmac
import os
from typing import List, Optional

import grpc
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from s2i.runtime import AUTH_TOKEN_VARIABLE

UNAUTHENTICATED = 'missing or wrong token: send "authorization: Bearer <token>" (S2I_AUTH_TOKEN)'
OPEN_GRPC_METHODS = frozenset({'/grpc.health.v1.Health/Check', '/jina.JinaGatewayDryRunRPC/dry_run'})  # readiness, jina ping
OPEN_HTTP_ROUTES = frozenset({('GET', '/'), ('GET', '/dry_run')})  # readiness probe, jina ping


def configured_token() -> str:
    token = os.environ.get(AUTH_TOKEN_VARIABLE, '')
    if not token:
        raise RuntimeError(f'{AUTH_TOKEN_VARIABLE} is empty: the token gateway needs a token')
    return token


def is_authorized(authorization: Optional[str], token: str) -> bool:
    scheme, _, given = (authorization or '').partition(' ')
    # compare_digest: the time taken does not reveal how much of a guess was right.
    return scheme.lower() == 'bearer' and hmac.compare_digest(given.strip().encode(), token.encode())


class _TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self.token = token

    async def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        if handler_call_details.method in OPEN_GRPC_METHODS or is_authorized(metadata.get('authorization'), self.token):
            return await continuation(handler_call_details)
        return _refusal(await continuation(handler_call_details))


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with UNAUTHENTICATED."""

    async def abort(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)

    async def drain_then_abort(request_iterator, context):
        # Aborting while the client still streams makes its next write fail with INTERNAL, which hides
        # the reason; take what it sends (unparsed), then refuse.
        async for _ in request_iterator:
            pass
        await abort(request_iterator, context)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    behaviour = drain_then_abort if handler.request_streaming else abort
    return make(behaviour, request_deserializer=_unparsed, response_serializer=handler.response_serializer)


def _unparsed(message: bytes) -> None:
    return None  # a refused request is never parsed


class TokenGRPCGateway(GRPCGateway):
    def __init__(self, **kwargs):
        self.token = configured_token()  # before super(): its constructor asks for the interceptors
        super().__init__(**kwargs)

    def aio_tracing_server_interceptors(self):
        return [_TokenInterceptor(self.token), *(super().aio_tracing_server_interceptors() or [])]


class TokenHTTPGateway(HTTPGateway):
    def __init__(self, **kwargs):
        self.token = configured_token()
        super().__init__(**kwargs)

    @property
    def app(self):
        from fastapi.responses import JSONResponse

        app = super().app
        token = self.token

        @app.middleware('http')
        async def check_token(request, call_next):
            if (request.method, request.url.path) in OPEN_HTTP_ROUTES or is_authorized(request.headers.get('authorization'), token):
                return await call_next(request)
            return JSONResponse({'detail': UNAUTHENTICATED}, status_code=401, headers={'WWW-Authenticate': 'Bearer'})

        return app


GATEWAYS = {'grpc': TokenGRPCGateway, 'http': TokenHTTPGateway}


class TokenAuthGateway(CompositeBaseServer, BaseGateway):
    """The Flow's gRPC and HTTP servers, each refusing requests without the token."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.servers: List = [self._server_for(server_kwargs) for server_kwargs in self._server_kwargs]
        self.gateways = self.servers

    @staticmethod
    def _server_for(server_kwargs):
        protocol = str(server_kwargs['runtime_args']['protocol']).lower().split('.')[-1]
        if protocol not in GATEWAYS:
            raise ValueError(f'token authentication supports grpc and http, not {protocol}')
        return GATEWAYS[protocol](**server_kwargs)
