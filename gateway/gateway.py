"""The Flow's front door: Jina's gRPC and HTTP servers behind one token and one parameter check.

flow.yml names this component (``gateway: uses: gateway/config.yml``), so every way of starting the
Flow runs it: ``jina flow --uses flow.yml``, ``python -m s2i.serve``, the image and the manifests
in deploy/. What it adds to Jina's own gateway, in the order a request meets it:

1. **Origin** (origins.py). A browser page of another site may not open a WebSocket or send a
   POST, PUT, PATCH or DELETE here; the page at /ui and programs (no ``Origin``) may.
2. **Token.** With S2I_AUTH_TOKEN set when the gateway starts, every request needs
   ``authorization: Bearer <token>`` (gRPC metadata or HTTP header); health checks stay open.
   Unknown gRPC methods get the same answer, so that a caller without the token learns nothing.
3. **Limits** (limits.py): documents per request, request bytes, and over HTTP what Jina's
   transport cannot carry (NaN, lone surrogates, deep nesting, out-of-range fields), refused
   whole with a status that names the limit, before any executor works.
4. **Parameters.** A key that no executor of the Flow owns is refused, naming it. Each executor
   lists its keys on ``/parameters``; the gateway asks once, on the first request with parameters.
5. **Images over HTTP.** JSON cannot carry bytes: HTTP answers get each image's PNG as a
   ``data:`` URI in ``data_uri`` instead of bytes in ``png``. gRPC answers keep the bytes.
6. **Failures.** An executor's traceback goes to the gateway's log; the client gets the
   exception's name, the executor and the request id, never server paths.

HTTP routes of later features go into ``HTTPServer.app``, behind the same token check.
"""

import asyncio
import hashlib
import hmac
import os
import sqlite3
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
from docarray import DocList
from jina.enums import ProtocolType
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from gateway.errors import APIError, api_error, error_body, is_api_path, refusal
from gateway.flow_calls import FlowCalls
from gateway.jobs.routes import jobs_router
from gateway.jobs.runner import JobLimits, JobRunner
from gateway.jobs.store import open_store
from gateway.jobs.webhooks import ATTEMPTS as WEBHOOK_ATTEMPTS, Webhooks
from gateway.limits import LimitBody, RequestLimits, invalid_document, unsendable
from gateway.openai_routes import openai_router
from gateway.origins import ORIGINS_VARIABLE, CheckOrigin
from gateway.ui import ui_router
from s2i.contracts.documents import ParameterSchema
from s2i.encoding import png_data_uri
from s2i.contracts.params import MAX_QUOTED_CHARS, PARAMETERS_ENDPOINT, quote
from s2i.runtime import (
    AUTH_TOKEN_VARIABLE, DETAILS_LOGGED, cache_dir, EXECUTOR_UNAVAILABLE, INTERNAL_KEY_PARAMETER, UNAUTHENTICATED, internal_key,
    unreachable_executor,
)

OPEN_GRPC_METHODS = frozenset({'/grpc.health.v1.Health/Check', '/jina.JinaGatewayDryRunRPC/dry_run'})  # readiness, jina ping
OPEN_HTTP_ROUTES = frozenset({('GET', '/'), ('GET', '/dry_run')})  # readiness probe, jina ping
OPEN_HTTP_PAGES = '/ui'  # GET /ui and its files: the page asks for the token itself, and sends it with every request
CHECKED_GRPC_METHODS = frozenset({'/jina.JinaRPC/Call', '/jina.JinaSingleDataRequestRPC/process_single_data'})  # requests that carry parameters
UNCHECKED_ENDPOINTS = frozenset({PARAMETERS_ENDPOINT, '_jina_dry_run_'})
RETRY_SECONDS = 10  # after the executors could not be asked for their parameters
# The job store and webhooks, from the environment (README, "Configuration"):
REDIS_URL_VARIABLE = 'S2I_REDIS_URL'  # redis://host:port/db: gateways share jobs; unset: SQLite in JOBS_DB
JOBS_DB_VARIABLE = 'S2I_JOBS_DB'  # default: <cache dir>/jobs.sqlite3
WEBHOOK_HOSTS_VARIABLE = 'S2I_WEBHOOK_HOSTS'  # comma-separated; the gateway's webhook_hosts setting wins
WEBHOOK_SECRET_VARIABLE = 'S2I_WEBHOOK_SECRET'  # whsec_<base64>: signs each webhook (Standard Webhooks); unset: unsigned
# What the gateway alone reads from the environment (deploy/export.py gives them to it, not to the executors).
GATEWAY_VARIABLES = (REDIS_URL_VARIABLE, JOBS_DB_VARIABLE, WEBHOOK_HOSTS_VARIABLE, WEBHOOK_SECRET_VARIABLE, ORIGINS_VARIABLE)


