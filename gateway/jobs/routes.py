"""The job routes: submit, look up, list, cancel, and follow a job's events over WebSocket.

    POST   /v1/jobs                 multipart (``file`` = audio) or JSON/form (``prompt``): 202 at once
    GET    /v1/jobs/{id}            the job's record: status, transcript, English text, images, error, timings
    GET    /v1/jobs?limit=20        this API key's recent jobs, newest first (without image bytes)
    DELETE /v1/jobs/{id}            cancel: a queued job never runs, a running one stops at its next step
    WS     /v1/jobs/{id}/events?after=N   every event after seq N, then the live ones, until the last
    WS     /v1/events               the live events of all of this API key's jobs

A job belongs to the API key that submitted it: other keys get 404 for it, as for an unknown id.
"""

from collections import Counter
from typing import Any, Dict, Literal, Optional, Tuple

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from websockets.exceptions import ConnectionClosed

from gateway.errors import APIError
from gateway.jobs.runner import JobInput, JobRunner, TooManyJobs, public_record
from gateway.jobs.store import TERMINAL, FollowerTooSlow
from gateway.jobs.webhooks import Webhooks
from executors.whisper.audio import AudioError, AudioPolicy, check_size
from gateway.generation import generation_parameters
from gateway.limits import unsendable
from s2i.contracts.params import describe_error, quote

MAX_LISTED = 100
MAX_FIELD_DEPTH = 2  # the fields are flat: a list or an object in one is refused by the model anyway
FORM_TYPES = frozenset({'multipart/form-data', 'application/x-www-form-urlencoded'})
JSON_TYPES = frozenset({'application/json'})
# WebSocket close codes beside 1000 (done) and 1008 (no token, or another site's page), in the 4000s that
# RFC 6455 leaves to applications, after the HTTP status they stand for; README, "Jobs".
BAD_REQUEST_CLOSE = 4400  # a malformed ?after=
NOT_FOUND_CLOSE = 4404  # no such job (or another key's)
TOO_SLOW_CLOSE = 4408  # the client read too slowly: too many events waited for it; reconnect (a job's with ?after=)
MAX_CLOSE_REASON = 120  # bytes a close frame's reason may hold: 123
MAX_SEQ = 2**53  # no job has more events; a larger ?after= is refused, not passed to the store


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
        return {'object': 'list', 'data': [public_record(job) for job in jobs]}  # the store leaves image bytes out

    @router.delete('/jobs/{job_id}', status_code=202)
    async def cancel(job_id: str, request: Request) -> Dict[str, Any]:
        job = await owned_job(runner, job_id, request.state.owner)
        if job['status'] in TERMINAL:
            raise APIError(409, f'job {job_id} has already ended: {job["status"]}', code='job_ended')
        await runner.cancel(job_id)
        job = await runner.store.get(job_id) or job
        return {'id': job_id, 'status': job['status'] if job['status'] in TERMINAL else 'cancelling'}

    @router.websocket('/jobs/{job_id}/events')
    async def job_events(websocket: WebSocket, job_id: str, after: str = '0'):
        if not (after.isascii() and after.isdigit() and int(after) <= MAX_SEQ):
            await accept(websocket)  # then close: a refused handshake would carry no code, only HTTP 403
            await websocket.close(code=BAD_REQUEST_CLOSE, reason=f'after must be a whole number from 0 to {MAX_SEQ}')
            return
        job = await runner.store.get(job_id)
        if job is None or job['owner'] != websocket.state.owner:
            await websocket.close(code=NOT_FOUND_CLOSE, reason=f'no job {job_id[:40]}')
            return
        await accept(websocket)
        await relay(websocket, runner.store.follow(job_id, int(after)))

    @router.websocket('/events')
    async def all_events(websocket: WebSocket):
        await accept(websocket)
        await relay(websocket, runner.store.follow_owner(websocket.state.owner))

    return router


