"""Client for the speech-to-image Flow: a command line tool and a small library.

    s2i-client examples/fox_in_snow_en.wav --num-images 2 --out outputs     (or: python client.py ...)
    s2i-client --text "a lighthouse in a storm" --seed 7 --json
    s2i-client --follow --host http://127.0.0.1:8322 examples/fox_in_snow_en.wav   (a job: live progress)

As a library::

    from s2i.client import generate
    docs = generate(['speech.mp3'], prompts=['a red fox'], parameters={'steps': 20})
    docs[0].matches[0].png  # PNG bytes, with the generation parameters inside

Over gRPC, ``generate()`` keeps one channel per host open for the whole process, shared by its
threads; ``with Connection(host) as flow: flow.generate(...)`` gives you its lifetime and timeout.

``follow_job(host, audio_path=..., on_event=print)`` runs one job on the gateway's HTTP port
(``POST /v1/jobs``) and follows its events over WebSocket to the end; it returns the job's record.
"""

import argparse
import base64
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from docarray import DocList

from s2i.contracts.documents import PromptDoc
from s2i.encoding import from_data_uri, to_data_uri
from s2i.contracts.params import MAX_SEED
from s2i.runtime import AUTH_TOKEN_VARIABLE, UNAUTHENTICATED, unreachable_executor

DEFAULT_HOST = f'grpc://127.0.0.1:{os.environ.get("S2I_PORT", "8321")}'
IMAGE_COMMANDS = ('caption', 'tag', 'interrogate', 'restyle')  # `client.py COMMAND IMAGE ...`: s2i/image_commands.py
DEFAULT_HTTP_HOST = f'http://127.0.0.1:{os.environ.get("S2I_HTTP_PORT", "8322")}'  # jobs (--follow) live here

TERMINAL_EVENTS = ('succeeded', 'failed', 'cancelled')  # a job's last event: exactly one of them
HTTP_TIMEOUT_S = 60  # per HTTP request to the jobs API (an upload included)
WS_OPEN_TIMEOUT_S = 30  # to open the event stream
WS_MAX_MESSAGE_BYTES = 256 * 2**20  # an image event carries its PNG as base64
RECONNECTS = 5  # a dropped event stream is reopened this many times in a row before giving up
RECONNECT_BACKOFF_S = 0.5  # doubled after each failed try: 0.5, 1, 2, 4, 8 s


class ExecutorUnavailable(ConnectionError):
    """The gateway answered, but an executor behind it is down: this request failed, later ones may not."""


def executor_unavailable(host: str, details: str) -> Optional[ExecutorUnavailable]:
    """The error for a gateway's answer that names a deployment it cannot reach; None for other failures.

    gRPC: Jina's "Communication error with deployment <name> at ..."; HTTP: the gateway's 503."""
    name = unreachable_executor(details)
    if name is None:
        return None
    return ExecutorUnavailable(f'{host}: the gateway answered, but its {name or "an"} executor is down or restarting; try again')


def build_docs(audio_files: Iterable[Union[str, Path]] = (), prompts: Iterable[str] = ()) -> DocList[PromptDoc]:
    """Audio files are sent as bytes, so the server never needs to see this machine's paths."""
    docs = [PromptDoc(blob=Path(path).read_bytes()) for path in audio_files]
    docs += [PromptDoc(text=prompt) for prompt in prompts]
    return DocList[PromptDoc](docs)


