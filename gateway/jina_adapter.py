"""Jina 3.34 behind one module: every subclass of Jina's servers and every use of its private API.

flow.yml names this component (``gateway: uses: gateway/config.yml``, whose ``jtype`` is
SpeechToImageGateway), so every way of starting the Flow runs it: ``jina flow --uses flow.yml``,
``python -m s2i.serve``, the image and the manifests in deploy/. It serves the Flow's two protocols:

- **gRPC**: Jina's gRPC gateway with an interceptor: the token, the document limit and the
  unknown-parameter check (gateway/parameters.py), refused with the gRPC status of the error's code.
- **HTTP**: the gateway's application (gateway/app.py: the OpenAI-compatible API, jobs, the page, the
  origin, token and body checks) over ``JinaFlow``, the FlowClient that calls the Flow through Jina's
  streamer, plus Jina's own routes (a POST per executor endpoint, /status, /dry_run), which also check
  the limits and parameters, and answer each image's PNG as a ``data:`` URI (JSON cannot carry bytes).

Both hide an executor's failure from the client: its traceback goes to the gateway's log, the client
gets the exception's name, the executor and the request id, never server paths. Both send the internal
key that the executors expect (s2i.runtime.internal_key), and never a key a client sent.

Jina's private touchpoints, each covered by a test on a real Flow (tests/test_gateway.py, test_jobs.py):
the streamer's connection pool (``_connection_pool``: calls to one executor, and its streaming endpoint,
which Jina's Flow-level streaming cannot reach), the request handler's streamer
(``_request_handler``), and the protobuf of requests and responses.
"""

import json
from functools import partial
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional
from urllib.parse import urlparse

import grpc
from docarray import BaseDoc, DocList
from fastapi import APIRouter
from starlette.responses import JSONResponse

from jina.enums import ProtocolType
from jina.excepts import InternalNetworkError
from jina.proto import jina_pb2
from jina.serve.executors import __dry_run_endpoint__
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer
from jina.types.request.data import DataRequest, SingleDocumentRequest

from gateway.app import create_app, limits_of
from gateway.auth import ApiKeys, signed
from gateway.flow_client import (
    GENERATE_ENDPOINT, GENERATE_STREAM_ENDPOINT, GENERATOR, FlowFailure, unavailable,
)
from gateway.limits import RequestLimits, invalid_document, unsendable
from gateway.parameters import ExecutorParameters
from gateway.settings import GatewaySettings
from s2i.contracts.documents import GenerationEvent, GenerationRequest, ParameterSchema, PromptDoc
from s2i.contracts.errors import GRPC_CODE_METADATA, CodedError, ErrorCode
from s2i.contracts.params import PARAMETERS_ENDPOINT
from s2i.encoding import png_data_uri
from s2i.runtime import DETAILS_LOGGED, INTERNAL_KEY_PARAMETER, UNAUTHENTICATED, internal_key
from s2i.settings import warn_unknown_variables

OPEN_GRPC_METHODS = frozenset({'/grpc.health.v1.Health/Check', '/jina.JinaGatewayDryRunRPC/dry_run'})  # readiness, jina ping
CHECKED_GRPC_METHODS = frozenset({'/jina.JinaRPC/Call', '/jina.JinaSingleDataRequestRPC/process_single_data'})  # requests that carry parameters


class SpeechToImageGateway(CompositeBaseServer, BaseGateway):
    """One server per protocol of the Flow (gRPC and HTTP), sharing the token and the parameter check.
    Its settings are GatewaySettings' fields (gateway/config.yml's ``with:``, a Flow's ``uses_with``)."""

    def __init__(self, **kwargs):
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in GatewaySettings.model_fields}
        super().__init__(**kwargs)
        warn_unknown_variables(self.logger)
        settings = GatewaySettings.load(given)
        door = Door(settings, self._request_handler.streamer, executors_by_address(self.runtime_args), self.logger)
        servers = {ProtocolType.GRPC: GRPCServer, ProtocolType.HTTP: partial(HTTPServer, settings=settings)}
        self.servers = []
        for server_kwargs in self._server_kwargs:
            protocol = server_kwargs['runtime_args']['protocol']
            if protocol not in servers:
                raise ValueError(f'the speech-to-image gateway serves grpc and http, not {protocol}')
            self.servers.append(servers[protocol](door=door, **server_kwargs))
        self.gateways = self.servers  # what Jina's composite servers call them too


