"""StableDiffusionExecutor: English prompts in, PNG images (with their parameters) out."""

import secrets
import time
from typing import Any, Dict, List, Tuple

import torch
from docarray import DocList
from jina import Executor, requests

from s2i.runtime import resolve_device
from s2i.docs import GeneratedImage, PromptDoc, mark_failed
from s2i.params import MAX_PIXELS, MAX_SEED, GenerationParams, ParameterError, check_seed
from s2i.encoding import encode_png, png_data_uri
from s2i.tiny_sd import TINY_MODEL_NAME, TINY_WARNING, is_tiny_model, tiny_pipeline_dir

DEFAULT_MODEL = 'stable-diffusion-v1-5/stable-diffusion-v1-5'

# Request name -> diffusers scheduler class name, with config overrides.
SCHEDULER_CLASSES = {
    'euler': ('EulerDiscreteScheduler', {}),
    'euler_a': ('EulerAncestralDiscreteScheduler', {}),
    'ddim': ('DDIMScheduler', {}),
    'dpm++': ('DPMSolverMultistepScheduler', {'algorithm_type': 'dpmsolver++', 'use_karras_sigmas': True}),
}

Job = Tuple[PromptDoc, int]  # one image to make: the document it is for and its seed
OUT_OF_MEMORY = 'out of GPU memory'


