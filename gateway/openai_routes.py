"""OpenAI-compatible routes, under /v1: speech to text with the Flow's Whisper, images with its Stable
Diffusion, and the models that serve them. Any OpenAI SDK works with ``base_url=http://HOST:PORT/v1``
and one of the S2I_AUTH_TOKEN keys as its API key.

Every error leaves as ``APIError`` (gateway/errors.py), in OpenAI's ``{"error": {...}}`` shape. What
differs from OpenAI is said in each route's docstring; in short: audio is decoded with beam search
(``temperature`` 0 only), languages are ISO 639-1 codes, verbose answers carry only the fields Whisper
gives (no tokens or log-probabilities), and images take this service's own parameters (``seed``,
``steps``, ``guidance_scale``, ``negative_prompt``, ``scheduler``, ``best_of``; ``strength`` for
edits and variations) as extra body or form fields. Edits restyle the whole image after the prompt
(the Flow's ``/restyle``, image-to-image): no masks, so no inpainting. Variations restyle the image
after the prompt the Flow's caption and CLIP executors make of it (``/interrogate``).
"""

import base64
import time
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Tuple

from docarray import DocList
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from executors.whisper.quality import CANNOT_TRANSLATE, LANGUAGE_UNCERTAIN, NO_SPEECH, UNUSABLE_SPEECH
from gateway.errors import APIError
from gateway.flow_calls import GENERATOR, TRANSCRIBER, FlowCalls, FlowFailure
from gateway.generation import URL_SECONDS, form_extras, generation_parameters, named_field
from s2i.contracts.documents import GeneratedImage, PromptDoc
from s2i.contracts.params import quote