def executors_by_address(runtime_args) -> Dict[str, str]:
    """Each executor's name by the address (host:port) of each of its replicas, as the Flow gave them."""
    found = {}
    for name, addresses in json.loads(getattr(runtime_args, 'deployments_addresses', None) or '{}').items():
        if isinstance(addresses, Mapping):
            addresses = addresses.get(ProtocolType.GRPC.to_string(), [])
        found.update({host_and_port(address): name for address in addresses})
    return found


def host_and_port(address: str) -> str:
    return urlparse(address).netloc or address  # grpc://127.0.0.1:5555 and 127.0.0.1:5555 alike


class Door:
    """What both servers check and hide: the keys, the limits, the parameters, internal errors."""

    def __init__(self, settings: GatewaySettings, streamer, executors: Dict[str, str], logger):
        self.keys = ApiKeys(settings.token)
        self.limits: RequestLimits = limits_of(RequestLimits, settings)
        self.internal_key = internal_key(settings.token)  # derived from the token: the executors expect it
        self.parameters = ExecutorParameters(partial(ask_parameters, streamer, signed(None, self.internal_key)), logger)
        self.executors = executors
        self.logger = logger

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

    def unreachable(self, error: InternalNetworkError, executor: Optional[str] = None) -> FlowFailure:
        """The failure naming the executor that could not be reached: the one called, else the one at the
        address the connection pool tried (its deployment)."""
        self.logger.error(f'an executor could not be reached: {error.details()}')
        tried = error.dest_addr if isinstance(error.dest_addr, (set, list, tuple)) else {error.dest_addr}
        names = {self.executors.get(host_and_port(address)) for address in tried} - {None}
        return unavailable(executor or (names.pop() if len(names) == 1 else None))


def internal_failure(name: str, where: str, request_id: str) -> str:
    return (f'the service failed on this request ({name or "error"} in {where}, request {request_id}); '
            f'{DETAILS_LOGGED}')


async def ask_parameters(streamer, key_parameters: dict) -> List[ParameterSchema]:
    """Every executor's ParameterSchema: one request without documents, to which each appends its own."""
    schemas = []
    async for docs, error in streamer.stream(docs=DocList[ParameterSchema](), exec_endpoint=PARAMETERS_ENDPOINT,
                                             parameters=key_parameters, return_type=DocList[ParameterSchema]):
        if error:
            raise RuntimeError(f'{error.name} in {error.executor}: {error.args}')
        schemas += docs
    return schemas


# The Flow client

