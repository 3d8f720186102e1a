"""Calls to the Flow's own endpoints (``/generate``, ``/text2image``, ``/caption``, ...), over gRPC or HTTP.

``generate()`` sends documents (``PromptDoc``) and returns documents; ``call_flow()`` sends and
returns plain dicts of the same fields, and over HTTP imports neither docarray (nor the torch it
brings) nor jina: what the CLI uses, so that it starts fast. Nothing here imports them at import time.
"""

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from s2i.client.errors import ServiceError, grpc_code, http_refusal, service_error
from s2i.contracts.errors import ErrorCode
from s2i.contracts.params import MAX_SEED
from s2i.runtime import AUTH_TOKEN_VARIABLE

if TYPE_CHECKING:
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

DEFAULT_HOST = f'grpc://127.0.0.1:{os.environ.get("S2I_PORT", "8321")}'
DEFAULT_HTTP_HOST = f'http://127.0.0.1:{os.environ.get("S2I_HTTP_PORT", "8322")}'  # jobs (--follow) live here

CONNECT_TIMEOUT_S = 30  # to open an HTTP connection; an answer may take minutes (a CPU generates slowly)
GATEWAY_CHECK_S = 2.0  # after a gRPC UNAVAILABLE: how long the channel gets to show that the gateway is up
HTTP_CONCURRENT_REQUESTS = 8  # requests of one generate() call in flight at once over HTTP
BYTES_AS_URIS = {'blob': 'uri', 'image': 'image_uri'}  # JSON carries a document's bytes as data URIs


def is_http(host: str) -> bool:
    return host.startswith(('http://', 'https://'))


def build_docs(audio_files: Iterable[Union[str, Path]] = (), prompts: Iterable[str] = ()) -> 'DocList[PromptDoc]':
    """Audio files are sent as bytes, so the server never needs to see this machine's paths."""
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

    docs = [PromptDoc(blob=Path(path).read_bytes()) for path in audio_files]
    docs += [PromptDoc(text=prompt) for prompt in prompts]
    return DocList[PromptDoc](docs)


