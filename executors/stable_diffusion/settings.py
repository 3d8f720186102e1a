"""The Stable Diffusion executor's settings: variables S2I_SD_<NAME> (and S2I_DEVICE), or its config.yml's ``with:``.

Light on purpose: pydantic only. The request parameters' own defaults and ranges live in
s2i/contracts/stable_diffusion.py; ``request_defaults`` overrides them, and the ``max_*`` settings
narrow them.
"""

from pydantic import Field

from s2i.executor_settings import ImageInputSettings


class StableDiffusionSettings(ImageInputSettings, env_prefix='S2I_SD_'):
    model: str = Field('stable-diffusion-v1-5/stable-diffusion-v1-5', description=(
        'a diffusers text-to-image model: a hub id or a local folder; tiny: a tiny random-weight model that checks the wiring'))
    enable_safety_checker: bool = Field(False, description="the model's safety checker, where it has one: flagged images come back black")
    max_num_images: int = Field(4, ge=1, description='images per document a request may ask for')
    max_best_of: int = Field(8, ge=1, description=(
        'candidates per document a request may ask for with best_of (CLIP, after this executor in the Flow, keeps '
        'the num_images best; without CLIP all come back)'))
    max_batch_size: int = Field(4, ge=1, description='images per pipeline call')
    max_pixels: int = Field(1024 * 1024, ge=1, description=(
        'width x height per image; /restyle without width and height draws at the input image\'s size, scaled '
        'down (keeping its aspect) to fit this'))
    max_prompt_chars: int = Field(20000, ge=1, description=(
        'longer prompts get "prompt too long" before any work; shorter ones beyond the text encoder\'s 77 tokens '
        'are truncated, and each image\'s parameters say so ("truncated")'))
    # Speed (bench/RESULTS.md says what each one measured).
    channels_last: bool = Field(False, description='NHWC memory layout for UNet and VAE')
    fuse_qkv: bool = Field(False, description='fused query/key/value projections')
    compile_unet: bool = Field(False, description='torch.compile the UNet: a slow first call, faster steps after')
    low_memory: bool = Field(False, description='attention and VAE slicing/tiling, and model CPU offload on CUDA (small GPUs)')
    warmup: bool = Field(True, description='one short generation at start-up, so that the first request is not the slow one')
