"""Hostile documents sent straight to the Whisper executor: whatever a document holds, it gets its own
answer (an error or a transcript), the other documents of its batch are transcribed, no document
makes the process hold gigabytes, and no slow server holds a batch past one deadline."""

import http.server
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from docarray import DocList
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from executors.whisper.executor import WhisperExecutor
from s2i.contracts.documents import GeneratedImage, PromptDoc, Segment

from audio_files import flac_bomb
from conftest import DATA, ENGLISH_CLIP, ROOT, transcribe

TOO_LONG = 'audio too long: more than 300 s (max_audio_seconds); decoding stopped there'
URL_TIMEOUT = 1  # s; the trickling server below would go on for TRICKLE_BYTES * TRICKLE_PAUSE = 10 s
TRICKLE_BYTES, TRICKLE_PAUSE = 50, 0.2
DEADLINE_PASSED = f'could not fetch audio URL: no complete answer within {URL_TIMEOUT} s (url_timeout)'
CREDENTIALS_REFUSED = 'audio URL must not hold a user name or password (user:password@host); they are never sent'


# --- a server of audio URLs: the clip, or an answer trickling a byte at a time ----------------------

class TricklingHandler(http.server.BaseHTTPRequestHandler):
    """/clip.wav is the English clip; /trickle... promises 100 kB and sends a byte every TRICKLE_PAUSE s,
    TRICKLE_BYTES at most. Records each request, the bytes each trickle sent, and the most at once."""

    seen, trickles, active, most_at_once = [], [], 0, 0
    lock = threading.Lock()

    def do_GET(self):
        cls = TricklingHandler
        with cls.lock:
            cls.seen.append(self.path)
            cls.active += 1
            cls.most_at_once = max(cls.most_at_once, cls.active)
        try:
            if self.path.startswith('/trickle'):
                self.trickle()
            else:
                body = ENGLISH_CLIP.read_bytes()
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        finally:
            with cls.lock:
                cls.active -= 1

    def trickle(self):
        record = {'sent': 0, 'hung_up': False, 'done': threading.Event()}
        TricklingHandler.trickles.append(record)
        try:
            self.send_response(200)
            self.send_header('Content-Length', '100000')
            self.end_headers()
            for _ in range(TRICKLE_BYTES):
                self.wfile.write(b'R')
                self.wfile.flush()
                record['sent'] += 1
                time.sleep(TRICKLE_PAUSE)
        except OSError:  # the fetcher hung up
            record['hung_up'] = True
        finally:
            record['done'].set()

    def log_message(self, *args):
        pass

    @classmethod
    def forget(cls):
        cls.seen.clear()
        cls.trickles.clear()
        cls.most_at_once = 0


def finished_trickles():
    for record in TricklingHandler.trickles:
        assert record['done'].wait(timeout=30)
    return TricklingHandler.trickles


@pytest.fixture(scope='module')
def audio_server():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), TricklingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'127.0.0.1:{server.server_address[1]}'
    server.shutdown()


@pytest.fixture(scope='module')
def whisper(audio_server, tmp_path_factory):
    """The bundled English tiny model (quick), with the default limits, one allowed URL host and a short URL deadline."""
    input_dir = tmp_path_factory.mktemp('inputs')
    (input_dir / 'clip.wav').write_bytes(ENGLISH_CLIP.read_bytes())
    return WhisperExecutor(
        model='tiny.en', device='cpu', input_dir=str(input_dir), allowed_url_hosts=[audio_server], url_timeout=URL_TIMEOUT,
    )


def english_clip() -> PromptDoc:
    return PromptDoc(blob=ENGLISH_CLIP.read_bytes())


def assert_understood(doc):
    assert doc.error == '' and 'fox' in doc.text.lower()


# --- memory ------------------------------------------------------------------------------------------

def test_a_flac_whose_frames_last_hours_is_refused_while_decoding_and_the_good_clip_is_transcribed(whisper):
    bomb, good = transcribe(whisper, PromptDoc(blob=flac_bomb()), english_clip())
    assert bomb.error == TOO_LONG and bomb.text == ''
    assert_understood(good)


