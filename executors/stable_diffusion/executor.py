"""StableDiffusionExecutor: English prompts in, PNG images (with their parameters) out.

Two ways in: ``/generate`` (a batch of documents, answered once) and ``/generate_stream`` (one
document, answered with its denoising progress as it happens, then the document). Both make the
same pixels from the same seed and parameters.
"""

import asyncio
import os
import secrets
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from docarray import DocList
from jina import Executor, requests

from executors.stable_diffusion.params import DEFAULT_MODEL, MAX_PIXELS, GenerationParams, check_seed, too_long
from executors.stable_diffusion.pipelines import apply_fast_paths, build_schedulers, load_pipeline, place_pipeline, truncation
from s2i.docs import PROGRESS_INTERVAL, GeneratedImage, GenerationEvent, GenerationRequest, ParameterSchema, PromptDoc, mark_failed
from s2i.encoding import encode_png
from s2i.params import MAX_SEED, PARAMETERS_ENDPOINT, ParameterError, check_unicode, describe_parameters, request_parameters
from s2i.runtime import DETAILS_LOGGED, refuse_unknown_settings, resolve_device, setting
from s2i.tiny_sd import TINY_WARNING

Job = Tuple[PromptDoc, int]  # one image to make: the document it is for and its seed
StepDone = Callable[[List[Job], int, int], None]  # (the call's jobs, steps done, steps): a streamed call's progress
OUT_OF_MEMORY = 'out of GPU memory'
INTERRUPTED = 'interrupted: the service is shutting down; send the request again'


class Interrupted(Exception):
    """The service is shutting down: raised between denoising steps, and before a batch starts."""


class Cancelled(Exception):
    """A stream's consumer went away: raised between the denoising steps of its generation."""

    def __init__(self, step: int, steps: int):
        super().__init__(f'cancelled at step {step}/{steps}')
        self.step, self.steps = step, steps


