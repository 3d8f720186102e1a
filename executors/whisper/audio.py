"""The Whisper executor's audio: where a document's audio may come from, how much of it the server
accepts, how it is decoded, and which parts of it are speech.

Clients send audio inline: ``blob`` bytes, a waveform ``tensor`` or a ``data:`` URI. A ``uri``
never makes the server read an arbitrary file or fetch an arbitrary URL: server-side paths are
read only under a configured input directory (after resolving ``..`` and symlinks), and http(s)
only from configured hosts, without redirects or credentials, within one deadline. Everything
ends up as bytes that are checked against the byte limit before anything decodes them; the duration
limit is checked from the container's header before decoding, and again while decoding, frame by
frame (see ``decode_bounded``).

Errors quote only the start of a client's value (s2i.contracts.params.quote), and of an exception only its
type and the first line of its message, cut short and without server paths: the details go to the log.
"""

import http.client
import io
import re
import socket
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from executors.whisper.settings import WhisperSettings
from s2i.contracts.documents import SAMPLE_RATE, PromptDoc
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote
from s2i.encoding import from_data_uri
from s2i.inputs import checked_file, read_under, too_large
from s2i.urls import host_refusal

MAX_MESSAGE_CHARS = 100  # of an exception's message, in an error a client sees
SERVER_PATH = re.compile(r'(?:[A-Za-z]:)?(?:[\\/][\w.~-]+){2,}[\\/]?')  # /home/me/x.py, C:\models\x
NOT_IN_A_REQUEST_LINE = re.compile(r'[^\x21-\x7e]')  # http.client refuses spaces, control characters and non-ASCII


class AudioError(CodedError, ValueError):
    """The document's audio is missing, too big, not allowed, undecodable or malformed: audio_unreadable,
    unless it is too large (input_too_large) or too long (audio_too_long)."""

    code = ErrorCode.AUDIO_UNREADABLE


def described(error: BaseException) -> str:
    """``Type: first line of the message``: what a client sees of an exception (the log has the rest)."""
    message = first_line(error)
    return f'{type(error).__name__}: {message}' if message else type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, cut short and without server paths."""
    message = getattr(error, 'strerror', None) or str(error)  # an OSError's strerror leaves out its file name
    message = SERVER_PATH.sub('<path>', (message.strip().splitlines() or [''])[0])
    message = message.encode('utf-8', 'backslashreplace').decode('utf-8')  # lone surrogates cannot travel in protobuf
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + '…'


SETTINGS = WhisperSettings.model_fields  # the one home of the limits' defaults (settings.py)


@dataclass(frozen=True)
class AudioPolicy:
    max_bytes: int = SETTINGS['max_audio_bytes'].default  # per document, after data-URI decoding
    max_seconds: float = SETTINGS['max_audio_seconds'].default  # longer audio is rejected, from its header when it has one
    input_dir: Optional[str] = None  # server-side paths are read only under here; None: no paths
    allowed_url_hosts: Tuple[str, ...] = ()  # "host" or "host:port" that http(s) URIs may name; (): none
    url_timeout: float = SETTINGS['url_timeout'].default  # seconds for a whole fetch (connecting, the headers and the body), not per read

    @classmethod
    def of(cls, settings: WhisperSettings) -> 'AudioPolicy':
        """The Whisper executor's policy, from its settings."""
        return cls(max_bytes=settings.max_audio_bytes, max_seconds=settings.max_audio_seconds, input_dir=settings.input_dir or None,
                   allowed_url_hosts=tuple(settings.allowed_url_hosts), url_timeout=settings.url_timeout)


def audio_bytes(blob: Optional[bytes], uri: Optional[str], policy: AudioPolicy) -> bytes:
    """The audio file of a document (its blob, or what its uri points at), within the policy."""
    try:
        data = blob if blob is not None else _read_uri(uri, policy)
    except AudioError:
        raise
    except ValueError as e:  # a malformed uri: "http://[::1", a port over 65535, a NUL in a path, ...
        raise AudioError(f'malformed audio uri {quote(uri)}: {first_line(e)}') from e
    return checked_file(data, 'audio', policy.max_bytes, 'max_audio_bytes', AudioError)


def check_size(size: int, policy: AudioPolicy) -> None:
    if problem := too_large('audio', size, policy.max_bytes, 'max_audio_bytes'):
        raise AudioError(problem, ErrorCode.INPUT_TOO_LARGE)


def check_duration(seconds: float, policy: AudioPolicy) -> None:
    if seconds > policy.max_seconds:
        raise AudioError(f'audio too long: {seconds:.1f} s, the limit is {policy.max_seconds:g} s (max_audio_seconds)',
                         ErrorCode.AUDIO_TOO_LONG)


