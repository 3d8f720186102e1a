"""A scripted Flow for the in-process API tests: the FlowClient protocol (gateway/flow_client.py: ``call``,
``call_executor``, ``generate_stream``, ``schemas``, ``models``) answered at once, in the test's process.

It answers as flow.yml's executors do, from the contracts' parameter models: Whisper's transcript (language,
duration, segments, and the English text) for audio; a PNG of the asked size per image for /generate,
/generate_stream and /restyle, each echoing its parameters; a prompt for /interrogate; CLIP's ranking;
the store's urls. A value an executor would refuse (``steps: 0``) fails the document with the
ParameterError's code and param, as the executor does.

Scripted, it fails each document as an executor fails one (``Failure``: ``error``, ``error_code``,
``error_param``), raises the FlowFailure of an executor that cannot be reached (``unreachable``), or
holds a generation until its caller gives up (``hold_generation``). It records every call with
documents (``sent``), so that a test can assert that a refused request never reached the Flow, and
what a route sent to which executor with which parameters.
"""

import asyncio
import io
from dataclasses import dataclass, field
from functools import partial
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple

from docarray import DocList
from PIL import Image, UnidentifiedImageError

from gateway.flow_client import GENERATOR, RANKER, STORE, TRANSCRIBER, unavailable
from s2i.contracts.caption import CaptionParams
from s2i.contracts.clip import ClipParams
from s2i.contracts.documents import (
    GeneratedImage, GenerationEvent, GenerationRequest, ParameterSchema, PromptDoc, Segment, fail,
)
from s2i.contracts.errors import ErrorCode
from s2i.contracts.events import TERMINAL_KINDS
from s2i.contracts.params import ParameterError, RequestParams
from s2i.contracts.stable_diffusion import GenerationParams, RestyleParams, restyle_size
from s2i.contracts.store import StoreParams
from s2i.contracts.whisper import TranscriptionParams
from s2i.encoding import encode_png

CAPTION = 'caption'  # flow.yml's name of the caption executor (flow_client names the others)
# the models this Flow says it loaded (GET /v1/models lists them)
MODELS = {TRANSCRIBER: 'tiny-whisper', GENERATOR: 'tests/tiny-sd', CAPTION: 'tiny-blip', RANKER: 'tiny-clip'}
PARAMETERS = {TRANSCRIBER: TranscriptionParams, GENERATOR: RestyleParams, CAPTION: CaptionParams, RANKER: ClipParams,
              STORE: StoreParams}
FIRST_SEED = 1234  # the seed of a document's first image when the request gives none
STORED_IN = '/srv/results'  # where the fake store says it keeps results
INTERROGATED = 'a red square, minimalism, flat colour'  # what caption + CLIP "see" in any image
MAX_PIXELS = 768 * 768  # the painter's max_pixels, for restyle's output size
COLOUR = (200, 30, 30)


@dataclass(frozen=True)
class Speech:
    """What Whisper hears in any audio it is sent: segments (start s, end s, text) in ``language``."""

    language: str
    segments: Tuple[Tuple[float, float, str], ...]
    english: str  # the translation (the English text a prompt is drawn from)

    @property
    def transcript(self) -> str:
        return ' '.join(text for _, _, text in self.segments)

    @property
    def duration(self) -> float:
        return self.segments[-1][1]


ENGLISH = Speech('en', ((0.0, 1.5, 'A red fox runs'), (1.5, 3.25, 'through the snow.')), 'A red fox runs through the snow.')
GERMAN = Speech('de', ((0.0, 2.0, 'Ein kleiner Hund'), (2.0, 4.5, 'spielt im Schnee.')), 'A little dog plays in the snow.')


@dataclass(frozen=True)
class Failure:
    """How an executor fails every document it works on: with ``code``, ``message`` and ``param``, as
    s2i.contracts.documents.fail sets them. ``executor`` None: the first executor a document meets."""

    code: Optional[ErrorCode]  # None: an executor that sets no code (an older one): only ``error``
    param: str = ''
    message: str = 'the executor failed on this document (a scripted failure)'
    executor: Optional[str] = None


@dataclass
class Sent:
    """One call that reached the Flow: which executor (None: the whole Flow), endpoint, documents, parameters."""

    executor: Optional[str]
    endpoint: str
    docs: List[PromptDoc]
    parameters: Dict[str, Any]


