"""Where jobs and their events live: one async interface (``JobStore``), two stores behind it.

- ``SqliteJobStore`` (the default): one file under the cache dir, so that finished jobs and their events
  survive a restart of the gateway; followers are woken in-process.
- ``RedisJobStore`` (``S2I_REDIS_URL``): several gateway replicas share jobs and events; a job submitted
  through one replica can be followed, and cancelled, through another.

A job is a JSON-able dict with at least ``id``, ``owner``, ``status`` and ``created`` (epoch seconds). Its
events are JSON-able dicts numbered ``seq`` 1, 2, 3, ... in the order they were published; a follower asks
for the events after the last ``seq`` it saw, so that a dropped connection loses nothing. A job expires
``ttl_seconds`` after it was last created, updated or published to.

Each store is one gateway's: it has an id (``gateway``) and holds a lease that the gateway renews
(``renew_lease``). A job belongs to the gateway that created it; once that gateway's lease has lapsed (it
died, or stopped), any gateway fails the job (``fail_lapsed``), so that its followers end, a cancel ends,
and it stops counting against the limits. Nothing follows a job's terminal event: the store refuses it
(``JobEnded``), whichever gateway tries.

A base64 image (a ``b64_json`` value) is kept once per job, however many events and records carry it,
and as PNG bytes where SQLite keeps it.
"""

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import json
import math
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple, Union

from s2i.contracts.errors import ErrorCode
from s2i.contracts.events import TERMINAL_KINDS, Failed, event_json

TERMINAL = TERMINAL_KINDS  # job statuses that end a job; also the kinds of the last event
ACTIVE = frozenset({'queued', 'running'})
SAFETY_WAIT = 1.0  # seconds a follower waits for a wake-up before it reads the stored events again anyway
LEASE_SECONDS = 15.0  # a gateway that has not renewed its lease for this long is taken for dead; its runner renews it every third of this
MAX_SEQ = 2**53  # more events than any job has (and JSON's largest exact integer): a follower's ``after`` is clamped to 0 ... MAX_SEQ
# Bytes of events that may wait for one follower of an owner's events (WS /v1/events) before it is cut off
# (FollowerTooSlow): a reader that stops reading costs the gateway this much memory at most, not every later
# event. About four large images' events; a follower that keeps up never has more than one or two waiting.
FOLLOWER_BACKLOG_BYTES = 16 * 2**20
IMAGE_FIELD = 'b64_json'  # a base64 image: kept once per job, however many events and records carry it
IMAGE_REF = 'b64_json_sha256'  # what stands for it in a stored event or record: the digest of the base64 text


class JobEnded(Exception):
    """The job already has its terminal event (another gateway may have ended it): nothing may follow it."""


class FollowerTooSlow(Exception):
    """Raised by ``follow_owner`` when its follower has left too many events unread; the message says so."""


class JobStore(ABC):
    """Jobs and their numbered events. Status transitions are the caller's (``update``, ``finish``); the
    store keeps ``count_active`` in step with them, and keeps a terminal status and a terminal event final."""

    gateway: str  # this gateway's id: the jobs it creates are its own
    lease_seconds: float

    @abstractmethod
    async def create(self, job: dict) -> None:
        """Stores a new job of this gateway: a JSON-able dict with at least 'id', 'owner', 'status' and 'created'."""

    @abstractmethod
    async def get(self, job_id: str) -> Optional[dict]:
        """The job's record, or None if it is unknown or expired."""

    @abstractmethod
    async def update(self, job_id: str, **fields) -> Optional[dict]:
        """Merges ``fields`` into the job's record and returns the new record (None if the job is unknown).
        A job whose status is terminal is final: nothing changes, and its record is returned as it is."""

    @abstractmethod
    async def recent(self, owner: str, limit: int, with_images: bool = False) -> List[dict]:
        """The owner's jobs, newest first, at most ``limit``; their images without their bytes (``b64_json``)
        unless ``with_images``."""

    @abstractmethod
    async def publish(self, job_id: str, event: dict) -> dict:
        """Appends ``event`` to the job's events with the job's next ``seq`` and wakes its followers;
        returns the event with 'seq' added. Raises KeyError if the job is unknown, JobEnded if it already
        has a terminal event."""

    @abstractmethod
    async def finish(self, job_id: str, event: dict, **fields) -> Optional[dict]:
        """Ends the job in one step: merges ``fields`` into its record, sets its status to the kind of
        ``event`` (one of TERMINAL) and publishes ``event`` as its terminal event. Returns the new record, or
        None, changing nothing, if the job is unknown or has already ended (only one caller ends a job)."""

    @abstractmethod
    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[dict]:
        """Every event with seq > ``after``, in order and each once, stored ones first and then live ones;
        ends after an event whose 'kind' is in TERMINAL, or at once if the job is unknown (or expires) or
        has ended with a terminal event at or before ``after`` (a follower that saw the end reconnects)."""

    @abstractmethod
    def follow_owner(self, owner: str) -> AsyncIterator[dict]:
        """The live events of all of the owner's jobs (no replay); never ends by itself, but raises
        FollowerTooSlow once FOLLOWER_BACKLOG_BYTES of events wait for its reader."""

    @abstractmethod
    async def count_active(self, owner: Optional[str] = None) -> int:
        """How many jobs (of ``owner``, or of everyone) have a status in ACTIVE."""

    @abstractmethod
    async def request_cancel(self, job_id: str) -> None:
        """Marks the job for cancellation, for every gateway to see."""

    @abstractmethod
    async def cancel_requested(self, job_id: str) -> bool:
        """Whether the gateway running the job should stop it (cheap: asked at every progress step): a
        cancellation was requested, or the job has already ended (another gateway failed it)."""

    @abstractmethod
    async def renew_lease(self) -> None:
        """This gateway is alive for ``lease_seconds`` more: its jobs are not failed by ``fail_lapsed``."""

    @abstractmethod
    async def release_lease(self) -> None:
        """This gateway stops: its unfinished jobs may be failed at once."""

    @abstractmethod
    async def fail_lapsed(self, reason: str) -> int:
        """Fails, with ``reason`` as their error, the ACTIVE jobs of every other gateway whose lease has
        lapsed (or that never held one); returns how many."""

    @abstractmethod
    async def purge_expired(self) -> int:
        """Drops the expired jobs and their events; returns how many jobs."""

    @abstractmethod
    async def close(self) -> None:
        """Releases the store's connections."""