class JinaFlow:
    """The FlowClient (gateway/flow_client.py) over Jina's streamer: ``call`` sends documents through the
    whole Flow as Jina's own routes do; ``call_executor`` and ``generate_stream`` go to one executor
    through the streamer's connection pool (Jina streams only from a Flow's first executor)."""

    def __init__(self, streamer, door: Door):
        self.streamer = streamer
        self.door = door

    async def call(self, docs: DocList[PromptDoc], parameters: Optional[dict] = None,
                   endpoint: str = GENERATE_ENDPOINT) -> DocList[PromptDoc]:
        answered = DocList[PromptDoc]()
        try:
            async for response, _ in self.streamer.stream(
                docs=docs, request_size=max(len(docs), 1), exec_endpoint=endpoint, parameters=self.door.signed(parameters),
                return_type=DocList[PromptDoc], return_results=True,
            ):
                self._raise_failure(response)
                response.document_array_cls = DocList[PromptDoc]
                answered.extend(response.docs)
        except InternalNetworkError as e:
            raise self.door.unreachable(e) from None
        return answered

    async def call_executor(self, executor: str, docs: DocList[PromptDoc], parameters: Optional[dict] = None) -> DocList[PromptDoc]:
        message = DataRequest()
        message.document_array_cls = DocList[PromptDoc]
        message.data.docs = docs
        message.header.exec_endpoint = GENERATE_ENDPOINT
        message.header.target_executor = executor
        message.parameters = self.door.signed(parameters)
        pool = self.streamer._connection_pool
        try:
            response, _ = await pool.send_requests_once(requests=[message], deployment=executor, head=True, endpoint=GENERATE_ENDPOINT)
        except InternalNetworkError as e:
            raise self.door.unreachable(e, executor) from None
        self._raise_failure(response)
        response.document_array_cls = DocList[PromptDoc]
        return response.docs

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Closing this iterator alone does not stop the executor (Jina's pool keeps the call open until its
        channel closes): cancel the task that reads it."""
        request.parameters = self.door.signed(request.parameters)  # Jina passes no parameters to streaming endpoints
        stream = self.streamer._connection_pool.send_single_document_request(
            request=stream_request(request), deployment=GENERATOR, head=True, endpoint=GENERATE_STREAM_ENDPOINT,
        )
        if stream is None:  # Jina's pool has no connection to it at all
            raise unavailable(GENERATOR)
        try:
            async for response, _ in stream:
                if isinstance(response, BaseException):  # the pool yields its failure in the response's place
                    raise response
                self._raise_failure(response)
                response.document_cls = GenerationEvent
                yield response.data.doc
        except InternalNetworkError as e:
            raise self.door.unreachable(e, GENERATOR) from None
        except grpc.aio.AioRpcError as e:  # what the pool did not turn into InternalNetworkError
            self.door.logger.error(f'the {GENERATOR} stream failed: {e.code()} {e.details()}')
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise unavailable(GENERATOR) from None
            raise FlowFailure(f'the {GENERATOR} executor failed: {e.code().name}') from None

    async def schemas(self) -> Optional[List[ParameterSchema]]:
        return await self.door.parameters.schemas()

    async def models(self) -> Dict[str, str]:
        return {schema.executor: schema.model for schema in await self.schemas() or () if schema.model}

    def _raise_failure(self, response) -> None:
        """FlowFailure (internal_error) for a response that says an executor raised; its details go to the log only."""
        self.door.answer(response)
        if response.header.status.code == jina_pb2.StatusProto.ERROR:
            raise FlowFailure(response.header.status.description, ErrorCode.INTERNAL_ERROR)


def stream_request(request: GenerationRequest) -> SingleDocumentRequest:
    """The request for the Stable Diffusion executor's streaming endpoint, built by hand: Jina's
    per-executor ``stream_doc`` cannot build one (it fails with "DocProto is not recognizable")."""
    message = SingleDocumentRequest()
    message.document_cls = GenerationRequest
    message.data.doc = request
    message.header.exec_endpoint = GENERATE_STREAM_ENDPOINT
    message.header.target_executor = GENERATOR
    message.parameters = {}  # never None: Jina's protobuf setter raises on it
    return message


# gRPC

class GRPCServer(GRPCGateway):
    """Jina's gRPC gateway, with the token, the limits and the parameter check as a server interceptor."""

    def __init__(self, door: Door, **kwargs):
        self.guard = GRPCGuard(door)  # before super(): its constructor asks for the interceptors
        # gRPC itself refuses a larger message (RESOURCE_EXHAUSTED) before parsing it.
        options = {**(kwargs.pop('grpc_server_options', None) or {}), 'grpc.max_receive_message_length': door.limits.max_request_bytes}
        super().__init__(grpc_server_options=options, **kwargs)

    def aio_tracing_server_interceptors(self):
        return [self.guard, *(super().aio_tracing_server_interceptors() or [])]


async def abort(context, refused: CodedError) -> None:
    """End a gRPC call with the refusal's status (its code's row of s2i/contracts/errors.py), message and,
    in the trailing metadata, the code itself."""
    await context.abort(grpc.StatusCode[refused.kind.grpc_status], refused.message,
                        trailing_metadata=((GRPC_CODE_METADATA, refused.code.value),))


