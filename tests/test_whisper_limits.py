"""Bad input gets a documented error on its own document; the other documents of the request still succeed.

Audio fixtures are made here (tests/audio_files.py) or taken from tests/data; limits are set small
in the executors under test, so no test sends anything big.
"""

import numpy as np
import pytest
from docarray import DocList

from executors.whisper.executor import NO_SPEECH, UNUSABLE_SPEECH, DecodedSegment, SpeechThresholds, WhisperExecutor, usable_segments
from s2i.audio_input import AudioError, AudioPolicy, decode_bounded
from s2i.docs import SAMPLE_RATE, PromptDoc
from s2i.encoding import to_data_uri

from audio_files import silence, wav_bytes, white_noise
from conftest import DATA, ENGLISH_CLIP

BYTE_LIMIT = 200_000  # the English clip (112 kB) fits
SECONDS_LIMIT = 20


@pytest.fixture(scope='module')
def limited_whisper():
    """The bundled English tiny model (quick to load) with small limits, as config.yml would set them."""
    return WhisperExecutor(model='tiny.en', device='cpu', max_audio_bytes=BYTE_LIMIT, max_audio_seconds=SECONDS_LIMIT)


def transcribe(executor, *docs) -> DocList[PromptDoc]:
    return executor.transcribe(DocList[PromptDoc](docs), {})


def assert_english_clip_understood(doc):
    assert doc.error == '' and 'fox' in doc.text.lower()


# --- audio --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_each_bad_clip_gets_its_own_error_and_the_good_one_in_the_same_request_is_transcribed(limited_whisper):
    mp3 = (DATA / 'fox_in_snow_en.mp3').read_bytes()
    cases = {
        'empty': (PromptDoc(blob=b''), 'empty audio: the file has 0 bytes'),
        'truncated mp3': (PromptDoc(blob=mp3[:200]), 'could not decode audio: InvalidDataError'),
        'text named .wav': (PromptDoc(blob=(DATA / 'not_audio.wav').read_bytes()), 'could not decode audio: InvalidDataError'),
        '5 s of silence': (PromptDoc(blob=wav_bytes(silence(5))), NO_SPEECH),
        '5 s of white noise': (PromptDoc(blob=wav_bytes(white_noise(5))), NO_SPEECH),
        'unknown sample format': (PromptDoc(blob=wav_bytes(silence(1), format_tag=0x1234)), 'could not decode audio: DecoderNotFoundError'),
        'tensor shape': (PromptDoc(tensor=np.zeros((3, 4, 5), dtype=np.float32)), 'waveform tensor must be mono'),
        'tensor dtype': (PromptDoc(tensor=np.zeros(16000, dtype=np.int16)), 'waveform tensor must be float'),
        'tensor NaN': (PromptDoc(tensor=np.full(16000, np.nan, dtype=np.float32)), 'waveform tensor holds NaN or infinite values'),
    }
    good = PromptDoc(blob=ENGLISH_CLIP.read_bytes())
    results = transcribe(limited_whisper, *(doc for doc, _ in cases.values()), good)
    for (name, (_, error)), result in zip(cases.items(), results):
        assert result.error.startswith(error), (name, result.error)
        assert result.text == '', name
    assert_english_clip_understood(results[-1])


@pytest.mark.slow
def test_audio_over_the_byte_limit_is_rejected_whether_sent_as_bytes_or_as_a_data_uri(limited_whisper):
    too_big = ENGLISH_CLIP.read_bytes() + bytes(BYTE_LIMIT)  # a valid WAV, padded past the limit
    as_blob, as_uri, good = transcribe(
        limited_whisper,
        PromptDoc(blob=too_big),
        PromptDoc(uri=to_data_uri(too_big, 'audio/wav')),
        PromptDoc(blob=ENGLISH_CLIP.read_bytes()),
    )
    assert as_blob.error == f'audio too large: {len(too_big)} bytes, the limit is {BYTE_LIMIT} bytes (max_audio_bytes)'
    assert as_uri.error.startswith('audio too large: ') and as_uri.error.endswith(f'the limit is {BYTE_LIMIT} bytes (max_audio_bytes)')
    assert_english_clip_understood(good)