async def read_job(request: Request, webhooks: Webhooks) -> JobInput:
    """The job a POST /v1/jobs asks for, or a 4xx naming what is wrong."""
    media_type = request.headers.get('content-type', '').split(';', 1)[0].strip().lower()
    if media_type in FORM_TYPES:
        fields, audio = await read_form(request)
    elif media_type in JSON_TYPES or media_type.endswith('+json'):
        fields, audio = await read_json(request), None
    else:  # text/plain among them: a browser sends it cross-site without asking first (no CORS preflight)
        raise APIError(415, f'the body must be JSON (Content-Type: application/json), a form, or multipart with an '
                       f'audio file; got Content-Type {quote(media_type or "none")}', code='unsupported_media_type')
    for key, value in fields.items():
        if problem := unsendable(value, str(key), MAX_FIELD_DEPTH):  # lone surrogates, NaN: JSON the store cannot keep
            raise APIError(400, f'invalid job: {problem}', param=str(key))
    try:
        asked = JobRequest.model_validate({key: value for key, value in fields.items() if value != ''})
    except ValidationError as e:
        raise APIError(400, f'invalid job: {describe_error(e)}', param=str(e.errors()[0]['loc'][0])) from None
    return job_input(asked, audio, webhooks)


async def read_json(request: Request) -> Dict[str, Any]:
    try:
        fields = await request.json()
    except ValueError:
        raise APIError(400, 'the body is not valid JSON') from None
    if not isinstance(fields, dict):
        raise APIError(400, 'the JSON body must be an object')
    return fields


async def read_form(request: Request) -> Tuple[Dict[str, str], Optional[bytes]]:
    """The text fields of a form, and the audio of its one ``file`` part (None without one). A field
    given twice is refused rather than one of its values silently chosen."""
    form = await request.form()
    counts = Counter(name for name, _ in form.multi_items())  # a form holds up to 1000 fields (Starlette's max_fields)
    if repeated := sorted(name for name, count in counts.items() if count > 1):
        what = 'audio file (one multipart "file" part)' if repeated[0] == 'file' else f'{quote(repeated[0])} field'
        raise APIError(400, f'send one {what} per job; {quote(repeated[0])} was given {counts[repeated[0]]} times',
                       param=repeated[0], code='duplicate_field')
    fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    uploads = {name: value for name, value in form.multi_items() if not isinstance(value, str)}
    if set(uploads) - {'file'}:
        name = sorted(set(uploads) - {'file'})[0]
        raise APIError(400, f'only "file" may be a file upload, got one in {quote(name)}', param=name)
    if 'file' in fields:
        raise APIError(400, 'file must be an audio file (multipart upload)', param='file')
    upload = uploads.get('file')
    if upload is None:
        return fields, None
    try:
        check_size(upload.size or 0, AudioPolicy())  # before reading it into memory; Whisper would refuse it anyway
    except AudioError as e:
        raise APIError(413, str(e), param='file', code='file_too_large') from None  # as /v1/audio/* answer it
    return fields, await upload.read()


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


async def accept(websocket: WebSocket) -> None:
    """Accept, echoing the ``bearer.<token>`` subprotocol a browser authenticated with (it requires the echo)."""
    offered = websocket.scope.get('subprotocols') or []
    await websocket.accept(subprotocol=next((p for p in offered if p.startswith('bearer.')), None))


async def relay(websocket: WebSocket, events) -> None:
    """Send each event as JSON until the last one, or until the client goes away; a follower that
    falls too far behind is closed with TOO_SLOW_CLOSE, so that the gateway never holds its backlog."""
    try:
        async for event in events:
            await websocket.send_json(event)
        await websocket.close(code=1000)
    except FollowerTooSlow as e:
        await websocket.close(code=TOO_SLOW_CLOSE, reason=str(e)[:MAX_CLOSE_REASON])
    except (WebSocketDisconnect, ConnectionClosed):
        pass  # the client left (uvicorn raises websockets' own error when a send meets a closed connection)
    finally:
        await events.aclose()
