"""Every error a user can get, by its stable code: the one table that the gateway, the client, the
CLI and the page read. Nothing anywhere parses an error's message: code against ``code``.

A failed document carries ``error_code`` (one of ``ErrorCode``) beside ``error`` (the message, for
people) and ``error_param`` (the request field to blame, if any). A refused HTTP request answers
``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape) under /v1. The codes are part
of the API: a code, once published, keeps its meaning; new ones may be added.

CLI exit statuses follow BSD's sysexits.h, so that scripts can tell "fix your input" (64, 65) from
"try again later" (69, 75) and "fix your token" (77).
"""

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Optional


class ErrorCode(str, Enum):
    # --- the request itself ---
    INVALID_API_KEY = 'invalid_api_key'
    ORIGIN_NOT_ALLOWED = 'origin_not_allowed'
    INVALID_REQUEST = 'invalid_request'
    INVALID_PARAMETER = 'invalid_parameter'
    UNKNOWN_PARAMETER = 'unknown_parameter'
    DUPLICATE_FIELD = 'duplicate_field'
    UNSUPPORTED_MEDIA_TYPE = 'unsupported_media_type'
    INPUT_TOO_LARGE = 'input_too_large'
    NOT_FOUND = 'not_found'
    METHOD_NOT_ALLOWED = 'method_not_allowed'
    MODEL_NOT_FOUND = 'model_not_found'
    UNSUPPORTED = 'unsupported'
    RATE_LIMITED = 'rate_limited'
    # --- a document's input ---
    MISSING_INPUT = 'missing_input'
    AUDIO_UNREADABLE = 'audio_unreadable'
    AUDIO_TOO_LONG = 'audio_too_long'
    UNKNOWN_LANGUAGE = 'unknown_language'
    NO_SPEECH = 'no_speech'
    LANGUAGE_UNCERTAIN = 'language_uncertain'
    CANNOT_TRANSLATE = 'cannot_translate'
    IMAGE_UNREADABLE = 'image_unreadable'
    PROMPT_TOO_LONG = 'prompt_too_long'
    # --- the service ---
    EXECUTOR_UNAVAILABLE = 'executor_unavailable'
    MODEL_UNAVAILABLE = 'model_unavailable'
    OUT_OF_MEMORY = 'out_of_memory'
    INTERRUPTED = 'interrupted'
    STORE_FAILED = 'store_failed'
    CANCELLED = 'cancelled'
    JOB_TIMEOUT = 'job_timeout'
    INTERNAL_ERROR = 'internal_error'


# Where the page shows an error: beside the token box, the input (audio, prompt, image), the
# settings field named by ``param``, or the status banner (the service's own trouble).
PAGE_PLACES = ('token', 'input', 'settings', 'banner')


@dataclass(frozen=True)
class ErrorKind:
    """What one code means to each surface."""

    http_status: int
    openai_type: str  # what OpenAI's SDKs map to an exception class
    grpc_status: str  # grpc.StatusCode's name, for a refusal over gRPC
    exit_status: int  # the CLI's, after sysexits.h
    page: str  # one of PAGE_PLACES
    meaning: str  # for the docs: when a user gets it, and what to do


BAD_INPUT = dict(openai_type='invalid_request_error', grpc_status='INVALID_ARGUMENT', exit_status=65, page='input')
BAD_SETTING = dict(openai_type='invalid_request_error', grpc_status='INVALID_ARGUMENT', exit_status=64, page='settings')
SERVICE_DOWN = dict(openai_type='server_error', grpc_status='UNAVAILABLE', exit_status=69, page='banner')

