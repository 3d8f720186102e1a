"""Loading a diffusers text-to-image pipeline and preparing it to run: device, memory, speed, schedulers;
and its image-to-image twin, on the same weights."""

import logging
from typing import Any, Dict, Tuple

import torch

from s2i.runtime import unloadable
from s2i.tiny_sd import TINY_MODEL_NAME, TINY_WARNING, is_tiny_model, tiny_pipeline_dir

# Request name -> diffusers scheduler class name, with config overrides.
SCHEDULER_CLASSES = {
    'euler': ('EulerDiscreteScheduler', {}),
    'euler_a': ('EulerAncestralDiscreteScheduler', {}),
    'ddim': ('DDIMScheduler', {}),
    'dpm++': ('DPMSolverMultistepScheduler', {'algorithm_type': 'dpmsolver++', 'use_karras_sigmas': True}),
}


def load_pipeline(model: str, dtype: torch.dtype, enable_safety_checker: bool, logger: logging.Logger) -> Tuple[Any, bool]:
    """The pipeline of ``model`` (hub id, local folder or "tiny"), and whether it is the tiny random-weight one."""
    from diffusers import AutoPipelineForText2Image

    path = tiny_pipeline_dir() if model == TINY_MODEL_NAME else model
    options: Dict[str, Any] = {'dtype': dtype}
    if not enable_safety_checker:
        options.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(path, **options)
    except Exception as e:
        raise unloadable('Stable Diffusion', model, 'S2I_SD_MODEL', 'diffusers folder', e) from e
    pipe.set_progress_bar_config(disable=True)  # the executor logs each quarter of the steps instead
    is_tiny = is_tiny_model(path)
    if is_tiny:
        logger.warning(f'\n{"!" * 78}\n!!  {model}: {TINY_WARNING.upper()}\n{"!" * 78}')
    return pipe, is_tiny


def image_to_image_pipeline(pipe, model: str):
    """``pipe``'s image-to-image pipeline, sharing its loaded components (weights, and the speed and
    memory settings made on them): no second copy of the model in memory."""
    from diffusers import AutoPipelineForImage2Image

    try:
        restyle = AutoPipelineForImage2Image.from_pipe(pipe)
    except Exception as e:
        raise RuntimeError(
            f'The Stable Diffusion model {model!r} ({type(pipe).__name__}) has no image-to-image pipeline in '
            f'diffusers, so /restyle cannot run on it (text-to-image still can): {e}'
        ) from e
    restyle.set_progress_bar_config(disable=True)
    return restyle


def place_pipeline(pipe, device: torch.device, low_memory: bool, logger: logging.Logger) -> None:
    """Move the pipeline to its device; ``low_memory`` trades speed for VRAM (SD 1.5 in ~4 GB)."""
    if not low_memory:
        pipe.to(device)
        return
    pipe.enable_attention_slicing()
    pipe.vae.enable_slicing()  # decode a batch one image at a time
    pipe.vae.enable_tiling()  # and each large image in tiles
    if device.type == 'cuda':
        # Each component moves to the GPU only while it runs; the rest waits in CPU RAM.
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    logger.info('low-memory mode: attention slicing, VAE slicing and tiling, model CPU offload on CUDA')


# The executor's torch.compile mode for the UNet (compile_unet): autotuned kernels, no CUDA graphs.
COMPILE_MODE = 'max-autotune-no-cudagraphs'


def apply_fast_paths(pipe, channels_last: bool, fuse_qkv: bool, compile_unet: bool, logger: logging.Logger,
                     compile_mode: str = COMPILE_MODE, compile_backend: str = 'inductor') -> None:
    """``compile_mode`` and ``compile_backend`` are for bench/gpu: a quicker compile on a GPU lent for
    minutes, and the 'eager' backend (tracing only, no code generation) for its CPU check in CI."""
    # Attention already runs through PyTorch's scaled_dot_product_attention (SDPA, flash on CUDA).
    if fuse_qkv:
        pipe.fuse_qkv_projections()  # one matmul for query, key and value
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        # Compiles at the first call (the warm-up, if on): minutes, then faster steps.
        pipe.unet = torch.compile(pipe.unet, mode=compile_mode, backend=compile_backend, fullgraph=True)
    enabled = [name for name, on in (('fuse_qkv', fuse_qkv), ('channels_last', channels_last), ('compile_unet', compile_unet)) if on]
    if enabled:
        logger.info(f'fast paths: {", ".join(enabled)}')


def build_schedulers(pipe) -> Dict[str, Any]:
    """Every scheduler a request may name, built once from the model's own scheduler config."""
    import diffusers

    schedulers = {'default': pipe.scheduler}
    for name, (class_name, overrides) in SCHEDULER_CLASSES.items():
        scheduler_class = getattr(diffusers, class_name)
        schedulers[name] = scheduler_class.from_config(pipe.scheduler.config, **overrides)
    return schedulers


def truncation(pipe, prompt: str, negative_prompt: str) -> Dict[str, Any]:
    """For each text longer than the text encoder's window: its token count, the limit and the part used."""
    tokenizer = pipe.tokenizer or getattr(pipe, 'tokenizer_2', None)
    if tokenizer is None:
        return {}
    limit = tokenizer.model_max_length  # 77 for CLIP, including the start and end tokens
    truncated = {}
    for key, text in (('prompt', prompt), ('negative_prompt', negative_prompt)):
        ids = tokenizer(text, truncation=False, verbose=False).input_ids if text else []
        if len(ids) > limit:
            used = tokenizer.decode(ids[: limit - 1], skip_special_tokens=True)
            truncated[key] = {'tokens': len(ids), 'limit': limit, 'used': used}
    return truncated
