"""The job routes: submit, look up, list, cancel, and follow a job's events over WebSocket.

    POST   /v1/jobs                 multipart (``file`` = audio) or JSON/form (``prompt``): 202 at once
    GET    /v1/jobs/{id}            the job's record: status, transcript, English text, images, error, timings
    GET    /v1/jobs?limit=20        this API key's recent jobs, newest first (without image bytes)
    DELETE /v1/jobs/{id}            cancel: a queued job never runs, a running one stops at its next step
    WS     /v1/jobs/{id}/events?after=N   every event after seq N, then the live ones, until the last
    WS     /v1/events               the live events of all of this API key's jobs

A job belongs to the API key that submitted it: other keys get 404 for it, as for an unknown id. The
events and the record are s2i/contracts/events.py's.
"""

from typing import Any, Dict, Literal, Optional, Tuple

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from websockets.exceptions import ConnectionClosed

from executors.whisper.audio import AudioError, AudioPolicy, check_size
from gateway.dependencies import get_jobs, get_owner
from gateway.forms import form_once
from gateway.generation import form_values, generation_parameters
from gateway.jobs.runner import JobInput, JobRunner, TooManyJobs, public_record
from gateway.jobs.store import TERMINAL, FollowerTooSlow
from gateway.jobs.webhooks import Webhooks
from gateway.limits import unsendable
from s2i.contracts.errors import CodedError, ErrorCode
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

router = APIRouter(prefix='/v1')


class JobRequest(BaseModel):
    """The fields of POST /v1/jobs besides the audio file and the generation fields (those of
    /v1/images/generations): the ``prompt``, ``language`` (a hint for the speech) and ``callback_url``."""

    model_config = ConfigDict(extra='forbid')

    prompt: Optional[str] = None
    response_format: Literal['b64_json', 'url'] = 'b64_json'
    language: Optional[str] = Field(None, min_length=2, max_length=3)
    callback_url: Optional[str] = None


@router.post('/jobs', status_code=202)
async def submit(request: Request, jobs: JobRunner = Depends(get_jobs), owner: str = Depends(get_owner)) -> Dict[str, Any]:
    """A job for an audio file (multipart ``file``) or a text ``prompt``; answered at once."""
    job_input = await read_job(request, jobs.webhooks)
    try:
        job = await jobs.submit(owner, job_input)
    except TooManyJobs as e:
        raise CodedError(str(e), ErrorCode.RATE_LIMITED) from None
    events = request.url.replace(scheme='wss' if request.url.scheme == 'https' else 'ws',
                                 path=f'/v1/jobs/{job["id"]}/events', query='')
    return {'id': job['id'], 'status': job['status'], 'events': str(events)}


@router.get('/jobs/{job_id}')
async def look_up(job_id: str, jobs: JobRunner = Depends(get_jobs), owner: str = Depends(get_owner)) -> Dict[str, Any]:
    return public_record(await owned_job(jobs, job_id, owner))


@router.get('/jobs')
async def recent(limit: int = Query(20, ge=1, le=MAX_LISTED), jobs: JobRunner = Depends(get_jobs),
                 owner: str = Depends(get_owner)) -> Dict[str, Any]:
    listed = await jobs.store.recent(owner, limit)
    return {'object': 'list', 'data': [public_record(job) for job in listed]}  # the store leaves image bytes out


@router.delete('/jobs/{job_id}', status_code=202)
async def cancel(job_id: str, jobs: JobRunner = Depends(get_jobs), owner: str = Depends(get_owner)) -> Dict[str, Any]:
    job = await owned_job(jobs, job_id, owner)
    if job['status'] in TERMINAL:
        raise CodedError(f'job {job_id} has already ended: {job["status"]}', ErrorCode.JOB_ENDED)
    await jobs.cancel(job_id)
    job = await jobs.store.get(job_id) or job
    return {'id': job_id, 'status': job['status'] if job['status'] in TERMINAL else 'cancelling'}


@router.websocket('/jobs/{job_id}/events')
async def job_events(websocket: WebSocket, job_id: str, after: str = '0', jobs: JobRunner = Depends(get_jobs),
                     owner: str = Depends(get_owner)):
    if not (after.isascii() and after.isdigit() and int(after) <= MAX_SEQ):
        await accept(websocket)  # then close: a refused handshake would carry no code, only HTTP 403
        await websocket.close(code=BAD_REQUEST_CLOSE, reason=f'after must be a whole number from 0 to {MAX_SEQ}')
        return
    job = await jobs.store.get(job_id)
    if job is None or job['owner'] != owner:
        await websocket.close(code=NOT_FOUND_CLOSE, reason=f'no job {job_id[:40]}')
        return
    await accept(websocket)
    await relay(websocket, jobs.store.follow(job_id, int(after)))


