"""Where jobs and their events live: one async interface (``JobStore``), two stores behind it.

- ``SqliteJobStore`` (the default): one file under the cache dir, so that finished jobs and their events
  survive a restart of the gateway; followers are woken in-process.
- ``RedisJobStore`` (``S2I_REDIS_URL``): several gateway replicas share jobs and events; a job submitted
  through one replica can be followed, and cancelled, through another.

A job is a JSON-able dict with at least ``id``, ``owner``, ``status`` and ``created`` (epoch seconds). Its
events are JSON-able dicts numbered ``seq`` 1, 2, 3, ... in the order they were published; a follower asks
for the events after the last ``seq`` it saw, so that a dropped connection loses nothing. A job expires
``ttl_seconds`` after it was last created, updated or published to.
"""

import asyncio
import json
import math
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import AsyncIterator, Dict, List, Optional, Set, Tuple

TERMINAL = frozenset({'succeeded', 'failed', 'cancelled'})  # job statuses that end a job; also the kinds of the last event
ACTIVE = frozenset({'queued', 'running'})
SAFETY_WAIT = 1.0  # seconds a follower waits for a wake-up before it reads the stored events again anyway


class JobStore(ABC):
    """Jobs and their numbered events. Status transitions are the caller's (``update``); the store keeps
    ``count_active`` in step with them."""

    @abstractmethod
    async def create(self, job: dict) -> None:
        """Stores a new job: a JSON-able dict with at least 'id', 'owner', 'status' and 'created'."""

    @abstractmethod
    async def get(self, job_id: str) -> Optional[dict]:
        """The job's record, or None if it is unknown or expired."""

    @abstractmethod
    async def update(self, job_id: str, **fields) -> Optional[dict]:
        """Merges ``fields`` into the job's record and returns the new record (None if the job is unknown)."""

    @abstractmethod
    async def recent(self, owner: str, limit: int) -> List[dict]:
        """The owner's jobs, newest first, at most ``limit``."""

    @abstractmethod
    async def publish(self, job_id: str, event: dict) -> dict:
        """Appends ``event`` to the job's events with the job's next ``seq`` and wakes its followers;
        returns the event with 'seq' added. Raises KeyError if the job is unknown."""

    @abstractmethod
    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[dict]:
        """Every event with seq > ``after``, in order and each once, stored ones first and then live ones;
        ends after an event whose 'kind' is in TERMINAL, or at once if the job is unknown (or expires) or
        its last event is terminal and was at or before ``after`` (a follower that saw the end reconnects)."""

    @abstractmethod
    def follow_owner(self, owner: str) -> AsyncIterator[dict]:
        """The live events of all of the owner's jobs (no replay); never ends by itself."""

    @abstractmethod
    async def count_active(self, owner: Optional[str] = None) -> int:
        """How many jobs (of ``owner``, or of everyone) have a status in ACTIVE."""

    @abstractmethod
    async def request_cancel(self, job_id: str) -> None:
        """Marks the job for cancellation, for every gateway to see."""

    @abstractmethod
    async def cancel_requested(self, job_id: str) -> bool:
        """Whether the job was marked for cancellation (cheap: asked at every progress step)."""

    @abstractmethod
    async def abandon_unfinished(self, reason: str) -> int:
        """Fails every job still ACTIVE (a restarted single gateway runs none of them); returns how many."""

    @abstractmethod
    async def purge_expired(self) -> int:
        """Drops the expired jobs and their events; returns how many jobs."""

    @abstractmethod
    async def close(self) -> None:
        """Releases the store's connections."""


def open_store(redis_url: Optional[str], sqlite_path: Path, ttl_seconds: float) -> JobStore:
    """The Redis store if ``redis_url`` is set, else the SQLite store in ``sqlite_path``."""
    if redis_url:
        return RedisJobStore(redis_url, ttl_seconds)
    return SqliteJobStore(sqlite_path, ttl_seconds)


def abandoned_event(job_id: str, reason: str) -> dict:
    return {'kind': 'failed', 'job': job_id, 'error': reason}


def is_terminal(event: dict) -> bool:
    return event.get('kind') in TERMINAL


