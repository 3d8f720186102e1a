"""GET /v1/models and /v1/models/{id}: Whisper (as ``whisper-1`` and by its own name) and the Stable
Diffusion model; ``owned_by`` is the executor that runs each."""

import time
from typing import Dict, Iterable

from fastapi import APIRouter, Depends

from gateway.dependencies import get_flow
from gateway.flow_client import GENERATOR, TRANSCRIBER, FlowClient
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote

WHISPER_ALIAS = 'whisper-1'  # OpenAI's name, for the Flow's Whisper whatever its size
STARTED = int(time.time())  # each model's "created": when this gateway started serving it

router = APIRouter(prefix='/v1')


@router.get('/models')
async def models(flow: FlowClient = Depends(get_flow)) -> dict:
    served = await served_models(flow)
    return {'object': 'list', 'data': [model_card(name, executor) for name, executor in served.items()]}


@router.get('/models/{model_id:path}')
async def model(model_id: str, flow: FlowClient = Depends(get_flow)) -> dict:
    served = await served_models(flow)
    if model_id not in served:
        raise model_not_found(model_id, served)
    return model_card(model_id, served[model_id])


async def served_models(flow: FlowClient) -> Dict[str, str]:
    """Each model id this API accepts, with the executor that runs it. ``whisper-1`` always: the
    executors' own names are known once they answered the gateway."""
    loaded = await flow.models()
    served = {WHISPER_ALIAS: TRANSCRIBER}
    for executor in (TRANSCRIBER, GENERATOR):
        if executor in loaded:
            served[loaded[executor]] = executor
    return served


def model_card(model_id: str, executor: str) -> dict:
    return {'id': model_id, 'object': 'model', 'created': STARTED, 'owned_by': executor}


def model_not_found(model: str, accepted: Iterable[str]) -> CodedError:
    return CodedError(f'model {quote(model)} not found; this service serves {", ".join(map(quote, accepted))}',
                      ErrorCode.MODEL_NOT_FOUND, param='model')