def open_store(redis_url: Optional[str], sqlite_path: Path, ttl_seconds: float, lease_seconds: float = LEASE_SECONDS) -> JobStore:
    """The Redis store if ``redis_url`` is set, else the SQLite store in ``sqlite_path``."""
    if redis_url:
        return RedisJobStore(redis_url, ttl_seconds, lease_seconds)
    return SqliteJobStore(sqlite_path, ttl_seconds, lease_seconds)


def failed_event(job_id: str, reason: str) -> dict:
    """The last event of a job whose gateway stopped before it ended (fail_lapsed): interrupted."""
    return event_json(Failed(job=job_id, time=time.time(), error=reason, error_code=ErrorCode.INTERRUPTED))


def lapsed_fields(reason: str) -> dict:
    """The record fields of a job failed by fail_lapsed."""
    return {'error': reason, 'error_code': ErrorCode.INTERRUPTED.value, 'finished': time.time()}


def is_terminal(event: dict) -> bool:
    return event.get('kind') in TERMINAL


def clamp_seq(after: int) -> int:
    """A follower's ``after`` as a seq a store can take: no job's events start below 0 or go past MAX_SEQ."""
    return max(0, min(int(after), MAX_SEQ))


# --- images, kept once ----------------------------------------------------------------------------------


def rebuilt(value: Any, entry: Callable[[str, Any], Dict[str, Any]]) -> Any:
    """``value`` (JSON: lists, dicts, scalars) rebuilt with each dict entry replaced by what ``entry``
    makes of its key and item (none, one or several entries)."""
    if isinstance(value, list):
        return [rebuilt(item, entry) for item in value]
    if not isinstance(value, dict):
        return value
    return {new_key: new_item for key, item in value.items() for new_key, new_item in entry(key, item).items()}


def stow_images(value: Any, images: Dict[str, str]) -> Any:
    """``value`` (an event or a record) with each base64 image replaced by its digest, added to ``images``."""
    def stow(key: str, item: Any) -> Dict[str, Any]:
        if key == IMAGE_FIELD and isinstance(item, str):
            digest = hashlib.sha256(item.encode()).hexdigest()
            images[digest] = item
            return {IMAGE_REF: digest}
        return {key: rebuilt(item, stow)}

    return rebuilt(value, stow)


def image_digests(value: Any) -> Set[str]:
    """The digests of the images a stowed value stands for."""
    if isinstance(value, list):
        return set().union(*(image_digests(item) for item in value))
    if not isinstance(value, dict):
        return set()
    found = {value[IMAGE_REF]} if isinstance(value.get(IMAGE_REF), str) else set()
    return found.union(*(image_digests(item) for key, item in value.items() if key != IMAGE_REF))


def restore_images(value: Any, images: Optional[Dict[str, str]]) -> Any:
    """A stowed value with its images back in place, or left out where ``images`` is None."""
    def restore(key: str, item: Any) -> Dict[str, Any]:
        if key != IMAGE_REF:
            return {key: rebuilt(item, restore)}
        return {} if images is None else {IMAGE_FIELD: images.get(item)}

    return rebuilt(value, restore)


