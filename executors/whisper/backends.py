"""The Whisper implementations behind the executor, and the small interface they share.

A backend turns speech (mono float32 at SAMPLE_RATE, already VAD-filtered) into a Transcription
per clip. To add one (e.g. a GPU batch backend): implement ``WhisperBackend`` and register the
class in ``BACKENDS``; the executor picks it by name (its ``backend`` setting).
"""

import math
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Set, Tuple, Type

import numpy as np

from executors.whisper.audio import AudioPolicy, decode_bounded
from executors.whisper.settings import WhisperSettings
from s2i.contracts.documents import SAMPLE_RATE
from s2i.whisper_weights import bundled_ct2_model, bundled_openai_checkpoint

# Both backends decode the same way. Temperature 0 only: the same audio always gives the same
# prompt (and so, with a seed, the same image); the sampling fallback at higher temperatures
# turned weak translations into gibberish rather than better text.
# condition_on_previous_text=False keeps one window's mistakes out of the next.
DECODING = {'temperature': 0.0, 'condition_on_previous_text': False}
WHISPER_SETTINGS = WhisperSettings.model_fields  # the one home of EncoderWindow's defaults


@dataclass
class DecodedSegment:
    start: float  # seconds into the speech given
    end: float
    text: str
    no_speech_prob: float  # the decoder's probability that the window holds no speech
    avg_logprob: float  # mean log-probability of the window's tokens: low when the decoder is guessing
    compression_ratio: float  # gzip ratio of this segment's text: high for a decoder loop

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class Transcription:
    language: str
    language_probability: float  # 1.0 when the language was given
    segments: List[DecodedSegment]

    @property
    def text(self) -> str:
        return ' '.join(s.text.strip() for s in self.segments).strip()


@dataclass(frozen=True)
class EncoderWindow:
    """How much audio the encoder sees for a clip of up to 30 s of speech.

    Whisper was trained on 30 s windows, and its encoder costs as much for a 3 s clip padded to
    30 s as for 30 s of speech. The CTranslate2 encoder also takes fewer frames (whisper.cpp's
    `audio_ctx`): then a clip's window is its speech plus ``margin`` seconds, rounded up to a
    multiple of ``step`` seconds, if its language (the hint, else the one detected on that cropped
    window) is one of ``languages``; other clips get the full window. ``margin`` None is the full
    30 s window for every clip; ``languages`` None crops every language.

    The defaults are what bench/stt_accuracy.py justified (bench/RESULTS.md): with speech + 3 s,
    English clips lost no words against the full window; other languages turned into more
    refusals and looping translations, and a 1 s margin lost words in every language.

    The window depends on the clip alone, never on the rest of its batch: the same audio gives the
    same text (and so, with a seed, the same image) however requests were batched."""

    margin: Optional[float] = WHISPER_SETTINGS['encoder_margin'].default
    step: float = WHISPER_SETTINGS['encoder_step'].default
    languages: Optional[Tuple[str, ...]] = tuple(WHISPER_SETTINGS['encoder_languages'].default)

    FRAMES_PER_SECOND = 100  # Whisper's log-mel frames: a 10 ms hop
    FULL_FRAMES = 3000  # 30 s

    def frames(self, samples: int) -> int:
        if self.margin is None:
            return self.FULL_FRAMES
        seconds = math.ceil((samples / SAMPLE_RATE + self.margin) / self.step) * self.step
        frames = math.ceil(seconds * self.FRAMES_PER_SECOND / 2) * 2  # the encoder's first layer halves it
        return min(frames, self.FULL_FRAMES)

    def crops(self, language: str) -> bool:
        return self.margin is not None and (self.languages is None or language in self.languages)

    def __str__(self) -> str:
        if self.margin is None:
            return 'full 30 s window'
        which = '' if self.languages is None else f' for {", ".join(self.languages)} (others: the full 30 s window)'
        return f'speech + {self.margin:g} s, in steps of {self.step:g} s{which}'


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: bytes of the text over bytes of its zlib compression."""
    data = text.strip().encode('utf-8')
    return len(data) / len(zlib.compress(data)) if data else 0.0


def segment(start: float, end: float, text: str, no_speech_prob: float, avg_logprob: float) -> DecodedSegment:
    # The compression ratio is taken per segment, whichever backend decoded it: over a whole
    # window, speech that really says the same sentence three times reads as a decoder loop.
    return DecodedSegment(start, end, text, no_speech_prob, avg_logprob, compression_ratio(text))


class WhisperBackend(Protocol):
    """What the executor needs from a Whisper implementation; constructed as
    ``Backend(model, device, compute_type, cpu_threads, window)``."""

    window: EncoderWindow  # the window it really uses, which the executor logs

    model_path: str  # the weights it loaded: a folder, a checkpoint or a hub name
    is_multilingual: bool  # False: English-only weights, which neither detect nor translate
    languages: Set[str]  # ISO 639-1 codes it accepts as a language hint

    def load_audio(self, data: bytes, policy: AudioPolicy) -> np.ndarray:
        """An audio file's bytes as mono float32 at SAMPLE_RATE; raises on undecodable input."""

    def transcribe_batch(
        self, clips: Sequence[np.ndarray], task: str, languages: Sequence[Optional[str]], beam_size: int
    ) -> List[Transcription]:
        """One Transcription per clip; ``task`` is 'transcribe' or 'translate' (to English), a
        language None means detect it. A clip's result must not depend on the other clips."""


