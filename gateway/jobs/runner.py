"""Running jobs: speech (or text) in, images out, each step published as an event as it happens.

A job goes Whisper (audio only) -> Stable Diffusion's streaming endpoint (per-step progress) ->
the store, one executor at a time through the Flow client (gateway/flow_client.py),
so that the transcript is published before any image exists and each denoising step as it ends.

Jobs wait in this gateway's queue and run ``max_running_jobs`` at a time; a queued job's audio waits in
a temporary file, not in memory. Only the gateway that accepted a job runs it and ends it; with Redis, any
gateway can show it, follow it or ask to cancel it, and the owning gateway notices within
CANCEL_POLL_SECONDS. Each gateway renews its lease in the store every third of its length and fails the
jobs of gateways whose lease lapsed; a gateway whose job was ended that way stops it without another event.
"""

import asyncio
import base64
import logging
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from docarray import DocList

from gateway.flow_client import GENERATOR, RANKER, STORE, TRANSCRIBER, FlowClient, FlowFailure
from gateway.generation import URL_SECONDS
from gateway.jobs.store import JobEnded, JobStore
from gateway.jobs.webhooks import Webhooks
from gateway.settings import default
from s2i.contracts.documents import GenerationEvent, GenerationRequest, PromptDoc
from s2i.contracts.errors import ErrorCode, known_code
from s2i.contracts.events import (
    Cancelled, Failed, Image, ImageResult, JobEventBase, JobRecord, Progress, Queued, Started, Succeeded, Transcribed,
    event_json,
)

CANCEL_POLL_SECONDS = 0.25  # how soon a cancel asked through another gateway (Redis) is noticed
PURGE_EVERY_SECONDS = 600
RESTARTED = 'the gateway restarted before the job finished; submit it again'
STOPPED = 'the gateway stopped while the job ran; submit it again'
LAPSED = 'the gateway running this job stopped (its lease lapsed); submit it again'
NOT_STORED = 'no url: the service does not store results (S2I_STORE=none), so the image is in b64_json'


@dataclass(frozen=True)
class JobLimits:
    """The job limits among the gateway's settings (their defaults and meaning: GatewaySettings)."""

    max_active_jobs: int = default('max_active_jobs')
    max_active_jobs_per_key: int = default('max_active_jobs_per_key')
    max_running_jobs: int = default('max_running_jobs')
    max_job_seconds: float = default('max_job_seconds')
    job_ttl_seconds: float = default('job_ttl_seconds')


@dataclass
class JobInput:
    """What a job was asked to do: ``audio`` or ``prompt``, and the Flow's request parameters."""

    prompt: str = ''
    audio: Optional[bytes] = None
    language: Optional[str] = None
    parameters: Dict[str, Any] = field(default_factory=dict)  # GenerationParams keys
    response_format: str = 'b64_json'  # or 'url': the stored image's address instead of its bytes
    callback_url: Optional[str] = None


class QueuedJob:
    """A job waiting in this gateway's queue. Its audio waits in a nameless temporary file rather than in
    memory: the OS deletes the file when it is closed (the job starts or ends) or when the gateway dies."""

    def __init__(self, job_input: JobInput, spool_dir: Optional[Path] = None):
        self.audio_file = None
        if job_input.audio is not None:
            self.audio_file = tempfile.TemporaryFile(dir=spool_dir)
            self.audio_file.write(job_input.audio)
            job_input = replace(job_input, audio=None)
        self.job_input = job_input

    def take(self) -> JobInput:
        """The job's input, its audio read back (once: the file is deleted)."""
        if self.audio_file is None:
            return self.job_input
        try:
            self.audio_file.seek(0)
            return replace(self.job_input, audio=self.audio_file.read())
        finally:
            self.discard()

    def discard(self) -> None:
        if self.audio_file is not None:
            self.audio_file.close()


class TooManyJobs(Exception):
    """A limit on active jobs is reached; the message names it."""


class JobFailed(Exception):
    """A step of a job failed, with the error and code its record and last event carry."""

    def __init__(self, error: str, code: ErrorCode):
        super().__init__(error)
        self.error, self.code = error, ErrorCode(code)

    @classmethod
    def of(cls, doc: PromptDoc) -> 'JobFailed':
        """A failed document's error, by the code its executor gave (none: internal_error)."""
        return cls(doc.error, known_code(doc.error_code))