class SpeechToImageGateway(CompositeBaseServer, BaseGateway):
    """One server per protocol of the Flow (gRPC and HTTP), sharing the token and the parameter check."""

    def __init__(self, max_documents: int = RequestLimits.max_documents,
                 max_request_bytes: int = RequestLimits.max_request_bytes, max_depth: int = RequestLimits.max_depth,
                 max_active_jobs: int = JobLimits.max_active_jobs,
                 max_active_jobs_per_key: int = JobLimits.max_active_jobs_per_key,
                 max_running_jobs: int = JobLimits.max_running_jobs, max_job_seconds: float = JobLimits.max_job_seconds,
                 job_ttl_seconds: float = JobLimits.job_ttl_seconds, webhook_hosts: Optional[List[str]] = None,
                 webhook_attempts: int = WEBHOOK_ATTEMPTS, allowed_origins: Optional[List[str]] = None, **kwargs):
        super().__init__(**kwargs)
        token = os.environ.get(AUTH_TOKEN_VARIABLE) or None  # None: no check
        guard = Guard(token, RequestLimits(max_documents, max_request_bytes, max_depth),
                      FlowParameters(self._request_handler.streamer, self.logger, internal_key(token)), self.logger)
        jobs = JobSettings(
            JobLimits(max_active_jobs, max_active_jobs_per_key, max_running_jobs, max_job_seconds, job_ttl_seconds),
            webhook_hosts=listed(webhook_hosts, WEBHOOK_HOSTS_VARIABLE), webhook_attempts=webhook_attempts,
        )
        origins = listed(allowed_origins, ORIGINS_VARIABLE)
        servers = {ProtocolType.GRPC: GRPCServer, ProtocolType.HTTP: partial(HTTPServer, jobs=jobs, allowed_origins=origins)}
        self.servers = []
        for server_kwargs in self._server_kwargs:
            protocol = server_kwargs['runtime_args']['protocol']
            if protocol not in servers:
                raise ValueError(f'the speech-to-image gateway serves grpc and http, not {protocol}')
            self.servers.append(servers[protocol](guard=guard, **server_kwargs))
        self.gateways = self.servers  # what Jina's composite servers call them too


def listed(value: Optional[List[str]], variable: str) -> List[str]:
    """A list setting: as configured, else the environment variable's comma-separated items."""
    if value is not None:
        return list(value)
    return [item.strip() for item in os.environ.get(variable, '').split(',') if item.strip()]


@dataclass(frozen=True)
class JobSettings:
    """What the HTTP server needs to run jobs; secrets and addresses come from the environment."""

    limits: JobLimits
    webhook_hosts: List[str]
    webhook_attempts: int

    def runner(self, flow: FlowCalls, logger) -> JobRunner:
        path = Path(os.environ.get(JOBS_DB_VARIABLE) or cache_dir() / 'jobs.sqlite3')
        spool = path.parent  # queued jobs' audio waits on disk beside the jobs (the system's /tmp may be RAM)
        try:
            store = open_store(os.environ.get(REDIS_URL_VARIABLE) or None, path, self.limits.job_ttl_seconds)
        except (OSError, sqlite3.Error) as e:  # a read-only home in a container: serve, but say what is lost
            logger.warning(f'cannot keep jobs in {path} ({e}): jobs are kept in memory and lost when the gateway '
                           f'stops; set {JOBS_DB_VARIABLE} to a writable file or {REDIS_URL_VARIABLE}')
            store, spool = open_store(None, Path(':memory:'), self.limits.job_ttl_seconds), None
        webhooks = Webhooks(self.webhook_hosts, os.environ.get(WEBHOOK_SECRET_VARIABLE) or None, self.webhook_attempts, logger=logger)
        return JobRunner(flow, store, webhooks, self.limits, logger, spool_dir=spool)