@pytest.mark.slow
def test_a_ten_minute_recording_is_rejected_from_its_header_without_decoding(whisper_base, monkeypatch):
    ten_minutes = wav_bytes(np.zeros(600 * 8000, dtype=np.float32), rate=8000)  # 9.6 MB: under the default byte limit
    decoded = []
    monkeypatch.setattr(whisper_base.backend, 'load_audio', lambda *args: decoded.append(args))
    (doc,) = transcribe(whisper_base, PromptDoc(blob=ten_minutes))
    assert doc.error == 'audio too long: 600.0 s, the limit is 300 s (max_audio_seconds)'
    assert decoded == []  # the decoder never ran


def test_decoding_stops_at_the_duration_limit_when_the_header_says_nothing_useful():
    # The English clip is 3.5 s; a decoder that went on to the end would not stop at 1 s.
    with pytest.raises(AudioError, match=r'audio too long: more than 1 s \(max_audio_seconds\); decoding stopped there'):
        decode_bounded(ENGLISH_CLIP.read_bytes(), AudioPolicy(max_seconds=1))
    assert decode_bounded(ENGLISH_CLIP.read_bytes(), AudioPolicy(max_seconds=4)).size == pytest.approx(3.5 * SAMPLE_RATE, rel=0.01)


@pytest.mark.slow
def test_a_waveform_tensor_over_the_duration_limit_is_rejected(limited_whisper):
    (doc,) = transcribe(limited_whisper, PromptDoc(tensor=np.zeros((SECONDS_LIMIT + 1) * SAMPLE_RATE, dtype=np.float32)))
    assert doc.error == f'audio too long: {SECONDS_LIMIT + 1:.1f} s, the limit is {SECONDS_LIMIT} s (max_audio_seconds)'


@pytest.mark.slow
def test_non_speech_that_passes_vad_is_caught_by_whispers_own_signals_and_says_why(whisper_base, monkeypatch):
    # With VAD off, Whisper turns noise into fluent text; its compression ratio and no-speech
    # probability give it away (measured: PERF-NOTES.md).
    monkeypatch.setattr(whisper_base, 'vad_filter', False)
    noise, speech = transcribe(whisper_base, PromptDoc(tensor=white_noise(5)), PromptDoc(blob=ENGLISH_CLIP.read_bytes()))
    assert noise.error.startswith(f'{UNUSABLE_SPEECH}: ')
    assert any(signal in noise.error for signal in ('compression ratio', 'no_speech_prob', 'avg_logprob'))
    assert noise.text == '' and noise.transcript == ''
    assert_english_clip_understood(speech)


def segment(text='a red fox', no_speech_prob=0.1, avg_logprob=-0.4, compression_ratio=1.0):
    return DecodedSegment(0.0, 1.0, text, no_speech_prob, avg_logprob, compression_ratio)


@pytest.mark.parametrize(
    'signals, reason',
    [
        ({'compression_ratio': 13.1}, 'the text repeats itself (compression ratio 13.10 > 2.4)'),
        ({'no_speech_prob': 0.7}, 'the model hears no speech (no_speech_prob 0.70 > 0.6)'),
        ({'avg_logprob': -1.34}, 'the model is guessing (avg_logprob -1.34 < -1)'),
    ],
)
def test_each_hallucination_signal_rejects_a_segment_and_names_itself(signals, reason):
    kept, why = usable_segments([segment(**signals), segment(text='the sun')], SpeechThresholds())
    assert [s.text for s in kept] == ['the sun']
    assert why == reason


def test_a_switched_off_check_keeps_the_segment():
    kept, why = usable_segments([segment(avg_logprob=-3.0)], SpeechThresholds(min_avg_logprob=None))
    assert len(kept) == 1 and why is None
