"""ResultStoreExecutor: keeps every answer, its PNGs and one JSON record, in a folder or an S3 bucket."""

import hashlib
import json
import mimetypes
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, Tuple

from botocore.exceptions import BotoCoreError, ClientError
from docarray import DocList
from jina import requests

from executors.store.settings import StoreSettings
from executors.store.stores import LocalFolder, S3Bucket, describe_failure, open_store
from s2i.contracts.documents import PromptDoc, mark_failed
from s2i.contracts.errors import ErrorCode
from s2i.contracts.store import StoreParams
from s2i.encoding import from_data_uri
from s2i.executor_base import ServiceExecutor

STORE_FAILED = 'could not store the result'  # a document's error: "could not store the result: <where>: <why>"
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
RECORD = 'result.json'  # written last: a result whose record is there is complete
RETENTION_INTERVAL = 3600  # seconds between two sweeps of max_age_days
# A call retried this soon after midnight (UTC) looks for its result in yesterday's folder first,
# so that a retry across midnight does not store the result a second time under the new day.
RETRY_WINDOW = timedelta(minutes=10)
STORE_ERRORS = (OSError, BotoCoreError, ClientError)  # the store itself failed, not one document
# The input audio's file type from its first bytes, for the stored file's extension.
AUDIO_SIGNATURES = ((b'RIFF', 'wav'), (b'fLaC', 'flac'), (b'OggS', 'ogg'), (b'ID3', 'mp3'), (b'\xff\xfb', 'mp3'))


