"""The Stable Diffusion executor's request parameters: the one home of their defaults and ranges.

The executor's ``request_defaults`` setting (config.yml) overrides these defaults; its
``max_num_images`` and ``max_pixels`` settings narrow the ranges further (``check_limits``).
"""

from typing import Literal, Optional

from pydantic import Field, model_validator

from s2i.params import MAX_SEED, Integer, Number, ParameterError, RequestParams, Text, check_range, check_seed

Scheduler = Literal['default', 'euler', 'euler_a', 'ddim', 'dpm++']  # 'default': the model's own
MIN_SIZE, MAX_SIZE = 64, 2048  # pixels, per side
MAX_PIXELS = MAX_SIZE * MAX_SIZE  # width * height; the executor's max_pixels is usually lower


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

    def check_limits(self, max_num_images: int, max_pixels: int) -> None:
        """The executor's own limits, from its configuration."""
        check_range('num_images', self.num_images, 1, max_num_images)
        if self.width * self.height > max_pixels:
            raise ParameterError(
                f'width x height must be at most {max_pixels} pixels (max_pixels), got {self.width}x{self.height}'
            )