def generate(
    audio_files: Iterable[Union[str, Path]] = (),
    prompts: Iterable[str] = (),
    parameters: Optional[Dict[str, Any]] = None,
    host: str = DEFAULT_HOST,
    request_size: int = 1,
    docs: Optional[DocList[PromptDoc]] = None,
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> DocList[PromptDoc]:
    """Send audio files and/or text prompts to the Flow; returns the result documents in input order.

    Each document carries either its images in ``matches`` (PNG bytes in ``.png``) or an
    ``error``. Requests made only of text prompts go to ``/text2image``, which skips Whisper.
    Works over gRPC (default) and HTTP; over HTTP, bytes travel as data URIs both ways (JSON cannot
    carry bytes), and each image's ``data_uri`` is turned back into ``png`` here.
    ``token`` (default: $S2I_AUTH_TOKEN) is sent as ``authorization: Bearer <token>``.
    """
    docs = docs if docs is not None else build_docs(audio_files, prompts)
    token = token_or_environment(token)
    if not host.startswith(('http://', 'https://')):
        connection = _shared_connection(host, token)
        try:
            return connection.generate(docs=docs, parameters=parameters, request_size=request_size, endpoint=endpoint)
        except ConnectionError:
            _forget(connection, host, token)  # next time a fresh channel, not one in reconnect back-off
            raise
    docs, parameters = seed_on_documents(docs, parameters)
    docs = DocList[PromptDoc](_blob_to_data_uri(doc) for doc in docs)
    try:
        results = _http_client(host).post(
            endpoint or endpoint_for(docs),
            inputs=docs,
            parameters=parameters,
            request_size=request_size,
            results_in_order=True,
            return_type=DocList[PromptDoc],
            **auth_options(token, over_http=True),
        )
    except (ValueError, ConnectionError) as e:  # Jina's HTTP client: the status's body as the message
        raise executor_unavailable(host, str(e)) or e
    for image in (image for doc in results for image in doc.matches):
        if image.data_uri:
            image.png, image.data_uri = from_data_uri(image.data_uri), None
    return results


def endpoint_for(docs: DocList[PromptDoc]) -> str:
    """Only requests with audio need Whisper; /text2image goes straight to Stable Diffusion."""
    return '/generate' if any(doc.has_audio for doc in docs) else '/text2image'


def token_or_environment(token: Optional[str]) -> Optional[str]:
    """The token given, else $S2I_AUTH_TOKEN's first key; '' means send none."""
    return token if token is not None else environment_token()


def environment_token() -> Optional[str]:
    """$S2I_AUTH_TOKEN's first key: it may hold several, comma-separated (the gateway accepts any of them)."""
    keys = [key.strip() for key in os.environ.get(AUTH_TOKEN_VARIABLE, '').split(',') if key.strip()]
    return keys[0] if keys else None


def seed_on_documents(
    docs: DocList[PromptDoc], parameters: Optional[Dict[str, Any]]
) -> Tuple[DocList[PromptDoc], Dict[str, Any]]:
    """The request's ``seed`` moves onto each document without one of its own (same images).

    Jina's dynamic batching merges only requests whose parameters are equal: without the seed in
    them, requests from clients that chose different seeds can share one pipeline call."""
    parameters = dict(parameters or {})
    seed = parameters.get('seed')
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        return docs, parameters  # none, or a bad one: the Flow names what is wrong with it
    del parameters['seed']
    seeded = DocList[PromptDoc](doc if doc.seed is not None else doc.model_copy(update={'seed': seed}) for doc in docs)
    return seeded, parameters


_http_clients = threading.local()
_connections: Dict[Tuple[str, Optional[str]], 'Connection'] = {}
_connections_lock = threading.Lock()


def _http_client(host: str):
    """Jina's Client takes ~25 ms to build: one per thread and host."""
    by_host = _http_clients.__dict__.setdefault('by_host', {})
    if host not in by_host:
        from jina import Client

        by_host[host] = Client(host=host)
    return by_host[host]


def _forget(connection: 'Connection', host: str, token: Optional[str]) -> None:
    """The next request to ``host`` gets a fresh channel. This one is not closed here: other threads
    may still have calls on it, and closing would cancel them; it closes when the last one lets go."""
    with _connections_lock:
        if _connections.get((host, token)) is connection:
            del _connections[host, token]


def _shared_connection(host: str, token: Optional[str]) -> 'Connection':
    """One gRPC channel per host for the whole process: channels are thread-safe and multiplex requests.

    Not Jina's Client: its gRPC client holds one lock, shared by all its instances, for the whole
    of each call, so threads of one process could only send one request at a time."""
    with _connections_lock:
        if (host, token) not in _connections:
            _connections[host, token] = Connection(host, token=token)
        return _connections[host, token]


class Connection:
    """A gRPC connection to the Flow that stays open between requests.

    ``generate()`` keeps one per host for the whole process; make your own to choose when it
    closes, or to set a ``timeout`` (seconds per request)::

        with Connection('grpc://127.0.0.1:8321') as flow:
            for prompt in prompts:
                docs = flow.generate(prompts=[prompt], parameters={'seed': 7})

    Documents come back as from ``generate()``. A request the gateway itself fails (an executor
    unreachable, a bad token) raises ``RuntimeError`` naming why; an unreachable gateway raises
    ``ConnectionError``.
    """

    def __init__(self, host: str = DEFAULT_HOST, token: Optional[str] = None, timeout: Optional[float] = None):
        import grpc
        from jina.proto import jina_pb2_grpc

        scheme, _, address = host.rpartition('://')
        if scheme not in ('', 'grpc', 'grpcs'):
            raise ValueError(f'Connection speaks gRPC (grpc://host:port or grpcs://host:port), got {host!r}; use generate() for HTTP')
        unlimited = [('grpc.max_send_message_length', -1), ('grpc.max_receive_message_length', -1)]
        if scheme == 'grpcs':
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(), options=unlimited)
        else:
            self._channel = grpc.insecure_channel(address, options=unlimited)
        self._stub = jina_pb2_grpc.JinaSingleDataRequestRPCStub(self._channel)
        self._metadata = auth_options(token_or_environment(token), over_http=False).get('metadata', ())
        self.host, self.timeout = host, timeout

    def generate(
        self,
        audio_files: Iterable[Union[str, Path]] = (),
        prompts: Iterable[str] = (),
        parameters: Optional[Dict[str, Any]] = None,
        docs: Optional[DocList[PromptDoc]] = None,
        request_size: Optional[int] = None,
        endpoint: Optional[str] = None,
    ) -> DocList[PromptDoc]:
        """Like ``generate()``, over this connection. The documents go in requests of ``request_size``
        (default: one request for all), all in flight at once; results come back in input order."""
        docs = docs if docs is not None else build_docs(audio_files, prompts)
        docs, parameters = seed_on_documents(docs, parameters)
        endpoint = endpoint or endpoint_for(docs)
        size = request_size or max(len(docs), 1)
        in_flight = [self._send(endpoint, docs[start : start + size], parameters) for start in range(0, len(docs), size)]
        results = DocList[PromptDoc]()
        for answer in in_flight:
            results.extend(self._receive(answer))
        return results

    def _send(self, endpoint: str, docs: DocList[PromptDoc], parameters: Dict[str, Any]):
        from jina.types.request.data import DataRequest

        request = DataRequest()
        request.header.exec_endpoint = endpoint
        request.parameters = parameters
        request.data.docs = docs
        return self._stub.process_single_data.future(request, metadata=self._metadata, timeout=self.timeout)

    def _receive(self, answer) -> DocList[PromptDoc]:
        import grpc
        from jina.proto import jina_pb2

        try:
            response = answer.result()
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise executor_unavailable(self.host, e.details() or '') or ConnectionError(f'{self.host}: {e.code()}: {e.details()}') from e
            raise RuntimeError(f'the Flow at {self.host} refused the request: {e.code()}: {e.details()}') from e
        if response.header.status.code == jina_pb2.StatusProto.ERROR:
            raise RuntimeError(f'the Flow at {self.host} failed the request: {response.header.status.description}')
        response.document_array_cls = DocList[PromptDoc]
        return response.docs

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> 'Connection':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def auth_options(token: Optional[str], over_http: bool) -> Dict[str, Any]:
    """The keyword arguments of ``Client.post`` that carry the token: HTTP headers or gRPC metadata."""
    if not token:
        return {}
    if over_http:
        return {'headers': {'Authorization': f'Bearer {token}'}}
    return {'metadata': (('authorization', f'Bearer {token}'),)}