WHISPER_ALIAS = 'whisper-1'  # OpenAI's name, for the Flow's Whisper whatever its size
AudioFormat = Literal['json', 'text', 'srt', 'verbose_json', 'vtt']
AUDIO_FIELDS = frozenset({'file', 'model', 'prompt', 'response_format', 'temperature', 'timestamp_granularities[]'})
IMAGE_ECHOED = ('seed', 'width', 'height', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler', 'strength')
ImageFormat = Literal['b64_json', 'url']
# OpenAI's form fields of /images/edits and /images/variations; any other is one of this service's extras.
EDIT_FIELDS = frozenset({'image', 'image[]', 'prompt', 'mask', 'model', 'n', 'size', 'response_format', 'user'})
VARIATION_FIELDS = EDIT_FIELDS - {'prompt', 'mask'}
RESTYLE_ENDPOINT, INTERROGATE_ENDPOINT = '/restyle', '/interrogate'
# Whisper's document errors that are the audio's fault (400), by how they start; 'audio too large' is 413.
AUDIO_TOO_LARGE = 'audio too large'
SPEECH_ERRORS = (NO_SPEECH, UNUSABLE_SPEECH)
AUDIO_ERRORS = ('empty audio', 'could not decode audio', 'audio too long', 'bad audio', 'malformed audio')
# Stable Diffusion's document errors that are the request's fault (400); any other is the service's (500).
IMAGE_REQUEST_ERRORS = ('invalid parameters: ', 'invalid seed: ', 'prompt ', 'nothing to draw', 'nothing to restyle with')
# The input image's document errors (s2i/images.py, and restyle's size): 400, param image, code invalid_image.
INPUT_IMAGE_ERRORS = ('not an image this service reads', 'image too large', 'empty image', 'could not read the image',
                      'truncated or damaged', 'image cannot be restyled', 'nothing to restyle:')


def openai_router(flow: FlowCalls, guard) -> APIRouter:
    """The /v1 routes, answering through ``flow``; the token and body limit are the app's middleware."""
    router = APIRouter(prefix='/v1')
    started = int(time.time())  # each model's "created": when this gateway started serving it

    @router.post('/audio/transcriptions')
    async def transcriptions(
        request: Request,
        file: UploadFile = File(...),
        model: str = Form(...),
        language: Optional[str] = Form(None),
        prompt: Optional[str] = Form(None),
        response_format: AudioFormat = Form('json'),
        temperature: float = Form(0.0),
        timestamp_granularities: Optional[List[str]] = Form(None, alias='timestamp_granularities[]'),
    ):
        """Speech to text in the spoken language (``language``: an ISO 639-1 hint; detected when omitted).

        Unlike OpenAI: ``prompt`` is accepted but not used (the executor takes no decoding prompt);
        ``temperature`` must be 0 (beam search, no sampling); ``timestamp_granularities[]`` only
        ``segment``; ``verbose_json`` gives the language as an ISO 639-1 code and segments with id,
        start, end and text only."""
        await check_audio_request(request, AUDIO_FIELDS | {'language'}, flow, model, temperature, timestamp_granularities)
        doc = await heard(flow, await file.read(), language, transcribing=True)
        return audio_response(transcribed(doc), response_format)

    @router.post('/audio/translations')
    async def translations(
        request: Request,
        file: UploadFile = File(...),
        model: str = Form(...),
        prompt: Optional[str] = Form(None),
        response_format: AudioFormat = Form('json'),
        temperature: float = Form(0.0),
        timestamp_granularities: Optional[List[str]] = Form(None, alias='timestamp_granularities[]'),
    ):
        """Speech in any language to English text.

        As transcriptions, and: Whisper translates the speech as a whole, so speech not in English
        comes back as one segment (from the first spoken segment's start to the last one's end)
        holding the whole English text; English speech keeps its own segments."""
        await check_audio_request(request, AUDIO_FIELDS, flow, model, temperature, timestamp_granularities)
        doc = await heard(flow, await file.read(), None, transcribing=False)
        return audio_response(translated(doc), response_format)

    @router.post('/images/generations')
    async def generations(body: ImageRequest):
        """Images from a text prompt, through the whole Flow (the store keeps them when S2I_STORE is set).

        Unlike OpenAI: ``size`` is any ``WIDTHxHEIGHT`` the executor accepts (multiples of 8), or
        ``auto``/omitted for its default; ``model`` is the Stable Diffusion model's id (omitted: the
        same), other names are 404; ``user`` is ignored; ``response_format: url`` needs stored
        results and gives where each image is kept (an HTTPS link valid for an hour with an S3
        store, else the image's path on the server). Extra body fields ``seed``, ``steps``,
        ``guidance_scale``, ``negative_prompt`` and ``scheduler`` are the executor's parameters;
        each image's own values come back beside it (image i gets seed + i)."""
        await check_image_model(flow, body.model)
        parameters = generation_parameters(body.n, body.size, body.model_extra or {})
        if body.response_format == 'url':
            parameters['presign_seconds'] = URL_SECONDS  # the store's key; a local store ignores it
        doc = await answer_of(flow.call(DocList[PromptDoc]([PromptDoc(text=body.prompt)]), parameters))
        return images_answer(doc, body.response_format)

    @router.post('/images/edits')
    async def edits(
        request: Request,
        prompt: str = Form(..., min_length=1),
        model: Optional[str] = Form(None),
        n: Optional[int] = Form(None),
        size: Optional[str] = Form(None),
        response_format: ImageFormat = Form('b64_json'),
        user: Optional[str] = Form(None),
    ):
        """The image restyled after the prompt (image-to-image, the Flow's ``/restyle``), answered as
        /images/generations answers; ``revised_prompt`` is the English text used, and each image
        echoes its ``strength`` too.

        Unlike OpenAI: one ``image`` per request (any format the executor reads: PNG, JPEG, WebP, ...);
        no ``mask`` (a 400: the whole image is redrawn, nothing is inpainted); ``size`` omitted or
        ``auto`` keeps the input image's size (rounded down to a multiple of 8, scaled to fit the
        executor's max_pixels). Extra form fields: ``strength`` (how far from the image to go, 0 to 1;
        the model denoises int(steps x strength) steps) and the extras of /images/generations."""
        form = await request.form()
        image = await one_image(form)
        if 'mask' in form:
            raise APIError(400, 'mask is not supported: this service restyles the whole image after the prompt and '
                           'offers no inpainting; send the image and prompt without a mask', param='mask')
        parameters = await restyle_parameters(flow, model, n, size, response_format, extras_of(form, EDIT_FIELDS))
        return images_answer(await restyled(flow, image, prompt, parameters), response_format)

    @router.post('/images/variations')
    async def variations(
        request: Request,
        model: Optional[str] = Form(None),
        n: Optional[int] = Form(None),
        size: Optional[str] = Form(None),
        response_format: ImageFormat = Form('b64_json'),
        user: Optional[str] = Form(None),
    ):
        """The image restyled after what the Flow sees in it: the prompt its caption and CLIP
        executors make of the image (``/interrogate``), then ``/restyle`` as /images/edits does.

        Unlike OpenAI: ``revised_prompt`` is that prompt; the image need not be a square PNG; the
        extra form fields of /images/edits (``strength``, ``seed``, ...) are taken; a Flow without
        the caption and CLIP executors cannot make variations (a 500 that says so)."""
        form = await request.form()
        image = await one_image(form)
        parameters = await restyle_parameters(flow, model, n, size, response_format, extras_of(form, VARIATION_FIELDS))
        described = await answer_of(flow.call(DocList[PromptDoc]([PromptDoc(image=image)]), endpoint=INTERROGATE_ENDPOINT))
        if described.error:
            raise image_error(described.error)
        if not described.interrogated:
            raise APIError(500, 'variations need the caption and clip executors in the Flow (flow.yml), '
                           'and this one has none to describe the image', code='server_error')
        return images_answer(await restyled(flow, image, described.interrogated, parameters), response_format)

    @router.get('/models')
    async def models():
        """Whisper (as ``whisper-1`` and by its own name) and the Stable Diffusion model;
        ``owned_by`` is the executor that runs each."""
        return {'object': 'list', 'data': [model_card(name, executor, started) for name, executor in (await served_models(flow)).items()]}

    @router.get('/models/{model_id:path}')
    async def model(model_id: str):
        served = await served_models(flow)
        if model_id not in served:
            raise model_not_found(model_id, served)
        return model_card(model_id, served[model_id], started)

    return router


# The models

async def served_models(flow: FlowCalls) -> Dict[str, str]:
    """Each model id this API accepts, with the executor that runs it. ``whisper-1`` always: the
    executors' own names are known once they answered the gateway."""
    loaded = await flow.models()
    served = {WHISPER_ALIAS: TRANSCRIBER}
    for executor in (TRANSCRIBER, GENERATOR):
        if executor in loaded:
            served[loaded[executor]] = executor
    return served


def model_card(model_id: str, executor: str, created: int) -> dict:
    return {'id': model_id, 'object': 'model', 'created': created, 'owned_by': executor}


def model_not_found(model: str, accepted: Iterable[str]) -> APIError:
    return APIError(404, f'model {quote(model)} not found; this service serves {", ".join(map(quote, accepted))}',
                    param='model', code='model_not_found')


# Audio

async def check_audio_request(request: Request, fields: frozenset, flow: FlowCalls, model: str, temperature: float,
                              granularities: Optional[List[str]]) -> None:
    """What the form asks that this service cannot do: a 400 (or 404 for the model) naming it."""
    unknown = sorted(set((await request.form()).keys()) - fields)
    if unknown:
        raise APIError(400, f'unknown field(s) {", ".join(map(quote, unknown))}; this endpoint takes {", ".join(sorted(fields))}',
                       param=unknown[0])
    served = await served_models(flow)
    if served.get(model) != TRANSCRIBER:
        raise model_not_found(model, [name for name, executor in served.items() if executor == TRANSCRIBER])
    if temperature != 0:
        raise APIError(400, f'temperature must be 0, got {temperature:g}: this service decodes with beam search, not by sampling',
                       param='temperature')
    if set(granularities or ()) - {'segment'}:
        raise APIError(400, f'timestamp_granularities[] can only be "segment", got {quote(granularities)}: '
                       'Whisper here gives no word timestamps', param='timestamp_granularities[]')


async def heard(flow: FlowCalls, audio: bytes, language: Optional[str], transcribing: bool) -> PromptDoc:
    """Whisper's answer for ``audio`` (nothing drawn), or the APIError its document error means.

    A transcription needs only the transcript: an error of the translation pass that follows it
    (the transcript is kept) is a translation's error only."""
    doc = await answer_of(flow.call_executor(TRANSCRIBER, DocList[PromptDoc]([PromptDoc(blob=audio, language=language)])))
    if doc.error and not (transcribing and doc.transcript):
        raise audio_error(doc.error)
    return doc


def audio_error(error: str) -> APIError:
    if error.startswith(AUDIO_TOO_LARGE):
        return APIError(413, error, param='file', code='file_too_large')
    if error.startswith(SPEECH_ERRORS):
        return APIError(400, error, param='file', code='no_speech')
    if error.startswith(AUDIO_ERRORS):
        return APIError(400, error, param='file', code='invalid_audio')
    if error.startswith(('unknown language', LANGUAGE_UNCERTAIN)):
        return APIError(400, error, param='language', code='invalid_language')
    if error.startswith(CANNOT_TRANSLATE):  # the configured model does not translate: the request cannot be served
        return APIError(400, error, param='model', code='translation_unavailable')
    return APIError(500, error, code='server_error')  # a failed decoder or translation: the service's fault


def transcribed(doc: PromptDoc) -> dict:
    """The verbose answer of a transcription: text and segments in the spoken language."""
    return verbose('transcribe', doc.language, doc.duration, doc.transcript, [(s.start, s.end, s.text) for s in doc.segments])


def translated(doc: PromptDoc) -> dict:
    """The verbose answer of a translation: the English text; see the route for its segments."""
    spans = [(s.start, s.end, s.text) for s in doc.segments]
    if doc.language != 'en' and spans:
        spans = [(spans[0][0], spans[-1][1], doc.text)]
    return verbose('translate', 'en', doc.duration, doc.text, spans)


def verbose(task: str, language: Optional[str], duration: Optional[float], text: str,
            spans: List[Tuple[float, float, str]]) -> dict:
    segments = [{'id': i, 'start': start, 'end': end, 'text': words} for i, (start, end, words) in enumerate(spans)]
    return {'task': task, 'language': language, 'duration': duration, 'text': text, 'segments': segments}


def audio_response(result: dict, response_format: str):
    if response_format == 'json':
        return {'text': result['text']}
    if response_format == 'verbose_json':
        return result
    if response_format == 'srt':
        return PlainTextResponse(srt(result['segments']))
    if response_format == 'vtt':
        return Response(vtt(result['segments']), media_type='text/vtt')
    return PlainTextResponse(result['text'])


def srt(segments: List[dict]) -> str:
    cues = (f'{s["id"] + 1}\n{timestamp(s["start"], ",")} --> {timestamp(s["end"], ",")}\n{s["text"]}\n' for s in segments)
    return '\n'.join(cues)


def vtt(segments: List[dict]) -> str:
    cues = (f'{timestamp(s["start"], ".")} --> {timestamp(s["end"], ".")}\n{s["text"]}\n' for s in segments)
    return '\n'.join(('WEBVTT\n', *cues))


def timestamp(seconds: float, decimal_mark: str) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT)."""
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole, milliseconds = divmod(milliseconds, 1000)
    return f'{hours:02d}:{minutes:02d}:{whole:02d}{decimal_mark}{milliseconds:03d}'


# Images

class ImageRequest(BaseModel):
    """OpenAI's body for /images/generations; this service's parameters (EXTRAS) arrive as extra fields."""

    model_config = ConfigDict(extra='allow')

    prompt: str = Field(min_length=1)
    model: Optional[str] = None
    n: Optional[int] = None  # None: 1
    size: Optional[str] = None  # 'WIDTHxHEIGHT'; None or 'auto': the executor's default
    response_format: ImageFormat = 'b64_json'
    user: Optional[str] = None  # accepted, not used


async def check_image_model(flow: FlowCalls, model: Optional[str]) -> None:
    loaded = (await flow.models()).get(GENERATOR)
    if model is not None and loaded is not None and model != loaded:
        raise model_not_found(model, [loaded])


async def one_image(form: Mapping[str, Any]) -> bytes:
    """The file of the form's ``image`` (or ``image[]``, as OpenAI's SDKs send a list): exactly one."""
    files = [*form.getlist('image'), *form.getlist('image[]')]
    if len(files) != 1:
        raise APIError(400, f'send exactly one image (a file in the image field), got {len(files)}: '
                       'this service restyles one image per request', param='image')
    [file] = files
    if isinstance(file, str):
        raise APIError(400, 'image must be a file (multipart/form-data), not a text field', param='image')
    data = await file.read()
    if not data:
        raise APIError(400, 'empty image: the file has 0 bytes', param='image', code='invalid_image')
    return data


def extras_of(form: Mapping[str, Any], openai_fields: frozenset) -> Dict[str, Any]:
    """The form's fields that are not OpenAI's: this service's extras, numbers read as numbers."""
    return form_extras({key: value for key, value in form.items() if key not in openai_fields})