# --- SQLite ---------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    touched REAL NOT NULL,              -- last create, update or publish: the job expires ttl seconds after it
    cancel INTEGER NOT NULL DEFAULT 0,  -- 1 once a cancellation was requested
    record TEXT NOT NULL                -- the whole job as JSON
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,                 -- the event as JSON, without its seq
    PRIMARY KEY (job, seq)
) WITHOUT ROWID;
"""
ACTIVE_SQL = f"({', '.join(repr(status) for status in sorted(ACTIVE))})"  # ('queued', 'running')


class SqliteJobStore(JobStore):
    """One SQLite file in WAL mode and one connection. Its calls are short (an indexed row or a few) and run
    on the event loop, which also makes ``publish``'s store-then-wake one step that no follower can split."""

    def __init__(self, path: Path, ttl_seconds: float):
        self.ttl = ttl_seconds
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10)  # autocommit, but for _writing
        self.db.execute('PRAGMA journal_mode=WAL')
        self.db.execute('PRAGMA synchronous=NORMAL')  # durable at each checkpoint; a crash loses at most the last events
        self.db.executescript(SCHEMA)
        self.job_waiters: Dict[str, Set[asyncio.Event]] = {}
        self.owner_queues: Dict[str, Set[asyncio.Queue]] = {}
        self.closed = False

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

    def _record(self, job_id: str) -> Optional[dict]:
        rows = self._query('SELECT record FROM jobs WHERE id = ? AND touched >= ?', job_id, self._live_since())
        return json.loads(rows[0][0]) if rows else None

    async def create(self, job: dict) -> None:
        self._query(
            'INSERT INTO jobs (id, owner, status, created, touched, record) VALUES (?, ?, ?, ?, ?, ?)',
            job['id'], job['owner'], job['status'], job['created'], time.time(), json.dumps(job),
        )

    async def get(self, job_id: str) -> Optional[dict]:
        return self._record(job_id)

    async def update(self, job_id: str, **fields) -> Optional[dict]:
        with self._writing() as db:
            row = db.execute('SELECT record FROM jobs WHERE id = ? AND touched >= ?', (job_id, self._live_since())).fetchone()
            if row is None:
                return None
            record = {**json.loads(row[0]), **fields}
            db.execute(
                'UPDATE jobs SET status = ?, touched = ?, record = ? WHERE id = ?',
                (record['status'], time.time(), json.dumps(record), job_id),
            )
        return record

    async def recent(self, owner: str, limit: int) -> List[dict]:
        rows = self._query(
            'SELECT record FROM jobs WHERE owner = ? AND touched >= ? ORDER BY created DESC LIMIT ?',
            owner, self._live_since(), limit,
        )
        return [json.loads(record) for record, in rows]

    async def publish(self, job_id: str, event: dict) -> dict:
        body = json.dumps(event)
        with self._writing() as db:  # the next seq and its row in one write transaction
            owner = db.execute('SELECT owner FROM jobs WHERE id = ? AND touched >= ?', (job_id, self._live_since())).fetchone()
            if owner is None:
                raise KeyError(f'unknown job {job_id!r}')
            seq = db.execute('SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job = ?', (job_id,)).fetchone()[0]
            db.execute('INSERT INTO events (job, seq, body) VALUES (?, ?, ?)', (job_id, seq, body))
            db.execute('UPDATE jobs SET touched = ? WHERE id = ?', (time.time(), job_id))
        published = {**event, 'seq': seq}
        for wake in self.job_waiters.get(job_id, ()):
            wake.set()
        for queue in self.owner_queues.get(owner[0], ()):
            queue.put_nowait({'job': job_id, **published})
        return published

    def _events_after(self, job_id: str, after: int) -> List[dict]:
        rows = self._query('SELECT seq, body FROM events WHERE job = ? AND seq > ? ORDER BY seq', job_id, after)
        return [{**json.loads(body), 'seq': seq} for seq, body in rows]

    def _ended_by(self, job_id: str, seq: int) -> bool:
        """Whether the job's last event is terminal and has a seq <= ``seq`` (a follower that saw it reconnects)."""
        rows = self._query('SELECT seq, body FROM events WHERE job = ? ORDER BY seq DESC LIMIT 1', job_id)
        return bool(rows) and rows[0][0] <= seq and is_terminal(json.loads(rows[0][1]))

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[dict]:
        if after and self._ended_by(job_id, after):
            return
        last = after
        waiters = self.job_waiters.setdefault(job_id, set())
        wake = asyncio.Event()
        waiters.add(wake)
        try:
            while not self.closed and self._query('SELECT 1 FROM jobs WHERE id = ? AND touched >= ?', job_id, self._live_since()):
                wake.clear()  # before the read: an event published from here on sets it again
                for event in self._events_after(job_id, last):
                    yield event
                    last = event['seq']
                    if is_terminal(event):
                        return
                try:
                    await asyncio.wait_for(wake.wait(), SAFETY_WAIT)
                except asyncio.TimeoutError:
                    pass  # read again anyway: another process may write to the same file
        finally:
            waiters.discard(wake)
            if not waiters:
                self.job_waiters.pop(job_id, None)

    async def follow_owner(self, owner: str) -> AsyncIterator[dict]:
        queues = self.owner_queues.setdefault(owner, set())
        queue: asyncio.Queue = asyncio.Queue()
        queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)
            if not queues:
                self.owner_queues.pop(owner, None)

    async def count_active(self, owner: Optional[str] = None) -> int:
        where = f'status IN {ACTIVE_SQL} AND touched >= ?'
        if owner is None:
            return self._query(f'SELECT COUNT(*) FROM jobs WHERE {where}', self._live_since())[0][0]
        return self._query(f'SELECT COUNT(*) FROM jobs WHERE {where} AND owner = ?', self._live_since(), owner)[0][0]

    async def request_cancel(self, job_id: str) -> None:
        self._query('UPDATE jobs SET cancel = 1 WHERE id = ?', job_id)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(self._query('SELECT 1 FROM jobs WHERE id = ? AND cancel = 1', job_id))

    async def abandon_unfinished(self, reason: str) -> int:
        live = self._query(f'SELECT id FROM jobs WHERE status IN {ACTIVE_SQL} AND touched >= ?', self._live_since())
        job_ids = [job_id for job_id, in live]
        for job_id in job_ids:
            await self.update(job_id, status='failed', error=reason, finished=time.time())
            await self.publish(job_id, abandoned_event(job_id, reason))
        return len(job_ids)

    async def purge_expired(self) -> int:
        since = self._live_since()
        with self._writing() as db:
            db.execute('DELETE FROM events WHERE job IN (SELECT id FROM jobs WHERE touched < ?)', (since,))
            return db.execute('DELETE FROM jobs WHERE touched < ?', (since,)).rowcount

    async def close(self) -> None:
        self.closed = True
        for waiters in self.job_waiters.values():
            for wake in waiters:
                wake.set()  # its follower sees the store closed and ends
        self.db.close()