class JobRunner:
    def __init__(self, flow: FlowClient, store: JobStore, webhooks: Webhooks, limits: JobLimits, logger: logging.Logger,
                 spool_dir: Optional[Path] = None):
        self.flow = flow
        self.store = store
        self.webhooks = webhooks
        self.limits = limits
        self.logger = logger
        self.spool_dir = spool_dir  # where queued audio waits (None: the system's temporary folder)
        self.queue: 'asyncio.Queue[str]' = asyncio.Queue()
        self.queued: Dict[str, QueuedJob] = {}  # this gateway's queued jobs: their audio is not in the store
        self.running: Dict[str, asyncio.Task] = {}
        self.background: List[asyncio.Task] = []
        self.stopping = False

    async def start(self) -> None:
        await self.store.renew_lease()
        abandoned = await self.store.fail_lapsed(RESTARTED)
        if abandoned:
            self.logger.warning(f'{abandoned} unfinished job(s) of a stopped gateway failed: {RESTARTED}')
        self.background = [asyncio.create_task(self._work()) for _ in range(self.limits.max_running_jobs)]
        self.background += [asyncio.create_task(task) for task in (self._watch_cancels(), self._purge(), self._keep_lease())]

    async def stop(self) -> None:
        self.stopping = True
        for task in [*self.background, *self.running.values()]:
            task.cancel()
        await asyncio.gather(*self.background, *self.running.values(), return_exceptions=True)
        for queued in self.queued.values():
            queued.discard()  # the jobs themselves fail when a gateway starts next (RESTARTED) or notices (LAPSED)
        self.queued.clear()
        try:
            await self.store.release_lease()
        except Exception:
            self.logger.error('releasing the job lease failed; other gateways fail its jobs when it lapses', exc_info=True)
        await self.store.close()

    # Submitting and cancelling

    async def submit(self, owner: str, job_input: JobInput) -> Dict[str, Any]:
        """The new job's record, queued; TooManyJobs if a limit is reached."""
        await self._check_limits(owner)
        job_id = uuid.uuid4().hex
        job = {**new_record(job_id, job_input), 'owner': owner}
        queued = await asyncio.to_thread(QueuedJob, job_input, self.spool_dir)
        try:
            await self.store.create(job)
        except BaseException:
            queued.discard()
            raise
        self.queued[job_id] = queued
        await self._publish(Queued(job=job_id, time=time.time(), position=self.queue.qsize()))
        self.queue.put_nowait(job_id)
        return job

    async def _check_limits(self, owner: str) -> None:
        limits = self.limits
        if await self.store.count_active(owner) >= limits.max_active_jobs_per_key:
            raise TooManyJobs(f'this API key has {limits.max_active_jobs_per_key} jobs queued or running, the limit '
                              '(max_active_jobs_per_key); wait for one to finish or cancel one')
        if await self.store.count_active() >= limits.max_active_jobs:
            raise TooManyJobs(f'the service has {limits.max_active_jobs} jobs queued or running, its limit '
                              '(max_active_jobs); try again later')

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: at once if this gateway holds it, else the gateway that does notices soon."""
        await self.store.request_cancel(job_id)
        await self._cancel_here(job_id)

    async def _cancel_here(self, job_id: str) -> None:
        if job_id in self.running:
            self.running[job_id].cancel()  # the job's own task ends it as cancelled
        elif (queued := self.queued.pop(job_id, None)) is not None:  # queued: never runs (the worker skips it)
            queued.discard()
            await self._finish(job_id, 'cancelled', {})

    async def _watch_cancels(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            for job_id in [*self.running, *self.queued]:
                try:
                    if await self.store.cancel_requested(job_id):
                        await self._cancel_here(job_id)
                except Exception:
                    self.logger.error(f'checking job {job_id} for cancellation failed', exc_info=True)

    async def _purge(self) -> None:
        while True:
            try:
                purged = await self.store.purge_expired()
                if purged:
                    self.logger.info(f'{purged} expired job(s) deleted')
            except Exception:
                self.logger.error('deleting expired jobs failed', exc_info=True)
            await asyncio.sleep(PURGE_EVERY_SECONDS)

    async def _keep_lease(self) -> None:
        """Renews this gateway's lease, and fails the jobs of gateways that stopped renewing theirs."""
        while True:
            await asyncio.sleep(self.store.lease_seconds / 3)
            try:
                await self.store.renew_lease()
                failed = await self.store.fail_lapsed(LAPSED)
                if failed:
                    self.logger.warning(f'{failed} job(s) of a gateway whose lease lapsed failed: {LAPSED}')
            except Exception:
                self.logger.error('renewing the job lease failed', exc_info=True)

    # Running

    async def _work(self) -> None:
        while True:
            job_id = await self.queue.get()
            queued = self.queued.pop(job_id, None)
            if queued is None:  # cancelled while queued
                continue
            task = asyncio.create_task(self._run(job_id, queued))
            self.running[job_id] = task  # cancel() ends this task, not the worker
            try:
                await asyncio.wait({task})
            finally:
                self.running.pop(job_id, None)

    async def _run(self, job_id: str, queued: QueuedJob) -> None:
        """One job from start to its terminal event; never raises (but when the gateway stops)."""
        clock = Clock()
        try:
            status, fields = 'succeeded', await asyncio.wait_for(self._steps(job_id, queued, clock), self.limits.max_job_seconds)
        except JobEnded:  # another gateway ended it (this one's lease had lapsed): its end is not this gateway's
            self.logger.warning(f'job {job_id} had ended elsewhere (or expired): stopped, without another event')
            return
        except asyncio.CancelledError:
            status, fields = ('failed', failure(STOPPED, ErrorCode.INTERRUPTED)) if self.stopping else ('cancelled', {})
        except asyncio.TimeoutError:
            timeout = f'the job ran longer than {self.limits.max_job_seconds:g} s (max_job_seconds)'
            status, fields = 'failed', failure(timeout, ErrorCode.JOB_TIMEOUT)
        except (JobFailed, FlowFailure) as e:
            status, fields = 'failed', failure(str(e), e.code)
        except Exception as e:
            self.logger.error(f'job {job_id} failed', exc_info=True)
            unexpected = f'the job failed: {type(e).__name__}; the details are in the service log'
            status, fields = 'failed', failure(unexpected, ErrorCode.INTERNAL_ERROR)
        finally:
            queued.discard()
        fields['timings'] = clock.timings
        await asyncio.shield(self._finish(job_id, status, fields))

    async def _steps(self, job_id: str, queued: QueuedJob, clock: 'Clock') -> Dict[str, Any]:
        """The job's steps; the fields of its record when it succeeded. JobFailed when a step failed."""
        job = await self.store.update(job_id, status='running', started=time.time())
        if job is None or job['status'] != 'running':
            raise JobEnded(job_id)  # it expired, or another gateway ended it while it waited here
        clock.timings['queued_s'] = round(time.time() - job['created'], 3)
        job_input = await asyncio.to_thread(queued.take)
        await self._publish(Started(job=job_id, time=time.time()))
        doc = PromptDoc(text=job_input.prompt)
        if job_input.audio is not None:
            with clock.timing('transcribe_s'):
                doc = await self._transcribe(job_id, job_input)
        with clock.timing('generate_s'):
            doc = await self._generate(job_id, doc, job_input)
        with clock.timing('store_s'):
            stored = await self._store(doc, job_input)
        images = [self._image(index, image, job_input.response_format) for index, image in enumerate(stored.matches)]
        for image in images:
            await self._publish(Image(job=job_id, time=time.time(), **image.model_dump(exclude_unset=True)))
        return {'images': [image.model_dump(exclude_unset=True) for image in images], 'result_url': stored.result_url,
                'store_error': stored.error, 'store_error_code': stored.error_code}

    async def _store(self, doc: PromptDoc, job_input: JobInput) -> PromptDoc:
        """``doc`` as the store kept it (with urls and its record's), or, if the store failed, ``doc`` as
        generated with the store's error: the images are never lost to a store failure."""
        parameters = {'presign_seconds': URL_SECONDS} if job_input.response_format == 'url' else {}
        keeping = PromptDoc(**carried(doc), blob=job_input.audio, matches=doc.matches)  # the audio, if the store keeps it
        try:
            [stored] = await self.flow.call_executor(STORE, DocList[PromptDoc]([keeping]), parameters)
        except FlowFailure as e:
            return PromptDoc(**carried(doc), matches=doc.matches, error=str(e), error_code=ErrorCode.STORE_FAILED.value)
        if stored.error:
            code = stored.error_code or ErrorCode.STORE_FAILED.value
            return PromptDoc(**carried(doc), matches=doc.matches, error=stored.error, error_code=code)
        return stored

    async def _transcribe(self, job_id: str, job_input: JobInput) -> PromptDoc:
        audio = PromptDoc(blob=job_input.audio, language=job_input.language)
        [doc] = await self.flow.call_executor(TRANSCRIBER, DocList[PromptDoc]([audio]))
        if doc.error:
            raise JobFailed.of(doc)
        heard = {'language': doc.language, 'language_probability': doc.language_probability,
                 'transcript': doc.transcript, 'text': doc.text}
        await self.store.update(job_id, **heard)
        await self._publish(Transcribed(job=job_id, time=time.time(), **heard))
        return doc

    async def _generate(self, job_id: str, doc: PromptDoc, job_input: JobInput) -> PromptDoc:
        """The document with its images, publishing each progress event as it comes; CLIP keeps the
        n best of the candidates when the job asked for best_of. JobFailed when no image came."""
        request = GenerationRequest(**carried(doc), parameters=job_input.parameters)
        done = await self._follow_generation(job_id, request)
        if done.error:
            raise JobFailed.of(done)
        drawn = PromptDoc(**carried(done), matches=done.matches)
        if job_input.parameters.get('best_of'):
            [drawn] = await self.flow.call_executor(RANKER, DocList[PromptDoc]([drawn]), job_input.parameters)
            if drawn.error:
                raise JobFailed.of(drawn)
        return drawn

    async def _follow_generation(self, job_id: str, request: GenerationRequest) -> GenerationEvent:
        last_step: Dict[int, int] = {}  # per pipeline call: a retried stream replays its steps
        async for event in self.flow.generate_stream(request):
            if event.kind == 'done':
                return event
            if event.step > last_step.get(event.first_image, 0):
                last_step[event.first_image] = event.step
                await self._publish(Progress(job=job_id, time=time.time(), step=event.step, steps=event.steps,
                                             image=event.first_image, images=event.images))
        raise FlowFailure(f'the {GENERATOR} executor ended its stream without a result')

    async def _publish(self, event: JobEventBase) -> None:
        try:
            await self.store.publish(event.job, event_json(event))
        except JobEnded:
            if event.job not in self.running:
                raise
            # Another gateway ended it (this one's lease had lapsed): stop its work as a cancel does (the
            # executor's call too, at its next await); _finish then finds it ended and publishes nothing.
            self.running[event.job].cancel()

    def _image(self, index: int, image, response_format: str) -> ImageResult:
        described = {'index': index, 'seed': image.seed, 'width': image.width, 'height': image.height,
                     'parameters': image.parameters}
        url = image.presigned_url or image.url
        if url:  # where the store keeps it, whichever format was asked for
            described['url'] = url
        # Never an image lost: without a store (S2I_STORE=none) a url job gets the bytes, and is told why.
        if response_format == 'b64_json' or not url:
            described['b64_json'] = base64.b64encode(image.png).decode()
            if response_format == 'url':
                described['note'] = NOT_STORED
        return ImageResult(**described)

    async def _finish(self, job_id: str, status: str, fields: Dict[str, Any]) -> None:
        """The job's end: its record and its one terminal event together, then its webhook."""
        event = terminal_event(job_id, status, fields)
        job = await self.store.finish(job_id, event_json(event), finished=time.time(), **fields)
        if job is None:
            return  # expired meanwhile, or already ended (cancelled, or failed by another gateway)
        self.logger.info(f'job {job_id} {status}' + (f': {fields["error"]}' if fields.get('error') else ''))
        if job and job.get('callback_url'):
            task = asyncio.create_task(self.webhooks.deliver(job['callback_url'], public_record(job)))
            self.background.append(task)
            task.add_done_callback(self.background.remove)