@router.websocket('/events')
async def all_events(websocket: WebSocket, jobs: JobRunner = Depends(get_jobs), owner: str = Depends(get_owner)):
    await accept(websocket)
    await relay(websocket, jobs.store.follow_owner(owner))


async def read_job(request: Request, webhooks: Webhooks) -> JobInput:
    """The job a POST /v1/jobs asks for, or a 4xx naming what is wrong."""
    media_type = request.headers.get('content-type', '').split(';', 1)[0].strip().lower()
    if media_type in FORM_TYPES:
        fields, audio = await read_form(request)
    elif media_type in JSON_TYPES or media_type.endswith('+json'):
        fields, audio = await read_json(request), None
    else:  # text/plain among them: a browser sends it cross-site without asking first (no CORS preflight)
        raise CodedError(f'the body must be JSON (Content-Type: application/json), a form, or multipart with an '
                         f'audio file; got Content-Type {quote(media_type or "none")}', ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    for key, value in fields.items():
        if problem := unsendable(value, str(key), MAX_FIELD_DEPTH):  # lone surrogates, NaN: JSON the store cannot keep
            raise CodedError(f'invalid job: {problem}', ErrorCode.INVALID_PARAMETER, param=str(key))
    fields = {key: value for key, value in fields.items() if value != ''}
    asked = job_request(fields)
    generation = {key: value for key, value in fields.items() if key not in JobRequest.model_fields}
    parameters = generation_parameters(form_values(generation) if media_type in FORM_TYPES else generation)
    return job_input(asked, audio, parameters, webhooks)


def job_request(fields: Dict[str, Any]) -> JobRequest:
    try:
        return JobRequest.model_validate({key: value for key, value in fields.items() if key in JobRequest.model_fields})
    except ValidationError as e:
        raise CodedError(f'invalid job: {describe_error(e)}', ErrorCode.INVALID_PARAMETER, param=str(e.errors()[0]['loc'][0])) from None


async def read_json(request: Request) -> Dict[str, Any]:
    try:
        fields = await request.json()
    except ValueError:
        raise CodedError('the body is not valid JSON', ErrorCode.INVALID_REQUEST) from None
    if not isinstance(fields, dict):
        raise CodedError('the JSON body must be an object', ErrorCode.INVALID_REQUEST)
    return fields


async def read_form(request: Request) -> Tuple[Dict[str, str], Optional[bytes]]:
    """The text fields of a form, and the audio of its one ``file`` part (None without one). A field
    given twice is refused rather than one of its values silently chosen."""
    form = await form_once(request)
    fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    uploads = {name: value for name, value in form.multi_items() if not isinstance(value, str)}
    if set(uploads) - {'file'}:
        name = sorted(set(uploads) - {'file'})[0]
        raise CodedError(f'only "file" may be a file upload, got one in {quote(name)}', ErrorCode.INVALID_REQUEST, param=name)
    if 'file' in fields:
        raise CodedError('file must be an audio file (multipart upload)', ErrorCode.INVALID_REQUEST, param='file')
    upload = uploads.get('file')
    if upload is None:
        return fields, None
    try:
        check_size(upload.size or 0, AudioPolicy())  # before reading it into memory; Whisper would refuse it anyway
    except AudioError as e:
        raise CodedError(str(e), ErrorCode.INPUT_TOO_LARGE, param='file') from None  # as /v1/audio/* answer it
    return fields, await upload.read()


def job_input(asked: JobRequest, audio: Optional[bytes], parameters: Dict[str, Any], webhooks: Webhooks) -> JobInput:
    if audio is None and not asked.prompt:
        raise CodedError('send exactly one of an audio file (multipart "file") or a text "prompt"', ErrorCode.MISSING_INPUT, param='file')
    if audio is not None and asked.prompt:
        raise CodedError('send exactly one of an audio file (multipart "file") or a text "prompt"', ErrorCode.INVALID_REQUEST, param='file')
    if audio is not None and not audio:
        raise CodedError('the audio file is empty', ErrorCode.AUDIO_UNREADABLE, param='file')
    if asked.callback_url and (refused := webhooks.refusal(asked.callback_url)):
        raise CodedError(refused, ErrorCode.INVALID_PARAMETER, param='callback_url')
    return JobInput(prompt=asked.prompt or '', audio=audio, language=asked.language, parameters=parameters,
                    response_format=asked.response_format, callback_url=asked.callback_url)


async def owned_job(jobs: JobRunner, job_id: str, owner: str) -> Dict[str, Any]:
    job = await jobs.store.get(job_id)
    if job is None or job['owner'] != owner:  # another key's job is as unknown as a missing one
        raise CodedError(f'no job {job_id[:40]}', ErrorCode.NOT_FOUND, param='id')
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