class FollowerBacklog:
    """The events waiting for one follower of an owner's events, FOLLOWER_BACKLOG_BYTES of them at most:
    one more and they are dropped, and the follower's next read raises FollowerTooSlow."""

    def __init__(self):
        self.events: Deque[Tuple[dict, int]] = collections.deque()
        self.size = 0  # bytes of JSON waiting
        self.failure: Optional[Exception] = None
        self.arrived = asyncio.Event()

    def put(self, event: dict, size: int) -> None:
        if self.failure is not None:
            return
        if self.events and self.size + size > FOLLOWER_BACKLOG_BYTES:  # one event, however large, always fits
            self.fail(FollowerTooSlow(f'more than {FOLLOWER_BACKLOG_BYTES // 2**20} MiB of events waited for this '
                                      'reader: it reads more slowly than its jobs publish'))
            return
        self.events.append((event, size))
        self.size += size
        self.arrived.set()

    def fail(self, failure: Exception) -> None:
        self.failure = failure
        self.events.clear()
        self.size = 0
        self.arrived.set()

    async def get(self) -> dict:
        while not self.events:
            if self.failure is not None:
                raise self.failure
            self.arrived.clear()
            await self.arrived.wait()
        event, size = self.events.popleft()
        self.size -= size
        return event


# --- SQLite ---------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    touched REAL NOT NULL,              -- last create, update or publish: the job expires ttl seconds after it
    cancel INTEGER NOT NULL DEFAULT 0,  -- 1 once a cancellation was requested
    record TEXT NOT NULL,               -- the whole job as JSON, its images as digests (IMAGE_REF)
    gateway TEXT,                       -- the gateway that created it (gateways.id)
    ended INTEGER NOT NULL DEFAULT 0    -- 1 once it has its terminal event: no event may follow
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,                 -- the event as JSON, without its seq, its images as digests
    PRIMARY KEY (job, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    job TEXT NOT NULL,
    digest TEXT NOT NULL,               -- sha256 of the image's base64 text
    png BLOB NOT NULL,                  -- the decoded bytes (or the text itself, were it not canonical base64)
    PRIMARY KEY (job, digest)
);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    expires REAL NOT NULL               -- when its lease runs out (its last renewal and its lease_seconds): then it is taken for dead
);
"""
ADDED_COLUMNS = {'gateway': 'TEXT', 'ended': 'INTEGER NOT NULL DEFAULT 0'}  # what files made before leases lack
ACTIVE_SQL = f"({', '.join(repr(status) for status in sorted(ACTIVE))})"  # ('queued', 'running')
INCREMENTAL_VACUUM = 2  # PRAGMA auto_vacuum's value


def packed(image: str) -> Union[bytes, str]:
    """An image as SQLite keeps it: its PNG bytes, a quarter smaller than their base64."""
    try:
        data = base64.b64decode(image, validate=True)
    except binascii.Error:
        return image
    return data if base64.b64encode(data).decode() == image else image  # bytes only where they give it back exactly


def unpacked(stored: Union[bytes, str]) -> str:
    return base64.b64encode(stored).decode() if isinstance(stored, bytes) else stored


def reclaim_freed_pages(db: sqlite3.Connection) -> None:
    """Incremental auto-vacuum, so that purge_expired can give the pages of expired jobs back: set before a
    new file's first table; an older file is converted by one VACUUM, tried again at the next start while
    another gateway holds the file busy."""
    if db.execute('PRAGMA auto_vacuum').fetchone()[0] == INCREMENTAL_VACUUM:
        return
    db.execute(f'PRAGMA auto_vacuum = {INCREMENTAL_VACUUM}')
    if db.execute('SELECT 1 FROM sqlite_master').fetchone():
        with contextlib.suppress(sqlite3.OperationalError):
            db.execute('VACUUM')


class SqliteJobStore(JobStore):
    """One SQLite file in WAL mode and one connection. Its calls are short (an indexed row or a few) and run
    on the event loop, which also makes ``publish``'s store-then-wake one step that no follower can split.
    Several gateways may share the file (each its own store); a follower in one sees another's events
    within SAFETY_WAIT."""

    def __init__(self, path: Path, ttl_seconds: float, lease_seconds: float = LEASE_SECONDS):
        self.ttl = ttl_seconds
        self.lease_seconds = lease_seconds
        self.gateway = uuid.uuid4().hex
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10)  # autocommit, but for _writing
        reclaim_freed_pages(self.db)
        self.db.execute('PRAGMA journal_mode=WAL')
        self.db.execute('PRAGMA synchronous=NORMAL')  # durable at each checkpoint; a crash loses at most the last events
        self.db.executescript(SCHEMA)
        self._add_missing_columns()
        self.job_waiters: Dict[str, Set[asyncio.Event]] = {}
        self.owner_backlogs: Dict[str, Set[FollowerBacklog]] = {}
        self.closed = False

    def _add_missing_columns(self) -> None:
        with self._writing() as db:  # two gateways starting on an older file: one adds them
            present = {row[1] for row in db.execute('PRAGMA table_info(jobs)')}
            for name, kind in ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f'ALTER TABLE jobs ADD COLUMN {name} {kind}')
            if 'ended' not in present:
                db.execute(f'UPDATE jobs SET ended = 1 WHERE status NOT IN {ACTIVE_SQL}')

    def _query(self, sql: str, *args) -> list:
        return self.db.execute(sql, args).fetchall()

    @contextmanager
    def _writing(self):
        """The connection, in a write transaction from its start (so that what it reads stays true until COMMIT)."""
        self.db.execute('BEGIN IMMEDIATE')
        try:
            yield self.db
        except BaseException:
            self.db.execute('ROLLBACK')
            raise
        self.db.execute('COMMIT')

    def _live_since(self) -> float:
        return time.time() - self.ttl

    def _images(self, job_id: str, digests: Iterable[str]) -> Dict[str, str]:
        digests = list(digests)
        if not digests:
            return {}
        rows = self._query(f'SELECT digest, png FROM images WHERE job = ? AND digest IN ({", ".join("?" * len(digests))})',
                           job_id, *digests)
        return {digest: unpacked(png) for digest, png in rows}

    def _keep_images(self, db: sqlite3.Connection, job_id: str, images: Dict[str, str]) -> None:
        db.executemany('INSERT OR IGNORE INTO images (job, digest, png) VALUES (?, ?, ?)',
                       [(job_id, digest, packed(image)) for digest, image in images.items()])

    def _record(self, job_id: str) -> Optional[dict]:
        rows = self._query('SELECT record FROM jobs WHERE id = ? AND touched >= ?', job_id, self._live_since())
        if not rows:
            return None
        record = json.loads(rows[0][0])
        return restore_images(record, self._images(job_id, image_digests(record)))

    async def create(self, job: dict) -> None:
        images: Dict[str, str] = {}
        record = json.dumps(stow_images(job, images))
        with self._writing() as db:
            db.execute(
                'INSERT INTO jobs (id, owner, status, created, touched, record, gateway) VALUES (?, ?, ?, ?, ?, ?, ?)',
                (job['id'], job['owner'], job['status'], job['created'], time.time(), record, self.gateway),
            )
            self._keep_images(db, job['id'], images)

    async def get(self, job_id: str) -> Optional[dict]:
        return self._record(job_id)

    async def update(self, job_id: str, **fields) -> Optional[dict]:
        images: Dict[str, str] = {}
        stowed = stow_images(fields, images)
        with self._writing() as db:
            row = db.execute('SELECT record, status FROM jobs WHERE id = ? AND touched >= ?', (job_id, self._live_since())).fetchone()
            if row is None:
                return None
            if row[1] not in TERMINAL:
                record = {**json.loads(row[0]), **stowed}
                db.execute('UPDATE jobs SET status = ?, touched = ?, record = ? WHERE id = ?',
                           (record['status'], time.time(), json.dumps(record), job_id))
                self._keep_images(db, job_id, images)
            return self._record(job_id)

    async def recent(self, owner: str, limit: int, with_images: bool = False) -> List[dict]:
        rows = self._query(
            'SELECT id, record FROM jobs WHERE owner = ? AND touched >= ? ORDER BY created DESC LIMIT ?',
            owner, self._live_since(), limit,
        )
        records = [(job_id, json.loads(record)) for job_id, record in rows]
        if not with_images:
            return [restore_images(record, None) for _, record in records]
        return [restore_images(record, self._images(job_id, image_digests(record))) for job_id, record in records]

    def _append(self, db: sqlite3.Connection, job_id: str, event: dict) -> Tuple[int, int]:
        """Stores ``event`` as the job's next one, in the caller's transaction: its seq, and its size in bytes."""
        images: Dict[str, str] = {}
        body = json.dumps(stow_images(event, images))
        seq = db.execute('SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job = ?', (job_id,)).fetchone()[0]
        db.execute('INSERT INTO events (job, seq, body) VALUES (?, ?, ?)', (job_id, seq, body))
        self._keep_images(db, job_id, images)
        db.execute('UPDATE jobs SET touched = ?, ended = MAX(ended, ?) WHERE id = ?', (time.time(), int(is_terminal(event)), job_id))
        return seq, len(body) + sum(map(len, images.values()))

    def _announce(self, owner: str, job_id: str, event: dict, size: int) -> None:
        for wake in self.job_waiters.get(job_id, ()):
            wake.set()
        for backlog in self.owner_backlogs.get(owner, ()):
            backlog.put({'job': job_id, **event}, size)

    async def publish(self, job_id: str, event: dict) -> dict:
        with self._writing() as db:  # the next seq and its row in one write transaction
            row = db.execute('SELECT owner, ended FROM jobs WHERE id = ? AND touched >= ?', (job_id, self._live_since())).fetchone()
            if row is None:
                raise KeyError(f'unknown job {job_id!r}')
            if row[1]:
                raise JobEnded(f'job {job_id} has ended: no event may follow its terminal one')
            seq, size = self._append(db, job_id, event)
        published = {**event, 'seq': seq}
        self._announce(row[0], job_id, published, size)
        return published

    async def finish(self, job_id: str, event: dict, **fields) -> Optional[dict]:
        assert is_terminal(event), event
        images: Dict[str, str] = {}
        stowed = stow_images(fields, images)
        with self._writing() as db:
            row = db.execute('SELECT owner, record, status, ended FROM jobs WHERE id = ? AND touched >= ?',
                             (job_id, self._live_since())).fetchone()
            if row is None or row[2] in TERMINAL or row[3]:
                return None
            record = {**json.loads(row[1]), **stowed, 'status': event['kind']}
            db.execute('UPDATE jobs SET status = ?, record = ? WHERE id = ?', (record['status'], json.dumps(record), job_id))
            self._keep_images(db, job_id, images)
            seq, size = self._append(db, job_id, event)
            finished = self._record(job_id)
        self._announce(row[0], job_id, {**event, 'seq': seq}, size)
        return finished

    def _events_after(self, job_id: str, after: int) -> List[dict]:
        rows = self._query('SELECT seq, body FROM events WHERE job = ? AND seq > ? ORDER BY seq', job_id, after)
        events = [{**json.loads(body), 'seq': seq} for seq, body in rows]
        return restore_images(events, self._images(job_id, image_digests(events)))

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[dict]:
        last = clamp_seq(after)
        waiters = self.job_waiters.setdefault(job_id, set())
        wake = asyncio.Event()
        waiters.add(wake)
        try:
            while not self.closed:
                wake.clear()  # before the reads: an event published from here on sets it again
                state = self._query('SELECT ended FROM jobs WHERE id = ? AND touched >= ?', job_id, self._live_since())
                if not state:
                    return  # unknown, or expired
                for event in self._events_after(job_id, last):
                    yield event
                    last = event['seq']
                    if is_terminal(event):
                        return
                if state[0][0]:
                    return  # it had ended before the read, with a terminal event at or before ``after``
                try:
                    await asyncio.wait_for(wake.wait(), SAFETY_WAIT)
                except asyncio.TimeoutError:
                    pass  # read again anyway: another process may write to the same file
        finally:
            waiters.discard(wake)
            if not waiters:
                self.job_waiters.pop(job_id, None)

    async def follow_owner(self, owner: str) -> AsyncIterator[dict]:
        backlogs = self.owner_backlogs.setdefault(owner, set())
        backlog = FollowerBacklog()
        backlogs.add(backlog)
        try:
            while True:
                yield await backlog.get()
        finally:
            backlogs.discard(backlog)
            if not backlogs:
                self.owner_backlogs.pop(owner, None)

    async def count_active(self, owner: Optional[str] = None) -> int:
        where = f'status IN {ACTIVE_SQL} AND touched >= ?'
        if owner is None:
            return self._query(f'SELECT COUNT(*) FROM jobs WHERE {where}', self._live_since())[0][0]
        return self._query(f'SELECT COUNT(*) FROM jobs WHERE {where} AND owner = ?', self._live_since(), owner)[0][0]

    async def request_cancel(self, job_id: str) -> None:
        self._query('UPDATE jobs SET cancel = 1 WHERE id = ?', job_id)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(self._query('SELECT 1 FROM jobs WHERE id = ? AND (cancel = 1 OR ended = 1)', job_id))

    async def renew_lease(self) -> None:
        self._query('INSERT INTO gateways (id, expires) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET expires = excluded.expires',
                    self.gateway, time.time() + self.lease_seconds)

    async def release_lease(self) -> None:
        self._query('DELETE FROM gateways WHERE id = ?', self.gateway)

    async def fail_lapsed(self, reason: str) -> int:
        lapsed = self._query(
            f'SELECT id FROM jobs WHERE status IN {ACTIVE_SQL} AND touched >= ? AND gateway IS NOT ? '
            'AND (gateway IS NULL OR gateway NOT IN (SELECT id FROM gateways WHERE expires >= ?))',
            self._live_since(), self.gateway, time.time(),
        )
        failed = 0
        for job_id, in lapsed:
            failed += await self.finish(job_id, failed_event(job_id, reason), **lapsed_fields(reason)) is not None
        return failed

    async def purge_expired(self) -> int:
        since = self._live_since()
        with self._writing() as db:
            expired = 'SELECT id FROM jobs WHERE touched < ?'
            db.execute(f'DELETE FROM events WHERE job IN ({expired})', (since,))
            db.execute(f'DELETE FROM images WHERE job IN ({expired})', (since,))
            purged = db.execute('DELETE FROM jobs WHERE touched < ?', (since,)).rowcount
            db.execute('DELETE FROM gateways WHERE expires < ?', (time.time(),))
        self.db.executescript('PRAGMA incremental_vacuum;')  # the freed pages back to the file system (execute() frees one)
        return purged

    async def close(self) -> None:
        self.closed = True
        for waiters in self.job_waiters.values():
            for wake in waiters:
                wake.set()  # its follower sees the store closed and ends
        self.db.close()


# --- Redis ----------------------------------------------------------------------------------------------
#
# Keys of a job (all expire ttl seconds after the job's last create, update or publish):
#   s2i:job:<id>           hash: the record, one field per top-level key, each value as JSON (images as
#                          digests), and the store's own fields: @gateway (its gateway's id), @ended ('1' once
#                          it has its terminal event)
#   s2i:job:<id>:events    list: the events as JSON, without their seq (the event at index i has seq i + 1)
#   s2i:job:<id>:cancel    string, present once a cancellation was requested
#   s2i:job:<id>:images    hash: digest -> base64 image, each once
# Indexes:
#   s2i:owner:<owner>:jobs    sorted set: the owner's job ids by 'created'
#   s2i:owner:<owner>:active  set: the owner's job ids whose status is in ACTIVE
#   s2i:active                set: every job id whose status is in ACTIVE
# An index may still name an expired job; readers drop such ids as they meet them.
#   s2i:gateway:<id>       string: present while the gateway's lease runs (it expires lease seconds after a renewal)
# Channels: s2i:job:<id> and s2i:owner:<owner>; a message is "<seq>\n<job id>\n<event JSON without seq>" (its images in place).

PREFIX = 's2i:'
ALL_ACTIVE = PREFIX + 'active'
GATEWAY_FIELD, ENDED_FIELD = '@gateway', '@ended'  # the store's fields in a job's hash; no record key starts with @
TERMINAL_LUA = 'local TERMINAL = {' + ', '.join(f"['{json.dumps(status)}'] = true" for status in sorted(TERMINAL)) + '}\n'

# KEYS: the job, its events, its cancel flag, the owner's channel, its images.
# ARGV: the event's JSON to keep, ttl, job id, '1' if the event is terminal, the event's JSON to send, then
# digest, image, digest, image, ...
# One script, so that the seq (the list's new length) and the order of the messages are the order of the
# list, and that nothing is appended after a terminal event (-1), whoever publishes.
PUBLISH_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], '@ended') == 1 then return -1 end
if #ARGV > 5 then redis.call('HSET', KEYS[5], unpack(ARGV, 6)) end
local seq = redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], '@ended', '1') end
for _, i in ipairs({1, 2, 3, 5}) do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
local message = seq .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[5]
redis.call('PUBLISH', KEYS[1], message)
redis.call('PUBLISH', KEYS[4], message)
return seq
"""