class StableDiffusionExecutor(Executor):
    """Text-to-image with any diffusers text-to-image model (SD 1.x/2.x, SDXL, ...).

    Documents that already carry an ``error`` pass through untouched. Each image of a document
    gets seed ``seed + i``, so any single image can be regenerated on its own.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = 'auto',
        enable_safety_checker: bool = False,
        max_num_images: int = 4,
        max_batch_size: int = 4,
        max_pixels: int = 1024 * 1024,
        max_prompt_chars: int = 20000,
        num_images: int = 1,
        steps: int = 25,
        guidance_scale: float = 7.5,
        width: int = 512,
        height: int = 512,
        scheduler: str = 'dpm++',
        negative_prompt: str = '',
        channels_last: bool = False,
        fuse_qkv: bool = False,
        compile_unet: bool = False,
        low_memory: bool = False,
        warmup: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.device = torch.device(resolve_device(device))
        self.dtype = torch.float16 if self.device.type == 'cuda' else torch.float32
        self.max_num_images = max_num_images
        self.max_batch_size = max_batch_size
        self.max_pixels = min(max_pixels, MAX_PIXELS)
        self.max_prompt_chars = max_prompt_chars
        self.defaults = GenerationParams(
            num_images=num_images, steps=steps, guidance_scale=guidance_scale, width=width, height=height,
            scheduler=scheduler, negative_prompt=negative_prompt or '',  # YAML reads '' as null
        )
        self.defaults.validate(max_num_images, self.max_pixels)
        self.model_id = model
        self.pipe, self.is_tiny = self._load_pipeline(model, enable_safety_checker)
        self._place_pipeline(low_memory)
        self._apply_fast_paths(channels_last, fuse_qkv, compile_unet)
        self.schedulers = self._build_schedulers()
        if warmup:
            self._warm_up()

    def _load_pipeline(self, model: str, enable_safety_checker: bool):
        from diffusers import AutoPipelineForText2Image

        path = tiny_pipeline_dir() if model == TINY_MODEL_NAME else model
        options: Dict[str, Any] = {'dtype': self.dtype}
        if not enable_safety_checker:
            options.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(path, **options)
        except Exception as e:
            raise RuntimeError(
                f'Could not load the Stable Diffusion model {model!r}: {e}\n'
                'Set S2I_SD_MODEL to a local diffusers folder, or to a Hugging Face model id that this '
                'machine can download (or has in its cache; pre-download with '
                '`huggingface-cli download <id>`). S2I_SD_MODEL=tiny runs a tiny random-weight model '
                'that checks the wiring and makes noise images.'
            ) from e
        pipe.set_progress_bar_config(disable=True)  # one log line per quarter instead (see _progress_logger)
        is_tiny = is_tiny_model(path)
        if is_tiny:
            self.logger.warning(f'\n{"!" * 78}\n!!  {model}: {TINY_WARNING.upper()}\n{"!" * 78}')
        self.logger.info(f'loaded {model} as {type(pipe).__name__} on {self.device} ({self.dtype})')
        return pipe, is_tiny

    def _place_pipeline(self, low_memory: bool) -> None:
        """Move the pipeline to its device; ``low_memory`` trades speed for VRAM (SD 1.5 in ~4 GB)."""
        if not low_memory:
            self.pipe.to(self.device)
            return
        self.pipe.enable_attention_slicing()
        self.pipe.vae.enable_slicing()  # decode a batch one image at a time
        self.pipe.vae.enable_tiling()  # and each large image in tiles
        if self.device.type == 'cuda':
            # Each component moves to the GPU only while it runs; the rest waits in CPU RAM.
            self.pipe.enable_model_cpu_offload(device=self.device)
        else:
            self.pipe.to(self.device)
        self.logger.info('low-memory mode: attention slicing, VAE slicing and tiling, model CPU offload on CUDA')

    def _apply_fast_paths(self, channels_last: bool, fuse_qkv: bool, compile_unet: bool) -> None:
        # Attention already runs through PyTorch's scaled_dot_product_attention (SDPA, flash on CUDA).
        if fuse_qkv:
            self.pipe.fuse_qkv_projections()  # one matmul for query, key and value
        if channels_last:
            self.pipe.unet.to(memory_format=torch.channels_last)
            self.pipe.vae.to(memory_format=torch.channels_last)
        if compile_unet:
            # Compiles at the first call (the warm-up, if on): minutes, then faster steps.
            self.pipe.unet = torch.compile(self.pipe.unet, mode='max-autotune-no-cudagraphs', fullgraph=True)
        enabled = [name for name, on in (('fuse_qkv', fuse_qkv), ('channels_last', channels_last), ('compile_unet', compile_unet)) if on]
        if enabled:
            self.logger.info(f'fast paths: {", ".join(enabled)}')

    def _warm_up(self) -> None:
        """One short generation at the default size, so the first request is not the slow one."""
        started = time.perf_counter()
        with torch.inference_mode():
            self.pipe(
                prompt='warm-up', num_inference_steps=2, width=self.defaults.width, height=self.defaults.height,
                guidance_scale=self.defaults.guidance_scale, generator=torch.Generator('cpu').manual_seed(0),
            )
        self.logger.info(f'warm-up done in {time.perf_counter() - started:.1f}s{self._peak_memory()}')

    def _peak_memory(self) -> str:
        if self.device.type != 'cuda':
            return ''
        return f', peak GPU memory {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB'

    def _build_schedulers(self) -> Dict[str, Any]:
        import diffusers

        schedulers = {'default': self.pipe.scheduler}
        for name, (class_name, overrides) in SCHEDULER_CLASSES.items():
            scheduler_class = getattr(diffusers, class_name)
            schedulers[name] = scheduler_class.from_config(self.pipe.scheduler.config, **overrides)
        return schedulers

    @requests(on=['/generate', '/text2image'])
    def generate(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        try:
            params = GenerationParams.from_request(self.defaults, parameters, self.max_num_images, self.max_pixels)
        except ParameterError as e:
            mark_failed(docs, f'invalid parameters: {e}')
            return docs
        for doc in docs:
            if not doc.error:
                doc.error = self._prompt_error(doc.text)
        jobs = self._plan_jobs([d for d in docs if not d.error], params)
        for start in range(0, len(jobs), self.max_batch_size):
            self._run_batch(jobs[start : start + self.max_batch_size], params)
        return docs

    def _prompt_error(self, prompt: str) -> str:
        if not prompt.strip():
            return 'nothing to draw: the document has no text prompt'
        if len(prompt) > self.max_prompt_chars:
            return f'prompt too long: {len(prompt)} characters, the limit is {self.max_prompt_chars} (max_prompt_chars)'
        return ''

    @staticmethod
    def _plan_jobs(docs: List[PromptDoc], params: GenerationParams) -> List[Job]:
        jobs = []
        for doc in docs:
            first_seed = doc.seed if doc.seed is not None else params.seed
            if first_seed is None:
                first_seed = secrets.randbelow(MAX_SEED - params.num_images)
            try:
                check_seed(first_seed, params.num_images)
            except ParameterError as e:
                doc.error = f'invalid seed: {e}'
                continue
            jobs.extend((doc, first_seed + i) for i in range(params.num_images))
        return jobs

    def _run_batch(self, jobs: List[Job], params: GenerationParams) -> None:
        """Generate ``jobs`` in one pipeline call; on CUDA out-of-memory, retry in halves down to one image."""
        try:
            self._generate_batch(jobs, params)
        except torch.cuda.OutOfMemoryError as e:
            self._release_memory()
            if len(jobs) == 1:
                self.logger.error(f'out of GPU memory for one {params.width}x{params.height} image')
                mark_failed([doc for doc, _ in jobs], f'{OUT_OF_MEMORY} for a {params.width}x{params.height} image: '
                            f'ask for a smaller width and height ({e})')
                return
            self.logger.warning(f'out of GPU memory for {len(jobs)} images; retrying in two halves')
            half = len(jobs) // 2
            self._run_batch(jobs[:half], params)
            self._run_batch(jobs[half:], params)
        except Exception as e:
            self.logger.error('generation failed', exc_info=True)
            mark_failed([doc for doc, _ in jobs], f'image generation failed: {type(e).__name__}: {e}')

    def _release_memory(self) -> None:
        import gc

        gc.collect()  # the failed call's tensors, so the retry finds the memory free
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def _generate_batch(self, jobs: List[Job], params: GenerationParams) -> None:
        started = time.perf_counter()
        self.pipe.scheduler = self.schedulers[params.scheduler]
        with torch.inference_mode():
            output = self.pipe(
                prompt=[doc.text for doc, _ in jobs],
                negative_prompt=[params.negative_prompt] * len(jobs) if params.negative_prompt else None,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                width=params.width,
                height=params.height,
                # CPU generators: the same seed gives the same starting noise on any device.
                generator=[torch.Generator('cpu').manual_seed(seed) for _, seed in jobs],
                callback_on_step_end=self._progress_logger(params.steps, len(jobs)),
            )
        flagged = getattr(output, 'nsfw_content_detected', None) or [False] * len(jobs)
        for (doc, seed), image, nsfw in zip(jobs, output.images, flagged):
            doc.matches.append(self._to_generated_image(doc, image, seed, params, nsfw, len(jobs)))
        self.logger.info(
            f'{len(jobs)} image(s) {params.width}x{params.height}, {params.steps} steps, '
            f'{params.scheduler} in {time.perf_counter() - started:.2f}s{self._peak_memory()}'
        )

    def _progress_logger(self, steps: int, batch_size: int):
        started = time.perf_counter()
        quarter = steps // 4 if steps >= 8 else steps  # short runs: only the final line

        def log_progress(pipe, step: int, timestep, callback_kwargs):
            done = step + 1
            if done % quarter == 0 and done < steps:
                self.logger.info(f'{batch_size} image(s): step {done}/{steps}, {time.perf_counter() - started:.1f}s')
            return callback_kwargs

        return log_progress

    def _to_generated_image(self, doc: PromptDoc, image, seed: int, params: GenerationParams, nsfw: bool, batch_size: int):
        recorded = self._image_parameters(doc.text, seed, params)
        if nsfw:
            recorded['nsfw_filtered'] = True  # the safety checker blacked the image out
        truncation = self._truncation(doc.text, params.negative_prompt)
        if truncation:
            recorded['truncated'] = truncation  # the text encoder saw only the start: say so, not silently
        png = encode_png(image, recorded)
        return GeneratedImage(
            png=None if params.return_data_uri else png,
            uri=png_data_uri(png) if params.return_data_uri else None,
            width=image.width,
            height=image.height,
            seed=seed,
            parameters=recorded,
            batch_size=batch_size,
        )

    def _truncation(self, prompt: str, negative_prompt: str) -> Dict[str, Any]:
        """For each text longer than the text encoder's window: its token count, the limit and the part used."""
        tokenizer = self.pipe.tokenizer or getattr(self.pipe, 'tokenizer_2', None)
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

    def _image_parameters(self, prompt: str, seed: int, params: GenerationParams) -> Dict[str, Any]:
        recorded = {
            'prompt': prompt,
            'negative_prompt': params.negative_prompt,
            'steps': params.steps,
            'guidance_scale': params.guidance_scale,
            'seed': seed,
            'width': params.width,
            'height': params.height,
            'scheduler': params.scheduler,
            'model': self.model_id,
            'pipeline': type(self.pipe).__name__,
            'device': self.device.type,
            'dtype': str(self.dtype).removeprefix('torch.'),
        }
        if self.is_tiny:
            recorded['warning'] = TINY_WARNING
        return recorded