def failure(error: str, code: ErrorCode) -> Dict[str, Any]:
    """A failed job's record fields."""
    return {'error': error, 'error_code': ErrorCode(code).value}


def terminal_event(job_id: str, status: str, fields: Dict[str, Any]) -> JobEventBase:
    now = time.time()
    if status == 'failed':
        return Failed(job=job_id, time=now, error=fields['error'], error_code=fields['error_code'])
    return (Succeeded if status == 'succeeded' else Cancelled)(job=job_id, time=now)


def new_record(job_id: str, job_input: JobInput) -> Dict[str, Any]:
    """A new job's record (s2i/contracts/events.py's JobRecord), queued."""
    record = JobRecord(
        id=job_id, status='queued', created=time.time(), input='audio' if job_input.audio is not None else 'text',
        prompt=job_input.prompt, language=job_input.language, parameters=job_input.parameters,
        response_format=job_input.response_format, callback_url=job_input.callback_url,
    )
    return record.model_dump(mode='json', exclude={'started', 'finished', 'result_url', 'store_error', 'store_error_code'})


def public_record(job: Dict[str, Any]) -> Dict[str, Any]:
    """A job as its owner sees it (GET /v1/jobs/{id}, the webhook): everything but its owner's key name."""
    return {key: value for key, value in job.items() if key != 'owner'}


def carried(doc: PromptDoc) -> Dict[str, Any]:
    """What a job's document carries from one executor to the next (never the audio again)."""
    names = ('text', 'language', 'language_probability', 'duration', 'transcript', 'segments')
    return {name: getattr(doc, name) for name in names}


class Clock:
    """Seconds spent in each step of a job, for its record."""

    def __init__(self):
        self.started = time.perf_counter()
        self.timings: Dict[str, float] = {}  # queued_s first, once the job starts

    @contextmanager
    def timing(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)
            self.timings['run_s'] = round(time.perf_counter() - self.started, 3)