def _read_uri(uri: str, policy: AudioPolicy) -> bytes:
    scheme = urlsplit(uri).scheme.lower()
    if scheme == 'data':
        estimated = len(uri) * 3 // 4  # base64 is 4/3 of the bytes: refuse a huge URI before decoding it
        if estimated > policy.max_bytes + 1024:  # + room for the header
            check_size(estimated, policy)
        try:
            return from_data_uri(uri)
        except ValueError as e:
            raise AudioError(f'bad audio data URI: {first_line(e)}') from e
    if scheme in ('http', 'https'):
        return _fetch_url(uri, policy)
    if scheme == '':
        return _read_server_path(uri, policy)
    raise AudioError(f'audio uri scheme {quote(scheme)} is not accepted: send the audio inline (blob, tensor or a data: URI)')


def _read_server_path(path: str, policy: AudioPolicy) -> bytes:
    return read_under(policy.input_dir, path, 'audio', policy.max_bytes, 'max_audio_bytes', AudioError,
                      'send the audio inline (blob, tensor or a data: URI)')


def _fetch_url(url: str, policy: AudioPolicy) -> bytes:
    parts = urlsplit(url)
    refusal = host_refusal(parts, policy.allowed_url_hosts, subject='audio URL', setting='allowed_url_hosts')
    if refusal:
        raise AudioError(refusal)
    host, port = parts.hostname, parts.port  # the host checked is the host connected to
    target = urlunsplit(('', '', parts.path or '/', parts.query, ''))
    if NOT_IN_A_REQUEST_LINE.search(target):
        raise ValueError('a URL path holds only printable ASCII: no spaces, control characters or other letters')
    # http.client, not urllib: it connects to exactly this host and port and follows no redirect
    connection_type = http.client.HTTPSConnection if parts.scheme.lower() == 'https' else http.client.HTTPConnection
    connection = connection_type(host, port, timeout=policy.url_timeout)
    deadline = _Deadline(policy.url_timeout)
    try:
        with deadline:
            connection.connect()
            deadline.watch(connection.sock)
            connection.request('GET', target)
            response = connection.getresponse()
            if 300 <= response.status < 400:
                raise AudioError(f'audio URL redirects (HTTP {response.status}); redirects are not followed')
            if response.status != 200:
                raise AudioError(f'could not fetch audio URL: HTTP {response.status} {response.reason[:MAX_MESSAGE_CHARS]}')
            data = response.read(policy.max_bytes + 1)
            deadline.check()  # a hung-up answer without a Content-Length reads as a short one
    except (OSError, http.client.HTTPException) as e:
        deadline.check()
        raise AudioError(f'could not fetch audio URL: {described(e)}') from e
    finally:
        connection.close()
    check_size(len(data), policy)
    return data


class _Deadline:
    """Hangs up a connection when its time is up, whatever it waits for. A socket timeout applies to
    each read: a server sending a byte every 2 s held a fetch with a 10 s timeout for as long as it liked."""

    def __init__(self, seconds: float):
        self.seconds, self.sock, self.passed = seconds, None, threading.Event()
        self.timer = threading.Timer(seconds, self._hang_up)
        self.timer.daemon = True

    def __enter__(self):
        self.timer.start()

    def __exit__(self, *exc_info):
        self.timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        # The socket itself: an HTTP/1.0 answer passes it to the response and leaves connection.sock None
        self.sock = sock
        self.check()  # the time may have run out while connecting, before there was a socket to hang up

    def check(self) -> None:
        if self.passed.is_set():
            raise AudioError(f'could not fetch audio URL: no complete answer within {self.seconds:g} s (url_timeout)')

    def _hang_up(self) -> None:
        self.passed.set()
        if self.sock is not None:
            try:
                # wakes a blocked read at once (close() would not); socket.socket's own shutdown, as
                # SSLSocket's would pull its TLS state from under the reading thread
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass


def header_duration(data: bytes) -> Optional[float]:
    """Seconds of audio that the container's header announces; None when it does not say or cannot be read."""
    import av

    try:
        with av.open(io.BytesIO(data), mode='r', metadata_errors='ignore') as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.audio[0] if container.streams.audio else None
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # undecodable input: the decoder gives the error that explains it
        return None
    return None


