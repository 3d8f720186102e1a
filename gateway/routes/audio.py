"""OpenAI's speech to text, with the Flow's Whisper: POST /v1/audio/transcriptions and /v1/audio/translations.

Unlike OpenAI: audio is decoded with beam search (``temperature`` 0 only), languages are ISO 639-1
codes, and verbose answers carry only the fields Whisper gives (no tokens or log-probabilities).
A document error of Whisper's is answered by its code (no_speech, audio_unreadable, ...).
"""

from dataclasses import dataclass
from typing import List, Literal, Optional, Tuple

from docarray import DocList
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from gateway.dependencies import get_flow
from gateway.errors import document_error
from gateway.flow_client import TRANSCRIBER, FlowClient
from gateway.forms import form_once
from gateway.routes.models import model_not_found, served_models
from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote

AudioFormat = Literal['json', 'text', 'srt', 'verbose_json', 'vtt']
AUDIO_FIELDS = frozenset({'file', 'model', 'prompt', 'response_format', 'temperature', 'timestamp_granularities[]'})

router = APIRouter(prefix='/v1/audio')


@dataclass
class AudioForm:
    """OpenAI's form fields that both audio routes take (a FastAPI dependency)."""

    file: UploadFile = File(...)
    model: str = Form(...)
    prompt: Optional[str] = Form(None)  # accepted, not used: the executor takes no decoding prompt
    response_format: AudioFormat = Form('json')
    temperature: float = Form(0.0)
    timestamp_granularities: Optional[List[str]] = Form(None, alias='timestamp_granularities[]')

    async def checked(self, request: Request, flow: FlowClient, fields: frozenset = AUDIO_FIELDS) -> bytes:
        """The audio, once the form asks nothing this service cannot do."""
        await check_audio_request(request, fields, flow, self.model, self.temperature, self.timestamp_granularities)
        return await self.file.read()


@router.post('/transcriptions')
async def transcriptions(request: Request, form: AudioForm = Depends(), language: Optional[str] = Form(None),
                         flow: FlowClient = Depends(get_flow)):
    """Speech to text in the spoken language (``language``: an ISO 639-1 hint; detected when omitted).

    Unlike OpenAI: ``prompt`` is accepted but not used (the executor takes no decoding prompt);
    ``temperature`` must be 0 (beam search, no sampling); ``timestamp_granularities[]`` only
    ``segment``; ``verbose_json`` gives the language as an ISO 639-1 code and segments with id,
    start, end and text only."""
    audio = await form.checked(request, flow, AUDIO_FIELDS | {'language'})
    doc = await heard(flow, audio, language, transcribing=True)
    return audio_response(transcribed(doc), form.response_format)


@router.post('/translations')
async def translations(request: Request, form: AudioForm = Depends(), flow: FlowClient = Depends(get_flow)):
    """Speech in any language to English text.

    As transcriptions, and: Whisper translates the speech as a whole, so speech not in English
    comes back as one segment (from the first spoken segment's start to the last one's end)
    holding the whole English text; English speech keeps its own segments."""
    doc = await heard(flow, await form.checked(request, flow), None, transcribing=False)
    return audio_response(translated(doc), form.response_format)


async def check_audio_request(request: Request, fields: frozenset, flow: FlowClient, model: str, temperature: float,
                              granularities: Optional[List[str]]) -> None:
    """What the form asks that this service cannot do: a 400 (or 404 for the model) naming it."""
    unknown = sorted(set((await form_once(request, repeatable={'timestamp_granularities[]'})).keys()) - fields)
    if unknown:
        raise CodedError(f'unknown field(s) {", ".join(map(quote, unknown))}; this endpoint takes {", ".join(sorted(fields))}',
                         ErrorCode.UNKNOWN_PARAMETER, param=unknown[0])
    served = await served_models(flow)
    if served.get(model) != TRANSCRIBER:
        raise model_not_found(model, [name for name, executor in served.items() if executor == TRANSCRIBER])
    if temperature != 0:
        raise CodedError(f'temperature must be 0, got {temperature:g}: this service decodes with beam search, not by sampling',
                         ErrorCode.INVALID_PARAMETER, param='temperature')
    if set(granularities or ()) - {'segment'}:
        raise CodedError(f'timestamp_granularities[] can only be "segment", got {quote(granularities)}: '
                         'Whisper here gives no word timestamps', ErrorCode.UNSUPPORTED, param='timestamp_granularities[]')


async def heard(flow: FlowClient, audio: bytes, language: Optional[str], transcribing: bool) -> PromptDoc:
    """Whisper's answer for ``audio`` (nothing drawn), or the error its document carries.

    A transcription needs only the transcript: an error of the translation pass that follows it
    (the transcript is kept) is a translation's error only."""
    [doc] = await flow.call_executor(TRANSCRIBER, DocList[PromptDoc]([PromptDoc(blob=audio, language=language)]))
    if doc.error and not (transcribing and doc.transcript):
        raise document_error(doc, input_field='file')
    return doc


def transcribed(doc: PromptDoc) -> dict:
    """The verbose answer of a transcription: text and segments in the spoken language."""
    return verbose('transcribe', doc.language, doc.duration, doc.transcript, [(s.start, s.end, s.text) for s in doc.segments])


def translated(doc: PromptDoc) -> dict:
    """The verbose answer of a translation: the English text; see the route for its segments."""
    spans = [(s.start, s.end, s.text) for s in doc.segments]
    if doc.language != 'en' and spans:
        spans = [(spans[0][0], spans[-1][1], doc.text)]
    return verbose('translate', 'en', doc.duration, doc.text, spans)


def verbose(task: str, language: Optional[str], duration: Optional[float], text: str,
            spans: List[Tuple[float, float, str]]) -> dict:
    segments = [{'id': i, 'start': start, 'end': end, 'text': words} for i, (start, end, words) in enumerate(spans)]
    return {'task': task, 'language': language, 'duration': duration, 'text': text, 'segments': segments}


def audio_response(result: dict, response_format: str):
    if response_format == 'json':
        return {'text': result['text']}
    if response_format == 'verbose_json':
        return result
    if response_format == 'srt':
        return PlainTextResponse(srt(result['segments']))
    if response_format == 'vtt':
        return Response(vtt(result['segments']), media_type='text/vtt')
    return PlainTextResponse(result['text'])


def srt(segments: List[dict]) -> str:
    cues = (f'{s["id"] + 1}\n{timestamp(s["start"], ",")} --> {timestamp(s["end"], ",")}\n{s["text"]}\n' for s in segments)
    return '\n'.join(cues)


def vtt(segments: List[dict]) -> str:
    cues = (f'{timestamp(s["start"], ".")} --> {timestamp(s["end"], ".")}\n{s["text"]}\n' for s in segments)
    return '\n'.join(('WEBVTT\n', *cues))


def timestamp(seconds: float, decimal_mark: str) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT)."""
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole, milliseconds = divmod(milliseconds, 1000)
    return f'{hours:02d}:{minutes:02d}:{whole:02d}{decimal_mark}{milliseconds:03d}'