class Guard:
    """What both servers check and hide: the token, the limits, the parameters, internal errors."""

    def __init__(self, token: Optional[str], limits: RequestLimits, parameters: 'FlowParameters', logger):
        self.keys = api_keys(token)
        self.limits = limits
        self.parameters = parameters
        self.logger = logger
        self.internal_key = internal_key(token)  # derived from the token: the executors expect it

    def owner(self, authorization: Optional[str]) -> Optional[str]:
        """Who sends a request with this ``authorization`` (header or metadata): see key_owner."""
        return key_owner(authorization, self.keys)

    def signed(self, parameters: Optional[Mapping[str, Any]]) -> dict:
        """``parameters`` with the key that lets the request past the executors' own check."""
        return signed(parameters, self.internal_key)

    def answer(self, response) -> None:
        """A response as the client may see it: without the internal key, and failures without details."""
        parameters = response.parameters  # a dict built from the protobuf on each read: read once
        if parameters.pop(INTERNAL_KEY_PARAMETER, None) is not None:
            response.parameters = parameters
        self._hide_internal_error(response)

    def _hide_internal_error(self, response) -> None:
        """An executor's failure as the client sees it: its name, where and which request; the
        arguments and traceback (server paths, other callers' data) go to the log only."""
        from jina.proto import jina_pb2

        status = response.header.status
        if status.code != jina_pb2.StatusProto.ERROR:
            return
        exception = status.exception
        where = exception.executor or 'the Flow'
        self.logger.error(
            f'request {response.header.request_id} failed in {where}: {exception.name} {list(exception.args)} '
            f'{status.description}\n' + '\n'.join(exception.stacks)
        )
        status.description = internal_failure(exception.name, where, response.header.request_id)
        del exception.args[:]
        del exception.stacks[:]


def signed(parameters: Optional[Mapping[str, Any]], key: Optional[str]) -> dict:
    """``parameters`` with the gateway's internal ``key`` (none without a token) in place of any a client sent."""
    parameters = dict(parameters or {})
    parameters.pop(INTERNAL_KEY_PARAMETER, None)  # a client's own guess never travels on
    if key:
        parameters[INTERNAL_KEY_PARAMETER] = key
    return parameters


def internal_failure(name: str, where: str, request_id: str) -> str:
    return (f'the service failed on this request ({name or "error"} in {where}, request {request_id}); '
            f'{DETAILS_LOGGED}')


# 1. The token

ANONYMOUS = 'anonymous'  # the owner of every job when the service has no token


def api_keys(token: Optional[str]) -> Dict[str, str]:
    """The keys S2I_AUTH_TOKEN holds (one, or several separated by commas), each with its name: the
    start of its SHA-256, so that logs and job records never hold a key itself."""
    keys = [key.strip() for key in (token or '').split(',') if key.strip()]
    return {key: 'key-' + hashlib.sha256(key.encode()).hexdigest()[:12] for key in keys}


def key_owner(authorization: Optional[str], keys: Dict[str, str]) -> Optional[str]:
    """The name of the key an ``authorization`` value (``Bearer <key>``) carries, None if none of
    ``keys``; ANONYMOUS when there are no keys. Jobs belong to their key, and limits count per key."""
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