class ResultStoreExecutor(ServiceExecutor):
    """Stores each document's images and a JSON record of it, and tells the client where.

    Every document is stored, failed ones included (their record says why). Each image gets its
    ``url``, the document its ``result_url``. A store that fails gives the document the error
    "could not store the result: ..." and leaves its images inline: nothing the client asked for is lost.
    """

    settings_class = StoreSettings
    params_class = StoreParams
    # The endpoints it does not serve (/caption, /tag, /interrogate, /generate_stream, ...): Jina's
    # Flow check wants the last executor to take each endpoint of the ones before it, and those
    # answers are not results to keep.
    passes_on = True

    def __init__(self, **settings):
        super().__init__(**settings)
        self.store = open_store(self.settings.store)
        self.store_audio = self.settings.store_audio
        self.max_age_days = self.settings.max_age_days
        self._swept_at: Optional[float] = None
        self._sweeping = threading.Lock()
        self._announce()
        self._remove_old_days()

    def _announce(self) -> None:
        if self.store is None:
            self.logger.info('results are not stored (S2I_STORE=none)')
            return
        self.logger.info(f'storing results in {self.store.location}')
        try:  # a store that is not usable yet is reported per document, not a reason to stop the Flow
            if isinstance(self.store, S3Bucket):
                self.store.check()
            else:
                self.store.root.mkdir(parents=True, exist_ok=True)
        except Exception as e:
            self.logger.warning(f'the store {self.store.location} is not usable now: {describe_failure(e)}')
        if self.max_age_days and isinstance(self.store, S3Bucket):
            self.logger.warning('max_age_days applies to local folders only: give the bucket a lifecycle rule instead')

    @requests(on=['/generate', '/text2image', '/restyle'])
    def store_results(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        params = self.request_params(docs, parameters)
        if params is None or self.store is None:
            return docs
        self._remove_old_days()
        store_failure = ''
        for doc in docs:
            if store_failure:  # the store just failed: the rest of the batch does not wait on it again
                mark_failed([doc], store_failure, ErrorCode.STORE_FAILED)
            else:
                store_failure = self._store(doc, params)
        return docs

    def _store(self, doc: PromptDoc, params: StoreParams) -> str:
        """Store ``doc``: its audio (if asked), its images, then its record. On failure, undo what was
        written and give the document the error; returns that error if the store itself failed."""
        now = utc_now()
        written: List[str] = []
        record_key = ''
        try:
            audio = self._audio_of(doc) if self.store_audio else None
            # Stable Diffusion gives a document all its images or an error: the matches of a failed one
            # are whatever its client sent, which this service does not keep (nor host for anyone).
            pngs = [png_of(image) for image in (doc.matches if not doc.error else [])]
            result_id = id_of_result(doc, pngs, audio)
            folder = f'{self._day_of(result_id, now)}/{result_id}'
            record_key = f'{folder}/{RECORD}'

            def put(name: str, data: bytes, content_type: str) -> str:
                url = self.store.put(f'{folder}/{name}', data, content_type)
                written.append(f'{folder}/{name}')
                return url

            audio_url = ''
            if audio:
                audio_url = put(f'input.{audio[1]}', audio[0], mimetypes.guess_type(f'input.{audio[1]}')[0] or 'application/octet-stream')
            images = []
            for i, (image, png) in enumerate(zip(doc.matches, pngs)):
                image.url = put(f'{i}.png', png, 'image/png') if png is not None else ''
                if params.presign_seconds and image.url:
                    image.presigned_url = self.store.presign(f'{folder}/{i}.png', params.presign_seconds)
                images.append({'key': f'{folder}/{i}.png' if image.url else '', **describe_image(image)})
            record = describe_document(doc, result_id, now, audio_url, images)
            doc.result_url = put(RECORD, encode_record(record), 'application/json')
            return ''
        except Exception as e:
            # A record already there (from a first try of this call) goes first: it would point at images removed here.
            return self._failed(doc, e, [record_key] + written[::-1] if record_key else written[::-1])

    def _failed(self, doc: PromptDoc, error: Exception, written: List[str]) -> str:
        """``doc``'s store failed: what was ``written`` removed, the document told; the error if the store itself failed."""
        if isinstance(error, STORE_ERRORS):
            self.logger.warning(f'storing document {doc.id} in {self.store.location} failed: {error!r}')
        else:
            self.logger.error(f'storing document {doc.id} failed', exc_info=True)
        self._undo(doc, written)
        message = f'{STORE_FAILED}: {self.store.location}: {describe_failure(error)}'
        mark_failed([doc], message, ErrorCode.STORE_FAILED)
        return message if isinstance(error, STORE_ERRORS) else ''

    def _day_of(self, result_id: str, now: datetime) -> str:
        """The result's date folder: today's, unless a retry just after midnight finds it in yesterday's."""
        yesterday = now - RETRY_WINDOW
        if yesterday.date() != now.date() and self.store.exists(f'{yesterday:%Y-%m-%d}/{result_id}/{RECORD}'):
            return f'{yesterday:%Y-%m-%d}'
        return f'{now:%Y-%m-%d}'

    def _undo(self, doc: PromptDoc, keys: List[str]) -> None:
        """No half result: the document points at nothing stored, and ``keys`` go, in this order (best effort)."""
        for image in doc.matches:
            image.url = image.presigned_url = ''
        doc.result_url = ''
        for key in keys:
            try:
                self.store.delete(key)
            except Exception as e:
                self.logger.warning(f'could not remove {key} of a failed result: {describe_failure(e)}')

    def _audio_of(self, doc: PromptDoc) -> Optional[Tuple[bytes, str]]:
        """The input audio file's bytes (from ``blob`` or a ``data:`` URI) and its extension."""
        data = doc.blob
        if data is None and doc.uri and doc.uri.startswith('data:'):
            try:
                data = from_data_uri(doc.uri)
            except ValueError:
                return None
        if not data:
            return None
        return data, audio_extension(data)

    def _remove_old_days(self) -> None:
        """Retention: delete the local date folders older than max_age_days, at most once an hour."""
        if not self.max_age_days or not isinstance(self.store, LocalFolder):
            return
        with self._sweeping:
            if self._swept_at is not None and time.monotonic() - self._swept_at < RETENTION_INTERVAL:
                return
            self._swept_at = time.monotonic()
        oldest_kept = datetime.now(timezone.utc).date() - timedelta(days=self.max_age_days)
        removed = self.store.remove_days_before(oldest_kept, self.logger)
        if removed:
            self.logger.info(f'retention ({self.max_age_days} days): removed {", ".join(sorted(removed))}')


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def png_of(image) -> Optional[bytes]:
    """An image's PNG bytes, or None for anything else a document holds there (not kept)."""
    return image.png if image.png is not None and image.png.startswith(PNG_SIGNATURE) else None


def id_of_result(doc: PromptDoc, pngs: List[Optional[bytes]], audio: Optional[Tuple[bytes, str]]) -> str:
    """The result's id, and its folder's name: a digest of everything stored of the document (its id
    included). Made by the server: a key holds no word a client sent. Fixed before the call: Jina
    retries a call whose answer was lost (a GOAWAY on an idle channel) with the same document, which
    then writes the same objects again instead of a second result. Two documents differ in their ids."""
    digest = hashlib.sha256(encode_record(describe_input(doc)))
    for data in (*pngs, audio[0] if audio else None):
        digest.update(hashlib.sha256(data or b'').digest())
    return digest.hexdigest()[:32]


def describe_image(image) -> Dict[str, Any]:
    return {
        'url': image.url, 'seed': image.seed, 'width': image.width, 'height': image.height,
        'batch_size': image.batch_size, 'parameters': image.parameters,
    }


def describe_document(doc: PromptDoc, result_id: str, now: datetime, audio_url: str, images: List[dict]) -> Dict[str, Any]:
    """The JSON record of one result: what came in, what Whisper heard, what was drawn, what failed."""
    return {
        'id': result_id,  # the server's; also the name of the result's folder
        'stored_at': now.isoformat(timespec='milliseconds'),
        **describe_input(doc),
        'audio_url': audio_url,  # '' unless store_audio
        'images': images,
    }


def describe_input(doc: PromptDoc) -> Dict[str, Any]:
    """What the record says of the document itself (no url, no time): also what its id is made from."""
    return {
        'document_id': doc.id,  # the client's, as given: a field only, never part of a key
        'input': 'audio' if doc.has_audio else 'text',
        'language': doc.language,
        'language_probability': doc.language_probability,
        'transcript': doc.transcript,
        'text': doc.text,  # the English prompt
        'segments': [{'start': s.start, 'end': s.end, 'text': s.text} for s in doc.segments],
        'error': doc.error,
    }


def encode_record(record: Dict[str, Any]) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False, indent=2, default=str).encode('utf-8')
    except UnicodeEncodeError:  # a lone surrogate in some text: JSON's \\udXXX escapes carry it
        return json.dumps(record, ensure_ascii=True, indent=2, default=str).encode('ascii')


def audio_extension(data: bytes) -> str:
    if data[4:8] == b'ftyp':
        return 'm4a'
    return next((extension for signature, extension in AUDIO_SIGNATURES if data.startswith(signature)), 'bin')