class FasterWhisperBackend:
    """CTranslate2 Whisper: int8 on CPU, float16 on CUDA unless ``compute_type`` says otherwise."""

    def __init__(self, model: str, device: str, compute_type: str, cpu_threads: int, window: EncoderWindow = EncoderWindow()):
        from faster_whisper import WhisperModel

        if compute_type in (None, '', 'auto'):
            compute_type = 'float16' if device.startswith('cuda') else 'int8'
        device_type, _, index = device.partition(':')
        self.model_path = bundled_ct2_model(model) or model
        self.model = WhisperModel(
            self.model_path, device=device_type, device_index=int(index or 0),
            compute_type=compute_type, cpu_threads=cpu_threads,
        )
        self.is_multilingual = self.model.model.is_multilingual
        self.languages = set(self.model.supported_languages)
        self.window = window

    @staticmethod
    def load_audio(data: bytes, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
        return decode_bounded(data, policy)  # PyAV, as faster-whisper's decode_audio, stopping at the limit

    def transcribe(self, audio: np.ndarray, task: str, language: Optional[str], beam_size: int) -> Transcription:
        """faster-whisper's own sequential transcribe: for speech longer than one 30 s window."""
        segments, info = self.model.transcribe(
            audio, task=task, language=language, beam_size=beam_size, vad_filter=False, **DECODING,
        )
        segments = [segment(s.start, s.end, s.text, s.no_speech_prob, s.avg_logprob) for s in segments]  # decodes
        return Transcription(info.language, info.language_probability, segments)

    def transcribe_batch(
        self, clips: Sequence[np.ndarray], task: str, languages: Sequence[Optional[str]], beam_size: int
    ) -> List[Transcription]:
        """Clips of up to 30 s share one encoder pass and one beam search; longer ones go one by one.

        A clip always takes the same path and the same window whatever else is in its batch, so its
        text does not depend on the batch."""
        results: List[Optional[Transcription]] = [None] * len(clips)
        windows: Dict[int, List[int]] = {}  # frames -> the short clips that get that window
        for i, clip in enumerate(clips):
            if len(clip) <= self.model.feature_extractor.n_samples:
                croppable = languages[i] is None or self.window.crops(languages[i])
                windows.setdefault(self.window.frames(len(clip)) if croppable else EncoderWindow.FULL_FRAMES, []).append(i)
        full = windows.pop(EncoderWindow.FULL_FRAMES, [])
        for frames, group in windows.items():  # each group padded to its window, not to 30 s
            decoded = self._decode_windows([clips[i] for i in group], frames, task, [languages[i] for i in group], beam_size)
            results_of(results, group, decoded)
            full += [i for i, transcription in zip(group, decoded) if transcription is None]  # not a cropped language
        if full:
            decoded = self._decode_windows([clips[i] for i in full], EncoderWindow.FULL_FRAMES, task, [languages[i] for i in full], beam_size)
            results_of(results, full, decoded)
        return [
            result if result is not None else self.transcribe(clip, task, language, beam_size)
            for clip, language, result in zip(clips, languages, results)
        ]

    def _decode_windows(
        self, clips: Sequence[np.ndarray], frames: int, task: str, languages: Sequence[Optional[str]], beam_size: int
    ) -> List[Optional[Transcription]]:
        """faster-whisper's BatchedInferencePipeline, applied across documents instead of across the
        chunks of one recording, with the sequential path's decoding settings.

        Not the pipeline itself: it takes one language hint and one task for the whole batch, and
        its per-chunk language detection reports no probability, which the executor's checks need;
        a separate detect_language call per clip would repeat the encoder pass that dominates the
        cost on a CPU. So this calls the public WhisperModel pieces (feature_extractor, encode,
        get_prompt and the CTranslate2 model's detect_language and generate) and splits the
        tokens at their timestamps itself, instead of the private _split_segments_by_timestamps.

        With a cropped window, a clip detected in a language the window does not crop gets None, to
        be decoded again with the full window."""
        from faster_whisper.audio import pad_or_trim

        model = self.model
        features = np.stack([pad_or_trim(model.feature_extractor(clip)[..., :-1], frames) for clip in clips])
        encoded = model.encode(features)
        detected = self._languages(encoded, languages)
        if frames < EncoderWindow.FULL_FRAMES:
            keep = [i for i, (language, _) in enumerate(detected) if self.window.crops(language)]
            if len(keep) < len(clips):  # the others go back for the full window; the rest encoded again (cheap, cropped)
                answers: List[Optional[Transcription]] = [None] * len(clips)
                if keep:
                    decoded = self._generate([clips[i] for i in keep], model.encode(features[keep]), [detected[i] for i in keep], task, beam_size)
                    results_of(answers, keep, decoded)
                return answers
        return self._generate(clips, encoded, detected, task, beam_size)

    def _generate(
        self, clips: Sequence[np.ndarray], encoded, detected: Sequence[Tuple[str, float]], task: str, beam_size: int
    ) -> List[Transcription]:
        """One beam search over the clips' encoder output, each in its (language, probability)."""
        model = self.model
        tokenizers = [self._tokenizer(task, language) for language, _ in detected]
        results = model.model.generate(
            encoded, [model.get_prompt(tokenizer, []) for tokenizer in tokenizers],
            beam_size=beam_size, max_length=model.max_length, return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=self._suppressed_tokens(tokenizers[0]),
            max_initial_timestamp_index=int(round(1.0 / model.time_precision)),  # faster-whisper's default, 1 s
        )
        transcriptions = []
        for clip, (language, probability), tokenizer, result in zip(clips, detected, tokenizers, results):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # as faster-whisper: length_penalty 1
            seconds = len(clip) / SAMPLE_RATE
            segments = [
                segment(start, min(end, seconds), text, result.no_speech_prob, avg_logprob)
                for start, end, piece in split_at_timestamps(tokens, tokenizer.timestamp_begin, model.time_precision, seconds)
                if (text := tokenizer.decode(piece)).strip() and start != end
            ]
            transcriptions.append(Transcription(language, probability, segments))
        return transcriptions

    def _languages(self, encoded, hints: Sequence[Optional[str]]) -> List[Tuple[str, float]]:
        """The hint where given, else the most probable language of the window (as faster-whisper does)."""
        if not self.is_multilingual:
            return [('en', 1.0)] * len(hints)
        if all(hints):
            return [(hint, 1.0) for hint in hints]
        ranked = self.model.model.detect_language(encoded)  # per clip: [('<|de|>', p), ...], most probable first
        return [(hint, 1.0) if hint else (ranking[0][0][2:-2], ranking[0][1]) for hint, ranking in zip(hints, ranked)]

    def _tokenizer(self, task: str, language: str):
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self.model.hf_tokenizer, self.is_multilingual, task=task, language=language)

    @staticmethod
    def _suppressed_tokens(tokenizer) -> Tuple[int, ...]:
        from faster_whisper.transcribe import get_suppressed_tokens

        return get_suppressed_tokens(tokenizer, [-1])  # faster-whisper's default: the non-speech symbols