ERRORS: Dict[ErrorCode, ErrorKind] = {
    ErrorCode.INVALID_API_KEY: ErrorKind(401, 'invalid_request_error', 'UNAUTHENTICATED', 77, 'token',
                                         'no token, or not one of S2I_AUTH_TOKEN\'s keys: send "authorization: Bearer <key>"'),
    ErrorCode.ORIGIN_NOT_ALLOWED: ErrorKind(403, 'invalid_request_error', 'PERMISSION_DENIED', 77, 'banner',
                                            "a browser page of another site; allow it with S2I_ALLOWED_ORIGINS"),
    ErrorCode.INVALID_REQUEST: ErrorKind(400, **BAD_SETTING,
                                         meaning='the request is malformed: not JSON, a field of the wrong type, too deeply nested'),
    ErrorCode.INVALID_PARAMETER: ErrorKind(400, **BAD_SETTING, meaning='a parameter is of the wrong type or out of range; param names it'),
    ErrorCode.UNKNOWN_PARAMETER: ErrorKind(400, **BAD_SETTING, meaning='no executor of the Flow takes this parameter; param names it'),
    ErrorCode.DUPLICATE_FIELD: ErrorKind(400, **BAD_SETTING, meaning='a form field was sent twice'),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: ErrorKind(415, **BAD_SETTING, meaning='send JSON as application/json, or a multipart form'),
    ErrorCode.INPUT_TOO_LARGE: ErrorKind(413, 'invalid_request_error', 'RESOURCE_EXHAUSTED', 65, 'input',
                                         'a body, file, image or document count over its limit; the message names the limit'),
    ErrorCode.NOT_FOUND: ErrorKind(404, 'invalid_request_error', 'NOT_FOUND', 66, 'banner', 'no such route or job (or another key\'s job)'),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorKind(405, 'invalid_request_error', 'UNIMPLEMENTED', 64, 'banner', 'the route takes another HTTP method'),
    ErrorCode.MODEL_NOT_FOUND: ErrorKind(404, 'invalid_request_error', 'NOT_FOUND', 64, 'settings', 'the Flow serves no model of that name (GET /v1/models)'),
    ErrorCode.UNSUPPORTED: ErrorKind(400, **BAD_SETTING, meaning='this Flow cannot do what was asked (e.g. a url without a store, a mask)'),
    ErrorCode.RATE_LIMITED: ErrorKind(429, 'rate_limit_error', 'RESOURCE_EXHAUSTED', 75, 'banner',
                                      'too many jobs active for this key or the service; retry after Retry-After'),
    ErrorCode.MISSING_INPUT: ErrorKind(400, **BAD_INPUT, meaning='nothing to work on: no prompt, audio or image where one is needed'),
    ErrorCode.AUDIO_UNREADABLE: ErrorKind(400, **BAD_INPUT, meaning='the audio is empty, damaged or in a format ffmpeg cannot decode'),
    ErrorCode.AUDIO_TOO_LONG: ErrorKind(400, **BAD_INPUT, meaning="the audio is longer than the Whisper executor's max_audio_seconds"),
    ErrorCode.UNKNOWN_LANGUAGE: ErrorKind(400, **BAD_SETTING, meaning='the language hint is not one Whisper knows'),
    ErrorCode.NO_SPEECH: ErrorKind(400, **BAD_INPUT, meaning='no speech was heard, or none that Whisper could turn into words'),
    ErrorCode.LANGUAGE_UNCERTAIN: ErrorKind(400, **BAD_INPUT, meaning='the spoken language is uncertain: send a language hint'),
    ErrorCode.CANNOT_TRANSLATE: ErrorKind(400, **BAD_INPUT, meaning="the Whisper model cannot translate (large-v3-turbo): use another model"),
    ErrorCode.IMAGE_UNREADABLE: ErrorKind(400, **BAD_INPUT, meaning='the image is empty, damaged, of an unread format or of an extreme shape'),
    ErrorCode.PROMPT_TOO_LONG: ErrorKind(400, **BAD_INPUT, meaning='the prompt is longer than max_prompt_chars'),
    ErrorCode.EXECUTOR_UNAVAILABLE: ErrorKind(503, **SERVICE_DOWN, meaning='an executor of the Flow could not be reached; try again'),
    ErrorCode.MODEL_UNAVAILABLE: ErrorKind(503, **SERVICE_DOWN, meaning='an executor could not load its model (no network, a wrong id)'),
    ErrorCode.OUT_OF_MEMORY: ErrorKind(503, **SERVICE_DOWN, meaning='the GPU ran out of memory: fewer or smaller images, or try again'),
    ErrorCode.INTERRUPTED: ErrorKind(503, **SERVICE_DOWN, meaning='the service stopped while working on it; send it again'),
    ErrorCode.STORE_FAILED: ErrorKind(500, 'server_error', 'INTERNAL', 73, 'banner',
                                      'the images were made but could not be stored; they are still in the answer'),
    ErrorCode.CANCELLED: ErrorKind(409, 'invalid_request_error', 'CANCELLED', 75, 'banner', 'the job was cancelled, or its stream closed'),
    ErrorCode.JOB_TIMEOUT: ErrorKind(504, 'server_error', 'DEADLINE_EXCEEDED', 75, 'banner', "the job ran past the gateway's max_job_seconds"),
    ErrorCode.INTERNAL_ERROR: ErrorKind(500, 'server_error', 'INTERNAL', 70, 'banner', 'the service failed; the details are in its log'),
}


class CodedError(Exception):
    """An error with its code and, where one field is to blame, that field (``param``)."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, code: Optional[ErrorCode] = None, param: Optional[str] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = ErrorCode(code)
        self.param = param

    @property
    def kind(self) -> ErrorKind:
        return ERRORS[self.code]


def kind_of(code: Optional[str]) -> ErrorKind:
    """The table's entry for ``code``; an unknown or empty code (an older service) is an internal error."""
    try:
        return ERRORS[ErrorCode(code)]
    except ValueError:
        return ERRORS[ErrorCode.INTERNAL_ERROR]