# --- Redis ----------------------------------------------------------------------------------------------
#
# Keys of a job (all expire ttl seconds after the job's last create, update or publish):
#   s2i:job:<id>           hash: the record, one field per top-level key, each value as JSON
#   s2i:job:<id>:events    list: the events as JSON, without their seq (the event at index i has seq i + 1)
#   s2i:job:<id>:cancel    string, present once a cancellation was requested
# Indexes:
#   s2i:owner:<owner>:jobs    sorted set: the owner's job ids by 'created'
#   s2i:owner:<owner>:active  set: the owner's job ids whose status is in ACTIVE
#   s2i:active                set: every job id whose status is in ACTIVE
# An index may still name an expired job; readers drop such ids as they meet them.
# Channels: s2i:job:<id> and s2i:owner:<owner>; a message is "<seq>\n<job id>\n<event JSON without seq>".

PREFIX = 's2i:'
ALL_ACTIVE = PREFIX + 'active'

# KEYS: the job, its events, its cancel flag, the owner's channel. ARGV: the event's JSON, ttl, job id.
# One script, so that the seq (the list's new length) and the order of the messages are the order of the list.
PUBLISH_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seq = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
local message = seq .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[1]
redis.call('PUBLISH', KEYS[1], message)
redis.call('PUBLISH', KEYS[4], message)
return seq
"""

# KEYS: the job, its events, its cancel flag, the owner's active set, all active jobs.
# ARGV: ttl, job id, 'active' / 'inactive' / '' (status unchanged), then field, value, field, value, ...
# One script, so that a status and the active sets never disagree, whoever updates.
UPDATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
if ARGV[3] == 'active' then
    redis.call('SADD', KEYS[4], ARGV[2])
    redis.call('SADD', KEYS[5], ARGV[2])
elseif ARGV[3] == 'inactive' then
    redis.call('SREM', KEYS[4], ARGV[2])
    redis.call('SREM', KEYS[5], ARGV[2])
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""


def job_key(job_id: str) -> str:
    return f'{PREFIX}job:{job_id}'


def owner_key(owner: str) -> str:
    return f'{PREFIX}owner:{owner}'


def encode_fields(fields: dict) -> List[str]:
    return [part for key, value in fields.items() for part in (key, json.dumps(value))]


def decode_record(fields: Dict[str, str]) -> Optional[dict]:
    return {key: json.loads(value) for key, value in fields.items()} if fields else None


def decode_message(data: str) -> Tuple[str, dict]:
    """A channel message's job id and event (with its seq)."""
    seq, job_id, body = data.split('\n', 2)
    return job_id, {**json.loads(body), 'seq': int(seq)}