# KEYS: the job, its events, its cancel flag, the owner's active set, all active jobs, its images.
# ARGV: ttl, job id, 'active' / 'inactive' / '' (status unchanged), n, then n field/value items, then digest,
# image, digest, image, ...
# One script, so that a status and the active sets never disagree, whoever updates, and a terminal status stays.
UPDATE_SCRIPT = TERMINAL_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
if TERMINAL[redis.call('HGET', KEYS[1], 'status')] then return redis.call('HGETALL', KEYS[1]) end
local fields_end = 4 + tonumber(ARGV[4])
if fields_end > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5, fields_end)) end
if #ARGV > fields_end then redis.call('HSET', KEYS[6], unpack(ARGV, fields_end + 1)) end
if ARGV[3] == 'active' then
    redis.call('SADD', KEYS[4], ARGV[2])
    redis.call('SADD', KEYS[5], ARGV[2])
elseif ARGV[3] == 'inactive' then
    redis.call('SREM', KEYS[4], ARGV[2])
    redis.call('SREM', KEYS[5], ARGV[2])
end
for _, i in ipairs({1, 2, 3, 4, 6}) do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the job, its events, its cancel flag, the owner's active set, all active jobs, the owner's channel, its images.
# ARGV: ttl, job id, the event's JSON to keep, the event's JSON to send, n, then n field/value items (the
# status among them), then digest, image, digest, image, ...
# One script: the terminal status and the terminal event together, once (0 when the job had already ended).
FINISH_SCRIPT = TERMINAL_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], '@ended') == 1 or TERMINAL[redis.call('HGET', KEYS[1], 'status')] then return 0 end
local fields_end = 5 + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], '@ended', '1', unpack(ARGV, 6, fields_end))
if #ARGV > fields_end then redis.call('HSET', KEYS[7], unpack(ARGV, fields_end + 1)) end
redis.call('SREM', KEYS[4], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[2])
local seq = redis.call('RPUSH', KEYS[2], ARGV[3])
for _, i in ipairs({1, 2, 3, 4, 7}) do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
local message = seq .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[4]
redis.call('PUBLISH', KEYS[1], message)
redis.call('PUBLISH', KEYS[6], message)
return seq
"""


def job_key(job_id: str) -> str:
    return f'{PREFIX}job:{job_id}'


def owner_key(owner: str) -> str:
    return f'{PREFIX}owner:{owner}'


def gateway_key(gateway: str) -> str:
    return f'{PREFIX}gateway:{gateway}'


def encode_fields(fields: dict) -> List[str]:
    return [part for key, value in fields.items() for part in (key, json.dumps(value))]


def flat_images(images: Dict[str, str]) -> List[str]:
    return [part for item in images.items() for part in item]


def decode_record(fields: Dict[str, str]) -> Optional[dict]:
    return {key: json.loads(value) for key, value in fields.items() if not key.startswith('@')} if fields else None


def decode_message(data: str) -> Tuple[str, dict]:
    """A channel message's job id and event (with its seq)."""
    seq, job_id, body = data.split('\n', 2)
    return job_id, {**json.loads(body), 'seq': int(seq)}


