"""Client for the speech-to-image Flow: a command line tool and a small library.

    s2i-client examples/fox_in_snow_en.wav --num-images 2 --out outputs     (or: python client.py ...)
    s2i-client --text "a lighthouse in a storm" --seed 7 --json

As a library::

    from s2i.client import generate
    docs = generate(['speech.mp3'], prompts=['a red fox'], parameters={'steps': 20})
    docs[0].matches[0].png  # PNG bytes, with the generation parameters inside

Over gRPC, ``generate()`` keeps one channel per host open for the whole process, shared by its
threads; ``with Connection(host) as flow: flow.generate(...)`` gives you its lifetime and timeout.
"""

import argparse
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from docarray import DocList

from s2i.docs import PromptDoc
from s2i.encoding import from_data_uri, to_data_uri
from s2i.params import MAX_SEED
from s2i.runtime import AUTH_TOKEN_VARIABLE, UNAUTHENTICATED, unreachable_executor

DEFAULT_HOST = f'grpc://127.0.0.1:{os.environ.get("S2I_PORT", "8321")}'


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
            return connection.generate(docs=docs, parameters=parameters, request_size=request_size)
        except ConnectionError:
            _forget(connection, host, token)  # next time a fresh channel, not one in reconnect back-off
            raise
    docs, parameters = seed_on_documents(docs, parameters)
    docs = DocList[PromptDoc](_blob_to_data_uri(doc) for doc in docs)
    try:
        results = _http_client(host).post(
            endpoint_for(docs),
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
    """The token given, else $S2I_AUTH_TOKEN; '' means send none."""
    return token if token is not None else os.environ.get(AUTH_TOKEN_VARIABLE)


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
    ) -> DocList[PromptDoc]:
        """Like ``generate()``, over this connection. The documents go in requests of ``request_size``
        (default: one request for all), all in flight at once; results come back in input order."""
        docs = docs if docs is not None else build_docs(audio_files, prompts)
        docs, parameters = seed_on_documents(docs, parameters)
        endpoint = endpoint_for(docs)
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


def _blob_to_data_uri(doc: PromptDoc) -> PromptDoc:
    if doc.blob is None:
        return doc
    return doc.model_copy(update={'blob': None, 'uri': to_data_uri(doc.blob, 'application/octet-stream')})


def save_images(doc: PromptDoc, out_dir: Path, stem: str) -> List[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(doc.matches):
        path = out_dir / f'{stem}-{i}.png'
        path.write_bytes(image.png)
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
    parser.add_argument('--width', type=int, help='a multiple of 8')
    parser.add_argument('--height', type=int, help='a multiple of 8')
    parser.add_argument('--negative-prompt')
    parser.add_argument('--scheduler', help='default, euler, euler_a, ddim or dpm++')
    parser.add_argument('--language', help='spoken language (ISO 639-1) of all AUDIO; default: detect')
    parser.add_argument('--out', default='outputs', type=Path, help='folder for the PNG files (default: outputs)')
    parser.add_argument('--json', action='store_true', help='print one JSON object per input')
    parser.add_argument('--token', default=os.environ.get(AUTH_TOKEN_VARIABLE), help=f'the gateway\'s auth token (default: ${AUTH_TOKEN_VARIABLE})')
    args = parser.parse_args(argv)
    if not args.audio and not args.text:
        parser.error('give at least one AUDIO file or --text PROMPT')
    return args


def parameters_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    names = ('num_images', 'steps', 'guidance_scale', 'seed', 'width', 'height', 'negative_prompt', 'scheduler', 'language')
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    inputs = [(path, True) for path in args.audio] + [(prompt, False) for prompt in args.text]
    parameters = parameters_from_args(args)
    failed = 0
    # One request per input: progress shows as each finishes, and one input's failure
    # (even an unreadable local file) never costs the others their results.
    for number, (label, is_file) in enumerate(inputs, start=1):
        result = run_one(label, is_file, parameters, args)
        failed += bool(result['error'])
        report(result, number, len(inputs), args.json)
    return 1 if failed else 0


def run_one(label: str, is_file: bool, parameters: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    result = {'input': label, 'language': None, 'transcript': '', 'text': '', 'images': [], 'stored': [], 'record': '',
              'error': ''}
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


def report(result: Dict[str, Any], number: int, total: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
        return
    head = f'[{number}/{total}] {result["input"]}'
    if result['error']:
        print(f'{head}: ERROR {result["error"]}', file=sys.stderr, flush=True)
        return
    if result['language']:
        print(f'{head}: ({result["language"]}) {result["transcript"]}')
        if result['text'] != result['transcript']:
            print(f'    English: {result["text"]}')
    for path in result['images']:
        print(f'    -> {path}', flush=True)
    if result['record']:
        print(f'    kept by the service: {result["record"]}', flush=True)


if __name__ == '__main__':
    sys.exit(main())
