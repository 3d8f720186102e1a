"""OpenAI's images, with the Flow's Stable Diffusion: POST /v1/images/generations, /edits and /variations.

Unlike OpenAI: images take this service's own parameters (every key of the executor's parameter model
beside ``n`` and ``size``: ``seed``, ``steps``, ``guidance_scale``, ``negative_prompt``, ``scheduler``,
``best_of``; ``strength`` for edits and variations) as extra body or form fields, checked as every
route checks them (gateway/generation.py). Edits restyle the whole image after the prompt (the Flow's
``/restyle``, image-to-image): no masks, so no inpainting. Variations restyle the image after the
prompt the Flow's caption and CLIP executors make of it (``/interrogate``).
"""

import base64
import time
from typing import Any, Dict, List, Literal, Mapping, Optional

from docarray import DocList
from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.dependencies import get_flow
from gateway.errors import document_error
from gateway.flow_client import GENERATOR, INTERROGATE_ENDPOINT, RESTYLE_ENDPOINT, FlowClient
from gateway.forms import form_once
from gateway.generation import FIELD_OF, URL_SECONDS, form_values, generation_parameters
from gateway.routes.models import model_not_found
from s2i.contracts.documents import GeneratedImage, PromptDoc
from s2i.contracts.errors import CodedError, ErrorCode