async def restyle_parameters(flow: FlowCalls, model: Optional[str], n: Optional[int], size: Optional[str],
                             response_format: str, extras: Dict[str, Any]) -> Dict[str, Any]:
    """The Flow's parameters for ``/restyle``, checked before any work."""
    await check_image_model(flow, model)
    parameters = generation_parameters(n, size, extras, restyle=True)
    if response_format == 'url':
        parameters['presign_seconds'] = URL_SECONDS
    return parameters


async def restyled(flow: FlowCalls, image: bytes, text: str, parameters: Dict[str, Any]) -> PromptDoc:
    """``image`` redrawn after the English ``text`` by the Flow's ``/restyle``."""
    docs = DocList[PromptDoc]([PromptDoc(image=image, text=text)])
    return await answer_of(flow.call(docs, parameters, endpoint=RESTYLE_ENDPOINT))


def images_answer(doc: PromptDoc, response_format: str) -> dict:
    """OpenAI's images answer: each of the document's images, or the APIError that says why there are none."""
    images = delivered_images(doc, response_format)
    return {'created': int(time.time()), 'data': [image_data(image, doc.text, response_format) for image in images]}


def delivered_images(doc: PromptDoc, response_format: str) -> List[GeneratedImage]:
    """The document's images, or the APIError that says why there are none to give.

    A store failure leaves the images inline with an error: b64_json still gets them."""
    if doc.error and not doc.matches:
        raise image_error(doc.error)
    if response_format == 'url' and not all(image.url for image in doc.matches):
        if doc.error:
            raise APIError(500, doc.error, code='server_error')
        raise APIError(400, 'response_format "url" needs stored results, and this service keeps none (S2I_STORE=none): '
                       'ask for b64_json', param='response_format')
    return list(doc.matches)


