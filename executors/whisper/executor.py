"""WhisperExecutor: speech in any language -> transcript, detected language and English text."""

import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from docarray import DocList
from jina import Executor, requests

from s2i.audio_input import AudioError, AudioPolicy, audio_bytes, check_duration, decode_bounded, header_duration
from s2i.docs import SAMPLE_RATE, PromptDoc, Segment, mark_failed
from s2i.params import ParameterError, TranscriptionParams
from s2i.runtime import resolve_device
from s2i.whisper_weights import bundled_ct2_model, bundled_openai_checkpoint

NO_SPEECH = 'no speech detected'  # VAD found none, or the decoder produced no text
UNUSABLE_SPEECH = 'no usable speech'  # the decoder's own signals say its text is not what was said
# Both backends decode the same way. Temperature 0 only: the same audio always gives the same
# prompt (and so, with a seed, the same image); the sampling fallback at higher temperatures
# turned weak translations into gibberish rather than better text.
# condition_on_previous_text=False keeps one window's mistakes out of the next.
DECODING = {'temperature': 0.0, 'condition_on_previous_text': False}


@dataclass
class DecodedSegment:
    start: float  # seconds into the audio given
    end: float
    text: str
    no_speech_prob: float  # the decoder's probability that the window holds no speech
    avg_logprob: float  # mean log-probability of the tokens: low when the decoder is guessing
    compression_ratio: float  # gzip ratio of the text: high for repetition loops


@dataclass
class Transcription:
    language: str
    language_probability: float
    segments: List[DecodedSegment]

    @property
    def text(self) -> str:
        return ' '.join(s.text.strip() for s in self.segments).strip()


@dataclass(frozen=True)
class SpeechThresholds:
    """Whisper's own hallucination signals (its defaults); None switches a check off."""

    max_no_speech_prob: Optional[float] = 0.6
    min_avg_logprob: Optional[float] = -1.0
    max_compression_ratio: Optional[float] = 2.4

    def why_unusable(self, segment: DecodedSegment) -> Optional[str]:
        if self.max_compression_ratio is not None and segment.compression_ratio > self.max_compression_ratio:
            return f'the text repeats itself (compression ratio {segment.compression_ratio:.2f} > {self.max_compression_ratio:g})'
        if self.max_no_speech_prob is not None and segment.no_speech_prob > self.max_no_speech_prob:
            return f'the model hears no speech (no_speech_prob {segment.no_speech_prob:.2f} > {self.max_no_speech_prob:g})'
        if self.min_avg_logprob is not None and segment.avg_logprob < self.min_avg_logprob:
            return f'the model is guessing (avg_logprob {segment.avg_logprob:.2f} < {self.min_avg_logprob:g})'
        return None


def usable_segments(segments: Sequence[DecodedSegment], thresholds: SpeechThresholds) -> Tuple[List[DecodedSegment], Optional[str]]:
    """The segments the thresholds accept, and why the first rejected one was rejected (None if none was)."""
    kept, reasons = [], []
    for segment in segments:
        reason = thresholds.why_unusable(segment)
        if reason:
            reasons.append(reason)
        else:
            kept.append(segment)
    return kept, (reasons[0] if reasons else None)


