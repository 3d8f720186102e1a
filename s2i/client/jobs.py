"""Jobs: the gateway's HTTP port runs one input at a time as a job (``POST /v1/jobs``) and streams its
events over WebSocket; ``follow_job`` does both, to the job's end."""

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Union

from s2i.client.errors import JobInterrupted, JobRefused, ServiceError, http_refusal
from s2i.client.flow import DEFAULT_HTTP_HOST, bearer, is_http, token_or_environment
from s2i.contracts.errors import ErrorCode, known_code

TERMINAL_EVENTS = ('succeeded', 'failed', 'cancelled')  # a job's last event: exactly one of them
HTTP_TIMEOUT_S = 60  # per HTTP request to the jobs API (an upload included)
WS_OPEN_TIMEOUT_S = 30  # to open the event stream
WS_MAX_MESSAGE_BYTES = 256 * 2**20  # an image event carries its PNG as base64
RECONNECTS = 5  # a dropped event stream is reopened this many times in a row before giving up
RECONNECT_BACKOFF_S = 0.5  # doubled after each failed try: 0.5, 1, 2, 4, 8 s


def follow_job(
    host: str = DEFAULT_HTTP_HOST,
    token: Optional[str] = None,
    audio_path: Optional[Union[str, Path]] = None,
    prompt: Optional[str] = None,
    fields: Optional[Dict[str, Any]] = None,
    on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Run one job on the gateway at ``host`` (http[s]://, its HTTP port) and follow it to its end.

    Give ``audio_path`` or ``prompt``; ``fields`` are POST /v1/jobs's (``n``, ``size`` "WxH", ``seed``,
    ``steps``, ``guidance_scale``, ``negative_prompt``, ``scheduler``, ``language``, ...). Each event
    (queued, started, transcribed, progress, image, then succeeded, failed or cancelled) goes to
    ``on_event`` in order, none lost or repeated across a dropped connection. Returns the job's record
    (GET /v1/jobs/{id}: status, transcript, text, images with ``b64_json``, error, timings);
    ``job_error(record)`` is its error, with its code.

    Raises JobRefused (the gateway's code and message) or ConnectionError (gateway unreachable, stream
    lost). Ctrl-C cancels the job and raises JobInterrupted, a KeyboardInterrupt.
    """
    base = jobs_base_url(host)
    token = token_or_environment(token)
    job = submit_job(base, token, audio_path, prompt, fields)
    try:
        for event in job_events(base, token, job['id']):
            if on_event is not None:
                on_event(event)
    except KeyboardInterrupt:
        raise JobInterrupted(job['id'], cancel_job(base, token, job['id'])) from None
    return api_request('get', f'{base}/v1/jobs/{job["id"]}', token)


def job_error(record: Dict[str, Any]) -> Optional[ServiceError]:
    """A finished job's error, with its code (``error_code`` in the record); None if it succeeded."""
    if record['status'] == 'cancelled':
        return ServiceError('the job was cancelled', ErrorCode.CANCELLED)
    if record['status'] == 'succeeded' and not record.get('error'):
        return None
    return ServiceError(record.get('error') or f'the job {record["status"]}', known_code(record.get('error_code')))


def jobs_base_url(host: str) -> str:
    if not is_http(host):
        raise ValueError(f'jobs are on the gateway\'s HTTP port: give http://HOST:PORT (e.g. {DEFAULT_HTTP_HOST}), not {host!r}')
    return host.rstrip('/')


def submit_job(base: str, token: Optional[str], audio_path: Optional[Union[str, Path]], prompt: Optional[str],
               fields: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """POST /v1/jobs: the audio as a multipart upload, or the prompt as JSON; the queued job."""
    if (audio_path is None) == (prompt is None):
        raise ValueError('give exactly one of audio_path or prompt')
    fields = {key: value for key, value in (fields or {}).items() if value is not None}
    if prompt is not None:
        return api_request('post', f'{base}/v1/jobs', token, json={**fields, 'prompt': prompt})
    upload = {'file': (Path(audio_path).name, Path(audio_path).read_bytes())}
    return api_request('post', f'{base}/v1/jobs', token, files=upload, data={key: str(value) for key, value in fields.items()})


def cancel_job(base: str, token: Optional[str], job_id: str) -> str:
    """DELETE /v1/jobs/{id}; '' once asked, else why not (it may have just ended)."""
    try:
        api_request('delete', f'{base}/v1/jobs/{job_id}', token)
    except (JobRefused, ConnectionError) as e:
        return str(e)
    return ''


def api_request(method: str, url: str, token: Optional[str], **kwargs) -> Dict[str, Any]:
    """One call to the jobs API; its JSON answer, or JobRefused with the gateway's code and message."""
    import requests

    try:
        answer = requests.request(method, url, headers=bearer(token), timeout=HTTP_TIMEOUT_S, **kwargs)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise ConnectionError(f'cannot reach the gateway at {url}: {e}') from e
    if answer.status_code >= 400:
        refusal = http_refusal(answer)
        raise JobRefused(answer.status_code, refusal.message, refusal.code, refusal.param)
    return answer.json()


def job_events(base: str, token: Optional[str], job_id: str, after: int = 0) -> Iterator[Dict[str, Any]]:
    """The job's events after seq ``after``, up to its terminal one. A dropped stream is reopened with
    ``?after=<last seq seen>`` (RECONNECTS tries in a row, backing off), so none is lost or repeated."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    url = f'ws{base[len("http"):]}/v1/jobs/{job_id}/events'
    failures = 0
    while True:
        try:
            with connect(f'{url}?after={after}', additional_headers=bearer(token), open_timeout=WS_OPEN_TIMEOUT_S,
                         max_size=WS_MAX_MESSAGE_BYTES) as stream:
                for message in stream:
                    event = json.loads(message)
                    after, failures = event['seq'], 0
                    yield event
                    if event['kind'] in TERMINAL_EVENTS:
                        return
            problem = 'the gateway closed the event stream before the job ended'
        except InvalidStatus as e:
            if e.response.status_code < 500:
                raise JobRefused(e.response.status_code, f'the gateway refused the event stream of job {job_id}: {e}') from e
            problem = str(e)
        except (OSError, ConnectionClosed, InvalidHandshake) as e:
            problem = str(e) or type(e).__name__
        failures += 1
        if failures > RECONNECTS:
            raise ConnectionError(f'lost the events of job {job_id} at {url} after {RECONNECTS} reconnects: {problem}')
        time.sleep(RECONNECT_BACKOFF_S * 2 ** (failures - 1))
