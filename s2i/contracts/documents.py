"""DocArray (v2) schemas: the one document type that flows client -> Whisper -> Stable Diffusion -> client.

A single type end to end keeps Jina's chaining check happy (every executor takes and returns
``DocList[PromptDoc]``) and lets later executors (storage, captioning, img2img) slot in without
schema adapters.
"""

from typing import Annotated, Any, Dict, Iterable, List, Optional

import numpy as np
from docarray import BaseDoc, DocList
from docarray.typing import NdArray
from pydantic import Field, field_validator

from s2i.contracts.errors import CodedError, ErrorCode

PROGRESS_INTERVAL = 0.25  # seconds: a streamed generation reports progress at most this often (and after each last step)
SAMPLE_RATE = 16000  # Hz; Whisper's input rate, and the rate a waveform ``tensor`` must have
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]  # docarray's protobuf carries ints as int32


class Segment(BaseDoc):
    """A stretch of speech, with times in seconds from the start of the original audio."""

    start: float
    end: float
    text: str  # in the spoken language


class Tag(BaseDoc):
    """A label CLIP gives an image, with its score (a softmax share, or a per-label sigmoid)."""

    label: str
    score: float


class GeneratedImage(BaseDoc):
    """One image, as PNG bytes whose "parameters" text chunk holds ``parameters`` as JSON.

    Over gRPC the PNG is in ``png``. JSON cannot carry bytes, so over HTTP the gateway moves it
    into ``data_uri`` instead (the client turns it back into ``png``)."""

    png: Optional[bytes] = None
    data_uri: Optional[str] = None  # data:image/png;base64,... (HTTP answers)
    url: str = ''  # where the image is stored, once results are stored; '' until then
    presigned_url: str = ''  # an HTTPS URL that fetches it, when a request asks (presign_seconds; S3 stores only)
    width: Int32 = 0
    height: Int32 = 0
    seed: Int32 = 0
    parameters: Dict[str, Any] = {}  # prompt, every generation parameter and the model id
    batch_size: Int32 = 1  # images made in the same pipeline call (dynamic batching merges requests)
    clip_score: Optional[float] = None  # CLIP's similarity to the English prompt, when ranked (best_of)


class PromptDoc(BaseDoc):
    """One input (audio or a text prompt) and everything produced from it.

    Audio is given as exactly one of ``blob`` (file bytes: wav, mp3, flac, ogg, m4a, ...),
    ``uri`` (a ``data:`` URI holding such a file, which is how HTTP clients send audio; a server
    path or http(s) URL only where the Whisper executor's ``input_dir`` / ``allowed_url_hosts``
    allow it) or ``tensor`` (a mono float waveform at ``sample_rate``).
    A document without audio is a text prompt: ``text`` is used as is.
    """

    # --- input ---
    blob: Optional[bytes] = None
    uri: Optional[str] = None
    tensor: Optional[NdArray] = None
    sample_rate: Int32 = SAMPLE_RATE
    language: Optional[str] = None  # spoken language if known (ISO 639-1); else detected and set here
    # This document's first image seed, over the request's ``seed``. Requests that differ only in
    # their seeds have equal parameters this way, so dynamic batching can merge them.
    seed: Optional[Int32] = None

    # --- an input image (caption, tag, interrogate, restyle): file bytes in ``image`` (PNG, JPEG,
    # WebP, ...), or ``image_uri``: a data: URI holding such a file (HTTP clients), or a server path
    # where the executor's input_dir allows it ---
    image: Optional[bytes] = None
    image_uri: Optional[str] = None

    # --- set by the Whisper executor ---
    language_probability: Optional[float] = None
    duration: Optional[float] = None  # seconds of audio, as decoded
    transcript: str = ''  # in the spoken language
    segments: DocList[Segment] = DocList[Segment]()

    # --- the English prompt: from Whisper for audio, from the client for text ---
    text: str = ''

    # --- set by whichever executor fails; later executors leave the document alone ---
    error: str = ''  # for people: what went wrong and what to do
    error_code: str = ''  # for programs: an ErrorCode (s2i/contracts/errors.py), stable
    error_param: str = ''  # the request field to blame, when one is

    # --- set by the Stable Diffusion executor ---
    matches: DocList[GeneratedImage] = DocList[GeneratedImage]()

    # --- set by the vision executors ---
    caption: str = ''  # what the captioning model says the image shows
    tags: DocList[Tag] = DocList[Tag]()  # CLIP's labels for the image, best first
    interrogated: str = ''  # a prompt made from the image (caption + the styles CLIP ranks highest)

    # --- set by the result store: where this document's JSON record is (s3://... or a path) ---
    result_url: str = ''

    @field_validator('tensor', mode='before')
    @classmethod
    def _tensor_is_an_array_or_a_list(cls, value):
        # docarray reads a number or bytes as a *shape*: tensor=10**10 (from JSON, over HTTP) would
        # allocate 80 GB, and b'abcd' a 97x98x99x100 array. Only arrays and lists are samples.
        if value is not None and not isinstance(value, (list, tuple, np.ndarray)):
            raise ValueError(f'tensor must be an array or a list of numbers, got {type(value).__name__}; audio file bytes go in blob')
        return value

    @field_validator('tensor')
    @classmethod
    def _tensor_holds_numbers(cls, value):
        if value is None:
            return value
        if value.ndim == 0:  # a lone number: no waveform, and no JSON round trip
            raise ValueError('tensor must have at least one dimension')
        if value.dtype.kind not in 'biuf':  # e.g. [[None]]: an object array, which protobuf cannot carry
            raise ValueError(f'tensor must hold numbers, got dtype {value.dtype}')
        return value

    @property
    def has_audio(self) -> bool:
        return self.blob is not None or self.uri is not None or self.tensor is not None

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_uri is not None


