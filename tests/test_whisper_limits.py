"""Bad input gets a documented error on its own document; the other documents of the request still succeed.

Audio fixtures are made here (tests/audio_files.py) or taken from tests/data; limits are set small
in the executors under test, so no test sends anything big.
"""

import numpy as np
import pytest
from docarray import DocList

from executors.whisper.audio import AudioError, AudioPolicy, decode_bounded
from executors.whisper.backends import BACKENDS, Transcription, segment
from executors.whisper.executor import WhisperExecutor
from executors.whisper.quality import NO_SPEECH, UNUSABLE_SPEECH, SpeechChecks, judge, judge_translation, usable_segments
from s2i.contracts.documents import SAMPLE_RATE, ParameterSchema, PromptDoc
from s2i.encoding import to_data_uri

from audio_files import silence, wav_bytes, white_noise
from conftest import DATA, ENGLISH_CLIP, transcribe

BYTE_LIMIT = 200_000  # the English clip (112 kB) fits
SECONDS_LIMIT = 20


@pytest.fixture(scope='module')
def limited_whisper():
    """The bundled English tiny model (quick to load) with small limits, as config.yml would set them."""
    return WhisperExecutor(model='tiny.en', device='cpu', max_audio_bytes=BYTE_LIMIT, max_audio_seconds=SECONDS_LIMIT)


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
        assert result.error_code == ('no_speech' if error == NO_SPEECH else 'audio_unreadable'), name
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
    assert as_blob.error_code == as_uri.error_code == 'input_too_large'
    assert_english_clip_understood(good)


@pytest.mark.slow
def test_a_ten_minute_recording_is_rejected_from_its_header_without_decoding(whisper_base, monkeypatch):
    ten_minutes = wav_bytes(np.zeros(600 * 8000, dtype=np.float32), rate=8000)  # 9.6 MB: under the default byte limit
    decoded = []
    monkeypatch.setattr(whisper_base.backend, 'load_audio', lambda *args: decoded.append(args))
    (doc,) = transcribe(whisper_base, PromptDoc(blob=ten_minutes))
    assert doc.error == 'audio too long: 600.0 s, the limit is 300 s (max_audio_seconds)'
    assert doc.error_code == 'audio_too_long'
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
    # probability give it away (bench/speech_signals.py measures them).
    monkeypatch.setattr(whisper_base, 'vad_filter', False)
    noise, speech = transcribe(whisper_base, PromptDoc(tensor=white_noise(5)), PromptDoc(blob=ENGLISH_CLIP.read_bytes()))
    assert noise.error.startswith(f'{UNUSABLE_SPEECH}: ') and noise.error_code == 'no_speech'
    assert any(signal in noise.error for signal in ('compression ratio', 'no_speech_prob', 'avg_logprob'))
    assert noise.text == '' and noise.transcript == ''
    assert_english_clip_understood(speech)


# --- is the text what was said? (quality.py) -----------------------------------------------------

def said(text='a red fox', no_speech_prob=0.1, avg_logprob=-0.4, start=0.0, end=1.0):
    return segment(start, end, text, no_speech_prob, avg_logprob)


@pytest.mark.parametrize(
    'signals, reason',
    [
        ({'text': 'the ' * 40}, 'the text repeats itself (compression ratio'),
        ({'no_speech_prob': 0.7}, 'the model hears no speech (no_speech_prob 0.70 > 0.6)'),
        ({'avg_logprob': -1.34}, 'the model is guessing (avg_logprob -1.34 < -1)'),
    ],
)
def test_each_hallucination_signal_rejects_a_segment_and_names_itself(signals, reason):
    kept, why = usable_segments([said(**signals), said(text='the sun')], SpeechChecks())
    assert [s.text for s in kept] == ['the sun']
    assert why.startswith(reason)


def test_a_switched_off_check_keeps_the_segment():
    kept, why = usable_segments([said(avg_logprob=-3.0)], SpeechChecks(min_avg_logprob=None))
    assert len(kept) == 1 and why is None


def test_sentences_said_three_times_pass_while_a_decoder_loop_fails():
    sentence = 'A red fox runs through the snow under a full moon.'
    repeated = Transcription('en', 0.9, [said(sentence, start=4.0 * i, end=4.0 * i + 3.5) for i in range(3)])
    loop = Transcription('en', 0.9, [said('the ' * 60, end=12.0)])
    assert judge(repeated, 12.0, False, SpeechChecks()) is None
    assert judge(loop, 12.0, False, SpeechChecks()).message.startswith(f'{UNUSABLE_SPEECH}: the text repeats itself')


