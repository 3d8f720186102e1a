"""StableDiffusionExecutor: English prompts in, PNG images (with their parameters) out.

Three ways in: ``/generate`` (a batch of documents, answered once), ``/generate_stream`` (one
document, answered with its denoising progress as it happens, then the document), both
text-to-image and making the same pixels from the same seed and parameters; and ``/restyle``
(image-to-image: each document's input image redrawn after its English text).
"""

import asyncio
import os
import secrets
import signal
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from docarray import DocList
from jina import requests
from PIL import Image

from executors.stable_diffusion.pipelines import (
    apply_fast_paths, build_schedulers, image_to_image_pipeline, load_pipeline, place_pipeline, truncation,
)
from executors.stable_diffusion.settings import StableDiffusionSettings
from s2i.contracts.documents import (
    PROGRESS_INTERVAL, GeneratedImage, GenerationEvent, GenerationRequest, ParameterSchema, PromptDoc, fail, fail_with,
    mark_failed,
)
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import MAX_SEED, ParameterError, check_unicode
from s2i.contracts.stable_diffusion import MAX_PIXELS, GenerationParams, RestyleParams, restyle_size, too_long
from s2i.encoding import encode_png
from s2i.executor_base import ModelExecutor, fail_all
from s2i.images import ImageError, ImagePolicy, document_image
from s2i.tiny_sd import TINY_WARNING

NO_STYLE = 'nothing to restyle with: send a style prompt (text) or speech (audio)'
NO_IMAGE = 'nothing to restyle: the document has no image (image or image_uri)'


class Job(NamedTuple):
    """One image to make: the document it is for, its seed, and (restyle) the image it starts from."""

    doc: PromptDoc
    seed: int
    image: Optional[Any] = None  # the input image as read (PIL, RGB); resized to the output size at the call


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