def image_error(error: str) -> APIError:
    if error.startswith(INPUT_IMAGE_ERRORS):
        return APIError(400, error, param='image', code='invalid_image')
    if not error.startswith(IMAGE_REQUEST_ERRORS):
        return APIError(500, error, code='server_error')
    if error.startswith('invalid parameters: '):
        return APIError(400, error, param=named_field(error.removeprefix('invalid parameters: ')))
    return APIError(400, error, param='seed' if error.startswith('invalid seed') else 'prompt')


def image_data(image: GeneratedImage, prompt: str, response_format: str) -> dict:
    """One entry of the answer's ``data``: the image, the English text it was made from, and its parameters."""
    if response_format == 'url':
        data = {'url': image.presigned_url or image.url}
    else:
        data = {'b64_json': base64.b64encode(image.png or b'').decode('ascii')}
    recorded = {**image.parameters, 'seed': image.seed, 'width': image.width, 'height': image.height}
    echoed = {key: recorded[key] for key in IMAGE_ECHOED if key in recorded}
    return {**data, 'revised_prompt': image.parameters.get('prompt', prompt), **echoed}


# Calls

async def answer_of(call) -> PromptDoc:
    """The one document a Flow call answers with; its failure as OpenAI's 500, or 503 when an executor is down."""
    try:
        [doc] = await call
    except FlowFailure as e:
        if e.unavailable:
            raise APIError(503, str(e), code='service_unavailable') from None
        raise APIError(500, str(e), code='server_error') from None
    return doc
