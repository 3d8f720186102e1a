"""The Flow's front door: Jina's gRPC and HTTP servers behind one token and one parameter check.

flow.yml names this component (``gateway: uses: gateway/config.yml``), so every way of starting the
Flow runs it: ``jina flow --uses flow.yml``, ``python -m s2i.serve``, the image and the manifests
in deploy/. What it adds to Jina's own gateway, in the order a request meets it:

1. **Token.** With S2I_AUTH_TOKEN set when the gateway starts, every request needs
   ``authorization: Bearer <token>`` (gRPC metadata or HTTP header); health checks stay open.
2. **Parameters.** A key that no executor of the Flow owns is refused, naming it. Each executor
   lists its keys on ``/parameters``; the gateway asks once, on the first request with parameters.
3. **Images over HTTP.** JSON cannot carry bytes: HTTP answers get each image's PNG as a
   ``data:`` URI in ``data_uri`` instead of bytes in ``png``. gRPC answers keep the bytes.

HTTP routes of later features go into ``HTTPServer.app``, behind the same token check.
"""

import asyncio
import hmac
import os
import time
from typing import Any, List, Mapping, Optional, Sequence

import grpc
from docarray import DocList
from jina.enums import ProtocolType
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from s2i.docs import ParameterSchema
from s2i.encoding import png_data_uri
from s2i.params import PARAMETERS_ENDPOINT
from s2i.runtime import AUTH_TOKEN_VARIABLE, UNAUTHENTICATED

OPEN_GRPC_METHODS = frozenset({'/grpc.health.v1.Health/Check', '/jina.JinaGatewayDryRunRPC/dry_run'})  # readiness, jina ping
OPEN_HTTP_ROUTES = frozenset({('GET', '/'), ('GET', '/dry_run')})  # readiness probe, jina ping
CHECKED_GRPC_METHODS = frozenset({'/jina.JinaRPC/Call', '/jina.JinaSingleDataRequestRPC/process_single_data'})  # requests that carry parameters
UNCHECKED_ENDPOINTS = frozenset({PARAMETERS_ENDPOINT, '_jina_dry_run_'})
RETRY_SECONDS = 10  # after the executors could not be asked for their parameters