@pytest.mark.parametrize(
    'result, speech_seconds, error, code',
    [
        (Transcription('es', 0.30, [said('Gracias.', end=0.4)]), 3.0, 'no usable speech: the text covers 0.4 s of 3.0 s of speech', 'no_speech'),
        (Transcription('en', 0.9, [said('Yes.', end=0.6)]), 0.6, 'no usable speech: too little speech (0.6 s < 1 s)', 'no_speech'),
        (Transcription('th', 0.42, [said("Let's go to the next episode.", end=2.0)]), 2.0,
         'the spoken language is uncertain (th, p=0.42): send `language`', 'language_uncertain'),
        (Transcription('en', 0.9, [said('ab ' * 100, end=4.0)]), 4.0, 'no usable speech: the text repeats itself', 'no_speech'),
    ],
    ids=['cut', 'fragment', 'uncertain-language', 'loop'],
)
def test_documents_whose_text_is_not_what_was_said_get_an_error_that_says_why(result, speech_seconds, error, code):
    problem = judge(result, speech_seconds, False, SpeechChecks())  # the shipped thresholds
    assert problem.message.startswith(error) and problem.code == code


def test_a_looping_translation_is_refused_but_a_low_confidence_one_passes():
    """The loop bench/stt_accuracy.py caught on the Italian fixture with a cropped window."""
    loop = Transcription('it', 1.0, [said('long, ' * 60, avg_logprob=-0.2, end=7.5)])
    plain = Transcription('it', 1.0, [said('My grandfather walks in the mountains.', avg_logprob=-1.4, no_speech_prob=0.7, end=7.5)])
    assert judge_translation(loop, 7.5, SpeechChecks()).message.startswith(f'{UNUSABLE_SPEECH}: the translation to English repeats itself')
    assert judge_translation(plain, 7.5, SpeechChecks()) is None
    assert judge_translation(Transcription('it', 1.0, []), 7.5, SpeechChecks()).message.endswith('the translation to English came out empty')


def test_a_language_hint_skips_the_language_check():
    result = Transcription('th', 0.2, [said("Let's go to the next episode.", end=2.0)])
    assert judge(result, 2.0, True, SpeechChecks()) is None


# --- the executor around any backend (a stand-in: no weights needed) --------------------------------

class StandIn:
    """A WhisperBackend that hears German unless told otherwise, and translates it to English."""

    def __init__(self, model, device, compute_type, cpu_threads, window):
        self.model_path, self.is_multilingual, self.languages, self.window = model, True, {'en', 'de'}, window

    def load_audio(self, data, policy):
        return decode_bounded(data, policy)

    def transcribe_batch(self, clips, task, languages, beam_size):
        results = []
        for clip, language in zip(clips, languages):
            language = language or 'de'
            text = 'a small dog' if task == 'translate' or language == 'en' else 'ein kleiner Hund'
            results.append(Transcription(language, 0.99, [segment(0.0, len(clip) / SAMPLE_RATE, text, 0.05, -0.3)]))
        return results


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setitem(BACKENDS, 'stand-in', StandIn)
    return 'stand-in'


def speech(**fields) -> PromptDoc:
    return PromptDoc(blob=ENGLISH_CLIP.read_bytes(), **fields)


def test_a_turbo_model_refuses_to_translate_but_transcribes_english(stand_in):
    turbo = WhisperExecutor(backend=stand_in, model='large-v3-turbo', device='cpu')
    foreign, english = transcribe(turbo, speech(), speech(language='en'))
    assert foreign.error.startswith('cannot translate to English: large-v3-turbo was trained without translation data')
    assert foreign.error_code == 'cannot_translate'
    assert foreign.text == ''
    assert english.error == '' and english.text == 'a small dog'


def test_a_turbo_model_translates_when_the_setting_allows_it(stand_in):
    turbo = WhisperExecutor(backend=stand_in, model='large-v3-turbo', device='cpu', translate_with_turbo=True)
    (doc,) = transcribe(turbo, speech())
    assert doc.error == '' and doc.transcript == 'ein kleiner Hund' and doc.text == 'a small dog'


def test_backend_and_model_come_from_the_environment_unless_given(stand_in, monkeypatch):
    monkeypatch.setenv('S2I_WHISPER_BACKEND', stand_in)
    monkeypatch.setenv('S2I_WHISPER_MODEL', 'my-model')
    assert WhisperExecutor(device='cpu').backend.model_path == 'my-model'
    assert WhisperExecutor(model='given', device='cpu').backend.model_path == 'given'


def test_the_parameters_endpoint_describes_the_keys_and_the_configured_defaults(stand_in):
    executor = WhisperExecutor(backend=stand_in, device='cpu', request_defaults={'beam_size': 2})
    (schema,) = executor.describe_parameters(DocList[ParameterSchema]())
    assert schema.keys == ['beam_size', 'language']
    assert schema.json_schema['properties']['beam_size']['default'] == 2


def test_bad_request_defaults_stop_the_executor_at_start_up(stand_in):
    with pytest.raises(ValueError, match='request_defaults: beam_size'):
        WhisperExecutor(backend=stand_in, device='cpu', request_defaults={'beam_size': 0})
