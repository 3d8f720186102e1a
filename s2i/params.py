"""Request parameters, parsed once per request into frozen dataclasses.

Jina sends one ``parameters`` dict to every executor of the Flow, so each executor accepts the
keys of the others and rejects anything else: a typo such as ``step=5`` is an error, not a
silent default. Jina's protobuf transport turns every number into a float, so integer settings
accept integral floats (``5.0``) but not ``5.5``.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

SCHEDULERS = ('default', 'euler', 'euler_a', 'ddim', 'dpm++')  # 'default': the model's own
MAX_SEED = 2**31 - 1  # docarray sends ints as protobuf int32
MIN_SIZE, MAX_SIZE = 64, 2048  # pixels, per side
MAX_PIXELS = MAX_SIZE * MAX_SIZE  # width * height; executors configure a lower max_pixels
MAX_STEPS = 200
MAX_GUIDANCE_SCALE = 50.0


class ParameterError(ValueError):
    """A request parameter is unknown, of the wrong type or out of range; the message names it."""


@dataclass(frozen=True)
class GenerationParams:
    num_images: int = 1  # images per prompt
    steps: int = 25  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance; <= 1 disables it
    seed: Optional[int] = None  # None: a fresh random seed, reported on each image
    negative_prompt: str = ''
    width: int = 512  # pixels, a multiple of 8
    height: int = 512
    scheduler: str = 'dpm++'  # one of SCHEDULERS
    return_data_uri: bool = False  # PNG as a data URI in GeneratedImage.uri instead of bytes in .png (for HTTP)

    @classmethod
    def from_request(
        cls, defaults: 'GenerationParams', parameters: Mapping[str, Any], max_num_images: int, max_pixels: int = MAX_PIXELS
    ) -> 'GenerationParams':
        check_known_keys(parameters)
        given = {k: v for k, v in parameters.items() if k in _GENERATION_KEYS}
        params = dataclasses.replace(defaults, **{k: _coerce(cls, k, v) for k, v in given.items()})
        params.validate(max_num_images, max_pixels)
        return params

    def validate(self, max_num_images: int, max_pixels: int = MAX_PIXELS) -> None:
        _check_range('num_images', self.num_images, 1, max_num_images)
        _check_range('steps', self.steps, 1, MAX_STEPS)
        _check_range('guidance_scale', self.guidance_scale, 0.0, MAX_GUIDANCE_SCALE)
        if self.seed is not None:
            check_seed(self.seed, self.num_images)
        for key in ('width', 'height'):
            value = getattr(self, key)
            _check_range(key, value, MIN_SIZE, MAX_SIZE)
            if value % 8:
                raise ParameterError(f'{key} must be a multiple of 8, got {value}')
        if self.width * self.height > max_pixels:
            raise ParameterError(
                f'width x height must be at most {max_pixels} pixels (max_pixels), got {self.width}x{self.height}'
            )
        if self.scheduler not in SCHEDULERS:
            raise ParameterError(f'scheduler must be one of {", ".join(SCHEDULERS)}; got {self.scheduler!r}')


@dataclass(frozen=True)
class TranscriptionParams:
    language: Optional[str] = None  # spoken language (ISO 639-1) for the whole request; None: detect
    beam_size: int = 5

    @classmethod
    def from_request(
        cls, defaults: 'TranscriptionParams', parameters: Mapping[str, Any]
    ) -> 'TranscriptionParams':
        check_known_keys(parameters)
        given = {k: v for k, v in parameters.items() if k in _TRANSCRIPTION_KEYS}
        params = dataclasses.replace(defaults, **{k: _coerce(cls, k, v) for k, v in given.items()})
        _check_range('beam_size', params.beam_size, 1, 20)
        if params.language is not None and not (params.language.isalpha() and 2 <= len(params.language) <= 3):
            raise ParameterError(f'language must be an ISO 639-1 code such as "en" or "de", got {params.language!r}')
        return params


_GENERATION_KEYS = {f.name for f in dataclasses.fields(GenerationParams)}
_TRANSCRIPTION_KEYS = {f.name for f in dataclasses.fields(TranscriptionParams)}
REQUEST_KEYS = frozenset(_GENERATION_KEYS | _TRANSCRIPTION_KEYS)


def check_known_keys(parameters: Mapping[str, Any]) -> None:
    # Keys starting with "__" are Jina's own bookkeeping (e.g. "__results__").
    unknown = sorted(k for k in parameters if k not in REQUEST_KEYS and not k.startswith('__'))
    if unknown:
        raise ParameterError(f'unknown parameter(s) {", ".join(map(repr, unknown))}; known: {", ".join(sorted(REQUEST_KEYS))}')


def _coerce(cls, key: str, value: Any) -> Any:
    kind, optional = _field_kind(cls, key)
    if value is None:
        if optional:
            return None
        raise ParameterError(f'{key} must not be null')
    if kind is bool:
        if not isinstance(value, bool):
            raise ParameterError(f'{key} must be true or false, got {value!r}')
        return value
    if kind is int:
        return _as_int(key, value)
    if kind is float:
        return _as_float(key, value)
    if not isinstance(value, str):
        raise ParameterError(f'{key} must be a string, got {value!r}')
    return value


def _field_kind(cls, key: str) -> Tuple[type, bool]:
    """(int, True) for ``Optional[int]``, (float, False) for ``float``, ..."""
    hint = typing.get_type_hints(cls)[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0], True) if args else (hint, False)


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f'{key} must be an integer, got {value!r}')
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ParameterError(f'{key} must be an integer, got {value!r}')
    return int(value)


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f'{key} must be a finite number, got {value!r}')
    return float(value)


def check_seed(seed: int, num_images: int) -> None:
    """Image i gets seed + i, and every one of them must fit the int32 that carries it."""
    _check_range('seed', seed, 0, MAX_SEED)
    if seed + num_images - 1 > MAX_SEED:
        raise ParameterError(
            f'seed + num_images - 1 must be at most {MAX_SEED} (image i gets seed + i), got seed {seed} with num_images {num_images}'
        )


def _check_range(key: str, value, low, high) -> None:
    if not low <= value <= high:
        raise ParameterError(f'{key} must be between {low} and {high}, got {value}')
