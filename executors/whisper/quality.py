"""Is a transcription what was said? Whisper's own signals, per segment and for the whole document.

Whisper turns noise, damaged audio and speech it cannot follow into fluent text ("Thank you.",
"Let's go to the next episode."). Per segment, the decoder says so itself (no_speech_prob,
avg_logprob, compression_ratio); for the whole document, the detected language's probability,
how much of the speech the text's segments cover and how much text there is per second of speech
do. The thresholds were chosen on real speech in five languages and on damaged copies of it:
``python bench/speech_signals.py`` prints the table.
"""

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

from executors.whisper.backends import DecodedSegment, Transcription
from executors.whisper.settings import WhisperSettings
from s2i.contracts.errors import CodedError, ErrorCode

NO_SPEECH = 'no speech detected'  # VAD found none, or the decoder produced no text
LANGUAGE_UNCERTAIN = 'the spoken language is uncertain'  # a hint (`language`) resolves it
CANNOT_TRANSLATE = 'cannot translate to English'  # the model was trained without translation data
UNUSABLE_SPEECH = 'no usable speech'  # the decoder's own signals say its text is not what was said
SETTINGS = WhisperSettings.model_fields  # the one home of the thresholds' defaults (settings.py)


class SpeechProblem(CodedError):
    """Why a transcription is not what was said: no_speech, or language_uncertain (a hint resolves it)."""

    code = ErrorCode.NO_SPEECH


@dataclass(frozen=True)
class SpeechChecks:
    """Where each signal says "not what was said"; None switches a check off."""

    # Per segment, Whisper's own defaults: a segment beyond any of them is dropped.
    max_no_speech_prob: Optional[float] = SETTINGS['max_no_speech_prob'].default
    min_avg_logprob: Optional[float] = SETTINGS['min_avg_logprob'].default
    max_compression_ratio: Optional[float] = SETTINGS['max_compression_ratio'].default  # of the segment's text: "the the the the" loops
    # Per document, on what is left.
    min_speech_seconds: Optional[float] = SETTINGS['min_speech_seconds'].default  # of speech (what VAD kept): less is a fragment
    min_language_probability: Optional[float] = SETTINGS['min_language_probability'].default  # skipped when the language was given
    min_coverage: Optional[float] = SETTINGS['min_coverage'].default  # seconds the kept segments span / seconds of speech
    max_chars_per_second: Optional[float] = SETTINGS['max_chars_per_second'].default  # more is a decoder loop

    @classmethod
    def of(cls, settings: WhisperSettings) -> 'SpeechChecks':
        """The Whisper executor's checks, from its settings."""
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})

    def why_segment_unusable(self, segment: DecodedSegment) -> Optional[str]:
        if self.max_compression_ratio is not None and segment.compression_ratio > self.max_compression_ratio:
            return f'the text repeats itself (compression ratio {segment.compression_ratio:.2f} > {self.max_compression_ratio:g})'
        if self.max_no_speech_prob is not None and segment.no_speech_prob > self.max_no_speech_prob:
            return f'the model hears no speech (no_speech_prob {segment.no_speech_prob:.2f} > {self.max_no_speech_prob:g})'
        if self.min_avg_logprob is not None and segment.avg_logprob < self.min_avg_logprob:
            return f'the model is guessing (avg_logprob {segment.avg_logprob:.2f} < {self.min_avg_logprob:g})'
        return None

    def why_document_unusable(self, result: Transcription, speech_seconds: float, language_given: bool) -> Optional[SpeechProblem]:
        """Why the kept segments of ``result`` are not a transcript of ``speech_seconds`` of speech; None if they are."""
        if self.min_speech_seconds is not None and speech_seconds < self.min_speech_seconds:
            return SpeechProblem(
                f'{UNUSABLE_SPEECH}: too little speech ({speech_seconds:.1f} s < {self.min_speech_seconds:g} s): '
                'the audio may be cut; say a few words'
            )
        covered = sum(s.seconds for s in result.segments)
        if self.min_coverage is not None and covered < self.min_coverage * speech_seconds:
            return SpeechProblem(
                f'{UNUSABLE_SPEECH}: the text covers {covered:.1f} s of {speech_seconds:.1f} s of speech '
                f'(< {self.min_coverage:.0%}): the audio may be damaged or cut'
            )
        rate = len(result.text) / max(speech_seconds, 1.0)
        if self.max_chars_per_second is not None and rate > self.max_chars_per_second:
            return SpeechProblem(
                f'{UNUSABLE_SPEECH}: more text than anyone says in that time ({rate:.0f} characters/s > {self.max_chars_per_second:g})')
        probability = result.language_probability
        if not language_given and self.min_language_probability is not None and probability < self.min_language_probability:
            return SpeechProblem(f'{LANGUAGE_UNCERTAIN} ({result.language}, p={probability:.2f}): send `language`',
                                 ErrorCode.LANGUAGE_UNCERTAIN, 'language')
        return None


def usable_segments(segments: Sequence[DecodedSegment], checks: SpeechChecks) -> Tuple[List[DecodedSegment], Optional[str]]:
    """The segments the checks accept, and why the first rejected one was rejected (None if none was)."""
    kept, reasons = [], []
    for segment in segments:
        reason = checks.why_segment_unusable(segment)
        if reason:
            reasons.append(reason)
        else:
            kept.append(segment)
    return kept, (reasons[0] if reasons else None)


def judge(result: Transcription, speech_seconds: float, language_given: bool, checks: SpeechChecks) -> Optional[SpeechProblem]:
    """The document's error if ``result`` is not usable, else None; drops unusable segments from ``result``."""
    if not result.text:
        return SpeechProblem(NO_SPEECH)
    result.segments, reason = usable_segments(result.segments, checks)
    if not result.text:
        return SpeechProblem(f'{UNUSABLE_SPEECH}: {reason}')
    return checks.why_document_unusable(result, speech_seconds, language_given)


def judge_translation(result: Transcription, speech_seconds: float, checks: SpeechChecks) -> Optional[SpeechProblem]:
    """The document's error if the English translation is a decoder loop, else None.

    Only the loop signals: translating lowers avg_logprob and no_speech_prob moves even for clear
    speech, but "long, long, long, ..." is never a translation of anything (bench/stt_accuracy.py
    found such loops, which would otherwise reach Stable Diffusion as the prompt)."""
    if not result.text:
        return SpeechProblem(f'{UNUSABLE_SPEECH}: the translation to English came out empty')
    limit = checks.max_compression_ratio
    looping = [s for s in result.segments if limit is not None and s.compression_ratio > limit]
    if looping:
        return SpeechProblem(
            f'{UNUSABLE_SPEECH}: the translation to English repeats itself (compression ratio {looping[0].compression_ratio:.2f} > {limit:g})')
    rate = len(result.text) / max(speech_seconds, 1.0)
    if checks.max_chars_per_second is not None and rate > checks.max_chars_per_second:
        return SpeechProblem(
            f'{UNUSABLE_SPEECH}: the translation to English is longer than anyone says in that time '
            f'({rate:.0f} characters/s > {checks.max_chars_per_second:g})')
    return None