class StableDiffusionExecutor(ModelExecutor):
    """Text-to-image with any diffusers text-to-image model (SD 1.x/2.x, SDXL, ...), and image-to-image
    (``/restyle``) with the same weights, where diffusers has an image-to-image pipeline for the model.

    Documents that already carry an ``error`` pass through untouched. Each image of a document
    gets seed ``seed + i``, so any single image can be regenerated on its own. A document gets all
    its images or an error, whatever happens to the other documents of its batch.

    With ``best_of``, each document gets that many candidates instead of ``num_images``; the CLIP
    executor after this one in the Flow keeps the ``num_images`` best. Without it, all come back.

    ``/generate_stream`` runs its pipeline calls in worker threads, beside ``/generate``'s: one lock
    lets a single call at a time use the pipeline. Closing the stream stops its generation at the
    next denoising step.
    """

    settings_class = StableDiffusionSettings
    params_class = GenerationParams

    def __init__(self, **settings):
        super().__init__(**settings)
        settings = self.settings
        self.max_pixels = min(settings.max_pixels, MAX_PIXELS)
        # /restyle's size follows its input image unless the request says otherwise: not the default width and height.
        self.restyle_defaults = RestyleParams.with_defaults(
            {k: v for k, v in settings.request_defaults.items() if k not in ('width', 'height')}
        )
        self._check_limits(self.defaults)
        self._check_limits(self.restyle_defaults)
        self.pipe, self.is_tiny = load_pipeline(self.model_id, self.dtype, settings.enable_safety_checker, self.logger)
        self.logger.info(f'loaded {self.model_id} as {type(self.pipe).__name__} on {self.device} ({self.dtype})')
        place_pipeline(self.pipe, self.device, settings.low_memory, self.logger)
        apply_fast_paths(self.pipe, settings.channels_last, settings.fuse_qkv, settings.compile_unet, self.logger)
        self.schedulers = build_schedulers(self.pipe)
        self.restyle_pipe = None  # built from self.pipe, sharing its weights, at the first /restyle
        self.image_policy = ImagePolicy.of(settings)  # s2i/images.py
        # The pipeline and its scheduler swap are not thread-safe, and a stream's worker thread runs
        # beside /generate's (Jina serialises only its synchronous endpoints): one call at a time.
        self.pipeline_lock = threading.Lock()
        self.shutting_down = threading.Event()  # set on SIGTERM/SIGINT: generations stop at their next step
        set_on_shutdown_signals(self.shutting_down)
        if settings.warmup:
            self._warm_up()

    def configured_defaults(self) -> GenerationParams:
        """Text-to-image's defaults: request_defaults without /restyle's own keys (strength)."""
        restyle_only = RestyleParams.keys() - GenerationParams.keys()
        return GenerationParams.with_defaults({k: v for k, v in self.settings.request_defaults.items() if k not in restyle_only})

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
        params = self.request_params(docs, parameters, check=self._check_limits)
        if params is None:
            return docs
        drawing = [doc for doc in docs if not doc.error]
        jobs = []
        for doc in drawing:
            with self.own_failure(doc, 'reading the document'):
                jobs += self._plan_jobs(doc, params)
        for batch in self._batches(jobs):
            self._run_batch(batch, params)
        for doc in drawing:
            drop_images_of_failed(doc)
        return docs

    @requests(on='/restyle')
    def restyle(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """Each document's input image (``image`` or ``image_uri``) redrawn after its English ``text``:
        typed by the client, or Whisper's translation of the document's audio (Whisper runs first in
        the Flow). ``strength`` sets how far from the input image to go."""
        params = self.request_params(docs, parameters, self.restyle_defaults, check=self._check_restyle)
        if params is None:
            return docs
        drawing = [doc for doc in docs if not doc.error]
        if not drawing or not self._ready_to_restyle(drawing):
            return docs
        calls: Dict[RestyleParams, List[Job]] = {}  # a pipeline call draws one size: documents grouped by theirs
        for doc in drawing:
            with self.own_failure(doc, 'reading the document'):
                sized, jobs = self._plan_restyle(doc, params)
                calls.setdefault(sized, []).extend(jobs)
        for sized, jobs in calls.items():
            for batch in self._batches(jobs):
                self._run_batch(batch, sized)
        for doc in drawing:
            drop_images_of_failed(doc)
        return docs

    def _ready_to_restyle(self, docs: List[PromptDoc]) -> bool:
        """Whether the image-to-image pipeline is built (building it now if need be); if the model has
        none, every document says so."""
        try:
            with self.pipeline_lock:
                if self.restyle_pipe is None:
                    self.restyle_pipe = image_to_image_pipeline(self.pipe, self.model_id)
            return True
        except RuntimeError as e:
            self.logger.error(str(e), exc_info=True)
            mark_failed(docs, f'restyle is not available: the model {self.model_id!r} has no image-to-image pipeline',
                        ErrorCode.UNSUPPORTED)
            return False

    def _plan_restyle(self, doc: PromptDoc, params: RestyleParams) -> Tuple[RestyleParams, List[Job]]:
        """``params`` with ``doc``'s output size, and the images to make for ``doc``, each starting from
        its input image: none if it gets an error instead."""
        jobs = self._plan_jobs(doc, params, no_prompt=NO_STYLE)
        if not jobs:
            return params, []
        if not doc.has_image:
            fail(doc, NO_IMAGE, ErrorCode.MISSING_INPUT, 'image')
            return params, []
        try:
            image = document_image(doc, self.image_policy)
        except ImageError as e:
            fail_with(doc, e)
            return params, []
        if params.width is None:
            width, height = restyle_size(image.width, image.height, self.max_pixels)
            params = params.model_copy(update={'width': width, 'height': height})
            try:
                self._check_limits(params)  # an extreme aspect ratio, raised to MIN_SIZE on its short side
            except ParameterError as e:  # the image's shape, not the request's values: width and height are the way out
                fail(doc, f'image cannot be restyled at its own size: {e}; give width and height', ErrorCode.IMAGE_UNREADABLE, 'image')
                return params, []
        return params, [job._replace(image=image) for job in jobs]

    @requests(on='/generate_stream')
    async def generate_stream(self, doc: GenerationRequest, **kwargs) -> GenerationEvent:
        """``doc`` drawn as ``/generate`` would draw it, with ``doc.parameters``: ``progress`` events
        while it denoises, then one ``done`` event: the document, with its images or its error.

        Never raises: Jina's connection pool retries a failed stream from the start, replaying it."""
        stop = threading.Event()  # set when this stream ends, for whatever reason: its worker thread stops
        try:
            params = self.request_params([doc], doc.parameters, check=self._check_limits)
            if params is not None:
                async for event in self._stream_generation(doc, params, stop):
                    yield event
        except Exception as e:
            fail_all([doc], self.failure(f'streamed generation for document {doc.id}', e, 'image generation'))
        except BaseException:  # CancelledError or GeneratorExit (below): its consumer went away, e.g. a cancelled job
            stop.set()
            self.logger.info(f'stream of document {doc.id} closed before its end: its generation stops at its next step')
            raise
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
        with self.own_failure(doc, 'reading the document'):
            jobs = self._plan_jobs(doc, params)
        for batch in self._batches(jobs):
            if doc.error:  # an earlier call failed: the document gets an error, not some of its images
                return
            async for event in self._stream_call(batch, jobs[0].seed, params, stop):
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
                                      first_image=call_jobs[0].seed - first_seed)  # image i has seed first + i
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
            mark_failed([job.doc for job in jobs], 'cancelled: the stream was closed', ErrorCode.CANCELLED)
        finally:
            finished()
        self.release_memory()
        self.logger.info(f'generation cancelled at step {cancelled.step}/{cancelled.steps}')

    def _check_limits(self, params: GenerationParams) -> None:
        settings = self.settings
        params.check_limits(settings.max_num_images, self.max_pixels, settings.max_prompt_chars, settings.max_best_of)

    def _check_restyle(self, params: RestyleParams) -> None:
        self._check_limits(params)
        params.check_denoises()  # not at start-up: request_defaults {steps: 1} is fine for text-to-image

    def _batches(self, jobs: List[Job]) -> List[List[Job]]:
        """``jobs`` in pipeline calls of at most ``max_batch_size`` images, in order."""
        size = self.settings.max_batch_size
        return [jobs[start : start + size] for start in range(0, len(jobs), size)]

    def parameter_schema(self) -> ParameterSchema:
        """Text-to-image's keys and defaults, and /restyle's own key (strength): the gateway learns them here."""
        mine = super().parameter_schema()
        restyle_schema = RestyleParams.model_json_schema()['properties']
        for key in sorted(RestyleParams.keys() - GenerationParams.keys()):
            mine.json_schema['properties'][key] = {**restyle_schema[key], 'default': getattr(self.restyle_defaults, key)}
        mine.keys = sorted(set(mine.keys) | RestyleParams.keys())
        return mine

    def _plan_jobs(self, doc: PromptDoc, params: GenerationParams, no_prompt: str = 'nothing to draw: the document has no text prompt') -> List[Job]:
        """The images to make for ``doc`` (``best_of`` candidates, or ``num_images``): none if it gets an error instead."""
        doc.matches = DocList[GeneratedImage]()  # this executor's images replace any the document came with
        try:
            self._check_prompt(doc.text, no_prompt)
        except CodedError as e:
            fail_with(doc, e)
            return []
        count = params.images_to_draw
        first_seed = doc.seed if doc.seed is not None else params.seed
        if first_seed is None:
            first_seed = secrets.randbelow(MAX_SEED - count)
        try:
            params.check_seeds_from(first_seed)
        except ParameterError as e:
            fail(doc, f'invalid seed: {e}', e.code, e.param)
            return []
        return [Job(doc, first_seed + i) for i in range(count)]

    def _check_prompt(self, prompt: str, no_prompt: str) -> None:
        """A CodedError for a prompt this executor cannot draw: too long, not Unicode, or blank (``no_prompt``)."""
        max_chars = self.settings.max_prompt_chars
        if len(prompt) > max_chars:  # first: nothing else reads a text over the limit
            raise CodedError(too_long('prompt', prompt, max_chars), ErrorCode.PROMPT_TOO_LONG, 'prompt')
        try:
            check_unicode(prompt)  # the tokenizer would fail the whole batch on it
        except ValueError as e:
            raise CodedError(f'prompt {e}', ErrorCode.INVALID_REQUEST, 'prompt') from None
        if not prompt.strip():
            raise CodedError(no_prompt, ErrorCode.MISSING_INPUT, 'prompt')

    def _run_batch(self, jobs: List[Job], params: GenerationParams,
                   step_done: Optional[StepDone] = None, stop: Optional[threading.Event] = None) -> None:
        """Generate ``jobs`` in one pipeline call. A failed call is retried in halves down to one image,
        so that only the documents that fail alone get an error (CUDA out-of-memory, or a bad prompt).
        A stream's ``step_done`` and ``stop`` go to ``_generate_batch``; Cancelled is raised, not retried."""
        try:
            self._generate_batch(jobs, params, step_done, stop)
            return
        except Cancelled:
            raise
        except Interrupted:
            mark_failed([job.doc for job in jobs], INTERRUPTED, ErrorCode.INTERRUPTED)
            return
        except torch.cuda.OutOfMemoryError as e:
            self.logger.warning(f'out of GPU memory for {len(jobs)} {params.width}x{params.height} image(s)')
            failure = CodedError(f'{OUT_OF_MEMORY} for a {params.width}x{params.height} image: ask for a smaller width and height ({e})',
                                 ErrorCode.OUT_OF_MEMORY)
        except Exception as e:
            failure = self.failure(f'generation of {len(jobs)} image(s)', e, 'image generation')
        if failure.code == ErrorCode.OUT_OF_MEMORY:  # out of the except block, where the traceback held the call's tensors
            self.release_memory()
        if len(jobs) == 1:
            fail_all([jobs[0].doc], failure)
            return
        self.logger.warning(f'retrying the {len(jobs)} images in two halves')
        half = len(jobs) // 2
        self._run_batch(jobs[:half], params, step_done, stop)
        self._run_batch(jobs[half:], params, step_done, stop)

    def _generate_batch(self, jobs: List[Job], params: GenerationParams,
                        step_done: Optional[StepDone] = None, stop: Optional[threading.Event] = None) -> None:
        with self.pipeline_lock:
            output, seconds = self._call_pipeline(jobs, params, step_done, stop)
        flagged = getattr(output, 'nsfw_content_detected', None) or [False] * len(jobs)
        for job, image, nsfw in zip(jobs, output.images, flagged):
            with self.own_failure(job.doc, 'encoding the image'):
                job.doc.matches.append(self._to_generated_image(job, image, params, nsfw, len(jobs)))
        self.logger.info(
            f'{len(jobs)} image(s) {params.width}x{params.height}, {params.denoising_steps} steps, '
            f'{params.scheduler} in {seconds:.2f}s{self._peak_memory()}'
        )

    def _call_pipeline(self, jobs: List[Job], params: GenerationParams, step_done: Optional[StepDone],
                       stop: Optional[threading.Event]):
        """The pipeline's output for ``jobs`` and the seconds it took; the caller holds the pipeline lock."""
        if self.shutting_down.is_set():  # the later batches of a request, once shutdown began
            raise Interrupted
        if stop is not None and stop.is_set():  # closed while this call waited for the pipeline
            raise Cancelled(0, params.denoising_steps)
        started = time.perf_counter()
        pipe, own_arguments = self._pipeline_for(jobs, params)
        pipe.scheduler = self.schedulers[params.scheduler]
        with torch.inference_mode():
            output = pipe(
                prompt=[job.doc.text for job in jobs],
                negative_prompt=[params.negative_prompt] * len(jobs) if params.negative_prompt else None,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                # CPU generators: the same seed gives the same starting noise on any device.
                generator=[torch.Generator('cpu').manual_seed(job.seed) for job in jobs],
                callback_on_step_end=self._after_each_step(params.denoising_steps, jobs, step_done, stop),
                **own_arguments,
            )
        return output, time.perf_counter() - started

    def _pipeline_for(self, jobs: List[Job], params: GenerationParams) -> Tuple[Any, Dict[str, Any]]:
        """The pipeline that draws ``jobs`` and the arguments only it takes: text-to-image's size, or
        image-to-image's input images (resized to the output size) and strength."""
        if isinstance(params, RestyleParams):
            size = (params.width, params.height)
            images = [job.image if job.image.size == size else job.image.resize(size, Image.LANCZOS) for job in jobs]
            return self.restyle_pipe, {'image': images, 'strength': params.strength}
        return self.pipe, {'width': params.width, 'height': params.height}

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

    def _to_generated_image(self, job: Job, image, params: GenerationParams, nsfw: bool, batch_size: int):
        doc, seed = job.doc, job.seed
        recorded = self._image_parameters(doc.text, seed, params)
        if job.image is not None:  # restyled: what it started from
            recorded['input_width'], recorded['input_height'] = job.image.size
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
        if isinstance(params, RestyleParams):
            recorded.update(mode='restyle', strength=params.strength, pipeline=type(self.restyle_pipe).__name__)
        if params.best_of is not None:  # one of best_of candidates, of which num_images are kept (by CLIP, in the Flow)
            recorded.update(num_images=params.num_images, best_of=params.best_of)
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
