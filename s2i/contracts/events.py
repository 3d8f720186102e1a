"""A job's events and its record: what ``WS /v1/jobs/{id}/events`` and ``WS /v1/events`` send, what
``GET /v1/jobs/{id}`` and a job's webhook answer. The gateway builds them from these models, and the
client and the page read them by the same names.

Every event has ``kind``, ``job`` (the job's id), ``time`` (Unix seconds) and ``seq`` (its number
within the job, from 1, given by the job store). A job's events come in this order: ``queued``,
``started``, ``transcribed`` (audio jobs), ``progress`` (per denoising step), ``image`` (one per
image), then exactly one terminal event: ``succeeded``, ``failed`` or ``cancelled``. A failed job's
event and record carry ``error`` (for people) and ``error_code`` (an ErrorCode, for programs).
"""

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from s2i.contracts.errors import ErrorCode

JobStatus = Literal['queued', 'running', 'succeeded', 'failed', 'cancelled']
TERMINAL_KINDS = frozenset({'succeeded', 'failed', 'cancelled'})  # the statuses that end a job, and its last event's kind


class JobEventBase(BaseModel):
    model_config = ConfigDict(extra='forbid')

    job: str  # the job's id
    time: float  # Unix seconds, when the gateway published it
    seq: Optional[int] = None  # its number within the job (1, 2, ...); the job store numbers it as it keeps it


class Queued(JobEventBase):
    kind: Literal['queued'] = 'queued'
    position: int  # jobs ahead of it in the gateway's queue


class Started(JobEventBase):
    kind: Literal['started'] = 'started'


class Transcribed(JobEventBase):
    """Whisper's result, before any image is drawn (audio jobs only)."""

    kind: Literal['transcribed'] = 'transcribed'
    language: Optional[str]  # ISO 639-1, as spoken or as hinted
    language_probability: Optional[float]
    transcript: str  # in the spoken language
    text: str  # the English prompt


class Progress(JobEventBase):
    """After denoising steps: at most one per 0.25 s, and always after a pipeline call's last step."""

    kind: Literal['progress'] = 'progress'
    stage: Literal['generating'] = 'generating'
    step: int  # steps done, of ``steps``
    steps: int
    image: int  # index of the first image this pipeline call makes
    images: int  # images made in this pipeline call (they denoise together)


class ImageResult(BaseModel):
    """One image of a job: in its ``image`` event and in its record's ``images``."""

    model_config = ConfigDict(extra='forbid')

    index: int
    seed: int
    width: int
    height: int
    parameters: Dict[str, Any] = {}  # the prompt and every generation parameter, as the PNG records them
    url: Optional[str] = None  # where the store keeps it (a presigned HTTPS URL when one was asked for)
    b64_json: Optional[str] = None  # the PNG, base64 (response_format b64_json, or url without a store)
    note: Optional[str] = None  # why a url job got b64_json instead


class Image(JobEventBase, ImageResult):
    kind: Literal['image'] = 'image'


class Succeeded(JobEventBase):
    kind: Literal['succeeded'] = 'succeeded'


class Failed(JobEventBase):
    kind: Literal['failed'] = 'failed'
    error: str  # for people: what went wrong and what to do
    error_code: ErrorCode  # for programs (s2i/contracts/errors.py)


class Cancelled(JobEventBase):
    kind: Literal['cancelled'] = 'cancelled'


JobEvent = Annotated[Union[Queued, Started, Transcribed, Progress, Image, Succeeded, Failed, Cancelled],
                     Field(discriminator='kind')]
JOB_EVENT = TypeAdapter(JobEvent)  # JOB_EVENT.validate_python(received) reads one event


def event_json(event: JobEventBase) -> Dict[str, Any]:
    """An event as it travels: the fields it was given (no nulls for what does not apply), codes as text."""
    return {'kind': event.kind, **event.model_dump(mode='json', exclude_unset=True)}


class JobRecord(BaseModel):
    """A job as its owner sees it (``GET /v1/jobs/{id}``, the webhook's body). Fields without a default
    here appear as the job gets them: ``started`` when it starts, ``finished`` when it ends."""

    model_config = ConfigDict(extra='forbid')

    id: str
    status: JobStatus
    created: float  # Unix seconds
    started: Optional[float] = None
    finished: Optional[float] = None
    input: Literal['audio', 'text']
    prompt: str = ''  # a text job's prompt
    language: Optional[str] = None  # the hint sent, then the language heard
    parameters: Dict[str, Any] = {}  # the generation parameters (GenerationParams keys)
    response_format: Literal['b64_json', 'url'] = 'b64_json'
    callback_url: Optional[str] = None
    transcript: str = ''
    text: str = ''  # the English prompt
    language_probability: Optional[float] = None
    images: List[ImageResult] = []
    result_url: str = ''  # where the store keeps the job's JSON record
    store_error: str = ''  # the images were made but not stored (they are still here)
    store_error_code: str = ''  # its ErrorCode
    error: str = ''  # a failed job's error
    error_code: str = ''  # its ErrorCode; '' unless the job failed
    timings: Dict[str, float] = {}  # seconds: queued_s, transcribe_s, generate_s, store_s, run_s