class StableDiffusionExecutor(Executor):
    """Text-to-image with any diffusers text-to-image model (SD 1.x/2.x, SDXL, ...).

    Documents that already carry an ``error`` pass through untouched. Each image of a document
    gets seed ``seed + i``, so any single image can be regenerated on its own. A document gets all
    its images or an error, whatever happens to the other documents of its batch.

    ``/generate_stream`` runs its pipeline calls in worker threads, beside ``/generate``'s: one lock
    lets a single call at a time use the pipeline. Closing the stream stops its generation at the
    next denoising step.
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
        # The pipeline and its scheduler swap are not thread-safe, and a stream's worker thread runs
        # beside /generate's (Jina serialises only its synchronous endpoints): one call at a time.
        self.pipeline_lock = threading.Lock()
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
        params = request_parameters(docs, parameters, self.defaults, check=self._check_limits)
        if params is None:
            return docs
        drawing = [doc for doc in docs if not doc.error]
        jobs = []
        for doc in drawing:
            with self._own_failure(doc, 'reading the document'):
                jobs += self._plan_jobs(doc, params)
        for batch in self._batches(jobs):
            self._run_batch(batch, params)
        for doc in drawing:
            drop_images_of_failed(doc)
        return docs

    @requests(on='/generate_stream')
    async def generate_stream(self, doc: GenerationRequest, **kwargs) -> GenerationEvent:
        """``doc`` drawn as ``/generate`` would draw it, with ``doc.parameters``: ``progress`` events
        while it denoises, then one ``done`` event: the document, with its images or its error.

        Never raises: Jina's connection pool retries a failed stream from the start, replaying it."""
        stop = threading.Event()  # set when this stream ends, for whatever reason: its worker thread stops
        try:
            params = request_parameters([doc], doc.parameters, self.defaults, check=self._check_limits)
            if params is not None:
                async for event in self._stream_generation(doc, params, stop):
                    yield event
        except Exception as e:
            self.logger.error(f'streamed generation failed for document {doc.id}', exc_info=True)
            mark_failed([doc], f'image generation failed: {type(e).__name__}; {DETAILS_LOGGED}')
        finally:
            # The stream ended, or its consumer went away: a cancelled gRPC call reaches here at once
            # as CancelledError at an await (Jina's worker cancels the task that reads this generator),
            # or as GeneratorExit at a yield once the generator is finalised. No more denoising for it.
            stop.set()
        drop_images_of_failed(doc)
        # The document's own fields only: its parameters (with the gateway's key) stay here.
        yield GenerationEvent(kind='done', **{name: getattr(doc, name) for name in PromptDoc.model_fields})

    async def _stream_generation(self, doc: PromptDoc, params: GenerationParams, stop: threading.Event):
        """The progress events of ``doc``'s pipeline calls: the calls ``/generate`` would make."""
        with self._own_failure(doc, 'reading the document'):
            jobs = self._plan_jobs(doc, params)
        for batch in self._batches(jobs):
            if doc.error:  # an earlier call failed: the document gets an error, not some of its images
                return
            async for event in self._stream_call(batch, jobs[0][1], params, stop):
                yield event

    async def _stream_call(self, jobs: List[Job], first_seed: int, params: GenerationParams, stop: threading.Event):
        """One pipeline call in a worker thread (the event loop must stay free), with its progress
        events: after a step at most every PROGRESS_INTERVAL, and always after its last step."""
        loop = asyncio.get_running_loop()
        steps_done: asyncio.Queue = asyncio.Queue()  # (jobs, step, steps) from the thread; None once it returns

        def step_done(call_jobs: List[Job], step: int, steps: int) -> None:  # in the worker thread
            loop.call_soon_threadsafe(steps_done.put_nowait, (call_jobs, step, steps))

        call = loop.run_in_executor(None, self._run_streamed_batch, jobs, params, step_done, stop,
                                    lambda: loop.call_soon_threadsafe(steps_done.put_nowait, None))
        last_sent = float('-inf')
        while (progress := await steps_done.get()) is not None:
            call_jobs, step, steps = progress  # call_jobs: a half of ``jobs`` when a failed call is retried
            now = time.monotonic()
            if step == steps or now - last_sent >= PROGRESS_INTERVAL:
                last_sent = now
                yield GenerationEvent(kind='progress', step=step, steps=steps, images=len(call_jobs),
                                      first_image=call_jobs[0][1] - first_seed)  # image i has seed first + i
        await call

    def _run_streamed_batch(self, jobs: List[Job], params: GenerationParams, step_done: StepDone,
                            stop: threading.Event, finished: Callable[[], None]) -> None:
        """``_run_batch`` for a stream, in a worker thread: ``step_done`` after each denoising step,
        stopped at the next step once ``stop`` is set; ``finished`` when it returns, whatever happened."""
        try:
            self._run_batch(jobs, params, step_done, stop)
            return
        except Cancelled as e:
            cancelled = e
            mark_failed([doc for doc, _ in jobs], 'cancelled: the stream was closed')
        finally:
            finished()
        self._release_memory()  # out of the except block, where the traceback no longer holds the call's tensors
        self.logger.info(f'generation cancelled at step {cancelled.step}/{cancelled.steps}')

    def _check_limits(self, params: GenerationParams) -> None:
        params.check_limits(self.max_num_images, self.max_pixels, self.max_prompt_chars)

    def _batches(self, jobs: List[Job]) -> List[List[Job]]:
        """``jobs`` in pipeline calls of at most ``max_batch_size`` images, in order."""
        return [jobs[start : start + self.max_batch_size] for start in range(0, len(jobs), self.max_batch_size)]

    @requests(on=PARAMETERS_ENDPOINT)
    def describe_parameters(self, docs: DocList[ParameterSchema], **kwargs) -> DocList[ParameterSchema]:
        return describe_parameters(docs, self.metas.name, self.defaults, model=self.model_id)

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

    def _run_batch(self, jobs: List[Job], params: GenerationParams,
                   step_done: Optional[StepDone] = None, stop: Optional[threading.Event] = None) -> None:
        """Generate ``jobs`` in one pipeline call. A failed call is retried in halves down to one image,
        so that only the documents that fail alone get an error (CUDA out-of-memory, or a bad prompt).
        A stream's ``step_done`` and ``stop`` go to ``_generate_batch``; Cancelled is raised, not retried."""
        out_of_memory = False
        try:
            self._generate_batch(jobs, params, step_done, stop)
            return
        except Cancelled:
            raise
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
        self._run_batch(jobs[:half], params, step_done, stop)
        self._run_batch(jobs[half:], params, step_done, stop)

    def _release_memory(self) -> None:
        import gc

        gc.collect()  # the failed call's tensors, so the retry finds the memory free
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def _generate_batch(self, jobs: List[Job], params: GenerationParams,
                        step_done: Optional[StepDone] = None, stop: Optional[threading.Event] = None) -> None:
        with self.pipeline_lock:
            output, seconds = self._call_pipeline(jobs, params, step_done, stop)
        flagged = getattr(output, 'nsfw_content_detected', None) or [False] * len(jobs)
        for (doc, seed), image, nsfw in zip(jobs, output.images, flagged):
            with self._own_failure(doc, 'encoding the image'):
                doc.matches.append(self._to_generated_image(doc, image, seed, params, nsfw, len(jobs)))
        self.logger.info(
            f'{len(jobs)} image(s) {params.width}x{params.height}, {params.steps} steps, '
            f'{params.scheduler} in {seconds:.2f}s{self._peak_memory()}'
        )

    def _call_pipeline(self, jobs: List[Job], params: GenerationParams, step_done: Optional[StepDone],
                       stop: Optional[threading.Event]):
        """The pipeline's output for ``jobs`` and the seconds it took; the caller holds the pipeline lock."""
        if self.shutting_down.is_set():  # the later batches of a request, once shutdown began
            raise Interrupted
        if stop is not None and stop.is_set():  # closed while this call waited for the pipeline
            raise Cancelled(0, params.steps)
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
                callback_on_step_end=self._after_each_step(params.steps, jobs, step_done, stop),
            )
        return output, time.perf_counter() - started

    def _after_each_step(self, steps: int, jobs: List[Job], step_done: Optional[StepDone], stop: Optional[threading.Event]):
        """The pipeline's step callback: stops the generation on shutdown or when its stream is closed
        (``stop``), reports each step to the stream (``step_done``), logs each quarter of the steps."""
        started = time.perf_counter()
        quarter = steps // 4 if steps >= 8 else steps  # short runs: only the final line

        def stop_or_report_progress(pipe, step: int, timestep, callback_kwargs):
            done = step + 1
            # Raised, not diffusers' `pipe._interrupt`: that one skips the remaining steps but still
            # decodes the half-denoised latents, and not every text-to-image pipeline honours it.
            if self.shutting_down.is_set():
                raise Interrupted
            if stop is not None and stop.is_set():
                raise Cancelled(done, steps)
            if step_done is not None:
                step_done(jobs, done, steps)
            if done % quarter == 0 and done < steps:
                self.logger.info(f'{len(jobs)} image(s): step {done}/{steps}, {time.perf_counter() - started:.1f}s')
            return callback_kwargs

        return stop_or_report_progress

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


def drop_images_of_failed(doc: PromptDoc) -> None:
    """A document gets all of its images or an error, never some of each."""
    if doc.error:
        doc.matches = DocList[GeneratedImage]()


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
