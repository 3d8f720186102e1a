"""WhisperExecutor: speech in any language -> transcript, detected language and English text."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
from docarray import DocList
from jina import Executor, requests

from executors.whisper.audio import (
    AudioError, AudioPolicy, Timeline, described, document_audio, keep_speech, to_original_time,
)
from executors.whisper.backends import BACKENDS, EncoderWindow, Transcription
from s2i.contracts.whisper import TranscriptionParams
from executors.whisper.quality import CANNOT_TRANSLATE, NO_SPEECH, SpeechChecks, judge, judge_translation
from s2i.contracts.documents import SAMPLE_RATE, ParameterSchema, PromptDoc, Segment, mark_failed
from s2i.contracts.params import PARAMETERS_ENDPOINT, describe_parameters, quote, request_parameters
from s2i.runtime import refuse_unknown_settings, resolve_device, setting

# Settings that flow.yml and containers give through the environment; an argument wins over them.
DEFAULT_BACKEND, BACKEND_VARIABLE = 'faster-whisper', 'S2I_WHISPER_BACKEND'
DEFAULT_MODEL, MODEL_VARIABLE = 'base', 'S2I_WHISPER_MODEL'
DEFAULT_DEVICE, DEVICE_VARIABLE = 'auto', 'S2I_DEVICE'
# Documents whose audio is read side by side: a slow URL holds only its own document, so a batch
# waits one url_timeout for up to this many URLs, not one after another.
READERS = 8


def trained_to_translate(model: str) -> bool:
    """Whisper large-v3-turbo was fine-tuned without translation data: its translations are not to be trusted."""
    return 'turbo' not in model.lower()


@dataclass
class Clip:
    """One document's speech on its way through the decoder."""

    doc: PromptDoc
    speech: np.ndarray  # what VAD kept, at SAMPLE_RATE
    timeline: Optional[Timeline]  # maps times in ``speech`` back to the original audio; None without VAD
    language: Optional[str]  # the hint, if any
    audio_seconds: float
    started: float

    @property
    def speech_seconds(self) -> float:
        return len(self.speech) / SAMPLE_RATE