# Jobs: the gateway's HTTP port runs one input at a time as a job and streams its events.

class JobRefused(RuntimeError):
    """The jobs API refused a request: ``status`` (401 token, 400 a bad field, 404, 429 too many jobs)
    and the gateway's own message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C while following a job: the job was asked to cancel; ``cancel_error`` says why it could not be."""

    def __init__(self, job_id: str, cancel_error: str = ''):
        super().__init__(job_id)
        self.job_id, self.cancel_error = job_id, cancel_error


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
    (GET /v1/jobs/{id}: status, transcript, text, images with ``b64_json``, error, timings).

    Raises JobRefused (the gateway's message) or ConnectionError (gateway unreachable, stream lost).
    Ctrl-C cancels the job and raises JobInterrupted, a KeyboardInterrupt.
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


def jobs_base_url(host: str) -> str:
    if not host.startswith(('http://', 'https://')):
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
    """One call to the jobs API; its JSON answer, or JobRefused with the gateway's message."""
    import requests

    try:
        answer = requests.request(method, url, headers=bearer(token), timeout=HTTP_TIMEOUT_S, **kwargs)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise ConnectionError(f'cannot reach the gateway at {url}: {e}') from e
    if answer.status_code >= 400:
        raise JobRefused(answer.status_code, error_message(answer))
    return answer.json()


def error_message(answer) -> str:
    """The message of an error answer: OpenAI's ``{"error": {"message"}}``, FastAPI's ``detail``, else the text."""
    try:
        body = answer.json()
    except ValueError:
        return f'{answer.status_code} {answer.reason}: {answer.text[:200]}'.rstrip(': ')
    if isinstance(body, dict) and isinstance(body.get('error'), dict):
        return str(body['error'].get('message'))
    if isinstance(body, dict) and 'detail' in body:
        return str(body['detail'])
    return f'{answer.status_code} {answer.reason}: {body}'


def bearer(token: Optional[str]) -> Dict[str, str]:
    return auth_options(token, over_http=True).get('headers', {})


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


def _blob_to_data_uri(doc: PromptDoc) -> PromptDoc:
    """``doc`` as JSON can carry it: its audio and image bytes as data URIs."""
    update = {}
    if doc.blob is not None:
        update.update(blob=None, uri=to_data_uri(doc.blob, 'application/octet-stream'))
    if doc.image is not None:
        update.update(image=None, image_uri=to_data_uri(doc.image, 'application/octet-stream'))
    return doc.model_copy(update=update) if update else doc


def save_images(doc: PromptDoc, out_dir: Path, stem: str) -> List[str]:
    return save_pngs([image.png for image in doc.matches], out_dir, stem)


def save_pngs(pngs: Sequence[bytes], out_dir: Path, stem: str) -> List[str]:
    """``<stem>-<i>.png`` in ``out_dir``, one per image; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, png in enumerate(pngs):
        path = out_dir / f'{stem}-{i}.png'
        path.write_bytes(png)
        paths.append(str(path))
    return paths


def input_stem(label: str, is_file: bool) -> str:
    if is_file:
        return Path(label).stem
    return re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')[:40] or 'prompt'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Turn speech (any language) or text prompts into images.')
    parser.add_argument('audio', nargs='*', metavar='AUDIO', help='audio files: wav, mp3, flac, ogg, m4a, ...')
    parser.add_argument('--host', default=DEFAULT_HOST, help=f'the Flow gateway (default {DEFAULT_HOST}; http://... works too)')
    parser.add_argument('--text', action='append', default=[], metavar='PROMPT', help='a text prompt (repeatable); skips Whisper')
    parser.add_argument('--num-images', type=int, help='images per input')
    parser.add_argument('--steps', type=int, help='denoising steps')
    parser.add_argument('--guidance-scale', type=float)
    parser.add_argument('--seed', type=int, help='image i of an input gets seed+i')
    parser.add_argument('--best-of', type=int, help='draw this many candidates per input; CLIP keeps the --num-images best')
    parser.add_argument('--width', type=int, help='a multiple of 8')
    parser.add_argument('--height', type=int, help='a multiple of 8')
    parser.add_argument('--negative-prompt')
    parser.add_argument('--scheduler', help='default, euler, euler_a, ddim or dpm++')
    parser.add_argument('--language', help='spoken language (ISO 639-1) of all AUDIO; default: detect')
    parser.add_argument('--out', default='outputs', type=Path, help='folder for the PNG files (default: outputs)')
    parser.add_argument('--json', action='store_true', help='print one JSON object per input')
    parser.add_argument('--token', default=environment_token(), help=f'the gateway\'s auth token (default: ${AUTH_TOKEN_VARIABLE}, its first key)')
    parser.add_argument('--follow', action='store_true',
                        help=f'run each input as a job on the gateway\'s HTTP port (--host {DEFAULT_HTTP_HOST}) and show its progress live')
    args = parser.parse_args(argv)
    if not args.audio and not args.text:
        parser.error('give at least one AUDIO file or --text PROMPT')
    if args.follow and not args.host.startswith(('http://', 'https://')):
        parser.error(f'--follow talks to the gateway\'s HTTP port: give --host http://HOST:PORT (e.g. {DEFAULT_HTTP_HOST}), not {args.host}')
    if args.follow and (args.width is None) != (args.height is None):
        parser.error('--follow sends the image size as WIDTHxHEIGHT: give both --width and --height, or neither')
    return args


def parameters_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    names = ('num_images', 'steps', 'guidance_scale', 'seed', 'width', 'height', 'negative_prompt', 'scheduler', 'language',
             'best_of')
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def job_fields(args: argparse.Namespace) -> Dict[str, Any]:
    """The generation options as POST /v1/jobs's fields (parse_args made sure width and height come together)."""
    fields = {'n': args.num_images, 'steps': args.steps, 'guidance_scale': args.guidance_scale, 'seed': args.seed,
              'negative_prompt': args.negative_prompt, 'scheduler': args.scheduler, 'language': args.language,
              'best_of': args.best_of}
    if args.width is not None:
        fields['size'] = f'{args.width}x{args.height}'
    return {name: value for name, value in fields.items() if value is not None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in IMAGE_COMMANDS:  # images in: caption, tag, interrogate, restyle
        from s2i.image_commands import main as image_main

        return image_main(argv)
    args = parse_args(argv)
    inputs = [(path, True) for path in args.audio] + [(prompt, False) for prompt in args.text]
    parameters = parameters_from_args(args)
    failed = 0
    # One request per input: progress shows as each finishes, and one input's failure
    # (even an unreadable local file) never costs the others their results.
    for number, (label, is_file) in enumerate(inputs, start=1):
        if args.follow:
            try:
                result = follow_one(label, is_file, args, f'[{number}/{len(inputs)}] {label}')
            except KeyboardInterrupt as e:
                print(interrupted_message(e), file=sys.stderr, flush=True)
                return 130
        else:
            result = run_one(label, is_file, parameters, args)
        failed += bool(result['error'])
        report(result, number, len(inputs), args.json, heard_shown=args.follow)
    return 1 if failed else 0


def empty_result(label: str) -> Dict[str, Any]:
    return {'input': label, 'language': None, 'transcript': '', 'text': '', 'images': [], 'stored': [], 'record': '',
            'error': ''}


def run_one(label: str, is_file: bool, parameters: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    result = empty_result(label)
    try:
        docs = build_docs([label]) if is_file else build_docs(prompts=[label])
    except OSError as e:
        result['error'] = f'cannot read {label}: {e.strerror}'
        return result
    try:
        (doc,) = generate(docs=docs, parameters=parameters, host=args.host, token=args.token or '')
    except ExecutorUnavailable as e:  # this input's error; the next ones may find it back
        result['error'] = str(e)
        return result
    except ConnectionError as e:
        raise SystemExit(f'cannot reach the Flow at {args.host} ({e}); start it with `make serve` or `jina flow --uses flow.yml`')
    except Exception as e:
        if UNAUTHENTICATED in str(e):  # the same words over gRPC (UNAUTHENTICATED) and HTTP (401)
            raise SystemExit(f'the Flow at {args.host} refused the request: {UNAUTHENTICATED}')
        raise
    result.update(language=doc.language, transcript=doc.transcript, text=doc.text, error=doc.error, record=doc.result_url)
    result['images'] = save_images(doc, args.out, input_stem(label, is_file))
    result['stored'] = [image.url for image in doc.matches if image.url]  # where the Flow's store keeps them
    return result


def report(result: Dict[str, Any], number: int, total: int, as_json: bool, heard_shown: bool = False) -> None:
    """One input's outcome; ``heard_shown``: its transcript was already printed (live, by --follow)."""
    if as_json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
        return
    head = f'[{number}/{total}] {result["input"]}'
    if result['error']:
        print(f'{head}: ERROR {result["error"]}', file=sys.stderr, flush=True)
        return
    if result['language'] and not heard_shown:
        print('\n'.join(heard_lines(head, result)))
    for path in result['images']:
        print(f'    -> {path}', flush=True)
    if result['record']:
        print(f'    kept by the service: {result["record"]}', flush=True)



def heard_lines(head: str, heard: Dict[str, Any]) -> List[str]:
    """What Whisper heard (a result or a ``transcribed`` event): the transcript, and its English if it differs."""
    lines = [f'{head}: ({heard["language"]}) {heard["transcript"]}']
    if heard['text'] != heard['transcript']:
        lines.append(f'    English: {heard["text"]}')
    return lines


# --follow: each input as a job, with its progress live

def follow_one(label: str, is_file: bool, args: argparse.Namespace, head: str) -> Dict[str, Any]:
    """run_one's result for one input run as a job, plus its ``job`` id; Ctrl-C raises JobInterrupted."""
    result = {**empty_result(label), 'job': ''}
    live = LiveProgress(head, args.json)
    try:
        record = follow_job(args.host, args.token or '', audio_path=label if is_file else None,
                            prompt=None if is_file else label, fields=job_fields(args), on_event=live)
    except ConnectionError as e:
        raise SystemExit(f'{e}; is the service running (`make serve`)?')
    except OSError as e:
        if e.filename is None:  # not the audio file: requests' own errors are OSErrors too
            raise
        result['error'] = f'cannot read {label}: {e.strerror}'
        return result
    except JobRefused as e:
        if e.status == 401:  # the same token for every input: stop here
            raise SystemExit(f'the gateway at {args.host} refused the request: {e.message}')
        result['error'] = e.message
        return result
    finally:
        live.close()
    result.update(job=record['id'], language=record.get('language'), transcript=record.get('transcript', ''),
                  text=record.get('text') or record.get('prompt', ''), error=job_error(record),
                  record=record.get('result_url') or '')
    pngs = [base64.b64decode(image['b64_json']) for image in record.get('images', []) if image.get('b64_json')]
    result['images'] = save_pngs(pngs, args.out, input_stem(label, is_file))
    result['stored'] = [image['url'] for image in record.get('images', []) if image.get('url')]
    return result


def job_error(record: Dict[str, Any]) -> str:
    if record['status'] == 'cancelled':
        return 'the job was cancelled'
    return record.get('error') or ''


def interrupted_message(interrupt: KeyboardInterrupt) -> str:
    if not isinstance(interrupt, JobInterrupted):
        return 'interrupted'
    if interrupt.cancel_error:
        return f'interrupted; cancelling job {interrupt.job_id} failed: {interrupt.cancel_error}'
    return f'interrupted: job {interrupt.job_id} cancelled'


class LiveProgress:
    """What --follow shows while a job runs: what Whisper heard as soon as it is known (above the
    bars, on stdout), and a bar of denoising steps per pipeline call (on stderr)."""

    def __init__(self, head: str, as_json: bool):
        self.head, self.as_json = head, as_json
        self.bars: Dict[int, Any] = {}  # by the first image index of their pipeline call

    def __call__(self, event: Dict[str, Any]) -> None:
        if event['kind'] == 'transcribed' and not self.as_json:
            self.write(heard_lines(self.head, event), sys.stdout)
        elif event['kind'] == 'queued' and event.get('position'):
            self.write([f'{self.head}: queued behind {event["position"]} job(s)'], sys.stderr)
        elif event['kind'] == 'progress':
            self.advance(event)
        elif event['kind'] in TERMINAL_EVENTS:
            self.close()

    def advance(self, event: Dict[str, Any]) -> None:
        from tqdm import tqdm

        if event['image'] not in self.bars:
            first, count = event['image'] + 1, event.get('images', 1)
            label = f'image {first}' if count == 1 else f'images {first}-{first + count - 1}'
            self.bars[event['image']] = tqdm(total=event['steps'], desc=label, unit='step', file=sys.stderr)
        bar = self.bars[event['image']]
        bar.update(event['step'] - bar.n)

    def write(self, lines: List[str], file) -> None:
        from tqdm import tqdm

        for line in lines:
            tqdm.write(line, file=file)
        file.flush()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


if __name__ == '__main__':
    sys.exit(main())