class GRPCGuard(grpc.aio.ServerInterceptor):
    """Refuses, before any executor sees it, a call without a key (unknown methods too, so that a caller
    without the token learns nothing), over the document limit, or with unknown parameters."""

    def __init__(self, door: Door):
        self.door = door

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method in OPEN_GRPC_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.door.keys.owner(metadata.get('authorization')) is None:
            return refusing(handler, CodedError(UNAUTHENTICATED, ErrorCode.INVALID_API_KEY))
        if handler is not None and method in CHECKED_GRPC_METHODS:
            return self._checking_stream(handler) if handler.request_streaming else self._checking_single(handler)
        return handler  # None: gRPC answers UNIMPLEMENTED

    async def _refusal(self, request) -> Optional[CodedError]:
        from google.protobuf.message import DecodeError

        try:
            count = document_count(request)
        except DecodeError:
            return CodedError("the request's documents could not be read", ErrorCode.INVALID_REQUEST)
        if problem := self.door.limits.too_many_documents(count):
            return CodedError(problem, ErrorCode.INPUT_TOO_LARGE)
        return await self.door.parameters.refusal(request.header.exec_endpoint, request.parameters)

    def _checking_stream(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def call(request_iterator, context):
            refused = []

            async def checked():
                async for request in request_iterator:
                    refused.append(await self._refusal(request))
                    if refused[-1]:
                        async for _ in request_iterator:  # see drain_then_abort
                            pass
                        return
                    request.parameters = self.door.signed(request.parameters)
                    yield request

            async for response in handler.stream_stream(checked(), context):
                self.door.answer(response)
                yield response
            if refused and refused[-1]:
                await abort(context, refused[-1])

        return grpc.stream_stream_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)

    def _checking_single(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def single(request, context):
            if refused := await self._refusal(request):
                await abort(context, refused)
            request.parameters = self.door.signed(request.parameters)
            response = await handler.unary_unary(request, context)
            self.door.answer(response)
            return response

        return grpc.unary_unary_rpc_method_handler(
            single, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


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


def refusing(handler: Optional[grpc.RpcMethodHandler], refused: CodedError) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with ``refused``, never parsing the
    request. For a method the server does not have (``handler`` None), one that takes any kind of call."""

    async def refuse(request_or_iterator, context):
        await abort(context, refused)

    async def drain_then_abort(request_iterator, context):
        # Aborting while the client still streams makes its next write fail with INTERNAL, which hides
        # the reason; take what it sends (unparsed), then refuse.
        async for _ in request_iterator:
            pass
        await refuse(request_iterator, context)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    streaming = (True, True) if handler is None else (handler.request_streaming, handler.response_streaming)
    behaviour = drain_then_abort if streaming[0] else refuse
    serializer = None if handler is None else handler.response_serializer
    return kinds[streaming](behaviour, request_deserializer=lambda message: None, response_serializer=serializer)


# HTTP

class HTTPServer(HTTPGateway):
    """The gateway's application (gateway/app.py) over the Flow, with Jina's own HTTP routes added."""

    def __init__(self, door: Door, settings: GatewaySettings, **kwargs):
        self.door = door
        self.settings = settings
        super().__init__(**kwargs)

    @property
    def app(self):
        app = create_app(self.settings, JinaFlow(self.streamer, self.door), logger=self.logger)
        app.include_router(jina_routes(self))  # its shutdown (closing the streamer) joins the app's lifespan
        return app


def jina_routes(server: HTTPServer) -> APIRouter:
    """Jina's own HTTP routes (a POST per executor endpoint, /status, and /dry_run, ours), over HTTPStreamer."""
    from jina.serve.runtimes.gateway.http_fastapi_app_docarrayv2 import get_fastapi_app

    jina_app = get_fastapi_app(
        streamer=HTTPStreamer(server.streamer, server.door), title=server.title, description=server.description,
        no_crud_endpoints=server.no_crud_endpoints, no_debug_endpoints=server.no_debug_endpoints,
        expose_endpoints=server.expose_endpoints, expose_graphql_endpoint=server.expose_graphql_endpoint,
        cors=server.cors, logger=server.logger, tracing=server.tracing, tracer_provider=server.tracer_provider,
    )
    router = jina_app.router
    router.routes[:] = [route for route in router.routes if getattr(route, 'path', None) != '/dry_run']
    router.add_api_route('/dry_run', partial(dry_run, server.streamer, server.door), methods=['GET'], tags=['Debug'],
                         summary='Readiness of the whole Flow: 200 when every executor answers, else 503')
    return router


async def dry_run(streamer, door: Door):
    """``GET /dry_run`` asks what `jina ping flow` asks: a dry-run request that every executor answers;
    503 when one cannot be reached, so that an HTTP probe sees it. (Jina's own route sends an empty
    request without an endpoint, which skips the executors that have no default endpoint: it
    answered 200 with the only Stable Diffusion replica dead.)"""
    failure = details = ''
    try:
        async for response in streamer.stream_docs(DocList[BaseDoc]([BaseDoc()]), exec_endpoint=__dry_run_endpoint__,
                                                   request_size=1, return_results=True):
            status = response.header.status
            if status.code == jina_pb2.StatusProto.ERROR:
                failure, details = f'the dry run failed in {status.exception.executor or "the Flow"}', status.description
    except InternalNetworkError as e:
        failure, details = door.unreachable(e).message, e.details()
    if failure:
        door.logger.warning(f'GET /dry_run: {failure}: {details}')
        return JSONResponse({'code': jina_pb2.StatusProto.ERROR, 'description': failure, 'exception': None}, status_code=503)
    return {'code': jina_pb2.StatusProto.SUCCESS, 'description': '', 'exception': None}


class HTTPStreamer:
    """Jina's streamer as its own HTTP routes see it: requests over the limits (413), with unknown
    parameters (422) or with what Jina's transport cannot carry (400) are refused; every document
    travels in one request; PNG bytes in the answers become data URIs; failures hide their details."""

    def __init__(self, streamer, door: Door):
        self.streamer = streamer
        self.door = door

    def __getattr__(self, name):
        return getattr(self.streamer, name)  # everything else is Jina's streamer

    async def stream_docs(self, docs, exec_endpoint: Optional[str] = None, parameters: Optional[dict] = None,
                          return_results: bool = False, **kwargs):
        await self._check(docs, exec_endpoint, parameters)
        # One request for all the documents: Jina's route answers with the first request's only.
        kwargs['request_size'] = max(len(docs), 1)
        try:
            async for answer in self.streamer.stream_docs(docs, exec_endpoint=exec_endpoint, parameters=self.door.signed(parameters),
                                                          return_results=return_results, **kwargs):
                if return_results:  # a whole response, as the POST routes ask for; else documents (/dry_run)
                    self.door.answer(answer)
                    images_as_data_uris(answer)
                yield answer
        except InternalNetworkError as e:  # Jina's route would answer with its own traceback
            raise self.door.unreachable(e) from None

    async def _check(self, docs, exec_endpoint: Optional[str], parameters: Optional[dict]) -> None:
        """The CodedError for a request the Flow must not see (answered in FastAPI's shape, with its code)."""
        refused = (self._too_many(docs) or self._unsendable(docs, parameters)
                   or await self.door.parameters.refusal(exec_endpoint, parameters))
        if refused is not None:
            raise refused

    def _too_many(self, docs) -> Optional[CodedError]:
        problem = self.door.limits.too_many_documents(len(docs))
        return CodedError(problem, ErrorCode.INPUT_TOO_LARGE) if problem else None

    def _unsendable(self, docs, parameters: Optional[dict]) -> Optional[CodedError]:
        max_depth = self.door.limits.max_depth
        problems = (invalid_document(doc, index, max_depth) for index, doc in enumerate(docs))
        problem = unsendable(parameters or {}, 'parameters', max_depth) or next(filter(None, problems), None)
        return CodedError(problem, ErrorCode.INVALID_REQUEST) if problem else None


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
