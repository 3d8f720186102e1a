"""StableDiffusionExecutor: English prompts in, PNG images (with their parameters) out."""

import os
import secrets
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Tuple

import torch
from docarray import DocList
from jina import Executor, requests

from executors.stable_diffusion.params import DEFAULT_MODEL, MAX_PIXELS, GenerationParams, check_seed, too_long
from executors.stable_diffusion.pipelines import apply_fast_paths, build_schedulers, load_pipeline, place_pipeline, truncation
from s2i.docs import GeneratedImage, ParameterSchema, PromptDoc, mark_failed
from s2i.encoding import encode_png
from s2i.params import MAX_SEED, PARAMETERS_ENDPOINT, ParameterError, check_unicode, describe_parameters, request_parameters
from s2i.runtime import DETAILS_LOGGED, refuse_unknown_settings, resolve_device, setting
from s2i.tiny_sd import TINY_WARNING

Job = Tuple[PromptDoc, int]  # one image to make: the document it is for and its seed
OUT_OF_MEMORY = 'out of GPU memory'
INTERRUPTED = 'interrupted: the service is shutting down; send the request again'


class Interrupted(Exception):
    """The service is shutting down: raised between denoising steps, and before a batch starts."""


class StableDiffusionExecutor(Executor):
    """Text-to-image with any diffusers text-to-image model (SD 1.x/2.x, SDXL, ...).

    Documents that already carry an ``error`` pass through untouched. Each image of a document
    gets seed ``seed + i``, so any single image can be regenerated on its own. A document gets all
    its images or an error, whatever happens to the other documents of its batch.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        device: Optional[str] = None,
        request_defaults: Optional[Dict[str, Any]] = None,
        enable_safety_checker: bool = False,
        max_num_images: int = 4,
        max_batch_size: int = 4,
        max_pixels: int = 1024 * 1024,
        max_prompt_chars: int = 20000,
        channels_last: bool = False,
        fuse_qkv: bool = False,
        compile_unet: bool = False,
        low_memory: bool = False,
        warmup: bool = True,
        **kwargs,
    ):
        refuse_unknown_settings(type(self), kwargs)
        super().__init__(**kwargs)
        self.model_id = setting(model, 'S2I_SD_MODEL', DEFAULT_MODEL)
        self.device = torch.device(resolve_device(setting(device, 'S2I_DEVICE', 'auto')))
        self.dtype = torch.float16 if self.device.type == 'cuda' else torch.float32
        self.max_num_images = max_num_images
        self.max_batch_size = max_batch_size
        self.max_pixels = min(max_pixels, MAX_PIXELS)
        self.max_prompt_chars = max_prompt_chars
        self.defaults = GenerationParams.with_defaults(request_defaults)
        self.defaults.check_limits(max_num_images, self.max_pixels, max_prompt_chars)
        self.pipe, self.is_tiny = load_pipeline(self.model_id, self.dtype, enable_safety_checker, self.logger)
        self.logger.info(f'loaded {self.model_id} as {type(self.pipe).__name__} on {self.device} ({self.dtype})')
        place_pipeline(self.pipe, self.device, low_memory, self.logger)
        apply_fast_paths(self.pipe, channels_last, fuse_qkv, compile_unet, self.logger)
        self.schedulers = build_schedulers(self.pipe)
        self.shutting_down = threading.Event()  # set on SIGTERM/SIGINT: generations stop at their next step
        set_on_shutdown_signals(self.shutting_down)
        if warmup:
            self._warm_up()

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

    @requests(on=['/generate', '/text2image'])
    def generate(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        params = request_parameters(docs, parameters, self.defaults,
                                    check=lambda p: p.check_limits(self.max_num_images, self.max_pixels, self.max_prompt_chars))
        if params is None:
            return docs
        drawing = [doc for doc in docs if not doc.error]
        jobs = []
        for doc in drawing:
            with self._own_failure(doc, 'reading the document'):
                jobs += self._plan_jobs(doc, params)
        for start in range(0, len(jobs), self.max_batch_size):
            self._run_batch(jobs[start : start + self.max_batch_size], params)
        for doc in drawing:
            if doc.error:
                doc.matches = DocList[GeneratedImage]()  # all of its images or an error, never some of each
        return docs

    @requests(on=PARAMETERS_ENDPOINT)
    def describe_parameters(self, docs: DocList[ParameterSchema], **kwargs) -> DocList[ParameterSchema]:
        return describe_parameters(docs, self.metas.name, self.defaults)

    @contextmanager
    def _own_failure(self, doc: PromptDoc, step: str):
        """An exception in one document's ``step`` becomes that document's error: dynamic batching
        puts other callers' documents in the same call, and they must still get their images."""
        try:
            yield
        except Exception as e:
            self.logger.error(f'{step} failed for document {doc.id}', exc_info=True)
            mark_failed([doc], f'{step} failed: {type(e).__name__}; {DETAILS_LOGGED}')

    def _plan_jobs(self, doc: PromptDoc, params: GenerationParams) -> List[Job]:
        """The images to make for ``doc``: none if it gets an error instead."""
        doc.matches = DocList[GeneratedImage]()  # this executor's images replace any the document came with
        doc.error = self._prompt_error(doc.text)
        if doc.error:
            return []
        first_seed = doc.seed if doc.seed is not None else params.seed
        if first_seed is None:
            first_seed = secrets.randbelow(MAX_SEED - params.num_images)
        try:
            check_seed(first_seed, params.num_images)
        except ParameterError as e:
            doc.error = f'invalid seed: {e}'
            return []
        return [(doc, first_seed + i) for i in range(params.num_images)]

    def _prompt_error(self, prompt: str) -> str:
        if len(prompt) > self.max_prompt_chars:  # first: nothing else reads a text over the limit
            return too_long('prompt', prompt, self.max_prompt_chars)
        try:
            check_unicode(prompt)  # the tokenizer would fail the whole batch on it
        except ValueError as e:
            return f'prompt {e}'
        if not prompt.strip():
            return 'nothing to draw: the document has no text prompt'
        return ''

    def _run_batch(self, jobs: List[Job], params: GenerationParams) -> None:
        """Generate ``jobs`` in one pipeline call. A failed call is retried in halves down to one image,
        so that only the documents that fail alone get an error (CUDA out-of-memory, or a bad prompt)."""
        out_of_memory = False
        try:
            self._generate_batch(jobs, params)
            return
        except Interrupted:
            mark_failed([doc for doc, _ in jobs], INTERRUPTED)
            return
        except torch.cuda.OutOfMemoryError as e:
            self.logger.warning(f'out of GPU memory for {len(jobs)} {params.width}x{params.height} image(s)')
            error = f'{OUT_OF_MEMORY} for a {params.width}x{params.height} image: ask for a smaller width and height ({e})'
            out_of_memory = True
        except Exception as e:
            self.logger.error(f'generation of {len(jobs)} image(s) failed', exc_info=True)
            error = f'image generation failed: {type(e).__name__}; {DETAILS_LOGGED}'
        if out_of_memory:  # out of the except block, where the failed call's traceback no longer holds its tensors
            self._release_memory()
        if len(jobs) == 1:
            mark_failed([jobs[0][0]], error)
            return
        self.logger.warning(f'retrying the {len(jobs)} images in two halves')
        half = len(jobs) // 2
        self._run_batch(jobs[:half], params)
        self._run_batch(jobs[half:], params)

    def _release_memory(self) -> None:
        import gc

        gc.collect()  # the failed call's tensors, so the retry finds the memory free
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def _generate_batch(self, jobs: List[Job], params: GenerationParams) -> None:
        if self.shutting_down.is_set():  # the later batches of a request, once shutdown began
            raise Interrupted
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
                callback_on_step_end=self._after_each_step(params.steps, len(jobs)),
            )
        flagged = getattr(output, 'nsfw_content_detected', None) or [False] * len(jobs)
        for (doc, seed), image, nsfw in zip(jobs, output.images, flagged):
            with self._own_failure(doc, 'encoding the image'):
                doc.matches.append(self._to_generated_image(doc, image, seed, params, nsfw, len(jobs)))
        self.logger.info(
            f'{len(jobs)} image(s) {params.width}x{params.height}, {params.steps} steps, '
            f'{params.scheduler} in {time.perf_counter() - started:.2f}s{self._peak_memory()}'
        )

    def _after_each_step(self, steps: int, batch_size: int):
        """The pipeline's step callback: stops the generation on shutdown, logs each quarter of the steps."""
        started = time.perf_counter()
        quarter = steps // 4 if steps >= 8 else steps  # short runs: only the final line

        def stop_or_log_progress(pipe, step: int, timestep, callback_kwargs):
            # Raised, not diffusers' `pipe._interrupt`: that one skips the remaining steps but still
            # decodes the half-denoised latents, and not every text-to-image pipeline honours it.
            if self.shutting_down.is_set():
                raise Interrupted
            done = step + 1
            if done % quarter == 0 and done < steps:
                self.logger.info(f'{batch_size} image(s): step {done}/{steps}, {time.perf_counter() - started:.1f}s')
            return callback_kwargs

        return stop_or_log_progress

    def _to_generated_image(self, doc: PromptDoc, image, seed: int, params: GenerationParams, nsfw: bool, batch_size: int):
        recorded = self._image_parameters(doc.text, seed, params)
        if nsfw:
            recorded['nsfw_filtered'] = True  # the safety checker blacked the image out
        truncated = truncation(self.pipe, doc.text, params.negative_prompt)
        if truncated:
            recorded['truncated'] = truncated  # the text encoder saw only the start: say so, not silently
        png = encode_png(image, recorded)
        return GeneratedImage(
            png=png,
            width=image.width,
            height=image.height,
            seed=seed,
            parameters=recorded,
            batch_size=batch_size,
        )

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


def set_on_shutdown_signals(event: threading.Event) -> None:
    """Set ``event`` on SIGTERM and SIGINT, then pass the signal on to the handler that was there (Jina's).

    Jina's worker answers SIGTERM by draining its batch queues, which runs every queued and running
    generation to its end, and only then calls ``Executor.close()``: far too late to stop anything.
    Jina installs its handlers before it builds the executor, so this one runs first."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set signal handlers; Jina's worker builds executors there

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous == signal.SIG_IGN:
            continue  # a signal this process ignores must not stop its generations either

        def set_then_pass_on(signum, frame, previous=previous):
            event.set()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:  # what the signal would have done without us: end the process
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signum, set_then_pass_on)
