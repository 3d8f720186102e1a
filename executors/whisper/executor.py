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


@dataclass
class Clip:
    """One document's speech on its way through the decoder."""

    doc: PromptDoc
    speech: np.ndarray  # what VAD kept, at SAMPLE_RATE
    timeline: Any  # maps times in ``speech`` back to the original audio; None without VAD
    language: Optional[str]  # the hint, if any
    audio_seconds: float
    started: float


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
        batch_size: int = 8,
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
        if batch_size < 1:
            raise ValueError(f'batch_size must be at least 1, got {batch_size}')
        self.batch_size = batch_size
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
        clips = [clip for doc in docs if doc.has_audio and not doc.error and (clip := self._speech_of(doc, params))]
        for start in range(0, len(clips), self.batch_size):
            self._transcribe_clips(clips[start : start + self.batch_size], params)
        return docs

    def _speech_of(self, doc: PromptDoc, params: TranscriptionParams) -> Optional[Clip]:
        """The document's speech, ready to decode; None, with ``doc.error`` set, when there is none to decode."""
        started = time.perf_counter()
        language = doc.language or params.language
        if language is not None and language not in self.backend.languages:
            doc.error = f'unknown language {language!r}; known: {", ".join(sorted(self.backend.languages))}'
            return None
        try:
            audio = self._load_audio(doc)
        except AudioError as e:
            doc.error = str(e)
            return None
        speech, timeline = keep_speech(audio) if self.vad_filter else (audio, None)
        if not speech.size:
            doc.error = NO_SPEECH
            return None
        return Clip(doc, speech, timeline, language, len(audio) / SAMPLE_RATE, started)

    def _transcribe_clips(self, clips: List[Clip], params: TranscriptionParams) -> None:
        transcriptions = self._decode(clips, 'transcribe', [clip.language for clip in clips], params)
        for clip, transcription in zip(clips, transcriptions):
            if transcription is not None:
                self._accept(clip, transcription)
        # Translation is a second pass over the same speech, batched the same way.
        foreign = [c for c in clips if not c.doc.error and c.doc.language != 'en' and self.backend.is_multilingual]
        translations = self._decode(foreign, 'translate', [clip.doc.language for clip in foreign], params)
        for clip, translation in zip(foreign, translations):
            if translation is not None:
                clip.doc.text = translation.text
        for clip in clips:
            if not clip.doc.error:
                doc = clip.doc
                self.logger.info(
                    f'{clip.audio_seconds:.1f}s of audio, {doc.language} (p={doc.language_probability:.2f}) '
                    f'in {time.perf_counter() - clip.started:.1f}s (batch of {len(clips)}): {doc.text!r}'
                )

    def _decode(
        self, clips: List[Clip], task: str, languages: List[Optional[str]], params: TranscriptionParams
    ) -> List[Optional[Transcription]]:
        """The backend's batch call; if it fails, each clip alone, so that only the failing document gets the error."""
        if not clips:
            return []
        try:
            return self.backend.transcribe_batch([clip.speech for clip in clips], task, languages, params.beam_size)
        except Exception as e:  # a bad language hint, a backend failure
            if len(clips) > 1:
                alone = (self._decode([clip], task, [language], params) for clip, language in zip(clips, languages))
                return [result for results in alone for result in results]
            self.logger.error(f'{task} failed', exc_info=True)
            doc = clips[0].doc
            doc.error = f'{"transcription" if task == "transcribe" else "translation"} failed: {type(e).__name__}: {e}'
            doc.text = ''  # not the untranslated transcript: an error means no prompt
            return [None]

    def _accept(self, clip: Clip, result: Transcription) -> None:
        doc = clip.doc
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
        doc.transcript = doc.text = result.text
        doc.segments = DocList[Segment](
            Segment(
                start=to_original_time(clip.timeline, s.start), end=to_original_time(clip.timeline, s.end, True),
                text=s.text.strip(),
            )
            for s in result.segments
        )

    def _load_audio(self, doc: PromptDoc) -> np.ndarray:
        if doc.tensor is not None:
            return waveform_from_tensor(np.asarray(doc.tensor), doc.sample_rate, self.policy)
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


def waveform_from_tensor(tensor: np.ndarray, sample_rate: int, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
    if sample_rate != SAMPLE_RATE:
        raise AudioError(f'waveform tensors must be sampled at {SAMPLE_RATE} Hz, got {sample_rate}; resample or send the file bytes')
    if not np.issubdtype(tensor.dtype, np.floating):
        raise AudioError(f'waveform tensor must be float in [-1, 1], got dtype {tensor.dtype}')
    if tensor.ndim == 2 and min(tensor.shape) <= 2:  # (channels, samples) or (samples, channels)
        tensor = tensor.mean(axis=int(np.argmin(tensor.shape)))
    if tensor.ndim != 1 or not tensor.size:
        raise AudioError(f'waveform tensor must be mono (samples,) or (channels<=2, samples), got shape {tensor.shape}')
    check_duration(tensor.size / SAMPLE_RATE, policy)
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

    def transcribe_batch(
        self, clips: Sequence[np.ndarray], task: str, languages: Sequence[Optional[str]], beam_size: int
    ) -> List[Transcription]:
        """Clips of up to 30 s share one encoder pass and one beam search; longer ones go one by one.

        This is faster-whisper's BatchedInferencePipeline applied across documents instead of
        across the chunks of one recording, with the sequential path's decoding settings; like the
        pipeline it uses WhisperModel's helpers (get_prompt, _split_segments_by_timestamps), hence
        faster-whisper <2 in requirements.txt. A clip always takes the same path whatever else is
        in its batch, so its text does not depend on the batch."""
        results: List[Optional[Transcription]] = [None] * len(clips)
        short = [i for i, clip in enumerate(clips) if len(clip) <= self.model.feature_extractor.n_samples]
        if short:
            decoded = self._decode_windows([clips[i] for i in short], task, [languages[i] for i in short], beam_size)
            for i, transcription in zip(short, decoded):
                results[i] = transcription
        return [
            result if result is not None else self.transcribe(clip, task, language, beam_size)
            for clip, language, result in zip(clips, languages, results)
        ]

    def _decode_windows(
        self, clips: Sequence[np.ndarray], task: str, languages: Sequence[Optional[str]], beam_size: int
    ) -> List[Transcription]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_compression_ratio

        model = self.model
        features = np.stack([pad_or_trim(model.feature_extractor(clip)[..., :-1]) for clip in clips])
        encoded = model.encode(features)
        detected = self._languages(encoded, languages)
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
            compression_ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
            seconds = len(clip) / SAMPLE_RATE
            pieces, _, _ = model._split_segments_by_timestamps(
                tokenizer=tokenizer, tokens=tokens, time_offset=0.0,
                segment_size=int(np.ceil(seconds) * model.frames_per_second), segment_duration=seconds, seek=0,
            )
            segments = [
                DecodedSegment(piece['start'], min(piece['end'], seconds), text, result.no_speech_prob, avg_logprob, compression_ratio)
                for piece in pieces
                if (text := tokenizer.decode(piece['tokens'])).strip() and piece['start'] != piece['end']
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


BACKENDS = {'faster-whisper': FasterWhisperBackend, 'openai-whisper': OpenAIWhisperBackend}
