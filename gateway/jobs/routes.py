"""The job routes: submit, look up, list, cancel, and follow a job's events over WebSocket.

    POST   /v1/jobs                 multipart (``file`` = audio) or JSON/form (``prompt``): 202 at once
    GET    /v1/jobs/{id}            the job's record: status, transcript, English text, images, error, timings
    GET    /v1/jobs?limit=20        this API key's recent jobs, newest first (without image bytes)
    DELETE /v1/jobs/{id}            cancel: a queued job never runs, a running one stops at its next step
    WS     /v1/jobs/{id}/events?after=N   every event after seq N, then the live ones, until the last
    WS     /v1/events               the live events of all of this API key's jobs

A job belongs to the API key that submitted it: other keys get 404 for it, as for an unknown id.
"""

from typing import Any, Dict, Literal, Optional

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import APIError
from gateway.jobs.runner import JobInput, JobRunner, TooManyJobs, public_record
from gateway.jobs.store import TERMINAL
from gateway.jobs.webhooks import Webhooks
from gateway.generation import generation_parameters
from s2i.params import describe_error

MAX_LISTED = 100


class JobRequest(BaseModel):
    """The fields of POST /v1/jobs besides the audio file: those of /v1/images/generations, plus
    ``language`` (a hint for the speech) and ``callback_url`` (the webhook)."""

    model_config = ConfigDict(extra='forbid')

    prompt: Optional[str] = None
    n: Optional[int] = None
    size: Optional[str] = None  # "WxH"
    seed: Optional[int] = None
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    negative_prompt: Optional[str] = None
    scheduler: Optional[str] = None
    best_of: Optional[int] = None  # candidates drawn; CLIP keeps the n best
    response_format: Literal['b64_json', 'url'] = 'b64_json'
    language: Optional[str] = Field(None, min_length=2, max_length=3)
    callback_url: Optional[str] = None


def jobs_router(runner: JobRunner, webhooks: Webhooks) -> APIRouter:
    router = APIRouter(prefix='/v1')

    @router.post('/jobs', status_code=202)
    async def submit(request: Request) -> Dict[str, Any]:
        """A job for an audio file (multipart ``file``) or a text ``prompt``; answered at once."""
        job_input = await read_job(request, webhooks)
        try:
            job = await runner.submit(request.state.owner, job_input)
        except TooManyJobs as e:
            raise APIError(429, str(e), code='too_many_jobs') from None
        events = request.url.replace(scheme='wss' if request.url.scheme == 'https' else 'ws',
                                     path=f'/v1/jobs/{job["id"]}/events', query='')
        return {'id': job['id'], 'status': job['status'], 'events': str(events)}

    @router.get('/jobs/{job_id}')
    async def look_up(job_id: str, request: Request) -> Dict[str, Any]:
        return public_record(await owned_job(runner, job_id, request.state.owner))

    @router.get('/jobs')
    async def recent(request: Request, limit: int = Query(20, ge=1, le=MAX_LISTED)) -> Dict[str, Any]:
        jobs = await runner.store.recent(request.state.owner, limit)
        return {'object': 'list', 'data': [without_image_bytes(public_record(job)) for job in jobs]}

    @router.delete('/jobs/{job_id}', status_code=202)
    async def cancel(job_id: str, request: Request) -> Dict[str, Any]:
        job = await owned_job(runner, job_id, request.state.owner)
        if job['status'] in TERMINAL:
            raise APIError(409, f'job {job_id} has already ended: {job["status"]}', code='job_ended')
        await runner.cancel(job_id)
        job = await runner.store.get(job_id) or job
        return {'id': job_id, 'status': job['status'] if job['status'] in TERMINAL else 'cancelling'}

    @router.websocket('/jobs/{job_id}/events')
    async def job_events(websocket: WebSocket, job_id: str, after: int = 0):
        job = await runner.store.get(job_id)
        if job is None or job['owner'] != websocket.state.owner:
            await websocket.close(code=4404, reason=f'no job {job_id[:40]}')  # 4404: the WebSocket form of 404
            return
        await accept(websocket)
        await relay(websocket, runner.store.follow(job_id, after))

    @router.websocket('/events')
    async def all_events(websocket: WebSocket):
        await accept(websocket)
        await relay(websocket, runner.store.follow_owner(websocket.state.owner))

    return router


async def read_job(request: Request, webhooks: Webhooks) -> JobInput:
    """The job a POST /v1/jobs asks for, or a 400 naming what is wrong."""
    audio = None
    if request.headers.get('content-type', '').startswith(('multipart/form-data', 'application/x-www-form-urlencoded')):
        form = await request.form()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        upload = form.get('file')
        if upload is not None and not isinstance(upload, str):
            audio = await upload.read()
        elif 'file' in fields:
            raise APIError(400, 'file must be an audio file (multipart upload)', param='file')
    else:
        try:
            fields = await request.json()
        except ValueError:
            raise APIError(400, 'the body must be JSON, a form, or multipart with an audio file') from None
        if not isinstance(fields, dict):
            raise APIError(400, 'the JSON body must be an object')
    try:
        asked = JobRequest.model_validate({key: value for key, value in fields.items() if value != ''})
    except ValidationError as e:
        raise APIError(400, f'invalid job: {describe_error(e)}', param=str(e.errors()[0]['loc'][0])) from None
    return job_input(asked, audio, webhooks)


def job_input(asked: JobRequest, audio: Optional[bytes], webhooks: Webhooks) -> JobInput:
    if (audio is None) == (not asked.prompt):
        raise APIError(400, 'send exactly one of an audio file (multipart "file") or a text "prompt"', param='file')
    if audio is not None and not audio:
        raise APIError(400, 'the audio file is empty', param='file')
    if asked.callback_url and (refused := webhooks.refusal(asked.callback_url)):
        raise APIError(400, refused, param='callback_url', code='callback_url_not_allowed')
    extras = asked.model_dump(include={'seed', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler', 'best_of'}, exclude_none=True)
    return JobInput(
        prompt=asked.prompt or '', audio=audio, language=asked.language,
        parameters=generation_parameters(asked.n, asked.size, extras),
        response_format=asked.response_format, callback_url=asked.callback_url,
    )


async def owned_job(runner: JobRunner, job_id: str, owner: str) -> Dict[str, Any]:
    job = await runner.store.get(job_id)
    if job is None or job['owner'] != owner:  # another key's job is as unknown as a missing one
        raise APIError(404, f'no job {job_id[:40]}', param='id', code='job_not_found')
    return job


def without_image_bytes(job: Dict[str, Any]) -> Dict[str, Any]:
    images = [{key: value for key, value in image.items() if key != 'b64_json'} for image in job.get('images', [])]
    return {**job, 'images': images}


async def accept(websocket: WebSocket) -> None:
    """Accept, echoing the ``bearer.<token>`` subprotocol a browser authenticated with (it requires the echo)."""
    offered = websocket.scope.get('subprotocols') or []
    await websocket.accept(subprotocol=next((p for p in offered if p.startswith('bearer.')), None))


async def relay(websocket: WebSocket, events) -> None:
    """Send each event as JSON until the last one, or until the client goes away."""
    try:
        async for event in events:
            await websocket.send_json(event)
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        pass  # the client left: it reconnects with ?after=<last seq> to miss nothing
    finally:
        await events.aclose()