DECODE_IN_A_FRESH_PROCESS = '''
import resource, sys
from executors.whisper.audio import AudioError, AudioPolicy
from executors.whisper.backends import BACKENDS
data = sys.stdin.buffer.read()
for name, backend in BACKENDS.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        outcome = f'decoded {len(backend.load_audio(data, AudioPolicy()))} samples'
    except AudioError as e:
        outcome = str(e)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    decoders = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # an ffmpeg the backend may have started
    print(f'{name}|{max(grown, decoders) // 1024}|{outcome}')
'''


def test_decoding_a_flac_bomb_with_either_backend_grows_the_process_by_less_than_100_mb():
    # In a process of its own, so that its peak resident size is this decoding's and nothing else's.
    run = subprocess.run([sys.executable, '-c', DECODE_IN_A_FRESH_PROCESS], input=flac_bomb(), capture_output=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    rows = [line.split('|') for line in run.stdout.decode().splitlines()]
    assert [name for name, _, _ in rows] == ['faster-whisper', 'openai-whisper']
    for name, grown_mb, outcome in rows:
        assert outcome == TOO_LONG and int(grown_mb) < 100, f'{name}: {outcome}, and the process grew by {grown_mb} MB'


# --- URLs -----------------------------------------------------------------------------------------

def test_a_trickling_url_is_cut_at_the_deadline_and_the_rest_of_the_batch_is_transcribed(whisper, audio_server):
    TricklingHandler.forget()
    slow, good = transcribe(whisper, PromptDoc(uri=f'http://{audio_server}/trickle'), english_clip())
    assert slow.error == DEADLINE_PASSED
    assert_understood(good)
    (trickle,) = finished_trickles()
    assert trickle['hung_up'] and trickle['sent'] < TRICKLE_BYTES  # the fetcher hung up; it did not wait it out


def test_slow_urls_of_one_batch_are_fetched_side_by_side(whisper, audio_server):
    TricklingHandler.forget()
    first, second, good = transcribe(
        whisper, PromptDoc(uri=f'http://{audio_server}/trickle?1'), PromptDoc(uri=f'http://{audio_server}/trickle?2'), english_clip(),
    )
    assert first.error == DEADLINE_PASSED and second.error == DEADLINE_PASSED
    assert_understood(good)
    finished_trickles()
    assert TricklingHandler.most_at_once == 2  # both were being fetched at once


def test_a_url_with_a_user_name_is_refused_and_never_fetched(whisper, audio_server):
    TricklingHandler.forget()
    fake_host, password, good = transcribe(
        whisper, PromptDoc(uri=f'http://evil.example@{audio_server}/clip.wav'),
        PromptDoc(uri=f'http://user:secret@{audio_server}/clip.wav'), english_clip(),
    )
    assert fake_host.error == CREDENTIALS_REFUSED and password.error == CREDENTIALS_REFUSED
    assert_understood(good)
    assert TricklingHandler.seen == []


# --- errors ---------------------------------------------------------------------------------------

def test_errors_quote_at_most_a_short_prefix_of_a_200_kb_value(whisper):
    huge = 'x' * 200_000
    language, port, scheme, path, good = transcribe(
        whisper, PromptDoc(blob=ENGLISH_CLIP.read_bytes(), language=huge), PromptDoc(uri=f'http://127.0.0.1:{huge}/'),
        PromptDoc(uri=f'{huge}:x'), PromptDoc(uri=huge), english_clip(),
    )
    assert language.error.startswith("unknown language 'xxx")
    assert port.error.startswith("malformed audio uri 'http://127.0.0.1:xxx")
    assert scheme.error.startswith("audio uri scheme 'xxx")
    assert path.error.startswith("audio path 'xxx")
    for doc in (language, port, scheme, path):
        assert len(doc.error) < 300, doc.error[:300]
    assert_understood(good)
    (request,) = transcribe(whisper, english_clip(), parameters={'language': huge})
    assert request.error.startswith('invalid parameters: language ') and len(request.error) < 300


def test_an_unexpected_failure_on_one_document_is_its_error_without_paths_and_the_batch_goes_on(whisper, monkeypatch):
    from executors.whisper import executor

    keep_speech = executor.keep_speech
    hostile_samples = 16000 * 2  # the 2 s waveform below

    def failing_on_the_hostile_clip(audio):
        if len(audio) == hostile_samples:
            raise RuntimeError(f'{ROOT}/executors/whisper/audio.py: something nobody anticipated')
        return keep_speech(audio)

    monkeypatch.setattr(executor, 'keep_speech', failing_on_the_hostile_clip)
    hostile, good = transcribe(whisper, PromptDoc(tensor=np.zeros(hostile_samples, dtype=np.float32)), english_clip())
    assert hostile.error == 'could not read the audio: RuntimeError'
    assert_understood(good)


# --- every field a client can set --------------------------------------------------------------------

ODD_STRINGS = [
    '', ' ', '\x00', 'a\x00b', 'a\r\nHost: evil', '\ud800', 'é', '../../etc/passwd', '/etc/passwd',
    'http://[::1', 'http://h:99999/x', 'http://h:abc/x', 'http://[zz]/', 'file:///etc/passwd', 'data:,', 'data:audio/wav;base64,%%%',
]
long_text = st.builds(lambda length: 'x' * length, st.sampled_from([300, 100_000]))  # built, so that failures do not print it
odd_text = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=20), long_text)
numbers = st.floats(allow_nan=True, allow_infinity=True, width=32)
waveforms = hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.int16, np.bool_]),
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=8), elements=None,
)
audio_files = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b'RIFF', (DATA / 'fox_in_snow_en.mp3').read_bytes()[:300], (DATA / 'not_audio.wav').read_bytes()]),
)