@dataclass
class FakeFlow:
    speech: Speech = ENGLISH
    failure: Optional[Failure] = None
    unreachable: Optional[str] = None  # an executor that cannot be reached: every call raises FlowFailure
    hold_generation: bool = False  # generate_stream waits until its caller is cancelled (a job held running)
    executors: Sequence[str] = (TRANSCRIBER, GENERATOR, CAPTION, RANKER, STORE)
    sent: List[Sent] = field(default_factory=list)

    # The FlowClient protocol

    async def call(self, docs: DocList[PromptDoc], parameters: Optional[dict] = None, endpoint: str = '/generate') -> DocList[PromptDoc]:
        """The documents as the whole Flow answers ``endpoint``: each executor on its way works on them in turn."""
        answered = self._received(None, endpoint, docs, parameters)
        for executor, work in self._route(endpoint):
            self._answer(executor, work, answered, parameters or {})
        return answered

    async def call_executor(self, executor: str, docs: DocList[PromptDoc], parameters: Optional[dict] = None) -> DocList[PromptDoc]:
        """The documents as ``executor`` alone answers /generate."""
        answered = self._received(executor, '/generate', docs, parameters)
        self._answer(executor, self._works()[executor], answered, parameters or {})
        return answered

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stable Diffusion's events for one document: a progress event per denoising step, then ``done``."""
        [doc] = self._received(GENERATOR, '/generate_stream', [request], request.parameters)
        if self.hold_generation:
            await asyncio.get_running_loop().create_future()  # never set: ends when the job is cancelled
        self._answer(GENERATOR, paint, [doc], request.parameters)
        steps = safely(GenerationParams, request.parameters).steps if not doc.error else 0
        for step in range(1, steps + 1):
            yield GenerationEvent(kind='progress', step=step, steps=steps, images=len(doc.matches))
        yield GenerationEvent(kind='done', **{name: getattr(doc, name) for name in DONE_FIELDS})

    async def schemas(self) -> List[ParameterSchema]:
        """Each executor's parameters, as it answers /parameters."""
        return [schema_of(executor) for executor in self.executors]

    async def models(self) -> Dict[str, str]:
        return {executor: MODELS[executor] for executor in self.executors if executor in MODELS}

    # Answering

    def _received(self, executor: Optional[str], endpoint: str, docs, parameters: Optional[dict]) -> DocList[PromptDoc]:
        """Records the call, raises FlowFailure if an executor is unreachable, and returns copies to answer with."""
        self.sent.append(Sent(executor, endpoint, [as_prompt(doc) for doc in docs], dict(parameters or {})))
        if self.unreachable is not None:
            raise unavailable(self.unreachable)  # FlowFailure, code executor_unavailable
        return DocList[PromptDoc]([as_prompt(doc) for doc in docs])

    def _works(self) -> Dict[str, Callable]:
        """What each executor does on /generate."""
        return {TRANSCRIBER: partial(hear, speech=self.speech), GENERATOR: paint, RANKER: rank, STORE: store}

    def _route(self, endpoint: str) -> List[Tuple[str, Callable]]:
        """The executors of this Flow that work on ``endpoint``, in flow.yml's order."""
        works = self._works()
        route = {
            '/generate': [(TRANSCRIBER, works[TRANSCRIBER]), (GENERATOR, paint), (STORE, store)],
            '/restyle': [(GENERATOR, restyle), (STORE, store)],
            '/interrogate': [(CAPTION, caption), (RANKER, interrogate)],
        }.get(endpoint, [])
        return [(executor, work) for executor, work in route if executor in self.executors]

    def _answer(self, executor: str, work: Callable, docs, parameters: Dict[str, Any]) -> None:
        """``work`` on each document without an error yet (an executor leaves failed ones alone), or the
        scripted failure; a value the executor refuses fails the document with the ParameterError's code."""
        for doc in docs:
            if doc.error:
                continue
            if self.failure is not None and self.failure.executor in (None, executor):
                failed(doc, self.failure)
                continue
            try:
                work(doc, parameters)
            except ParameterError as e:
                fail(doc, f'invalid parameters: {e.message}', e.code, e.param)


DONE_FIELDS = ('text', 'language', 'transcript', 'matches', 'error', 'error_code', 'error_param')


def as_prompt(doc: PromptDoc) -> PromptDoc:
    """A copy of ``doc`` as a plain PromptDoc (a GenerationRequest's parameters left out), its id kept."""
    return PromptDoc(**{name: getattr(doc, name) for name in PromptDoc.model_fields})


def failed(doc: PromptDoc, failure: Failure) -> None:
    if failure.code is None:
        doc.error = failure.message
    else:
        fail(doc, failure.message, failure.code, failure.param)


def safely(model, parameters: Dict[str, Any]) -> RequestParams:
    """``model``'s defaults with its keys of ``parameters``; raises ParameterError as the executor would."""
    return model.from_request(model(), parameters)


def schema_of(executor: str) -> ParameterSchema:
    model = PARAMETERS[executor]
    return ParameterSchema(executor=executor, keys=sorted(model.keys()), json_schema=model.model_json_schema(),
                           model=MODELS.get(executor, ''))


# What each executor does to a document

