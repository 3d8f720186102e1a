"""WhisperExecutor: speech in any language -> transcript, detected language and English text."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
from docarray import DocList
from jina import requests

from executors.whisper.audio import AudioPolicy, Timeline, described, document_audio, keep_speech, to_original_time
from executors.whisper.backends import BACKENDS, EncoderWindow, Transcription
from executors.whisper.quality import CANNOT_TRANSLATE, NO_SPEECH, SpeechChecks, judge, judge_translation
from executors.whisper.settings import WhisperSettings
from s2i.contracts.documents import SAMPLE_RATE, PromptDoc, Segment, fail, fail_with, mark_failed
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote
from s2i.contracts.whisper import TranscriptionParams
from s2i.executor_base import ModelExecutor

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


class WhisperExecutor(ModelExecutor):
    """Transcribes audio, detects its language and translates it to English.

    Documents without audio (text prompts) pass through untouched; documents whose audio
    cannot be decoded or holds no usable speech get an ``error`` and no text.
    """

    settings_class = WhisperSettings
    params_class = TranscriptionParams

    def __init__(self, **settings):
        super().__init__(**settings)
        settings = self.settings
        if settings.backend not in BACKENDS:
            raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {settings.backend!r}')
        started = time.perf_counter()
        languages = None if settings.encoder_languages is None else tuple(settings.encoder_languages)
        window = EncoderWindow(settings.encoder_margin, settings.encoder_step, languages)
        self.backend = BACKENDS[settings.backend](self.model_id, str(self.device), settings.compute_type, settings.cpu_threads, window)
        self.translates = trained_to_translate(self.model_id) or settings.translate_with_turbo
        self.batch_size = settings.batch_size
        self.vad_filter = settings.vad_filter
        self.policy = AudioPolicy.of(settings)
        self.checks = SpeechChecks.of(settings)
        if self.backend.window != window:
            self.logger.warning(f'{settings.backend} cannot crop the encoder window ({window} asked for): it uses the {self.backend.window}')
        self.logger.info(
            f'{settings.backend} {self.model_id} ({self.backend.model_path}) on {self.device} loaded in '
            f'{time.perf_counter() - started:.1f}s; encoder window: {self.backend.window}'
        )

    @requests(on=['/generate', '/restyle'])  # /restyle: a spoken style becomes the English text that restyles the image
    def transcribe(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        params = self.request_params(docs, parameters)
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
        except CodedError as e:  # AudioError, an unknown language
            fail_with(doc, e)
        except Exception as e:  # a value nobody anticipated: the client gets its type, the log the details
            self.logger.error("reading a document's audio failed", exc_info=True)
            fail(doc, f'could not read the audio: {type(e).__name__}', ErrorCode.INTERNAL_ERROR)
        return None

    def _read_speech(self, doc: PromptDoc, params: TranscriptionParams) -> Optional[Clip]:
        started = time.perf_counter()
        language = doc.language or params.language
        if language is not None and language not in self.backend.languages:
            raise CodedError(f'unknown language {quote(language)}; known: {", ".join(sorted(self.backend.languages))}',
                             ErrorCode.UNKNOWN_LANGUAGE, 'language')
        audio = document_audio(doc, self.policy, self.backend.load_audio)
        speech, timeline = keep_speech(audio) if self.vad_filter else (audio, None)
        if not speech.size:
            fail(doc, NO_SPEECH, ErrorCode.NO_SPEECH)
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
                    fail(clip.doc, f'transcription failed: {type(e).__name__}', ErrorCode.INTERNAL_ERROR)
        # 2. Translate the rest to English: a second pass over the same speech, batched the same way.
        foreign = [c for c in clips if not c.doc.error and c.doc.language != 'en' and self.backend.is_multilingual]
        if not self.translates:
            mark_failed(
                (clip.doc for clip in foreign),
                f'{CANNOT_TRANSLATE}: {self.model_id} was trained without translation data; send English '
                f'speech, use a model that translates (e.g. large-v3), or set translate_with_turbo: true',
                ErrorCode.CANNOT_TRANSLATE,
            )
            foreign = []
        translations = self._decode(foreign, 'translate', [clip.doc.language for clip in foreign], params)
        for clip, translation in zip(foreign, translations):
            if translation is None:
                continue
            # Never the untranslated transcript, and never an empty or looping prompt passed on as if it were one.
            problem = judge_translation(translation, clip.speech_seconds, self.checks)
            if problem:
                fail_with(clip.doc, problem)
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
            what = 'transcription' if task == 'transcribe' else 'translation'
            fail(clips[0].doc, f'{what} failed: {described(e)}', ErrorCode.INTERNAL_ERROR)
            return [None]

    def _accept(self, clip: Clip, result: Transcription) -> None:
        # The translation pass is not judged: translating lowers avg_logprob even for clear speech.
        doc = clip.doc
        problem = judge(result, clip.speech_seconds, clip.language is not None, self.checks)
        if problem:
            fail_with(doc, problem)
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
