"""How the gateway's own routes (the OpenAI-compatible API, jobs) call the Flow behind it.

Through Jina's streamer, like Jina's own routes, with the same internal key and the same hidden
failures: ``call`` sends documents through the whole Flow, ``call_executor`` to one executor alone
(Whisper's text without drawing, the store without Whisper), and ``generate_stream`` to the Stable
Diffusion executor's streaming endpoint. Jina streams only from a Flow's first executor, so the last
two go through the streamer's connection pool (a private attribute of Jina's; tests/test_jobs.py
covers every use of it)."""

from typing import AsyncIterator, Dict, Optional

import grpc
from docarray import DocList

from s2i.contracts.documents import GenerationEvent, GenerationRequest, PromptDoc
from s2i.runtime import EXECUTOR_UNAVAILABLE, unreachable_executor

# flow.yml's names of the executors
TRANSCRIBER, GENERATOR, RANKER, STORE = 'whisper', 'stable_diffusion', 'clip', 'store'
GENERATE_ENDPOINT, GENERATE_STREAM_ENDPOINT = '/generate', '/generate_stream'


class FlowFailure(Exception):
    """The Flow could not answer: an executor raised (its details are logged) or could not be reached."""

    def __init__(self, message: str, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


class FlowCalls:
    def __init__(self, streamer, guard):
        self.streamer = streamer
        self.guard = guard

    async def call(self, docs: DocList[PromptDoc], parameters: Optional[dict] = None,
                   endpoint: str = GENERATE_ENDPOINT) -> DocList[PromptDoc]:
        """The documents as the Flow answers ``endpoint``; each may carry its own ``error``."""
        from jina.excepts import InternalNetworkError

        answered = DocList[PromptDoc]()
        try:
            async for response, _ in self.streamer.stream(
                docs=docs, request_size=max(len(docs), 1), exec_endpoint=endpoint,
                parameters=self.guard.signed(parameters), return_type=DocList[PromptDoc], return_results=True,
            ):
                self._raise_failure(response)
                response.document_array_cls = DocList[PromptDoc]
                answered.extend(response.docs)
        except InternalNetworkError as e:
            raise self._unavailable(e) from None
        return answered

    async def call_executor(self, executor: str, docs: DocList[PromptDoc], parameters: Optional[dict] = None) -> DocList[PromptDoc]:
        """The documents as one ``executor`` of the Flow answers /generate, the others never seeing them."""
        from jina.excepts import InternalNetworkError
        from jina.types.request.data import DataRequest

        message = DataRequest()
        message.document_array_cls = DocList[PromptDoc]
        message.data.docs = docs
        message.header.exec_endpoint = GENERATE_ENDPOINT
        message.header.target_executor = executor
        message.parameters = self.guard.signed(parameters)
        pool = self.streamer._connection_pool
        try:
            response, _ = await pool.send_requests_once(requests=[message], deployment=executor, head=True, endpoint=GENERATE_ENDPOINT)
        except InternalNetworkError as e:
            raise self._unavailable(e, executor) from None
        self._raise_failure(response)
        response.document_array_cls = DocList[PromptDoc]
        return response.docs

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """The Stable Diffusion executor's events for one document, as it makes them. Cancelling the
        task that reads them cancels the gRPC call, and the executor stops at its next denoising step
        (closing this iterator alone does not: Jina's pool keeps the call open until its channel closes)."""
        from jina.excepts import InternalNetworkError
        from jina.types.request.data import SingleDocumentRequest

        request.parameters = self.guard.signed(request.parameters)
        message = SingleDocumentRequest()
        message.document_cls = GenerationRequest
        message.data.doc = request
        message.header.exec_endpoint = GENERATE_STREAM_ENDPOINT
        message.header.target_executor = GENERATOR
        message.parameters = {}  # never None: Jina's protobuf setter raises on it
        pool = self.streamer._connection_pool
        stream = pool.send_single_document_request(
            request=message, deployment=GENERATOR, head=True, endpoint=GENERATE_STREAM_ENDPOINT,
        )
        if stream is None:  # Jina's pool has no connection to it at all
            raise FlowFailure(f'the {GENERATOR} {EXECUTOR_UNAVAILABLE}', unavailable=True)
        try:
            async for response, _ in stream:
                if isinstance(response, BaseException):  # the pool yields its failure in the response's place
                    raise response
                self._raise_failure(response)
                response.document_cls = GenerationEvent
                yield response.data.doc
        except InternalNetworkError as e:
            raise self._unavailable(e, GENERATOR) from None
        except grpc.aio.AioRpcError as e:  # what the pool did not turn into InternalNetworkError
            self.guard.logger.error(f'the {GENERATOR} stream failed: {e.code()} {e.details()}')
            raise FlowFailure(f'the {GENERATOR} executor failed: {e.code().name}', unavailable=e.code() == grpc.StatusCode.UNAVAILABLE) from None

    async def models(self) -> Dict[str, str]:
        """Each executor's loaded model, by executor name (those that load one)."""
        schemas = await self.guard.parameters.schemas()
        return {schema.executor: schema.model for schema in schemas or () if schema.model}

    def _raise_failure(self, response) -> None:
        """FlowFailure for a response that says an executor raised; its details go to the log only."""
        from jina.proto import jina_pb2

        self.guard.answer(response)
        if response.header.status.code == jina_pb2.StatusProto.ERROR:
            raise FlowFailure(response.header.status.description)

    def _unavailable(self, error, executor: Optional[str] = None) -> FlowFailure:
        """The failure naming the executor that could not be reached: the one called, when only one was."""
        self.guard.logger.error(f'an executor could not be reached: {error.details()}')
        name = executor or unreachable_executor(error.details()) or ''
        return FlowFailure(f'the {name} {EXECUTOR_UNAVAILABLE}', unavailable=True)