def hear(doc: PromptDoc, parameters: Dict[str, Any], speech: Speech = ENGLISH) -> None:
    """Whisper: a document with audio gets the transcript, its segments and the English text."""
    if not doc.has_audio:
        return
    hint = safely(TranscriptionParams, parameters).language
    doc.language = doc.language or hint or speech.language
    doc.language_probability, doc.duration = 0.97, speech.duration
    doc.transcript, doc.text = speech.transcript, speech.english
    doc.segments = DocList[Segment]([Segment(start=start, end=end, text=text) for start, end, text in speech.segments])


def paint(doc: PromptDoc, parameters: Dict[str, Any]) -> None:
    """Stable Diffusion: ``num_images`` PNGs (``best_of`` candidates) of ``width`` x ``height``."""
    params = safely(GenerationParams, parameters)
    if not doc.text:
        fail(doc, 'nothing to draw: the document has no text prompt', ErrorCode.MISSING_INPUT, 'prompt')
        return
    doc.matches = painted(doc.text, params, params.width, params.height)


def restyle(doc: PromptDoc, parameters: Dict[str, Any]) -> None:
    """Image-to-image: the input image redrawn, at its own size unless the request gives one."""
    params = safely(RestyleParams, parameters)
    try:
        with Image.open(io.BytesIO(doc.image or b'')) as image:
            size = image.size
    except UnidentifiedImageError:
        fail(doc, 'not an image this service reads', ErrorCode.IMAGE_UNREADABLE, 'image')
        return
    width, height = (params.width, params.height) if params.width else restyle_size(*size, MAX_PIXELS)
    doc.matches = painted(doc.text, params, width, height)


def painted(text: str, params: GenerationParams, width: int, height: int) -> DocList[GeneratedImage]:
    first_seed = FIRST_SEED if params.seed is None else params.seed
    images = []
    for index in range(params.images_to_draw):
        recorded = {**params.model_dump(), 'prompt': text, 'seed': first_seed + index, 'width': width,
                    'height': height, 'model': MODELS[GENERATOR]}
        png = encode_png(Image.new('RGB', (width, height), COLOUR), recorded)
        images.append(GeneratedImage(png=png, width=width, height=height, seed=first_seed + index, parameters=recorded))
    return DocList[GeneratedImage](images)


def caption(doc: PromptDoc, parameters: Dict[str, Any]) -> None:
    doc.caption = INTERROGATED.split(',')[0]


def interrogate(doc: PromptDoc, parameters: Dict[str, Any]) -> None:
    doc.interrogated = INTERROGATED


def rank(doc: PromptDoc, parameters: Dict[str, Any]) -> None:
    """CLIP: the ``num_images`` best of the candidates (here: the first ones), each with its score."""
    keep = safely(ClipParams, parameters).num_images
    for score, image in enumerate(doc.matches):
        image.clip_score = 1.0 - score / 100
    doc.matches = DocList[GeneratedImage](list(doc.matches)[:keep])


def store(doc: PromptDoc, parameters: Dict[str, Any]) -> None:
    """The store: where each image and the document's record are kept (a local store: no presigned urls)."""
    safely(StoreParams, parameters)
    for index, image in enumerate(doc.matches):
        image.url = f'{STORED_IN}/{doc.id}/{index}.png'
    doc.result_url = f'{STORED_IN}/{doc.id}/record.json'


def stored_failure(code: ErrorCode = ErrorCode.STORE_FAILED) -> Failure:
    """The store's failure after the images were made: they stay in the document, beside the error."""
    return Failure(code, message='the results could not be stored (a scripted failure)', executor=STORE)



# What the API tests send through the gateway to this Flow

WS = 'ws://127.0.0.1:8322'  # the address tests/gateway_app.py's client asks for
AUDIO = b'RIFF\x24\x00\x00\x00WAVEfmt '  # any bytes: the fake Whisper hears its Speech in whatever it is sent
IMAGE_REQUEST = {'prompt': 'a red fox in the snow', 'size': '64x64', 'steps': 2}
TEXT_JOB = {'prompt': 'a red fox in the snow', 'size': '64x64', 'steps': 2}


def audio_form(model: str = 'whisper-1', **fields: str) -> Dict[str, Any]:
    """The keyword arguments of a multipart POST to /v1/audio/*: the audio file and the form fields."""
    return {'files': {'file': ('speech.wav', AUDIO)}, 'data': {'model': model, **fields}}


def image_form(png: bytes, **fields: str) -> Dict[str, Any]:
    """The keyword arguments of a multipart POST to /v1/images/edits or /variations."""
    return {'files': {'image': ('photo.png', png, 'image/png')}, 'data': fields}



def job_events(client, job_id: str, after: int = 0) -> List[dict]:
    """A job's events after seq ``after``, through its terminal one, over ``WS /v1/jobs/{id}/events``."""
    events: List[dict] = []
    with client.websocket_connect(f'{WS}/v1/jobs/{job_id}/events?after={after}') as ws:
        while not events or events[-1]['kind'] not in TERMINAL_KINDS:
            events.append(ws.receive_json())
    return events