class RedisJobStore(JobStore):
    """Jobs in one Redis, shared by every gateway replica that points at it. A follower subscribes to the
    job's channel before it reads the stored events, and drops what it has already yielded by seq."""

    def __init__(self, url: str, ttl_seconds: float):
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.ttl = max(1, math.ceil(ttl_seconds))  # EXPIRE takes whole seconds
        self.publish_script = self.redis.register_script(PUBLISH_SCRIPT)
        self.update_script = self.redis.register_script(UPDATE_SCRIPT)

    async def _owner(self, job_id: str) -> Optional[str]:
        owner = await self.redis.hget(job_key(job_id), 'owner')
        return None if owner is None else json.loads(owner)

    async def create(self, job: dict) -> None:
        key, owner, active = job_key(job['id']), owner_key(job['owner']), job['status'] in ACTIVE
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, items=encode_fields(job))
            pipe.expire(key, self.ttl)
            pipe.zadd(owner + ':jobs', {job['id']: job['created']})
            pipe.expire(owner + ':jobs', self.ttl)
            if active:
                pipe.sadd(owner + ':active', job['id'])
                pipe.expire(owner + ':active', self.ttl)
                pipe.sadd(ALL_ACTIVE, job['id'])
            await pipe.execute()

    async def get(self, job_id: str) -> Optional[dict]:
        return decode_record(await self.redis.hgetall(job_key(job_id)))

    async def update(self, job_id: str, **fields) -> Optional[dict]:
        owner = await self._owner(job_id)
        if owner is None:
            return None
        change = '' if 'status' not in fields else 'active' if fields['status'] in ACTIVE else 'inactive'
        key = job_key(job_id)
        flat = await self.update_script(
            keys=[key, key + ':events', key + ':cancel', owner_key(owner) + ':active', ALL_ACTIVE],
            args=[self.ttl, job_id, change, *encode_fields(fields)],
        )
        return decode_record(dict(zip(flat[::2], flat[1::2]))) if flat else None

    async def recent(self, owner: str, limit: int) -> List[dict]:
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
            jobs += [record for record in records if record is not None]
        return jobs

    async def publish(self, job_id: str, event: dict) -> dict:
        owner = await self._owner(job_id)
        if owner is None:
            raise KeyError(f'unknown job {job_id!r}')
        key = job_key(job_id)
        seq = await self.publish_script(keys=[key, key + ':events', key + ':cancel', owner_key(owner)], args=[json.dumps(event), self.ttl, job_id])
        if not seq:
            raise KeyError(f'unknown job {job_id!r}')  # it expired just now
        return {**event, 'seq': seq}

    async def _events_after(self, job_id: str, after: int) -> List[dict]:
        bodies = await self.redis.lrange(job_key(job_id) + ':events', after, -1)
        return [{**json.loads(body), 'seq': after + i} for i, body in enumerate(bodies, 1)]

    async def _ended_by(self, job_id: str, seq: int) -> bool:
        """Whether the job's last event is terminal and has a seq <= ``seq`` (a follower that saw it reconnects)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(job_key(job_id) + ':events')
            pipe.lindex(job_key(job_id) + ':events', -1)
            count, last_body = await pipe.execute()
        return 0 < count <= seq and is_terminal(json.loads(last_body))

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[dict]:
        if after and await self._ended_by(job_id, after):
            return
        key, last = job_key(job_id), after
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(key)
            await pubsub.get_message(timeout=SAFETY_WAIT)  # the confirmation: from here on no event goes unannounced
            while await self.redis.exists(key):
                for event in await self._events_after(job_id, last):
                    yield event
                    last = event['seq']
                    if is_terminal(event):
                        return
                # Live events while they come in order; anything else (a gap, a quiet second) reads the list again.
                while message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=SAFETY_WAIT):
                    _, event = decode_message(message['data'])
                    if event['seq'] <= last:
                        continue  # already yielded from the list
                    if event['seq'] > last + 1:
                        break
                    yield event
                    last = event['seq']
                    if is_terminal(event):
                        return

    async def follow_owner(self, owner: str) -> AsyncIterator[dict]:
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(owner_key(owner))
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=SAFETY_WAIT)
                if message is not None:
                    job_id, event = decode_message(message['data'])
                    yield {'job': job_id, **event}

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
        return bool(await self.redis.exists(job_key(job_id) + ':cancel'))

    async def abandon_unfinished(self, reason: str) -> int:
        return 0  # another replica may be running them; an abandoned job's keys expire with its ttl

    async def purge_expired(self) -> int:
        return 0  # every key of a job expires by itself

    async def close(self) -> None:
        await self.redis.aclose()