def results_of(results: List[Optional[Transcription]], indices: Sequence[int], decoded: Sequence[Optional[Transcription]]) -> None:
    for i, transcription in zip(indices, decoded):
        results[i] = transcription


def split_at_timestamps(
    tokens: Sequence[int], timestamp_begin: int, time_precision: float, seconds: float
) -> List[Tuple[float, float, List[int]]]:
    """(start, end, text tokens) of each segment of one decoded window, as Whisper's timestamp tokens mark them.

    Two timestamp tokens in a row close one segment and open the next. Text after the last
    timestamp pair is kept up to the clip's end (the window is not decoded again, as it would be
    in a sequential transcription); a window without timestamps is one segment."""

    def time(token: int) -> float:
        return (token - timestamp_begin) * time_precision

    is_time = [token >= timestamp_begin for token in tokens]
    text = [token for token, stamp in zip(tokens, is_time) if not stamp]
    cuts = [i for i in range(1, len(tokens)) if is_time[i] and is_time[i - 1]]
    if not cuts:
        times = [time(token) for token, stamp in zip(tokens, is_time) if stamp]
        return [(0.0, times[-1] if times and times[-1] > 0 else seconds, text)]
    pieces = []
    for first, last in zip([0] + cuts, cuts + [len(tokens)]):
        piece = tokens[first:last]
        start = time(piece[0]) if is_time[first] else (pieces[-1][1] if pieces else 0.0)
        end = time(piece[-1]) if is_time[last - 1] else seconds
        pieces.append((start, end, [token for token in piece if token < timestamp_begin]))
    return pieces


