"""The Stable Diffusion executor's request parameters: the one home of their defaults and ranges.

The executor's ``request_defaults`` setting (config.yml) overrides these defaults; its
``max_num_images``, ``max_pixels`` and ``max_prompt_chars`` settings narrow the ranges further
(``check_limits``).
"""

from typing import Literal, Optional

from pydantic import Field, model_validator

from s2i.params import MAX_SEED, Integer, Number, ParameterError, RequestParams, Text, quote

Scheduler = Literal['default', 'euler', 'euler_a', 'ddim', 'dpm++']  # 'default': the model's own
MIN_SIZE, MAX_SIZE = 64, 2048  # pixels, per side
MAX_PIXELS = MAX_SIZE * MAX_SIZE  # width * height; the executor's max_pixels is usually lower
DEFAULT_MODEL = 'stable-diffusion-v1-5/stable-diffusion-v1-5'  # the executor's model unless S2I_SD_MODEL says otherwise


class GenerationParams(RequestParams):
    num_images: Integer = Field(1, ge=1)  # images per prompt; the executor caps it (max_num_images)
    steps: Integer = Field(25, ge=1, le=200)  # denoising steps
    guidance_scale: Number = Field(7.5, ge=0, le=50)  # classifier-free guidance; <= 1 turns it off
    seed: Optional[Integer] = Field(None, ge=0, le=MAX_SEED)  # image i gets seed + i; None: random, reported
    negative_prompt: Text = ''
    width: Integer = Field(512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8)  # pixels
    height: Integer = Field(512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8)
    scheduler: Scheduler = 'dpm++'  # DPM-Solver++ with Karras sigmas

    @model_validator(mode='after')
    def _seeds_fit_int32(self) -> 'GenerationParams':
        if self.seed is not None:
            check_seed(self.seed, self.num_images)
        return self

    def check_limits(self, max_num_images: int, max_pixels: int, max_prompt_chars: int) -> None:
        """The executor's own limits, from its configuration."""
        check_range('num_images', self.num_images, 1, max_num_images)
        if self.width * self.height > max_pixels:
            raise ParameterError(
                f'width x height must be at most {max_pixels} pixels (max_pixels), got {self.width}x{self.height}'
            )
        if len(self.negative_prompt) > max_prompt_chars:
            raise ParameterError(too_long('negative_prompt', self.negative_prompt, max_prompt_chars))


def too_long(key: str, text: str, max_prompt_chars: int) -> str:
    """The error for a text over max_prompt_chars, whichever field it is in."""
    return f'{key} too long: {len(text)} characters, the limit is {max_prompt_chars} (max_prompt_chars)'


def check_range(key: str, value, low, high) -> None:
    """For limits an executor sets in its configuration (e.g. max_num_images), after parsing."""
    if not low <= value <= high:
        raise ParameterError(f'{key} must be between {low} and {high}, got {quote(value)}')


def check_seed(seed: int, num_images: int) -> None:
    """Image i gets seed + i, and every one of them must fit the int32 that carries it."""
    check_range('seed', seed, 0, MAX_SEED)
    if seed + num_images - 1 > MAX_SEED:
        raise ParameterError(
            f'seed + num_images - 1 must be at most {MAX_SEED} (image i gets seed + i), got seed {seed} with num_images {quote(num_images)}'
        )