class WhisperExecutor(Executor):
    """Transcribes audio, detects its language and translates it to English.

    Documents without audio (text prompts) pass through untouched; documents whose audio
    cannot be decoded or holds no speech get an ``error`` and no text.
    """

    def __init__(
        self,
        backend: str = 'faster-whisper',
        model: str = 'base',
        device: str = 'auto',
        compute_type: str = 'auto',
        beam_size: int = 5,
        vad_filter: bool = True,
        cpu_threads: int = 0,
        max_audio_bytes: int = AudioPolicy.max_bytes,
        max_audio_seconds: float = AudioPolicy.max_seconds,
        input_dir: Optional[str] = None,
        allowed_url_hosts: Optional[List[str]] = None,
        max_no_speech_prob: Optional[float] = SpeechThresholds.max_no_speech_prob,
        min_avg_logprob: Optional[float] = SpeechThresholds.min_avg_logprob,
        max_compression_ratio: Optional[float] = SpeechThresholds.max_compression_ratio,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
        device = resolve_device(device)
        started = time.perf_counter()
        self.backend = BACKENDS[backend](model, device, compute_type, cpu_threads)
        self.defaults = TranscriptionParams(beam_size=beam_size)
        self.vad_filter = vad_filter
        self.policy = AudioPolicy(
            max_bytes=max_audio_bytes, max_seconds=max_audio_seconds, input_dir=input_dir or None,
            allowed_url_hosts=tuple(allowed_url_hosts or ()),
        )
        self.thresholds = SpeechThresholds(max_no_speech_prob, min_avg_logprob, max_compression_ratio)
        self.logger.info(
            f'{backend} {model} ({self.backend.model_path}) on {device} '
            f'loaded in {time.perf_counter() - started:.1f}s'
        )

    @requests(on='/generate')
    def transcribe(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        try:
            params = TranscriptionParams.from_request(self.defaults, parameters)
        except ParameterError as e:
            mark_failed(docs, f'invalid parameters: {e}')
            return docs
        for doc in docs:
            if doc.has_audio and not doc.error:
                self._transcribe_doc(doc, params)
        return docs

    def _transcribe_doc(self, doc: PromptDoc, params: TranscriptionParams) -> None:
        started = time.perf_counter()
        language = doc.language or params.language
        if language is not None and language not in self.backend.languages:
            doc.error = f'unknown language {language!r}; known: {", ".join(sorted(self.backend.languages))}'
            return
        try:
            audio = self._load_audio(doc)
        except AudioError as e:
            doc.error = str(e)
            return
        speech, timeline = keep_speech(audio) if self.vad_filter else (audio, None)
        if not speech.size:
            doc.error = NO_SPEECH
            return
        try:
            self._transcribe_speech(doc, speech, timeline, language, params)
        except Exception as e:  # a bad language hint, a backend failure: this document only
            self.logger.error('transcription failed', exc_info=True)
            doc.error = f'transcription failed: {type(e).__name__}: {e}'
            return
        if not doc.error:
            self.logger.info(
                f'{len(audio) / SAMPLE_RATE:.1f}s of audio, {doc.language} (p={doc.language_probability:.2f}) '
                f'in {time.perf_counter() - started:.1f}s: {doc.text!r}'
            )

    def _transcribe_speech(
        self, doc: PromptDoc, speech: np.ndarray, timeline, language: Optional[str], params: TranscriptionParams
    ) -> None:
        result = self.backend.transcribe(speech, 'transcribe', language, params.beam_size)
        if not result.text:
            doc.error = NO_SPEECH
            return
        # Hallucinations on non-speech come out fluent; the decoder's own signals give them away.
        # The translation pass is not filtered: translating lowers avg_logprob even for clear speech.
        result.segments, reason = usable_segments(result.segments, self.thresholds)
        if not result.text:
            doc.error = f'{UNUSABLE_SPEECH}: {reason}'
            return
        doc.language, doc.language_probability = result.language, result.language_probability
        doc.transcript = result.text
        doc.segments = DocList[Segment](
            Segment(start=to_original_time(timeline, s.start), end=to_original_time(timeline, s.end, True), text=s.text.strip())
            for s in result.segments
        )
        doc.text = self._english_text(speech, result, params)

    def _english_text(self, speech: np.ndarray, transcription: Transcription, params: TranscriptionParams) -> str:
        if transcription.language == 'en' or not self.backend.is_multilingual:
            return transcription.text
        translation = self.backend.transcribe(speech, 'translate', transcription.language, params.beam_size)
        return translation.text

    def _load_audio(self, doc: PromptDoc) -> np.ndarray:
        if doc.tensor is not None:
            return waveform_from_tensor(np.asarray(doc.tensor), doc.sample_rate, self.policy.max_seconds)
        data = audio_bytes(doc.blob, doc.uri, self.policy)  # size and uri checks; only bytes reach a decoder
        announced = header_duration(data)
        if announced is not None:
            check_duration(announced, self.policy)
        try:
            audio = self.backend.load_audio(data, self.policy)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f'could not decode audio: {type(e).__name__}: {e}') from e
        if not audio.size:
            raise AudioError('could not decode audio: no audio samples found')
        check_duration(len(audio) / SAMPLE_RATE, self.policy)  # for containers without a duration
        return audio


def waveform_from_tensor(tensor: np.ndarray, sample_rate: int, max_seconds: float = AudioPolicy.max_seconds) -> np.ndarray:
    if sample_rate != SAMPLE_RATE:
        raise AudioError(f'waveform tensors must be sampled at {SAMPLE_RATE} Hz, got {sample_rate}; resample or send the file bytes')
    if not np.issubdtype(tensor.dtype, np.floating):
        raise AudioError(f'waveform tensor must be float in [-1, 1], got dtype {tensor.dtype}')
    if tensor.ndim == 2 and min(tensor.shape) <= 2:  # (channels, samples) or (samples, channels)
        tensor = tensor.mean(axis=int(np.argmin(tensor.shape)))
    if tensor.ndim != 1 or not tensor.size:
        raise AudioError(f'waveform tensor must be mono (samples,) or (channels<=2, samples), got shape {tensor.shape}')
    check_duration(tensor.size / SAMPLE_RATE, AudioPolicy(max_seconds=max_seconds))
    if not np.isfinite(tensor).all():
        raise AudioError('waveform tensor holds NaN or infinite values')
    return tensor.astype(np.float32)


def keep_speech(audio: np.ndarray):
    """Silero VAD (as bundled with faster-whisper): the speech-only audio and a map back to original times.

    Both backends get the same filtered audio, so silence is never transcribed, whichever runs.
    """
    from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(audio, VadOptions(), sampling_rate=SAMPLE_RATE)
    if not chunks:
        return np.zeros(0, dtype=np.float32), None
    speech = np.concatenate([audio[c['start'] : c['end']] for c in chunks])
    return speech, SpeechTimestampsMap(chunks, SAMPLE_RATE)


def to_original_time(timeline, seconds: float, is_end: bool = False) -> float:
    return round(seconds, 2) if timeline is None else timeline.get_original_time(seconds, is_end=is_end)


class FasterWhisperBackend:
    """CTranslate2 Whisper: int8 on CPU, float16 on CUDA unless ``compute_type`` says otherwise."""

    def __init__(self, model: str, device: str, compute_type: str, cpu_threads: int):
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

    def load_audio(self, data: bytes, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
        return decode_bounded(data, policy)  # PyAV, as faster-whisper's decode_audio, stopping at the limit

    def transcribe(self, audio: np.ndarray, task: str, language: Optional[str], beam_size: int) -> Transcription:
        segments, info = self.model.transcribe(
            audio, task=task, language=language, beam_size=beam_size, vad_filter=False, **DECODING,
        )
        segments = [  # the generator does the decoding
            DecodedSegment(s.start, s.end, s.text, s.no_speech_prob, s.avg_logprob, s.compression_ratio) for s in segments
        ]
        return Transcription(info.language, info.language_probability, segments)


class OpenAIWhisperBackend:
    """The reference PyTorch implementation: a model name (downloaded) or a local ``.pt`` checkpoint.

    'base' and 'tiny.en' use the bundled CTranslate2 weights converted to a checkpoint, so both
    backends run the same weights offline."""

    def __init__(self, model: str, device: str, compute_type: str, cpu_threads: int):
        import torch
        import whisper

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.model_path = bundled_openai_checkpoint(model) or model
        self.model = whisper.load_model(self.model_path, device=device)
        self.fp16 = device.startswith('cuda') and compute_type in (None, '', 'auto', 'float16')
        self.is_multilingual = self.model.is_multilingual
        self.languages = set(whisper.tokenizer.LANGUAGES) if self.is_multilingual else {'en'}

    def load_audio(self, data: bytes, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
        import whisper

        # whisper.load_audio runs ffmpeg on a path; a real file lets ffmpeg seek (mp4/m4a need that).
        # It decodes the whole file: the executor checks the header's duration before calling this.
        with tempfile.NamedTemporaryFile(suffix='.audio') as file:
            file.write(data)
            file.flush()
            return whisper.load_audio(file.name)

    def transcribe(self, audio: np.ndarray, task: str, language: Optional[str], beam_size: int) -> Transcription:
        probability = 1.0
        if language is None:
            language, probability = self._detect_language(audio)
        result = self.model.transcribe(
            audio, task=task, language=language, beam_size=beam_size, fp16=self.fp16, verbose=None, **DECODING,
        )
        segments = [
            DecodedSegment(s['start'], s['end'], s['text'], s['no_speech_prob'], s['avg_logprob'], s['compression_ratio'])
            for s in result['segments']
        ]
        return Transcription(language, probability, segments)

    def _detect_language(self, audio: np.ndarray) -> Tuple[str, float]:
        import whisper

        if not self.is_multilingual:
            return 'en', 1.0
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), self.model.dims.n_mels).to(self.model.device)
        _, probabilities = self.model.detect_language(mel)
        language = max(probabilities, key=probabilities.get)
        return language, float(probabilities[language])


BACKENDS = {'faster-whisper': FasterWhisperBackend, 'openai-whisper': OpenAIWhisperBackend}