class OpenAIWhisperBackend:
    """The reference PyTorch implementation: a model name (downloaded) or a local ``.pt`` checkpoint.

    'base' and 'tiny.en' use the bundled CTranslate2 weights converted to a checkpoint, so both
    backends run the same weights offline. Its encoder always sees the full 30 s window, whatever
    ``window`` asks for (the executor logs a warning when it asked for less)."""

    def __init__(self, model: str, device: str, compute_type: str, cpu_threads: int, window: EncoderWindow = EncoderWindow()):
        import torch
        import whisper

        self.window = EncoderWindow(margin=None)
        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.model_path = bundled_openai_checkpoint(model) or model
        self.model = whisper.load_model(self.model_path, device=device)
        self.fp16 = device.startswith('cuda') and compute_type in (None, '', 'auto', 'float16')
        self.is_multilingual = self.model.is_multilingual
        self.languages = set(whisper.tokenizer.LANGUAGES) if self.is_multilingual else {'en'}

    @staticmethod
    def load_audio(data: bytes, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
        # Not whisper.load_audio: its ffmpeg decodes the whole file and the executor reads all it
        # writes. Even with -t, ffmpeg's resampler grew to 2.1 GB on an 8 kB FLAC holding one 65535 s
        # frame at 1 Hz before -t could cut anything. decode_bounded is the same FFmpeg (PyAV),
        # measuring each frame before it is resampled; both backends hear the same waveform.
        return decode_bounded(data, policy)

    def transcribe(self, audio: np.ndarray, task: str, language: Optional[str], beam_size: int) -> Transcription:
        probability = 1.0
        if language is None:
            language, probability = self._detect_language(audio)
        result = self.model.transcribe(
            audio, task=task, language=language, beam_size=beam_size, fp16=self.fp16, verbose=None, **DECODING,
        )
        segments = [segment(s['start'], s['end'], s['text'], s['no_speech_prob'], s['avg_logprob']) for s in result['segments']]
        return Transcription(language, probability, segments)

    def transcribe_batch(
        self, clips: Sequence[np.ndarray], task: str, languages: Sequence[Optional[str]], beam_size: int
    ) -> List[Transcription]:
        """One by one: this backend is the reference implementation, kept as it is."""
        return [self.transcribe(clip, task, language, beam_size) for clip, language in zip(clips, languages)]

    def _detect_language(self, audio: np.ndarray) -> Tuple[str, float]:
        import whisper

        if not self.is_multilingual:
            return 'en', 1.0
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), self.model.dims.n_mels).to(self.model.device)
        _, probabilities = self.model.detect_language(mel)
        language = max(probabilities, key=probabilities.get)
        return language, float(probabilities[language])


BACKENDS: Dict[str, Type[WhisperBackend]] = {'faster-whisper': FasterWhisperBackend, 'openai-whisper': OpenAIWhisperBackend}
