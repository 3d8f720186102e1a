"""The Stable Diffusion executor's request parameters: the one home of their defaults and ranges.

``GenerationParams`` are text-to-image's (``/generate``, ``/generate_stream``); ``RestyleParams``
are image-to-image's (``/restyle``): the same keys, plus ``strength``, and a size that follows the
input image unless the request gives one.

The executor's ``request_defaults`` setting (config.yml) overrides these defaults; its
``max_num_images``, ``max_best_of``, ``max_pixels`` and ``max_prompt_chars`` settings narrow the
ranges further (``check_limits``).
"""

import math
from typing import Annotated, Any, Dict, Literal, Optional, Tuple

from pydantic import Field, model_validator

from s2i.contracts.params import MAX_SEED, Integer, Number, ParameterError, RequestParams, Text, quote

Scheduler = Literal['default', 'euler', 'euler_a', 'ddim', 'dpm++']  # 'default': the model's own
MIN_SIZE, MAX_SIZE = 64, 2048  # pixels, per side
MAX_PIXELS = MAX_SIZE * MAX_SIZE  # width * height; the executor's max_pixels is usually lower


# The routes that take OpenAI's fields (/v1/images/*, /v1/jobs) name three keys as OpenAI does:
# ``n`` for num_images, ``size`` ("WIDTHxHEIGHT") for width and height. Every other key keeps its name.
OPENAI_FIELD_OF = {'width': 'size', 'height': 'size', 'num_images': 'n'}


def openai_fields(parameters: Dict[str, Any]) -> Dict[str, Any]:
    """Request parameters (the model's keys) as those routes' fields; width and height come together."""
    fields = {OPENAI_FIELD_OF.get(key, key): value for key, value in parameters.items() if key not in ('width', 'height')}
    if 'width' in parameters or 'height' in parameters:
        fields['size'] = f'{parameters.get("width")}x{parameters.get("height")}'
    return fields


class GenerationParams(RequestParams):
    num_images: Integer = Field(1, ge=1, description='images per prompt; the executor caps it (max_num_images)')
    steps: Integer = Field(25, ge=1, le=200, description='denoising steps')
    guidance_scale: Number = Field(7.5, ge=0, le=50, description='classifier-free guidance; 1 or less turns it off')
    seed: Optional[Annotated[Integer, Field(ge=0, le=MAX_SEED)]] = Field(
        None, description='image i gets seed + i; none: a random seed, reported with each image')
    negative_prompt: Text = Field('', description='what the images should not show')
    width: Integer = Field(512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description='pixels')
    height: Integer = Field(512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description='pixels')
    scheduler: Scheduler = Field('dpm++', description="the sampler; dpm++: DPM-Solver++ with Karras sigmas; default: the model's own")
    best_of: Optional[Annotated[Integer, Field(ge=1)]] = Field(None, description=(
        'candidates drawn per document (seeds seed .. seed + best_of - 1) instead of num_images; the CLIP '
        'executor after this one keeps the num_images best (without CLIP, all come back)'))

    @model_validator(mode='after')
    def _best_of_covers_num_images_and_seeds_fit_int32(self) -> 'GenerationParams':
        if self.best_of is not None and self.best_of < self.num_images:
            raise ParameterError(
                f'best_of must be at least num_images (the images kept of the candidates), got best_of '
                f'{self.best_of} with num_images {self.num_images}', param='best_of')
        if self.seed is not None:
            self.check_seeds_from(self.seed)
        return self

    @property
    def images_to_draw(self) -> int:
        """Images drawn per document: the ``best_of`` candidates, or ``num_images``."""
        return self.best_of if self.best_of is not None else self.num_images

    @property
    def denoising_steps(self) -> int:
        """The denoising steps the pipeline runs (a step callback's count)."""
        return self.steps

    def check_seeds_from(self, seed: int) -> None:
        """A document's images get seeds ``seed`` .. ``seed + images_to_draw - 1``: each must fit int32."""
        check_seed(seed, self.images_to_draw, 'num_images' if self.best_of is None else 'best_of')

    def check_limits(self, max_num_images: int, max_pixels: int, max_prompt_chars: int, max_best_of: int) -> None:
        """The executor's own limits, from its configuration."""
        check_range('num_images', self.num_images, 1, max_num_images)
        if self.best_of is not None:
            check_range('best_of', self.best_of, 1, max_best_of)
        if self.width is not None and self.width * self.height > max_pixels:
            raise ParameterError(
                f'width x height must be at most {max_pixels} pixels (max_pixels), got {self.width}x{self.height}',
                param='width')
        if len(self.negative_prompt) > max_prompt_chars:
            raise ParameterError(too_long('negative_prompt', self.negative_prompt, max_prompt_chars), param='negative_prompt')