class SpeechToImageGateway(CompositeBaseServer, BaseGateway):
    """One server per protocol of the Flow (gRPC and HTTP), sharing the token and the parameter check."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        token = os.environ.get(AUTH_TOKEN_VARIABLE) or None  # None: no check
        parameters = FlowParameters(self._request_handler.streamer, self.logger)
        servers = {ProtocolType.GRPC: GRPCServer, ProtocolType.HTTP: HTTPServer}
        self.servers = []
        for server_kwargs in self._server_kwargs:
            protocol = server_kwargs['runtime_args']['protocol']
            if protocol not in servers:
                raise ValueError(f'the speech-to-image gateway serves grpc and http, not {protocol}')
            self.servers.append(servers[protocol](token=token, parameters=parameters, **server_kwargs))
        self.gateways = self.servers  # what Jina's composite servers call them too


# 1. The token

def is_authorized(authorization: Optional[str], token: Optional[str]) -> bool:
    """Whether an ``authorization`` header or metadata value carries ``token`` (always, without a token)."""
    if token is None:
        return True
    scheme, _, given = (authorization or '').partition(' ')
    # compare_digest: the time taken does not reveal how much of a guess was right.
    return scheme.lower() == 'bearer' and hmac.compare_digest(given.strip().encode(), token.encode())


class RequireToken:
    """ASGI middleware: HTTP requests and WebSocket connections without the token are refused."""

    def __init__(self, app, token: Optional[str]):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope['type'] in ('http', 'websocket') and not self._allowed(scope):
            from starlette.responses import JSONResponse
            from starlette.websockets import WebSocketClose

            if scope['type'] == 'websocket':
                refusal = WebSocketClose(code=1008, reason=UNAUTHENTICATED)  # 1008: policy violation
            else:
                refusal = JSONResponse({'detail': UNAUTHENTICATED}, status_code=401, headers={'WWW-Authenticate': 'Bearer'})
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        # CORS preflights carry no credentials by design; the request they precede does.
        if (scope.get('method'), scope['path']) in OPEN_HTTP_ROUTES or scope.get('method') == 'OPTIONS':
            return True
        headers = dict(scope['headers'])  # lower-case byte names
        return is_authorized(headers.get(b'authorization', b'').decode('latin-1'), self.token)


# 2. The parameters

def unknown_parameters(parameters: Mapping[str, Any], schemas: Sequence[ParameterSchema]) -> Optional[str]:
    """Why no executor of the Flow described by ``schemas`` would read some of ``parameters``; None if all are known.

    Allowed: any executor's keys, Jina's own keys (``__...``), and an executor's name holding a dict
    of that executor's keys (Jina's scoped form, ``{"stable_diffusion": {"steps": 30}}``)."""
    keys_of = {schema.executor: sorted(schema.keys) for schema in schemas}
    known = sorted({key for keys in keys_of.values() for key in keys})
    unknown, scoped = [], []
    for key, value in parameters.items():
        if key in keys_of:  # Jina reads an executor's name as its scoped section, whatever else owns the key
            if not isinstance(value, Mapping):
                return f'{key!r} names an executor of the Flow: send a dict of its parameters, e.g. {{"{key}": {{...}}}}'
            scoped += [(key, inner) for inner in value if inner not in keys_of[key]]
        elif not (key.startswith('__') or key in known):
            unknown.append(key)
    if unknown:
        return f'unknown parameter(s) {", ".join(map(repr, unknown))}; known: {", ".join(known)}'
    if scoped:
        executor = scoped[0][0]
        names = ', '.join(repr(inner) for owner, inner in scoped if owner == executor)
        return f'unknown parameter(s) {names} for {executor}; known: {", ".join(keys_of[executor])}'
    return None


class FlowParameters:
    """Every executor's parameter keys, asked on ``/parameters`` once and kept."""

    def __init__(self, streamer, logger):
        self.streamer = streamer
        self.logger = logger
        self.schemas: Optional[List[ParameterSchema]] = None  # kept until the gateway restarts
        self.ask_again_at = 0.0
        self.asking = asyncio.Lock()

    async def refusal(self, endpoint: Optional[str], parameters: Optional[Mapping[str, Any]]) -> Optional[str]:
        """The error for a request to ``endpoint`` with ``parameters``, or None to let it through."""
        if not parameters or endpoint in UNCHECKED_ENDPOINTS:
            return None
        schemas = await self._schemas()
        return None if schemas is None else unknown_parameters(parameters, schemas)

    async def _schemas(self) -> Optional[List[ParameterSchema]]:
        async with self.asking:
            if self.schemas is None and time.monotonic() >= self.ask_again_at:
                try:
                    self.schemas = await self._ask_executors()
                except Exception as e:
                    # Fail open: requests go through unchecked (each executor still checks the values of
                    # its own keys), and the executors are asked again after a pause, not on every request.
                    self.ask_again_at = time.monotonic() + RETRY_SECONDS
                    self.logger.warning(f'could not ask the executors for their parameters (again in {RETRY_SECONDS} s): {e!r}')
            return self.schemas

    async def _ask_executors(self) -> List[ParameterSchema]:
        schemas = []
        empty = DocList[ParameterSchema]()  # one request without documents: each executor appends its own
        async for docs, error in self.streamer.stream(docs=empty, exec_endpoint=PARAMETERS_ENDPOINT, return_type=DocList[ParameterSchema]):
            if error:
                raise RuntimeError(f'{error.name} in {error.executor}: {error.args}')
            schemas += docs
        return schemas


# 3. The servers

class GRPCServer(GRPCGateway):
    """Jina's gRPC gateway, with the token and the parameter check as a server interceptor."""

    def __init__(self, token: Optional[str], parameters: FlowParameters, **kwargs):
        self.guard = GRPCGuard(token, parameters)  # before super(): its constructor asks for the interceptors
        super().__init__(**kwargs)

    def aio_tracing_server_interceptors(self):
        return [self.guard, *(super().aio_tracing_server_interceptors() or [])]


