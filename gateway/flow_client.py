"""What the gateway's own routes and its job runner need of the Flow behind them: a small protocol.

gateway/jina_adapter.py implements it over Jina's gateway streamer; the in-process tests implement
it with a fake (tests/gateway_app.py). Every call sends the gateway's internal key and hides the
executors' tracebacks; a call the Flow cannot answer raises FlowFailure, whose code says whether an
executor could not be reached (executor_unavailable, 503) or failed (internal_error, 500).
"""

from typing import AsyncIterator, Dict, List, Optional, Protocol

from docarray import DocList

from s2i.contracts.documents import GenerationEvent, GenerationRequest, ParameterSchema, PromptDoc
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.runtime import EXECUTOR_UNAVAILABLE

# flow.yml's names of the executors
TRANSCRIBER, GENERATOR, RANKER, STORE = 'whisper', 'stable_diffusion', 'clip', 'store'
GENERATE_ENDPOINT, GENERATE_STREAM_ENDPOINT = '/generate', '/generate_stream'
RESTYLE_ENDPOINT, INTERROGATE_ENDPOINT = '/restyle', '/interrogate'


class FlowFailure(CodedError):
    """The Flow could not answer: an executor raised (its details are logged) or could not be reached."""

    code = ErrorCode.INTERNAL_ERROR


def unavailable(executor: Optional[str]) -> FlowFailure:
    """The failure for an executor that could not be reached, naming it when it is known."""
    return FlowFailure(f'the {executor or ""} {EXECUTOR_UNAVAILABLE}', ErrorCode.EXECUTOR_UNAVAILABLE)


class FlowClient(Protocol):
    async def call(self, docs: DocList[PromptDoc], parameters: Optional[dict] = None,
                   endpoint: str = GENERATE_ENDPOINT) -> DocList[PromptDoc]:
        """The documents as the whole Flow answers ``endpoint``; each may carry its own ``error``."""

    async def call_executor(self, executor: str, docs: DocList[PromptDoc],
                            parameters: Optional[dict] = None) -> DocList[PromptDoc]:
        """The documents as one ``executor`` answers /generate, the others never seeing them."""

    def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """The Stable Diffusion executor's events for one document, as it makes them, the last one
        ``done``. Cancelling the task that reads them stops the executor at its next denoising step."""

    async def schemas(self) -> Optional[List[ParameterSchema]]:
        """Each executor's request parameters (its ``/parameters``); None while they cannot be asked."""

    async def models(self) -> Dict[str, str]:
        """Each executor's loaded model, by executor name (those that load one)."""