def allowed_urls(server: str):
    """URLs of the allowed host, with paths that no HTTP request line may hold among them."""
    paths = st.one_of(st.sampled_from(['clip.wav', 'a b', 'a\r\nHost: evil', '\x00', 'é', '\ud800', '%00', '?q=1#f']), st.text(max_size=8))
    return st.one_of(
        st.builds(lambda path: f'http://{server}/{path}', paths),
        st.sampled_from([f'http://evil.example@{server}/clip.wav', f'https://{server}/clip.wav', f'http://{server}']),
    )


def other_uris():
    return st.one_of(odd_text, st.sampled_from(['clip.wav', 'nothing.wav', 'data:audio/wav;base64,UklGRg==']))


def hostile_documents(server: str):
    """A document's fields as a client may set them: at most one audio source (each hides the next), and the rest."""
    audio = st.one_of(
        st.just({}), st.fixed_dictionaries({'blob': audio_files}),
        st.fixed_dictionaries({'uri': other_uris()}), st.fixed_dictionaries({'uri': allowed_urls(server)}),
        st.fixed_dictionaries({'tensor': st.one_of(waveforms, st.lists(numbers, max_size=4))},
                              optional={'sample_rate': st.one_of(st.sampled_from([0, -1, 8000, 2**31 - 1]), st.integers())}),
    )
    others = st.fixed_dictionaries({}, optional={
        'id': odd_text, 'language': st.one_of(st.just('en'), odd_text), 'seed': st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers()),
        'language_probability': numbers, 'transcript': odd_text, 'text': odd_text, 'error': st.just('an error the client set'),
        'segments': st.lists(st.builds(Segment, start=numbers, end=numbers, text=odd_text), max_size=2),
        'matches': st.lists(st.builds(GeneratedImage, png=st.binary(max_size=8), url=odd_text), max_size=1),
    })
    return st.builds(lambda source, rest: {**source, **rest}, audio, others)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data())
def test_no_document_fails_its_batch_whatever_its_fields_hold(whisper, audio_server, data):
    fields = data.draw(hostile_documents(audio_server), label='fields')
    try:
        hostile = PromptDoc(**fields)
    except ValidationError:  # refused where a request is parsed: it never reaches an executor
        return
    docs = DocList[PromptDoc]([hostile, english_clip()])
    try:
        docs = DocList[PromptDoc].from_protobuf(docs.to_protobuf())  # as a request carries it to the executor
        sendable = True
    except UnicodeEncodeError:  # a lone surrogate, which no request carries; the executor copes anyway
        sendable = False
    hostile, good = whisper.transcribe(docs, {})
    assert_understood(good)
    assert 'Traceback' not in hostile.error and str(ROOT) not in hostile.error and 'site-packages' not in hostile.error
    assert len(hostile.error) < 400
    if sendable:
        DocList[PromptDoc]([hostile, good]).to_protobuf()  # the answer can travel back