class RestyleParams(GenerationParams):
    """``/restyle``'s parameters: text-to-image's, plus ``strength``. Without width and height the
    output has the input image's size, rounded down to a multiple of 8 and scaled down (keeping its
    aspect) to fit max_pixels; with them, the input image is resized to that size first."""

    strength: Number = Field(0.6, gt=0, le=1, description=(
        'how far from the input image to go: 1 ignores it; the model denoises int(steps x strength) steps'))
    width: Optional[Integer] = Field(
        None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8,
        description="pixels; none: the input image's width, rounded down to a multiple of 8 and scaled to fit max_pixels",
    )
    height: Optional[Integer] = Field(
        None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8,
        description="pixels; none: the input image's height, rounded down to a multiple of 8 and scaled to fit max_pixels",
    )

    @model_validator(mode='after')
    def _sizes_come_in_pairs(self) -> 'RestyleParams':
        if (self.width is None) != (self.height is None):
            raise ParameterError("give both width and height, or neither (the input image's size)", param='width')
        return self

    def check_denoises(self) -> None:
        """A request's steps and strength leave at least one denoising step (diffusers refuses none)."""
        if self.denoising_steps < 1:
            raise ParameterError(
                f'steps x strength must be at least 1 (restyle denoises int(steps x strength) steps), '
                f'got steps {self.steps} with strength {self.strength}', param='strength')

    @property
    def denoising_steps(self) -> int:
        """As diffusers' image-to-image pipelines count them: the last ``strength`` of the ``steps``."""
        return min(int(self.steps * self.strength), self.steps)


def restyle_size(width: int, height: int, max_pixels: int) -> Tuple[int, int]:
    """The output size for an input image of ``width`` x ``height``: the same aspect, scaled down to fit
    ``max_pixels`` and MAX_SIZE per side, rounded down to a multiple of 8, and at least MIN_SIZE per side."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), MAX_SIZE / width, MAX_SIZE / height)
    return tuple(max(MIN_SIZE, int(side * scale) // 8 * 8) for side in (width, height))


def too_long(key: str, text: str, max_prompt_chars: int) -> str:
    """The error for a text over max_prompt_chars, whichever field it is in."""
    return f'{key} too long: {len(text)} characters, the limit is {max_prompt_chars} (max_prompt_chars)'


def check_range(key: str, value, low, high) -> None:
    """For limits an executor sets in its configuration (e.g. max_num_images), after parsing."""
    if not low <= value <= high:
        raise ParameterError(f'{key} must be between {low} and {high}, got {quote(value)}', param=key)


def check_seed(seed: int, num_images: int, key: str = 'num_images') -> None:
    """Image i gets seed + i, and every one of them must fit the int32 that carries it; ``key`` names
    the count (``best_of`` when it draws candidates)."""
    check_range('seed', seed, 0, MAX_SEED)
    if seed + num_images - 1 > MAX_SEED:
        raise ParameterError(
            f'seed + {key} - 1 must be at most {MAX_SEED} (image i gets seed + i), got seed {seed} with {key} {quote(num_images)}', param='seed')
