"""Every error a user can get, by its stable code: the one table that the gateway, the client, the
CLI and the page read. Nothing anywhere parses an error's message: code against ``code``.

A failed document carries ``error_code`` (one of ``ErrorCode``) beside ``error`` (the message, for
people) and ``error_param`` (the request field to blame, if any). A refused HTTP request answers
``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape) under /v1. The codes are part
of the API: a code, once published, keeps its meaning; new ones may be added.

CLI exit statuses follow BSD's sysexits.h, so that scripts can tell "fix your input" (64, 65) from
"try again later" (69, 75) and "fix your token" (77).
"""

import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
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
    JOB_ENDED = 'job_ended'
    JOB_TIMEOUT = 'job_timeout'
    INTERNAL_ERROR = 'internal_error'


# Where the page shows an error: beside the token box, the input (audio, prompt, image), the
# settings field named by ``param``, or the status banner (the service's own trouble).
PAGE_PLACES = ('token', 'input', 'settings', 'banner')
# A gRPC refusal's code travels in its trailing metadata under this key (its status alone is ambiguous:
# INVALID_ARGUMENT stands for several codes).
GRPC_CODE_METADATA = 's2i-error-code'
TABLE = Path(__file__).with_name('errors.toml')  # the table itself: data, read by people and by load_table


@dataclass(frozen=True)
class ErrorKind:
    """What one code means to each surface."""

    http_status: int
    openai_type: str  # what OpenAI's SDKs map to an exception class
    grpc_status: str  # grpc.StatusCode's name, for a refusal over gRPC
    exit_status: int  # the CLI's, after sysexits.h
    page: str  # one of PAGE_PLACES
    meaning: str  # for the docs: when a user gets it, and what to do


def load_table(path: Path = TABLE) -> Dict[ErrorCode, ErrorKind]:
    """errors.toml as ErrorKinds: each code's own values over its family's. Every ErrorCode must have
    a row and every row an ErrorCode (a ValueError otherwise: the two are published together)."""
    table = tomllib.loads(path.read_text(encoding='utf-8'))
    rows = {}
    for code, row in table['codes'].items():
        family = table['families'].get(row.pop('family', None), {})
        rows[ErrorCode(code)] = ErrorKind(**{**family, **row})
    missing = set(ErrorCode) - set(rows)
    if missing:
        raise ValueError(f'{path.name} has no row for {", ".join(sorted(code.value for code in missing))}')
    return rows


ERRORS: Dict[ErrorCode, ErrorKind] = load_table()


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


def known_code(code: Optional[str]) -> ErrorCode:
    """``code`` as an ErrorCode; an unknown or empty one (a newer or older service's) is an internal error."""
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


def kind_of(code: Optional[str]) -> ErrorKind:
    """The table's entry for ``code`` (see known_code)."""
    return ERRORS[known_code(code)]