IMAGE_ECHOED = ('seed', 'width', 'height', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler', 'strength')
ImageFormat = Literal['b64_json', 'url']
# The form fields of /images/edits and /images/variations that are not generation fields.
IMAGE_FIELDS = frozenset({'image', 'image[]'})  # OpenAI's SDKs send a list of images as image[]
EDIT_FIELDS = IMAGE_FIELDS | {'prompt', 'mask', 'model', 'response_format', 'user'}
VARIATION_FIELDS = EDIT_FIELDS - {'prompt', 'mask'}

router = APIRouter(prefix='/v1/images')


class ImageRequest(BaseModel):
    """OpenAI's body for /images/generations; this service's parameters arrive as extra fields."""

    model_config = ConfigDict(extra='allow')

    prompt: str = Field(min_length=1)
    model: Optional[str] = None
    # n and size are generation fields: checked with the others, by the executor's parameter model.
    n: Any = Field(None, json_schema_extra={'type': 'integer', 'minimum': 1}, description='images; default 1')
    size: Any = Field(None, json_schema_extra={'type': 'string'}, description='"WIDTHxHEIGHT" or "auto"')
    response_format: ImageFormat = 'b64_json'
    user: Optional[str] = None  # accepted, not used


@router.post('/generations')
async def generations(body: ImageRequest, flow: FlowClient = Depends(get_flow)) -> dict:
    """Images from a text prompt, through the whole Flow (the store keeps them when S2I_STORE is set).

    Unlike OpenAI: ``size`` is any ``WIDTHxHEIGHT`` the executor accepts (multiples of 8), or
    ``auto``/omitted for its default; ``model`` is the Stable Diffusion model's id (omitted: the
    same), other names are 404; ``user`` is ignored; ``response_format: url`` needs stored
    results and gives where each image is kept (an HTTPS link valid for an hour with an S3
    store, else the image's path on the server). Each image's own values come back beside it
    (image i gets seed + i)."""
    await check_image_model(flow, body.model)
    parameters = with_format(generation_parameters({'n': body.n, 'size': body.size, **body.model_extra}), body.response_format)
    [doc] = await flow.call(DocList[PromptDoc]([PromptDoc(text=body.prompt)]), parameters)
    return images_answer(doc, body.response_format, input_field='prompt')


@router.post('/edits')
async def edits(request: Request, prompt: str = Form(..., min_length=1), model: Optional[str] = Form(None),
                response_format: ImageFormat = Form('b64_json'), flow: FlowClient = Depends(get_flow)) -> dict:
    """The image restyled after the prompt (image-to-image, the Flow's ``/restyle``), answered as
    /images/generations answers; ``revised_prompt`` is the English text used, and each image
    echoes its ``strength`` too.

    Unlike OpenAI: one ``image`` per request (any format the executor reads: PNG, JPEG, WebP, ...);
    no ``mask`` (a 400: the whole image is redrawn, nothing is inpainted); ``size`` omitted or
    ``auto`` keeps the input image's size (rounded down to a multiple of 8, scaled to fit the
    executor's max_pixels). Extra form fields: ``strength`` (how far from the image to go, 0 to 1;
    the model denoises int(steps x strength) steps) and the extras of /images/generations."""
    form = await form_once(request, repeatable=IMAGE_FIELDS)  # one_image names extra images
    image = await one_image(form)
    if 'mask' in form:
        raise CodedError('mask is not supported: this service restyles the whole image after the prompt and '
                         'offers no inpainting; send the image and prompt without a mask', ErrorCode.UNSUPPORTED, param='mask')
    parameters = await restyle_parameters(flow, model, response_format, form, EDIT_FIELDS)
    return images_answer(await restyled(flow, image, prompt, parameters), response_format, input_field='image')


@router.post('/variations')
async def variations(request: Request, model: Optional[str] = Form(None), response_format: ImageFormat = Form('b64_json'),
                     flow: FlowClient = Depends(get_flow)) -> dict:
    """The image restyled after what the Flow sees in it: the prompt its caption and CLIP
    executors make of the image (``/interrogate``), then ``/restyle`` as /images/edits does.

    Unlike OpenAI: ``revised_prompt`` is that prompt; the image need not be a square PNG; the
    extra form fields of /images/edits (``strength``, ``seed``, ...) are taken; a Flow without
    the caption and CLIP executors cannot make variations (unsupported, saying so)."""
    form = await form_once(request, repeatable=IMAGE_FIELDS)  # one_image names extra images
    image = await one_image(form)
    parameters = await restyle_parameters(flow, model, response_format, form, VARIATION_FIELDS)
    [described] = await flow.call(DocList[PromptDoc]([PromptDoc(image=image)]), endpoint=INTERROGATE_ENDPOINT)
    if described.error:
        raise image_failure(described, input_field='image')
    if not described.interrogated:
        raise CodedError('variations need the caption and clip executors in the Flow (flow.yml), '
                         'and this one has none to describe the image', ErrorCode.UNSUPPORTED)
    answered = await restyled(flow, image, described.interrogated, parameters)
    return images_answer(answered, response_format, input_field='image')


async def check_image_model(flow: FlowClient, model: Optional[str]) -> None:
    loaded = (await flow.models()).get(GENERATOR)
    if model is not None and loaded is not None and model != loaded:
        raise model_not_found(model, [loaded])


async def one_image(form: Mapping[str, Any]) -> bytes:
    """The file of the form's ``image`` (or ``image[]``, as OpenAI's SDKs send a list): exactly one."""
    files = [*form.getlist('image'), *form.getlist('image[]')]
    if len(files) != 1:
        code = ErrorCode.MISSING_INPUT if not files else ErrorCode.DUPLICATE_FIELD
        raise CodedError(f'send exactly one image (a file in the image field), got {len(files)}: '
                         'this service restyles one image per request', code, param='image')
    [file] = files
    if isinstance(file, str):
        raise CodedError('image must be a file (multipart/form-data), not a text field', ErrorCode.INVALID_REQUEST, param='image')
    data = await file.read()
    if not data:
        raise CodedError('empty image: the file has 0 bytes', ErrorCode.IMAGE_UNREADABLE, param='image')
    return data


async def restyle_parameters(flow: FlowClient, model: Optional[str], response_format: str, form: Mapping[str, Any],
                             route_fields: frozenset) -> Dict[str, Any]:
    """The Flow's parameters for ``/restyle``: the form's generation fields, checked before any work."""
    await check_image_model(flow, model)
    fields = {key: value for key, value in form.items() if key not in route_fields}
    return with_format(generation_parameters(form_values(fields, restyle=True), restyle=True), response_format)


def with_format(parameters: Dict[str, Any], response_format: str) -> Dict[str, Any]:
    if response_format == 'url':
        parameters['presign_seconds'] = URL_SECONDS  # the store's key; a local store ignores it
    return parameters


async def restyled(flow: FlowClient, image: bytes, text: str, parameters: Dict[str, Any]) -> PromptDoc:
    """``image`` redrawn after the English ``text`` by the Flow's ``/restyle``."""
    [doc] = await flow.call(DocList[PromptDoc]([PromptDoc(image=image, text=text)]), parameters, endpoint=RESTYLE_ENDPOINT)
    return doc


def images_answer(doc: PromptDoc, response_format: str, input_field: str) -> dict:
    """OpenAI's images answer: each of the document's images, or the error that says why there are none."""
    images = delivered_images(doc, response_format, input_field)
    return {'created': int(time.time()), 'data': [image_data(image, doc.text, response_format) for image in images]}


def delivered_images(doc: PromptDoc, response_format: str, input_field: str) -> List[GeneratedImage]:
    """The document's images, or the error that says why there are none to give.

    A store failure leaves the images inline with an error: b64_json still gets them."""
    if doc.error and not doc.matches:
        raise image_failure(doc, input_field)
    if response_format == 'url' and not all(image.url for image in doc.matches):
        if doc.error:
            raise image_failure(doc, input_field)
        raise CodedError('response_format "url" needs stored results, and this service keeps none (S2I_STORE=none): '
                         'ask for b64_json', ErrorCode.UNSUPPORTED, param='response_format')
    return list(doc.matches)


def image_failure(doc: PromptDoc, input_field: str) -> CodedError:
    """A failed document's error, blaming the field the client sent (``size`` for the executor's width)."""
    error = document_error(doc, input_field)
    error.param = FIELD_OF.get(error.param, error.param)
    return error


def image_data(image: GeneratedImage, prompt: str, response_format: str) -> dict:
    """One entry of the answer's ``data``: the image, the English text it was made from, and its parameters."""
    if response_format == 'url':
        data = {'url': image.presigned_url or image.url}
    else:
        data = {'b64_json': base64.b64encode(image.png or b'').decode('ascii')}
    recorded = {**image.parameters, 'seed': image.seed, 'width': image.width, 'height': image.height}
    echoed = {key: recorded[key] for key in IMAGE_ECHOED if key in recorded}
    return {**data, 'revised_prompt': image.parameters.get('prompt', prompt), **echoed}