class RedisJobStore(JobStore):
    """Jobs in one Redis, shared by every gateway replica that points at it. A follower subscribes to the
    job's channel before it reads the stored events, and drops what it has already yielded by seq."""

    def __init__(self, url: str, ttl_seconds: float, lease_seconds: float = LEASE_SECONDS):
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.ttl = max(1, math.ceil(ttl_seconds))  # EXPIRE takes whole seconds
        self.lease_seconds = lease_seconds
        self.gateway = uuid.uuid4().hex
        self.publish_script = self.redis.register_script(PUBLISH_SCRIPT)
        self.update_script = self.redis.register_script(UPDATE_SCRIPT)
        self.finish_script = self.redis.register_script(FINISH_SCRIPT)

    async def _owner(self, job_id: str) -> Optional[str]:
        owner = await self.redis.hget(job_key(job_id), 'owner')
        return None if owner is None else json.loads(owner)

    async def _with_images(self, job_id: str, stowed: Any) -> Any:
        digests = list(image_digests(stowed))
        images = dict(zip(digests, await self.redis.hmget(job_key(job_id) + ':images', digests))) if digests else {}
        return restore_images(stowed, images)

    async def create(self, job: dict) -> None:
        key, owner, active = job_key(job['id']), owner_key(job['owner']), job['status'] in ACTIVE
        images: Dict[str, str] = {}
        record = stow_images(job, images)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, items=[*encode_fields(record), GATEWAY_FIELD, self.gateway])
            pipe.expire(key, self.ttl)
            if images:
                pipe.hset(key + ':images', mapping=images)
                pipe.expire(key + ':images', self.ttl)
            pipe.zadd(owner + ':jobs', {job['id']: job['created']})
            pipe.expire(owner + ':jobs', self.ttl)
            if active:
                pipe.sadd(owner + ':active', job['id'])
                pipe.expire(owner + ':active', self.ttl)
                pipe.sadd(ALL_ACTIVE, job['id'])
            await pipe.execute()

    async def get(self, job_id: str) -> Optional[dict]:
        return await self._with_images(job_id, decode_record(await self.redis.hgetall(job_key(job_id))))

    async def update(self, job_id: str, **fields) -> Optional[dict]:
        owner = await self._owner(job_id)
        if owner is None:
            return None
        change = '' if 'status' not in fields else 'active' if fields['status'] in ACTIVE else 'inactive'
        key, images = job_key(job_id), {}
        encoded = encode_fields(stow_images(fields, images))
        flat = await self.update_script(
            keys=[key, key + ':events', key + ':cancel', owner_key(owner) + ':active', ALL_ACTIVE, key + ':images'],
            args=[self.ttl, job_id, change, len(encoded), *encoded, *flat_images(images)],
        )
        return await self._with_images(job_id, decode_record(dict(zip(flat[::2], flat[1::2])))) if flat else None

    async def recent(self, owner: str, limit: int, with_images: bool = False) -> List[dict]:
        index, jobs = owner_key(owner) + ':jobs', []
        while len(jobs) < limit:
            job_ids = await self.redis.zrevrange(index, len(jobs), limit - 1)
            if not job_ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hgetall(job_key(job_id))
                records = [decode_record(fields) for fields in await pipe.execute()]
            expired = [job_id for job_id, record in zip(job_ids, records) if record is None]
            if expired:
                await self.redis.zrem(index, *expired)
            for job_id, record in zip(job_ids, records):
                if record is not None:
                    jobs.append(await self._with_images(job_id, record) if with_images else restore_images(record, None))
        return jobs

    async def publish(self, job_id: str, event: dict) -> dict:
        owner = await self._owner(job_id)
        if owner is None:
            raise KeyError(f'unknown job {job_id!r}')
        key, images = job_key(job_id), {}
        kept = json.dumps(stow_images(event, images))
        seq = await self.publish_script(
            keys=[key, key + ':events', key + ':cancel', owner_key(owner), key + ':images'],
            args=[kept, self.ttl, job_id, int(is_terminal(event)), json.dumps(event), *flat_images(images)],
        )
        if seq == -1:
            raise JobEnded(f'job {job_id} has ended: no event may follow its terminal one')
        if not seq:
            raise KeyError(f'unknown job {job_id!r}')  # it expired just now
        return {**event, 'seq': seq}

    async def finish(self, job_id: str, event: dict, **fields) -> Optional[dict]:
        assert is_terminal(event), event
        owner = await self._owner(job_id)
        if owner is None:
            return None
        key, images = job_key(job_id), {}
        encoded = encode_fields(stow_images({**fields, 'status': event['kind']}, images))
        kept = json.dumps(stow_images(event, images))
        seq = await self.finish_script(
            keys=[key, key + ':events', key + ':cancel', owner_key(owner) + ':active', ALL_ACTIVE, owner_key(owner), key + ':images'],
            args=[self.ttl, job_id, kept, json.dumps(event), len(encoded), *encoded, *flat_images(images)],
        )
        return await self.get(job_id) if seq else None

    async def _events_after(self, job_id: str, after: int) -> List[dict]:
        bodies = await self.redis.lrange(job_key(job_id) + ':events', after, -1)
        return await self._with_images(job_id, [{**json.loads(body), 'seq': after + i} for i, body in enumerate(bodies, 1)])

    async def _state(self, job_id: str) -> Tuple[bool, bool]:
        """Whether the job is known, and whether it has its terminal event."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(job_key(job_id))
            pipe.hexists(job_key(job_id), ENDED_FIELD)
            known, ended = await pipe.execute()
        return bool(known), bool(ended)

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[dict]:
        key, last = job_key(job_id), clamp_seq(after)
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(key)
            await pubsub.get_message(timeout=SAFETY_WAIT)  # the confirmation: from here on no event goes unannounced
            while True:
                known, ended = await self._state(job_id)  # before the read: if it had ended, the read has its end
                if not known:
                    return  # unknown, or expired
                for event in await self._events_after(job_id, last):
                    yield event
                    last = event['seq']
                    if is_terminal(event):
                        return
                if ended:
                    return  # with a terminal event at or before ``after``
                # Live events while they come in order; anything else (a gap, a quiet second) reads the list again.
                while message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=SAFETY_WAIT):
                    _, event = decode_message(message['data'])
                    if event['seq'] <= last:
                        if is_terminal(event):
                            return  # it ended at or before ``after``
                        continue  # already yielded from the list
                    if event['seq'] > last + 1:
                        break
                    yield event
                    last = event['seq']
                    if is_terminal(event):
                        return

    async def follow_owner(self, owner: str) -> AsyncIterator[dict]:
        backlog = FollowerBacklog()
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(owner_key(owner))
            receiving = asyncio.create_task(receive_into(pubsub, backlog))
            try:
                while True:
                    yield await backlog.get()
            finally:
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)

    async def count_active(self, owner: Optional[str] = None) -> int:
        index = ALL_ACTIVE if owner is None else owner_key(owner) + ':active'
        job_ids = list(await self.redis.smembers(index))
        if not job_ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(job_key(job_id))
            present = await pipe.execute()
        expired = [job_id for job_id, exists in zip(job_ids, present) if not exists]
        if expired:
            await self.redis.srem(index, *expired)
        return len(job_ids) - len(expired)

    async def request_cancel(self, job_id: str) -> None:
        await self.redis.set(job_key(job_id) + ':cancel', '1', ex=self.ttl)

    async def cancel_requested(self, job_id: str) -> bool:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(job_key(job_id) + ':cancel')
            pipe.hexists(job_key(job_id), ENDED_FIELD)
            return any(await pipe.execute())

    async def renew_lease(self) -> None:
        await self.redis.set(gateway_key(self.gateway), '1', px=max(1, round(self.lease_seconds * 1000)))

    async def release_lease(self) -> None:
        await self.redis.delete(gateway_key(self.gateway))

    async def fail_lapsed(self, reason: str) -> int:
        job_ids = list(await self.redis.smembers(ALL_ACTIVE))
        holders = await self._gateways_of(job_ids)
        others = sorted({holder for holder in holders if holder and holder != self.gateway})
        async with self.redis.pipeline(transaction=False) as pipe:
            for gateway in others:
                pipe.exists(gateway_key(gateway))
            live = {gateway for gateway, alive in zip(others, await pipe.execute()) if alive}
        failed = 0
        for job_id, holder in zip(job_ids, holders):
            if holder != self.gateway and holder not in live:
                failed += await self.finish(job_id, failed_event(job_id, reason), **lapsed_fields(reason)) is not None
        return failed

    async def _gateways_of(self, job_ids: List[str]) -> List[Optional[str]]:
        """Each job's gateway (None where it has none, or the job is gone)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), GATEWAY_FIELD)
            return await pipe.execute()

    async def purge_expired(self) -> int:
        return 0  # every key of a job expires by itself

    async def close(self) -> None:
        await self.redis.aclose()


async def receive_into(pubsub, backlog: FollowerBacklog) -> None:
    """Moves an owner's messages from Redis into a follower's backlog as they come, so that a slow follower
    overflows its bounded backlog (and is told so) instead of Redis's buffer for it."""
    try:
        while backlog.failure is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=SAFETY_WAIT)
            if message is not None:
                job_id, event = decode_message(message['data'])
                backlog.put({'job': job_id, **event}, len(message['data']))
    except Exception as e:  # Redis went away: the follower's next read raises it
        backlog.fail(e)