def generate(
    audio_files: Iterable[Union[str, Path]] = (),
    prompts: Iterable[str] = (),
    parameters: Optional[Dict[str, Any]] = None,
    host: str = DEFAULT_HOST,
    request_size: int = 1,
    docs: Optional['DocList[PromptDoc]'] = None,
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> 'DocList[PromptDoc]':
    """Send audio files and/or text prompts to the Flow; returns the result documents in input order.

    Each document carries either its images in ``matches`` (PNG bytes in ``.png``) or an ``error``
    with its ``error_code``. Requests made only of text prompts go to ``/text2image``, which skips
    Whisper. Works over gRPC (default) and HTTP; over HTTP, bytes travel as data URIs both ways.
    ``token`` (default: $S2I_AUTH_TOKEN) is sent as ``authorization: Bearer <token>``.

    A request the service refuses raises ServiceError (its ``code``, from s2i/contracts/errors.py);
    ExecutorUnavailable (also a ConnectionError) when an executor behind the gateway is down; an
    unreachable gateway raises ConnectionError.
    """
    docs = docs if docs is not None else build_docs(audio_files, prompts)
    token = token_or_environment(token)
    if not is_http(host):
        connection = _shared_connection(host, token)
        try:
            return connection.generate(docs=docs, parameters=parameters, request_size=request_size, endpoint=endpoint)
        except ConnectionError:
            _forget(connection, host, token)  # next time a fresh channel, not one in reconnect back-off
            raise
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

    answers = post_documents(host, endpoint or endpoint_for(docs), [document_json(doc) for doc in docs], parameters, token, request_size)
    return DocList[PromptDoc](PromptDoc.model_validate(answer) for answer in answers)


def call_flow(host: str, endpoint: str, inputs: Sequence[Dict[str, Any]], parameters: Optional[Dict[str, Any]] = None,
              token: Optional[str] = None) -> List[Dict[str, Any]]:
    """``generate()`` with plain dicts: ``inputs`` hold PromptDoc's fields (bytes in ``blob`` and
    ``image``), and each answer holds a document's fields, its images' PNG bytes in ``matches[i]["png"]``.
    One request for all the inputs. Raises as ``generate()`` does."""
    if not is_http(host):
        from docarray import DocList

        from s2i.contracts.documents import PromptDoc

        docs = DocList[PromptDoc](PromptDoc(**fields) for fields in inputs)
        answers = generate(docs=docs, parameters=parameters, host=host, token=token, endpoint=endpoint, request_size=len(docs))
        return [doc.model_dump() for doc in answers]
    return post_documents(host, endpoint, [input_json(fields) for fields in inputs], parameters,
                          token_or_environment(token), request_size=max(len(inputs), 1))


def endpoint_for(docs: 'DocList[PromptDoc]') -> str:
    """Only requests with audio need Whisper; /text2image goes straight to Stable Diffusion."""
    return '/generate' if any(doc.has_audio for doc in docs) else '/text2image'


def token_or_environment(token: Optional[str]) -> Optional[str]:
    """The token given, else $S2I_AUTH_TOKEN's first key; '' means send none."""
    return token if token is not None else environment_token()


def environment_token() -> Optional[str]:
    """$S2I_AUTH_TOKEN's first key: it may hold several, comma-separated (the gateway accepts any of them)."""
    keys = [key.strip() for key in os.environ.get(AUTH_TOKEN_VARIABLE, '').split(',') if key.strip()]
    return keys[0] if keys else None


def auth_options(token: Optional[str], over_http: bool) -> Dict[str, Any]:
    """The keyword arguments that carry the token: HTTP headers or gRPC metadata."""
    if not token:
        return {}
    if over_http:
        return {'headers': {'Authorization': f'Bearer {token}'}}
    return {'metadata': (('authorization', f'Bearer {token}'),)}


def bearer(token: Optional[str]) -> Dict[str, str]:
    return auth_options(token, over_http=True).get('headers', {})


def request_seed(parameters: Optional[Dict[str, Any]]) -> Tuple[Optional[int], Dict[str, Any]]:
    """The request's valid ``seed``, and the parameters without it; a bad seed stays in the parameters,
    for the Flow to name what is wrong with it."""
    parameters = dict(parameters or {})
    seed = parameters.get('seed')
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        return None, parameters
    del parameters['seed']
    return seed, parameters


def seed_on_documents(docs: 'DocList[PromptDoc]', parameters: Optional[Dict[str, Any]]) -> Tuple['DocList[PromptDoc]', Dict[str, Any]]:
    """The request's ``seed`` moves onto each document without one of its own (same images).

    Jina's dynamic batching merges only requests whose parameters are equal: without the seed in
    them, requests from clients that chose different seeds can share one pipeline call."""
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

    seed, rest = request_seed(parameters)
    if seed is None:
        return docs, rest
    return DocList[PromptDoc](doc if doc.seed is not None else doc.model_copy(update={'seed': seed}) for doc in docs), rest


def input_json(fields: Dict[str, Any]) -> Dict[str, Any]:
    """A document's fields as JSON carries them: bytes as data URIs, unset fields left out."""
    from s2i.encoding import to_data_uri

    given = {key: value for key, value in fields.items() if value is not None}
    for key, uri_key in BYTES_AS_URIS.items():
        if key in given:
            given[uri_key] = to_data_uri(given.pop(key), 'application/octet-stream')
    return given


def document_json(doc: 'PromptDoc') -> Dict[str, Any]:
    """A PromptDoc as JSON carries it: its audio and image bytes as data URIs, a waveform as a list."""
    from s2i.encoding import png_data_uri

    fields = input_json(doc.model_dump(exclude_none=True, exclude={'tensor', 'matches'}))
    if doc.tensor is not None:
        fields['tensor'] = doc.tensor.tolist()
    images = [image.model_dump(exclude_none=True, exclude={'png'}) for image in doc.matches]
    for image, source in zip(images, doc.matches):
        if source.png is not None:
            image['data_uri'] = png_data_uri(source.png)
    return {**fields, 'matches': images} if images else fields


def post_documents(host: str, endpoint: str, documents: List[Dict[str, Any]], parameters: Optional[Dict[str, Any]],
                   token: Optional[str], request_size: int = 1) -> List[Dict[str, Any]]:
    """Documents (as JSON) to one of the Flow's endpoints over HTTP, in requests of ``request_size``;
    the answered documents in input order, each image's PNG back in ``png``."""
    seed, parameters = request_seed(parameters)
    if seed is not None:
        documents = [document if document.get('seed') is not None else {**document, 'seed': seed} for document in documents]
    size = max(request_size, 1)
    batches = [documents[start:start + size] for start in range(0, len(documents), size)] or [[]]
    url = f'{host.rstrip("/")}/{endpoint.strip("/")}'
    with ThreadPoolExecutor(min(len(batches), HTTP_CONCURRENT_REQUESTS)) as pool:
        answers = pool.map(lambda batch: _post(url, host, batch, parameters, token), batches)
        return [document for answer in answers for document in answer]


def _post(url: str, host: str, documents: List[Dict[str, Any]], parameters: Dict[str, Any], token: Optional[str]) -> List[Dict[str, Any]]:
    import requests

    try:
        answer = requests.post(url, json={'data': documents, 'parameters': parameters}, headers=bearer(token),
                               timeout=(CONNECT_TIMEOUT_S, None))
    except (requests.ConnectionError, requests.Timeout) as e:
        raise ConnectionError(f'cannot reach the Flow at {host}: {e}') from e
    if answer.status_code >= 400:
        raise http_refusal(answer)
    return [_with_png(document) for document in answer.json()['data']]


def _with_png(document: Dict[str, Any]) -> Dict[str, Any]:
    """An answered document with its images' PNG bytes in ``png`` (HTTP answers carry them as data URIs)."""
    from s2i.encoding import from_data_uri

    for image in document.get('matches') or []:
        if image.get('data_uri'):
            image['png'], image['data_uri'] = from_data_uri(image['data_uri']), None
    return document


_connections: Dict[Tuple[str, Optional[str]], 'Connection'] = {}
_connections_lock = threading.Lock()


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


def jina_protocol():
    """Jina's gRPC modules: (jina_pb2, jina_pb2_grpc, DataRequest). Imported on the first gRPC call only;
    jina's import of hubble warns that pkg_resources is deprecated, which is hubble's to fix, not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=UserWarning, module='hubble')
        from jina.proto import jina_pb2, jina_pb2_grpc
        from jina.types.request.data import DataRequest
    return jina_pb2, jina_pb2_grpc, DataRequest


class Connection:
    """A gRPC connection to the Flow that stays open between requests.

    ``generate()`` keeps one per host for the whole process; make your own to choose when it
    closes, or to set a ``timeout`` (seconds per request)::

        with Connection('grpc://127.0.0.1:8321') as flow:
            for prompt in prompts:
                docs = flow.generate(prompts=[prompt], parameters={'seed': 7})

    Documents come back as from ``generate()``. A request the gateway refuses or fails raises
    ServiceError (a RuntimeError) with its ``code``; an unreachable gateway raises ConnectionError.
    """

    def __init__(self, host: str = DEFAULT_HOST, token: Optional[str] = None, timeout: Optional[float] = None):
        import grpc

        scheme, _, address = host.rpartition('://')
        if scheme not in ('', 'grpc', 'grpcs'):
            raise ValueError(f'Connection speaks gRPC (grpc://host:port or grpcs://host:port), got {host!r}; use generate() for HTTP')
        _, jina_pb2_grpc, _ = jina_protocol()
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
        docs: Optional['DocList[PromptDoc]'] = None,
        request_size: Optional[int] = None,
        endpoint: Optional[str] = None,
    ) -> 'DocList[PromptDoc]':
        """Like ``generate()``, over this connection. The documents go in requests of ``request_size``
        (default: one request for all), all in flight at once; results come back in input order."""
        from docarray import DocList

        from s2i.contracts.documents import PromptDoc

        docs = docs if docs is not None else build_docs(audio_files, prompts)
        docs, parameters = seed_on_documents(docs, parameters)
        endpoint = endpoint or endpoint_for(docs)
        size = request_size or max(len(docs), 1)
        in_flight = [self._send(endpoint, docs[start : start + size], parameters) for start in range(0, len(docs), size)]
        results = DocList[PromptDoc]()
        for answer in in_flight:
            results.extend(self._receive(answer))
        return results

    def _send(self, endpoint: str, docs: 'DocList[PromptDoc]', parameters: Dict[str, Any]):
        _, _, DataRequest = jina_protocol()
        request = DataRequest()
        request.header.exec_endpoint = endpoint
        request.parameters = parameters
        request.data.docs = docs
        return self._stub.process_single_data.future(request, metadata=self._metadata, timeout=self.timeout)

    def _receive(self, answer) -> 'DocList[PromptDoc]':
        import grpc
        from docarray import DocList

        from s2i.contracts.documents import PromptDoc

        jina_pb2, _, _ = jina_protocol()
        try:
            response = answer.result()
        except grpc.RpcError as e:
            raise self._refusal(e) from e
        if response.header.status.code == jina_pb2.StatusProto.ERROR:  # an executor raised: no code to tell
            raise ServiceError(f'the Flow failed the request: {response.header.status.description}', ErrorCode.INTERNAL_ERROR)
        response.document_array_cls = DocList[PromptDoc]
        return response.docs

    def _refusal(self, error) -> Exception:
        """The gRPC status's code; UNAVAILABLE from a gateway that cannot be reached is a ConnectionError."""
        status = error.code().name
        if status == 'UNAVAILABLE' and not self._gateway_answers():
            return ConnectionError(f'cannot reach the Flow at {self.host}: {error.details()}')
        return service_error(error.details() or status, grpc_code(error))

    def _gateway_answers(self) -> bool:
        """Whether the channel to the gateway connects: UNAVAILABLE comes both from a gateway that is
        down and from one whose executor is, and only the channel's state tells them apart."""
        import grpc

        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=GATEWAY_CHECK_S)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> 'Connection':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_images(doc: 'PromptDoc', out_dir: Path, stem: str) -> List[str]:
    """``<stem>-<i>.png`` in ``out_dir``, one per image of ``doc``; their paths."""
    return save_pngs([image.png for image in doc.matches], out_dir, stem)


def save_pngs(pngs: Sequence[bytes], out_dir: Path, stem: str) -> List[str]:
    """``<stem>-<i>.png`` in ``out_dir``, one per PNG; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, png in enumerate(pngs):
        path = out_dir / f'{stem}-{i}.png'
        path.write_bytes(png)
        paths.append(str(path))
    return paths