class ParameterSchema(BaseDoc):
    """One executor's request parameters, as it answers the ``/parameters`` endpoint."""

    executor: str  # its name in the Flow: also the key of its scoped section
    keys: List[str] = []
    json_schema: Dict[str, Any] = {}  # the pydantic model's JSON schema: types, ranges, defaults
    model: str = ''  # the model the executor loaded (a hub id or a folder), listed by GET /v1/models


class GenerationRequest(PromptDoc):
    """One document for the Stable Diffusion executor's streaming endpoint (``/generate_stream``).

    Jina does not pass a request's ``parameters`` to streaming endpoints, so they travel in the
    document: the keys ``/generate`` takes (GenerationParams), plus the gateway's internal key.
    (A subclass, not a field holding a PromptDoc: Jina's gateway cannot rebuild nested document
    schemas from the executors' JSON schemas.)"""

    parameters: Dict[str, Any] = {}


class GenerationEvent(PromptDoc):
    """What ``/generate_stream`` yields while it works, in order: ``progress`` (after denoising
    steps, at most one per PROGRESS_INTERVAL, and always after a pipeline call's last step), then one
    ``done``: the document itself, with every image in ``matches`` or an ``error``."""

    kind: str = 'progress'  # 'progress' or 'done'
    step: Int32 = 0  # denoising steps done, of ``steps``
    steps: Int32 = 0
    first_image: Int32 = 0  # index, among the document's images, of the first one this pipeline call makes
    images: Int32 = 0  # images made in this pipeline call (they denoise together: one step counts for all)


def mark_failed(docs: Iterable[PromptDoc], message: str, code: ErrorCode, param: Optional[str] = None) -> None:
    """Give ``message`` and its ``code`` as the error of every document that has none yet (the first error wins)."""
    for doc in docs:
        if not doc.error:
            fail(doc, message, code, param)


def fail(doc: PromptDoc, message: str, code: ErrorCode, param: Optional[str] = None) -> None:
    """Set ``doc``'s error, its code and the field to blame (over any earlier error)."""
    doc.error, doc.error_code, doc.error_param = message, ErrorCode(code).value, param or ''


def fail_with(doc: PromptDoc, error: CodedError) -> None:
    """``fail`` with what a CodedError (a ParameterError, an unreadable image, ...) carries."""
    fail(doc, error.message, error.code, error.param)