class GRPCGuard(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without the token, INVALID_ARGUMENT for unknown parameters; no executor sees either."""

    def __init__(self, token: Optional[str], parameters: FlowParameters):
        self.token = token
        self.parameters = parameters

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in OPEN_GRPC_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if not is_authorized(metadata.get('authorization'), self.token):
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        if method in CHECKED_GRPC_METHODS:
            return self._checking_parameters(handler)
        return handler

    def _checking_parameters(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def refusal(request) -> Optional[str]:
            return await self.parameters.refusal(request.header.exec_endpoint, request.parameters)

        async def call(request_iterator, context):
            refused = None

            async def checked():
                nonlocal refused
                async for request in request_iterator:
                    refused = await refusal(request)
                    if refused:
                        async for _ in request_iterator:  # see drain_then_abort
                            pass
                        return
                    yield request

            async for response in handler.stream_stream(checked(), context):
                yield response
            if refused:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)

        async def single(request, context):
            if refused := await refusal(request):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
            return await handler.unary_unary(request, context)

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            single, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
        )


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with ``code``, never parsing the request."""

    async def abort(request_or_iterator, context):
        await context.abort(code, message)

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
    return make(behaviour, request_deserializer=lambda message: None, response_serializer=handler.response_serializer)


class HTTPServer(HTTPGateway):
    """Jina's HTTP routes (a POST per executor endpoint, /dry_run, /status) and ours, behind the token."""

    def __init__(self, token: Optional[str], parameters: FlowParameters, **kwargs):
        self.token = token
        self.parameters = parameters
        super().__init__(**kwargs)

    @property
    def app(self):
        from jina.helper import extend_rest_interface
        from jina.serve.runtimes.gateway.http_fastapi_app_docarrayv2 import get_fastapi_app

        app = extend_rest_interface(get_fastapi_app(
            streamer=HTTPStreamer(self.streamer, self.parameters),
            title=self.title, description=self.description, no_crud_endpoints=self.no_crud_endpoints,
            no_debug_endpoints=self.no_debug_endpoints, expose_endpoints=self.expose_endpoints,
            expose_graphql_endpoint=self.expose_graphql_endpoint, cors=self.cors, logger=self.logger,
            tracing=self.tracing, tracer_provider=self.tracer_provider,
        ))
        # Routers of later features go here: app.include_router(...). The token check covers them too.
        app.add_middleware(RequireToken, token=self.token)
        return app


class HTTPStreamer:
    """Jina's streamer as the HTTP routes see it: unknown parameters are refused (422), and PNG
    bytes in the answers become data URIs."""

    def __init__(self, streamer, parameters: FlowParameters):
        self.streamer = streamer
        self.parameters = parameters

    def __getattr__(self, name):
        return getattr(self.streamer, name)  # everything else is Jina's streamer

    async def stream_docs(self, docs, exec_endpoint: Optional[str] = None, parameters: Optional[dict] = None,
                          return_results: bool = False, **kwargs):
        from fastapi import HTTPException

        if refused := await self.parameters.refusal(exec_endpoint, parameters):
            raise HTTPException(status_code=422, detail=refused)
        async for answer in self.streamer.stream_docs(docs, exec_endpoint=exec_endpoint, parameters=parameters,
                                                      return_results=return_results, **kwargs):
            if return_results:  # a whole response, as the POST routes ask for; else documents (/dry_run)
                images_as_data_uris(answer)
            yield answer


def images_as_data_uris(response) -> None:
    """Move each image's PNG from ``png`` (bytes) into ``data_uri``, in the answer's ``matches``.

    On the protobuf, before the documents are parsed: the gateway parses them with models it builds
    from the executors' JSON schemas, where ``bytes`` became ``str``, so a PNG would not parse."""
    content = response.proto_with_data.data
    if content.WhichOneof('documents') != 'docs':
        return
    for doc in content.docs.docs:
        if 'matches' not in doc.data:
            continue
        for image in doc.data['matches'].doc_array.docs:
            if 'png' in image.data and image.data['png'].WhichOneof('content') == 'blob':
                image.data['data_uri'].text = png_data_uri(image.data['png'].blob)
                image.data['png'].Clear()  # None