class WhisperExecutor(Executor):
    """Transcribes audio, detects its language and translates it to English.

    Documents without audio (text prompts) pass through untouched; documents whose audio
    cannot be decoded or holds no usable speech get an ``error`` and no text.
    """

    def __init__(
        self,
        backend: Optional[str] = None,
        model: Optional[str] = None,
        device: Optional[str] = None,
        compute_type: str = 'auto',
        request_defaults: Optional[Dict[str, Any]] = None,
        vad_filter: bool = True,
        batch_size: int = 8,
        encoder_margin: Optional[float] = EncoderWindow.margin,
        encoder_step: float = EncoderWindow.step,
        encoder_languages: Optional[List[str]] = EncoderWindow.languages,
        cpu_threads: int = 0,
        max_audio_bytes: int = AudioPolicy.max_bytes,
        max_audio_seconds: float = AudioPolicy.max_seconds,
        input_dir: Optional[str] = None,
        allowed_url_hosts: Optional[List[str]] = None,
        url_timeout: float = AudioPolicy.url_timeout,
        max_no_speech_prob: Optional[float] = SpeechChecks.max_no_speech_prob,
        min_avg_logprob: Optional[float] = SpeechChecks.min_avg_logprob,
        max_compression_ratio: Optional[float] = SpeechChecks.max_compression_ratio,
        min_speech_seconds: Optional[float] = SpeechChecks.min_speech_seconds,
        min_language_probability: Optional[float] = SpeechChecks.min_language_probability,
        min_coverage: Optional[float] = SpeechChecks.min_coverage,
        max_chars_per_second: Optional[float] = SpeechChecks.max_chars_per_second,
        translate_with_turbo: bool = False,
        **kwargs,
    ):
        refuse_unknown_settings(type(self), kwargs)
        super().__init__(**kwargs)
        backend = setting(backend, BACKEND_VARIABLE, DEFAULT_BACKEND)
        model = setting(model, MODEL_VARIABLE, DEFAULT_MODEL)
        device = resolve_device(setting(device, DEVICE_VARIABLE, DEFAULT_DEVICE))
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be at least 1, got {batch_size}')
        if encoder_margin is not None and encoder_margin < 0 or encoder_step <= 0:
            raise ValueError(f'encoder_margin must be null or at least 0 and encoder_step positive, got {encoder_margin}, {encoder_step}')
        if url_timeout <= 0:
            raise ValueError(f'url_timeout must be a positive number of seconds, got {url_timeout}')
        self.defaults = TranscriptionParams.with_defaults(request_defaults or {})
        started = time.perf_counter()
        window = EncoderWindow(encoder_margin, encoder_step, None if encoder_languages is None else tuple(encoder_languages))
        self.backend = BACKENDS[backend](model, device, compute_type, cpu_threads, window)
        self.model = model
        self.translates = trained_to_translate(model) or translate_with_turbo
        self.vad_filter = vad_filter
        self.batch_size = batch_size
        self.policy = AudioPolicy(
            max_bytes=max_audio_bytes, max_seconds=max_audio_seconds, input_dir=input_dir or None,
            allowed_url_hosts=tuple(allowed_url_hosts or ()), url_timeout=url_timeout,
        )
        self.checks = SpeechChecks(
            max_no_speech_prob, min_avg_logprob, max_compression_ratio,
            min_speech_seconds, min_language_probability, min_coverage, max_chars_per_second,
        )
        if self.backend.window != window:
            self.logger.warning(f'{backend} cannot crop the encoder window ({window} asked for): it uses the {self.backend.window}')
        self.logger.info(
            f'{backend} {model} ({self.backend.model_path}) on {device} loaded in {time.perf_counter() - started:.1f}s; '
            f'encoder window: {self.backend.window}'
        )

    @requests(on=PARAMETERS_ENDPOINT)
    def describe_parameters(self, docs: DocList[ParameterSchema], parameters: Optional[Dict[str, Any]] = None,
                            **kwargs) -> DocList[ParameterSchema]:
        return describe_parameters(docs, self.metas.name, self.defaults, model=self.model, parameters=parameters)

    @requests(on=['/generate', '/restyle'])  # /restyle: a spoken style becomes the English text that restyles the image
    def transcribe(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        params = request_parameters(docs, parameters, self.defaults)
        if params is None:
            return docs
        with_audio = [doc for doc in docs if doc.has_audio and not doc.error]
        with ThreadPoolExecutor(max_workers=min(READERS, len(with_audio) or 1)) as readers:
            clips = [clip for clip in readers.map(lambda doc: self._speech_of(doc, params), with_audio) if clip]
        for start in range(0, len(clips), self.batch_size):
            self._transcribe_clips(clips[start : start + self.batch_size], params)
        return docs

    def _speech_of(self, doc: PromptDoc, params: TranscriptionParams) -> Optional[Clip]:
        """The document's speech, ready to decode; None, with ``doc.error`` set, when there is none to decode.

        Whatever goes wrong stays this document's error: it never fails the batch, which dynamic
        batching may have merged from other callers' requests."""
        try:
            return self._read_speech(doc, params)
        except AudioError as e:
            doc.error = str(e)
        except Exception as e:  # a value nobody anticipated: the client gets its type, the log the details
            self.logger.error("reading a document's audio failed", exc_info=True)
            doc.error = f'could not read the audio: {type(e).__name__}'
        return None

    def _read_speech(self, doc: PromptDoc, params: TranscriptionParams) -> Optional[Clip]:
        started = time.perf_counter()
        language = doc.language or params.language
        if language is not None and language not in self.backend.languages:
            doc.error = f'unknown language {quote(language)}; known: {", ".join(sorted(self.backend.languages))}'
            return None
        audio = document_audio(doc, self.policy, self.backend.load_audio)
        speech, timeline = keep_speech(audio) if self.vad_filter else (audio, None)
        if not speech.size:
            doc.error = NO_SPEECH
            return None
        return Clip(doc, speech, timeline, language, len(audio) / SAMPLE_RATE, started)

    def _transcribe_clips(self, clips: List[Clip], params: TranscriptionParams) -> None:
        # 1. Transcribe in the spoken language, and keep only what Whisper's signals vouch for.
        transcriptions = self._decode(clips, 'transcribe', [clip.language for clip in clips], params)
        for clip, transcription in zip(clips, transcriptions):
            if transcription is not None:
                try:
                    self._accept(clip, transcription)
                except Exception as e:  # this document's error, never the batch's
                    self.logger.error('accepting a transcription failed', exc_info=True)
                    clip.doc.error = f'transcription failed: {type(e).__name__}'
        # 2. Translate the rest to English: a second pass over the same speech, batched the same way.
        foreign = [c for c in clips if not c.doc.error and c.doc.language != 'en' and self.backend.is_multilingual]
        if not self.translates:
            mark_failed(
                (clip.doc for clip in foreign),
                f'{CANNOT_TRANSLATE}: {self.model} was trained without translation data; send English '
                f'speech, use a model that translates (e.g. large-v3), or set translate_with_turbo: true',
            )
            foreign = []
        translations = self._decode(foreign, 'translate', [clip.doc.language for clip in foreign], params)
        for clip, translation in zip(foreign, translations):
            if translation is None:
                continue
            # Never the untranslated transcript, and never an empty or looping prompt passed on as if it were one.
            clip.doc.error = judge_translation(translation, clip.speech_seconds, self.checks) or ''
            clip.doc.text = '' if clip.doc.error else translation.text
        # 3. Log what each document became.
        for clip in clips:
            doc = clip.doc
            if doc.error:
                doc.text = ''  # an error means no prompt, not the untranslated transcript
                continue
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
            clips[0].doc.error = f'{"transcription" if task == "transcribe" else "translation"} failed: {described(e)}'
            return [None]

    def _accept(self, clip: Clip, result: Transcription) -> None:
        # The translation pass is not judged: translating lowers avg_logprob even for clear speech.
        doc = clip.doc
        error = judge(result, clip.speech_seconds, clip.language is not None, self.checks)
        if error:
            doc.error = error
            return
        doc.language, doc.language_probability = result.language, result.language_probability
        doc.duration = clip.audio_seconds
        doc.transcript = doc.text = result.text
        doc.segments = DocList[Segment](
            Segment(
                start=to_original_time(clip.timeline, s.start), end=to_original_time(clip.timeline, s.end, True),
                text=s.text.strip(),
            )
            for s in result.segments
        )