def decode_bounded(data: bytes, policy: AudioPolicy) -> np.ndarray:
    """Mono float32 at SAMPLE_RATE, like faster-whisper's decode_audio, but never more than
    ``max_seconds`` of it, whatever the header says and whatever the container.

    Each decoded frame is measured before the resampler multiplies its samples: an 8 kB FLAC at
    1 Hz holds one 65535 s frame, which resampled to 16 kHz is 2 GB. So the output (int16, then
    float32) never passes ``max_seconds`` at SAMPLE_RATE: 9.6 MB and 19 MB for 300 s."""
    import av

    limit = int(policy.max_seconds * SAMPLE_RATE)
    resampler = av.audio.resampler.AudioResampler(format='s16', layout='mono', rate=SAMPLE_RATE)
    chunks, seconds, total = [], 0.0, 0
    with av.open(io.BytesIO(data), mode='r', metadata_errors='ignore') as container:
        for frame in _frames_then_flush(container):
            if frame is not None:
                if frame.sample_rate <= 0:
                    raise AudioError('could not decode audio: a frame without a sample rate')
                seconds += frame.samples / frame.sample_rate
                if seconds > policy.max_seconds:
                    raise _too_long(policy)
            for resampled in resampler.resample(frame):
                chunk = resampled.to_ndarray().reshape(-1)
                total += chunk.size
                if total > limit:  # the resampler's own output, which its delay can stretch a little
                    raise _too_long(policy)
                chunks.append(chunk)
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def _too_long(policy: AudioPolicy) -> AudioError:
    return AudioError(f'audio too long: more than {policy.max_seconds:g} s (max_audio_seconds); decoding stopped there',
                      ErrorCode.AUDIO_TOO_LONG)


def _frames_then_flush(container):
    import av

    frames = container.decode(audio=0)
    while True:
        try:
            yield next(frames)
        except StopIteration:
            break
        except av.error.InvalidDataError:
            continue  # a damaged frame (a truncated file): skip it, as faster-whisper does
    yield None  # flushes the resampler


def document_audio(doc: PromptDoc, policy: AudioPolicy, decode: Callable[[bytes, AudioPolicy], np.ndarray]) -> np.ndarray:
    """The document's audio as mono float32 at SAMPLE_RATE, within the policy; ``decode`` is the backend's decoder."""
    if doc.tensor is not None:
        return waveform_from_tensor(np.asarray(doc.tensor), doc.sample_rate, policy)
    data = audio_bytes(doc.blob, doc.uri, policy)  # size and uri checks; only bytes reach a decoder
    announced = header_duration(data)
    if announced is not None:
        check_duration(announced, policy)
    try:
        audio = decode(data, policy)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f'could not decode audio: {described(e)}') from e
    if not audio.size:
        raise AudioError('could not decode audio: no audio samples found')
    check_duration(len(audio) / SAMPLE_RATE, policy)  # for containers without a duration
    return audio


def waveform_from_tensor(tensor: np.ndarray, sample_rate: int, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
    if sample_rate != SAMPLE_RATE:
        raise AudioError(f'waveform tensors must be sampled at {SAMPLE_RATE} Hz, got {sample_rate}; resample or send the file bytes')
    if not np.issubdtype(tensor.dtype, np.floating):
        raise AudioError(f'waveform tensor must be float in [-1, 1], got dtype {tensor.dtype}')
    if tensor.ndim == 2 and min(tensor.shape) <= 2:  # (channels, samples) or (samples, channels)
        tensor = tensor.mean(axis=int(np.argmin(tensor.shape)))
    if tensor.ndim != 1 or not tensor.size:
        raise AudioError(f'waveform tensor must be mono (samples,) or (channels<=2, samples), got shape {quote(tensor.shape)}')
    check_duration(tensor.size / SAMPLE_RATE, policy)
    if not np.isfinite(tensor).all():
        raise AudioError('waveform tensor holds NaN or infinite values')
    return tensor.astype(np.float32)


class Timeline:
    """Maps times in the speech that VAD kept back to times in the original audio."""

    def __init__(self, chunks: List[dict]):
        from faster_whisper.vad import SpeechTimestampsMap

        self._map = SpeechTimestampsMap(chunks, SAMPLE_RATE)

    def original_time(self, seconds: float, is_end: bool = False) -> float:
        return self._map.get_original_time(seconds, is_end=is_end)


def keep_speech(audio: np.ndarray) -> Tuple[np.ndarray, Optional[Timeline]]:
    """Silero VAD (as bundled with faster-whisper): the speech-only audio and its timeline.

    Both backends get the same filtered audio, so silence is never transcribed, whichever runs."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(audio, VadOptions(), sampling_rate=SAMPLE_RATE)
    if not chunks:
        return np.zeros(0, dtype=np.float32), None
    speech = np.concatenate([audio[c['start'] : c['end']] for c in chunks])
    return speech, Timeline(chunks)


def to_original_time(timeline: Optional[Timeline], seconds: float, is_end: bool = False) -> float:
    return round(seconds, 2) if timeline is None else timeline.original_time(seconds, is_end)