class RequireToken:
    """ASGI middleware: HTTP requests and WebSocket connections without the token are refused; the
    routes read who sent them from ``scope['state']['owner']``."""

    def __init__(self, app, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if scope['type'] in ('http', 'websocket'):
            owner = self._owner(scope)
            if owner is None:
                await self._refuse(scope, receive, send)
                return
            scope.setdefault('state', {})['owner'] = owner
        await self.app(scope, receive, send)

    def _owner(self, scope) -> Optional[str]:
        # CORS preflights carry no credentials by design; the request they precede does.
        if (scope.get('method'), scope['path']) in OPEN_HTTP_ROUTES or scope.get('method') == 'OPTIONS':
            return ANONYMOUS
        if scope.get('method') == 'GET' and (scope['path'] == OPEN_HTTP_PAGES or scope['path'].startswith(OPEN_HTTP_PAGES + '/')):
            return ANONYMOUS
        headers = dict(scope['headers'])  # lower-case byte names
        authorization = headers.get(b'authorization', b'').decode('latin-1')
        if not authorization and scope['type'] == 'websocket':
            # Browsers cannot set headers on a WebSocket: they may send the token as a subprotocol instead.
            authorization = bearer_subprotocol(headers.get(b'sec-websocket-protocol', b'').decode('latin-1'))
        return self.guard.owner(authorization)

    async def _refuse(self, scope, receive, send):
        from starlette.websockets import WebSocketClose

        if scope['type'] == 'websocket':
            await WebSocketClose(code=1008, reason=UNAUTHENTICATED)(scope, receive, send)  # 1008: policy violation
            return
        refused = refusal(scope['path'], 401, UNAUTHENTICATED, code='invalid_api_key', headers={'WWW-Authenticate': 'Bearer'})
        await refused(scope, receive, send)


def bearer_subprotocol(protocols: str) -> str:
    """``bearer.<token>`` among a WebSocket's requested subprotocols, as an authorization value."""
    for protocol in protocols.split(','):
        if protocol.strip().startswith('bearer.'):
            return 'Bearer ' + protocol.strip()[len('bearer.'):]
    return ''


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
                return f'{quote(key)} names an executor of the Flow: send a dict of its parameters, e.g. {{"{key}": {{...}}}}'
            scoped += [(key, inner) for inner in value if inner not in keys_of[key]]
        elif not (key.startswith('__') or key in known):
            unknown.append(key)
    if unknown:
        return f'unknown parameter(s) {", ".join(map(quote, unknown))}; known: {", ".join(known)}'
    if scoped:
        executor = scoped[0][0]
        names = ', '.join(quote(inner) for owner, inner in scoped if owner == executor)
        return f'unknown parameter(s) {names} for {executor}; known: {", ".join(keys_of[executor])}'
    return None


class FlowParameters:
    """Every executor's parameter keys, asked on ``/parameters`` once and kept."""

    def __init__(self, streamer, logger, key: Optional[str] = None):
        self.streamer = streamer
        self.logger = logger
        self.key_parameters = signed(None, key)  # the executors answer only the gateway
        self.known: Optional[List[ParameterSchema]] = None  # kept until the gateway restarts
        self.ask_again_at = 0.0
        self.asking = asyncio.Lock()

    async def refusal(self, endpoint: Optional[str], parameters: Optional[Mapping[str, Any]]) -> Optional[str]:
        """The error for a request to ``endpoint`` with ``parameters``, or None to let it through."""
        if not parameters or endpoint in UNCHECKED_ENDPOINTS:
            return None
        schemas = await self.schemas()
        return None if schemas is None else unknown_parameters(parameters, schemas)

    async def schemas(self) -> Optional[List[ParameterSchema]]:
        async with self.asking:
            if self.known is None and time.monotonic() >= self.ask_again_at:
                try:
                    self.known = await self._ask_executors()
                except Exception as e:
                    # Fail open: requests go through unchecked (each executor still checks the values of
                    # its own keys), and the executors are asked again after a pause, not on every request.
                    self.ask_again_at = time.monotonic() + RETRY_SECONDS
                    self.logger.warning(f'could not ask the executors for their parameters (again in {RETRY_SECONDS} s): {e!r}')
            return self.known

    async def _ask_executors(self) -> List[ParameterSchema]:
        schemas = []
        empty = DocList[ParameterSchema]()  # one request without documents: each executor appends its own
        async for docs, error in self.streamer.stream(docs=empty, exec_endpoint=PARAMETERS_ENDPOINT, parameters=self.key_parameters,
                                                   return_type=DocList[ParameterSchema]):
            if error:
                raise RuntimeError(f'{error.name} in {error.executor}: {error.args}')
            schemas += docs
        return schemas


# 3. The servers

class GRPCServer(GRPCGateway):
    """Jina's gRPC gateway, with the token, the limits and the parameter check as a server interceptor."""

    def __init__(self, guard: Guard, **kwargs):
        self.guard = GRPCGuard(guard)  # before super(): its constructor asks for the interceptors
        # gRPC itself refuses a larger message (RESOURCE_EXHAUSTED) before parsing it.
        options = {**(kwargs.pop('grpc_server_options', None) or {}), 'grpc.max_receive_message_length': guard.limits.max_request_bytes}
        super().__init__(grpc_server_options=options, **kwargs)

    def aio_tracing_server_interceptors(self):
        return [self.guard, *(super().aio_tracing_server_interceptors() or [])]


class GRPCGuard(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without the token (for unknown methods too), RESOURCE_EXHAUSTED over the
    document limit, INVALID_ARGUMENT for unknown parameters: no executor sees any of them."""

    def __init__(self, guard: Guard):
        self.guard = guard

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method in OPEN_GRPC_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.guard.owner(metadata.get('authorization')) is None:
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        if handler is not None and method in CHECKED_GRPC_METHODS:
            return self._checking(handler)
        return handler  # None: gRPC answers UNIMPLEMENTED

    async def _refusal(self, request) -> Optional[Tuple[grpc.StatusCode, str]]:
        from google.protobuf.message import DecodeError

        try:
            count = document_count(request)
        except DecodeError:
            return grpc.StatusCode.INVALID_ARGUMENT, "the request's documents could not be read"
        if problem := self.guard.limits.too_many_documents(count):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, problem
        if problem := await self.guard.parameters.refusal(request.header.exec_endpoint, request.parameters):
            return grpc.StatusCode.INVALID_ARGUMENT, problem
        return None

    def _checking(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def call(request_iterator, context):
            refused = None

            async def checked():
                nonlocal refused
                async for request in request_iterator:
                    refused = await self._refusal(request)
                    if refused:
                        async for _ in request_iterator:  # see drain_then_abort
                            pass
                        return
                    request.parameters = self.guard.signed(request.parameters)
                    yield request

            async for response in handler.stream_stream(checked(), context):
                self.guard.answer(response)
                yield response
            if refused:
                await context.abort(*refused)

        async def single(request, context):
            if refused := await self._refusal(request):
                await context.abort(*refused)
            request.parameters = self.guard.signed(request.parameters)
            response = await handler.unary_unary(request, context)
            self.guard.answer(response)
            return response

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            single, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
        )


def document_count(request) -> int:
    """How many documents a DataRequest carries, from its protobuf (without building documents)."""
    from docarray.proto import DocListProto

    content = request.proto_with_data.data
    kind = content.WhichOneof('documents')
    if kind == 'docs':
        return len(content.docs.docs)
    if kind == 'docs_bytes':
        return len(DocListProto.FromString(content.docs_bytes).docs)
    return 0


def refusing(handler: Optional[grpc.RpcMethodHandler], code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with ``code``, never parsing the
    request. For a method the server does not have (``handler`` None), one that takes any kind of call."""

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
    streaming = (True, True) if handler is None else (handler.request_streaming, handler.response_streaming)
    behaviour = drain_then_abort if streaming[0] else abort
    serializer = None if handler is None else handler.response_serializer
    return kinds[streaming](behaviour, request_deserializer=lambda message: None, response_serializer=serializer)


class HTTPServer(HTTPGateway):
    """Jina's HTTP routes (a POST per executor endpoint, /dry_run, /status) and ours, behind the token
    and the body limit."""

    def __init__(self, guard: Guard, jobs: JobSettings, allowed_origins: Sequence[str] = (), **kwargs):
        self.guard = guard
        self.jobs = jobs
        self.allowed_origins = allowed_origins
        self.runner: Optional[JobRunner] = None
        super().__init__(**kwargs)

    async def setup_server(self):
        await super().setup_server()  # builds the app, and with it the job runner
        await self.runner.start()

    async def shutdown(self):
        if self.runner is not None:
            await self.runner.stop()
        await super().shutdown()

    @property
    def app(self):
        from jina.helper import extend_rest_interface
        from jina.serve.runtimes.gateway.http_fastapi_app_docarrayv2 import get_fastapi_app

        app = extend_rest_interface(get_fastapi_app(
            streamer=HTTPStreamer(self.streamer, self.guard),
            title=self.title, description=self.description, no_crud_endpoints=self.no_crud_endpoints,
            no_debug_endpoints=self.no_debug_endpoints, expose_endpoints=self.expose_endpoints,
            expose_graphql_endpoint=self.expose_graphql_endpoint, cors=self.cors, logger=self.logger,
            tracing=self.tracing, tracer_provider=self.tracer_provider,
        ))
        replace_dry_run(app, self.streamer, self.logger)
        flow = FlowCalls(self.streamer, self.guard)
        self.runner = self.jobs.runner(flow, self.logger)
        return add_front_door(app, self.guard, flow, self.runner, self.allowed_origins)


def replace_dry_run(app, streamer, logger) -> None:
    """``GET /dry_run`` asks what `jina ping flow` asks: a dry-run request that every executor answers;
    503 when one cannot be reached, so that an HTTP probe sees it. (Jina's own route sends an empty
    request without an endpoint, which skips the executors that have no default endpoint: it
    answered 200 with the only Stable Diffusion replica dead.)"""
    from docarray import BaseDoc
    from jina.excepts import InternalNetworkError
    from jina.proto import jina_pb2
    from jina.serve.executors import __dry_run_endpoint__
    from starlette.responses import JSONResponse

    async def dry_run():
        failure = ''
        try:
            async for response in streamer.stream_docs(DocList[BaseDoc]([BaseDoc()]), exec_endpoint=__dry_run_endpoint__,
                                                       request_size=1, return_results=True):
                status = response.header.status
                if status.code == jina_pb2.StatusProto.ERROR:
                    failure, details = f'the dry run failed in {status.exception.executor or "the Flow"}', status.description
        except InternalNetworkError as e:
            failure, details = f'the {unreachable_executor(e.details()) or ""} {EXECUTOR_UNAVAILABLE}', e.details()
        if failure:
            logger.warning(f'GET /dry_run: {failure}: {details}')
            return JSONResponse({'code': jina_pb2.StatusProto.ERROR, 'description': failure, 'exception': None}, status_code=503)
        return {'code': jina_pb2.StatusProto.SUCCESS, 'description': '', 'exception': None}

    app.router.routes[:] = [route for route in app.router.routes if getattr(route, 'path', None) != '/dry_run']
    app.add_api_route('/dry_run', dry_run, methods=['GET'], tags=['Debug'],
                      summary='Readiness of the whole Flow: 200 when every executor answers, else 503')


def add_front_door(app, guard: Guard, flow, runner: JobRunner, allowed_origins: Sequence[str] = ()):
    """``app`` with this service's routes (OpenAI-compatible API, jobs, the page), its error shapes and
    its checks (origin, token, body limit). Jina's HTTP app gets them; so does a plain FastAPI app in
    the tests, with a stand-in for ``flow``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(RecursionError, too_deep)
    for error in (TypeError, ValueError):  # docarray's own field parsing, e.g. a 200-deep tensor
        app.add_exception_handler(error, unparsable_body)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)  # under /v1: unknown paths, wrong methods
    app.include_router(openai_router(flow, guard))
    app.include_router(jobs_router(runner, runner.webhooks))
    app.include_router(ui_router(guard))
    # The last middleware added runs first: the origin, the token, then the body limit.
    app.add_middleware(LimitBody, limits=guard.limits)
    app.add_middleware(RequireToken, guard=guard)
    app.add_middleware(CheckOrigin, allowed_origins=allowed_origins)
    return app


async def invalid_request(request, error):
    """FastAPI's 422, without its echo of the input (twice, whole): the first problem, quoted short.
    Under /v1, OpenAI's 400 naming the field."""
    from starlette.responses import JSONResponse

    first = error.errors()[0]
    where = '.'.join(str(part) for part in first['loc'])
    message = f'invalid request: {where}: {first["msg"]}, got {quote(first.get("input"))}'
    if is_api_path(request.url.path):
        field = str(first['loc'][-1]) if first['loc'] else None
        return JSONResponse(error_body(400, message, param=field), status_code=400)
    return JSONResponse({'detail': message}, status_code=422)


async def http_error(request, error):
    """Starlette's HTTP errors in OpenAI's shape under /v1; FastAPI's own answer elsewhere."""
    from fastapi.exception_handlers import http_exception_handler

    if not is_api_path(request.url.path):
        return await http_exception_handler(request, error)
    return refusal(request.url.path, error.status_code, str(error.detail), headers=getattr(error, 'headers', None))


async def too_deep(request, error):
    from starlette.responses import JSONResponse

    return JSONResponse({'detail': 'invalid request: the JSON is nested too deeply'}, status_code=400)


async def unparsable_body(request, error):
    """A 400 for what docarray raised while FastAPI read the body into documents; anything else stays a 500."""
    import traceback

    from starlette.responses import JSONResponse

    frames = traceback.walk_tb(error.__traceback__)
    if not any(frame.f_globals.get('__name__') == 'fastapi.dependencies.utils' for frame, _ in frames):
        raise error
    return JSONResponse({'detail': f'invalid request: {type(error).__name__}: {str(error)[:MAX_QUOTED_CHARS]}'}, status_code=400)


class HTTPStreamer:
    """Jina's streamer as the HTTP routes see it: requests over the limits (413), with unknown
    parameters (422) or with what Jina's transport cannot carry (400) are refused; every document
    travels in one request; PNG bytes in the answers become data URIs; failures hide their details."""

    def __init__(self, streamer, guard: Guard):
        self.streamer = streamer
        self.guard = guard

    def __getattr__(self, name):
        return getattr(self.streamer, name)  # everything else is Jina's streamer

    async def stream_docs(self, docs, exec_endpoint: Optional[str] = None, parameters: Optional[dict] = None,
                          return_results: bool = False, **kwargs):
        from fastapi import HTTPException
        from jina.excepts import InternalNetworkError

        if refused := self.guard.limits.too_many_documents(len(docs)):
            raise HTTPException(status_code=413, detail=refused)
        if refused := self._unsendable(docs, parameters):
            raise HTTPException(status_code=400, detail=refused)
        if refused := await self.guard.parameters.refusal(exec_endpoint, parameters):
            raise HTTPException(status_code=422, detail=refused)
        # One request for all the documents: Jina's route answers with the first request's only.
        kwargs['request_size'] = max(len(docs), 1)
        try:
            async for answer in self.streamer.stream_docs(docs, exec_endpoint=exec_endpoint, parameters=self.guard.signed(parameters),
                                                          return_results=return_results, **kwargs):
                if return_results:  # a whole response, as the POST routes ask for; else documents (/dry_run)
                    self.guard.answer(answer)
                    images_as_data_uris(answer)
                yield answer
        except InternalNetworkError as e:  # Jina's route would answer with its own traceback
            self.guard.logger.error(f'an executor could not be reached: {e.details()}')
            raise HTTPException(status_code=503, detail=f'the {unreachable_executor(e.details()) or ""} {EXECUTOR_UNAVAILABLE}') from None

    def _unsendable(self, docs, parameters: Optional[dict]) -> Optional[str]:
        max_depth = self.guard.limits.max_depth
        problems = (invalid_document(doc, index, max_depth) for index, doc in enumerate(docs))
        return unsendable(parameters or {}, 'parameters', max_depth) or next(filter(None, problems), None)


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
