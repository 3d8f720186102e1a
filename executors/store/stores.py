"""Where results are kept: a local folder, or a bucket of any S3-compatible service.

Both take keys made by the executor alone (``2025-01-31/<32 hex digits of a digest>/0.png``): nothing
a document says reaches a key, so nothing is written outside the folder or prefix. Both make each
object visible whole or not at all: a local file is written under a temporary name beside its
final one, then renamed; an S3 PUT is atomic.

S3 goes through boto3 rather than fsspec/s3fs: one maintained library (boto3 + botocore +
s3transfer, no aiohttp/aiobotocore stack), and the standard AWS configuration as is:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ~/.aws/config profiles, and AWS_ENDPOINT_URL
for MinIO, Cloudflare R2, Ceph and the like (read by botocore itself since boto3 1.28).
"""

import logging
import os
import re
import shutil
import uuid
from datetime import date
from pathlib import Path
from typing import List, Optional
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from s2i.runtime import DETAILS_LOGGED

DISABLED = 'none'  # S2I_STORE=none: results are not stored
DATE_FOLDER = re.compile(r'\d{4}-\d{2}-\d{2}')  # the first part of every key: one folder per (UTC) day
# Transient S3 errors (throttling, 5xx, dropped connections) are retried with botocore's standard
# mode: exponential backoff with jitter, and a retry quota shared by the client, so a failing
# service sees at most this many attempts per object, never a storm.
S3_MAX_ATTEMPTS = 3
S3_CONNECT_TIMEOUT = 5  # seconds
S3_READ_TIMEOUT = 20  # seconds; a PNG of a few hundred KB
MAX_REASON_CHARS = 160  # of a service's own error message, in a document's error


class LocalFolder:
    """A folder on this machine (or a mounted volume); ``location`` is its absolute path."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.location = str(self.root)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f'.{path.name}.{uuid.uuid4().hex}.tmp')  # same folder: the rename is atomic
        try:
            with open(temporary, 'xb') as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # on disk before it has its name: no empty file after a power cut
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return str(path)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # the result's folder, once empty
        except OSError:
            pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def presign(self, key: str, seconds: int) -> str:
        return ''  # a path needs no signature

    def remove_days_before(self, oldest_kept: date, logger: logging.Logger) -> List[str]:
        """Delete the date folders older than ``oldest_kept``; only those, only directly in the root."""
        removed = []
        try:
            entries = list(os.scandir(self.root))
        except OSError as e:
            logger.warning(f'retention: cannot list {self.root}: {e.strerror}')
            return removed
        for entry in entries:
            if not DATE_FOLDER.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue  # anything else in the folder is not ours to delete
            try:
                day = date.fromisoformat(entry.name)
            except ValueError:
                continue
            if day < oldest_kept:
                shutil.rmtree(entry.path, onerror=lambda *args: logger.warning(f'retention: cannot delete {args[1]}'))
                removed.append(entry.name)
        return removed

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split('/'))
        if '..' in key.split('/') or not path.is_relative_to(self.root):  # keys are ours; checked all the same
            raise ValueError(f'key {key!r} is outside the store')
        return path


class S3Bucket:
    """``s3://bucket/prefix`` on AWS or any S3-compatible service; ``location`` is that URL."""

    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix
        self.location = f's3://{bucket}/{prefix}' if prefix else f's3://{bucket}'
        config = Config(
            retries={'mode': 'standard', 'max_attempts': S3_MAX_ATTEMPTS},
            connect_timeout=S3_CONNECT_TIMEOUT,
            read_timeout=S3_READ_TIMEOUT,
            signature_version='s3v4',  # what presigned URLs of every region and S3-compatible service accept
        )
        self.client = boto3.session.Session().client('s3', config=config)  # a client is thread-safe

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        return f's3://{self.bucket}/{self._key(key)}'

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        """Whether the object is there; False also where the credentials may not read it (a write-only
        policy answers 403): then a result is written anew."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') in ('404', 'NoSuchKey', '403', 'AccessDenied'):
                return False
            raise

    def presign(self, key: str, seconds: int) -> str:
        return self.client.generate_presigned_url(
            'get_object', Params={'Bucket': self.bucket, 'Key': self._key(key)}, ExpiresIn=seconds
        )

    def check(self) -> None:
        """Raise if the bucket cannot be reached with these credentials (for the start-up log)."""
        self.client.head_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return f'{self.prefix}/{key}' if self.prefix else key


def open_store(location: str, working_dir: Optional[Path] = None):
    """The store named by ``location`` (S2I_STORE): None for ``none``; ValueError for what it cannot be."""
    if location.strip().lower() == DISABLED:
        return None
    parsed = urlparse(location)
    if parsed.scheme == 's3':
        if not parsed.netloc:
            raise ValueError(f'S2I_STORE {location!r} names no bucket: s3://bucket or s3://bucket/prefix')
        return S3Bucket(parsed.netloc, parsed.path.strip('/'))
    if parsed.scheme == 'file':
        if parsed.netloc not in ('', 'localhost'):
            raise ValueError(f'S2I_STORE {location!r}: a file:// URL must name a local path (file:///path)')
        return LocalFolder(Path(unquote(parsed.path)))
    if parsed.scheme:
        raise ValueError(f'S2I_STORE {location!r}: must be a folder, file:///path, s3://bucket/prefix or none')
    return LocalFolder((working_dir or Path.cwd()) / Path(location).expanduser())


def describe_failure(error: Exception) -> str:
    """Why a store failed, in a few words a client can act on: no traceback, no path of ours."""
    if isinstance(error, ClientError):
        details = error.response.get('Error', {})
        code, message = details.get('Code', 'error'), details.get('Message', '')
        return f'{code}: {message}'[:MAX_REASON_CHARS] if message else str(code)
    if isinstance(error, NoCredentialsError):
        return 'no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)'
    if isinstance(error, BotoCoreError):  # e.g. "Could not connect to the endpoint URL: ..."
        return str(error)[:MAX_REASON_CHARS]
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__  # "No space left on device", without the file's name
    return f'{type(error).__name__}; {DETAILS_LOGGED}'
