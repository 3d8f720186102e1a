"""The job store (gateway/jobs/store.py), each test against both stores: SQLite in a temporary folder and a
real redis-server on a free port. Waits are bounded loops; nothing asserts how long anything took."""

import asyncio
import base64
import contextlib
import json
import os
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, List, Optional

import pytest

from gateway.jobs.store import FOLLOWER_BACKLOG_BYTES, FollowerTooSlow, JobEnded, JobStore, open_store

pytestmark = pytest.mark.anyio
FOLLOW_LIMIT = 10  # seconds a test waits for a follower to end
EXPIRY_LIMIT = 5  # seconds a test waits for a 1-second ttl to pass


@pytest.fixture
def anyio_backend():
    return 'asyncio'


@dataclass(frozen=True)
class Backend:
    redis_url: Optional[str]  # None: SQLite
    sqlite_path: Path


def sqlite_backend(tmp_path) -> Backend:
    return Backend(None, tmp_path / 'jobs.sqlite3')


def redis_backend(request, tmp_path) -> Backend:
    import redis

    url = request.getfixturevalue('redis_url')
    with redis.Redis.from_url(url) as client:
        client.flushdb()  # each test starts with an empty Redis
    return Backend(url, tmp_path / 'unused.sqlite3')


@pytest.fixture(params=['sqlite', 'redis'])
def backend(request, tmp_path) -> Backend:
    return sqlite_backend(tmp_path) if request.param == 'sqlite' else redis_backend(request, tmp_path)


@pytest.fixture
def shared_redis(request, tmp_path) -> Backend:
    """Redis only: what several gateway replicas share."""
    return redis_backend(request, tmp_path)


@pytest.fixture
def sqlite_file(tmp_path) -> Backend:
    return sqlite_backend(tmp_path)


def store_opener(backend: Backend):
    """``open_job_store(ttl_seconds=3600, lease_seconds=...)``: a new store (a gateway's) on the backend; all are
    closed at the end."""
    stores: List[JobStore] = []

    def open_job_store(ttl_seconds: float = 3600, **options) -> JobStore:
        stores.append(open_store(backend.redis_url, backend.sqlite_path, ttl_seconds, **options))
        return stores[-1]

    return open_job_store, stores


@pytest.fixture
async def open_job_store(backend):
    opener, stores = store_opener(backend)
    yield opener
    for store in stores:
        await store.close()


@pytest.fixture
async def open_gateway_store(shared_redis):
    opener, stores = store_opener(shared_redis)
    yield opener
    for store in stores:
        await store.close()


@pytest.fixture
async def open_sqlite_store(sqlite_file):
    opener, stores = store_opener(sqlite_file)
    yield opener
    for store in stores:
        await store.close()


def new_job(owner: str = 'alice', status: str = 'queued') -> dict:
    return {'id': uuid.uuid4().hex, 'owner': owner, 'status': status, 'created': time.time(), 'prompt': 'a red fox'}


async def created(store: JobStore, owner: str = 'alice', status: str = 'queued') -> dict:
    job = new_job(owner, status)
    await store.create(job)
    return job


async def collect(events: AsyncIterator[dict]) -> List[dict]:
    """Everything a follower yields until it ends (at most FOLLOW_LIMIT seconds)."""

    async def take_all():
        return [event async for event in events]

    return await asyncio.wait_for(take_all(), FOLLOW_LIMIT)


async def publish_progress(
    store: JobStore, job_id: str, steps: int, final: str = 'succeeded', published: Optional[List[int]] = None
) -> None:
    """``steps`` progress events and a terminal one, yielding to the other tasks between events; appends
    each event's seq to ``published``."""
    published = [] if published is None else published
    for step in range(1, steps + 1):
        published.append((await store.publish(job_id, {'kind': 'progress', 'job': job_id, 'step': step}))['seq'])
        await asyncio.sleep(0)
    published.append((await store.publish(job_id, {'kind': final, 'job': job_id}))['seq'])


async def until(condition: Callable[[], object], limit: float = EXPIRY_LIMIT) -> None:
    """Until ``condition()`` (a function or a coroutine function) is true, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = condition()
        if await result if asyncio.iscoroutine(result) else result:
            return
        assert time.monotonic() < deadline, f'not true within {limit} s'
        await asyncio.sleep(0.05)


# --- records ---------------------------------------------------------------------------------------------


async def test_a_created_job_reads_back_and_update_merges_fields(open_job_store):
    store = open_job_store()
    job = await created(store)

    assert await store.get(job['id']) == job
    updated = await store.update(job['id'], status='running', started=12.5, result={'images': ['a.png']})
    assert updated == {**job, 'status': 'running', 'started': 12.5, 'result': {'images': ['a.png']}}
    assert await store.get(job['id']) == updated


async def test_an_unknown_job_reads_as_none_and_cannot_be_updated_or_published_to(open_job_store):
    store = open_job_store()

    assert await store.get('nope') is None
    assert await store.update('nope', status='running') is None
    with pytest.raises(KeyError):
        await store.publish('nope', {'kind': 'progress'})


async def test_recent_lists_only_the_owners_jobs_newest_first_up_to_the_limit(open_job_store):
    store = open_job_store()
    jobs = [new_job('alice') for _ in range(4)]
    for offset, job in enumerate(jobs):
        job['created'] += offset  # strictly increasing
        await store.create(job)
    await created(store, owner='bob')

    assert [job['id'] for job in await store.recent('alice', 3)] == [job['id'] for job in jobs[::-1][:3]]
    assert len(await store.recent('alice', 10)) == 4
    assert await store.recent('carol', 10) == []


async def test_count_active_follows_status_changes_per_owner_and_overall(open_job_store):
    store = open_job_store()
    alice_1, alice_2, bob = await created(store, 'alice'), await created(store, 'alice'), await created(store, 'bob')
    assert (await store.count_active('alice'), await store.count_active('bob'), await store.count_active()) == (2, 1, 3)

    await store.update(alice_1['id'], status='running')
    assert (await store.count_active('alice'), await store.count_active()) == (2, 3)
    await store.update(alice_1['id'], status='succeeded')
    await store.update(bob['id'], status='cancelled')
    assert (await store.count_active('alice'), await store.count_active('bob'), await store.count_active()) == (1, 0, 1)
    await store.update(alice_2['id'], progress=0.5)  # no status: no change
    assert await store.count_active('alice') == 1
    await store.update(alice_2['id'], status='failed', error='boom')
    assert (await store.count_active('alice'), await store.count_active()) == (0, 0)
    assert await store.count_active('carol') == 0


async def test_cancel_requested_is_false_until_requested_and_only_for_that_job(open_job_store):
    store = open_job_store()
    job, other = await created(store), await created(store)

    assert not await store.cancel_requested(job['id'])
    await store.request_cancel(job['id'])
    assert await store.cancel_requested(job['id'])
    assert not await store.cancel_requested(other['id'])


# --- events ----------------------------------------------------------------------------------------------


async def test_published_events_are_numbered_from_one_without_gaps_per_job(open_job_store):
    store = open_job_store()
    job, other = await created(store), await created(store)

    seqs = [(await store.publish(job['id'], {'kind': 'progress', 'step': step}))['seq'] for step in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert await store.publish(other['id'], {'kind': 'progress'}) == {'kind': 'progress', 'seq': 1}


async def test_follow_replays_the_events_after_k_then_live_ones_until_the_terminal_event(open_job_store):
    store = open_job_store()
    job = await created(store, status='running')
    for step in range(1, 6):
        await store.publish(job['id'], {'kind': 'progress', 'step': step})

    follower = asyncio.create_task(collect(store.follow(job['id'], after=3)))
    await asyncio.sleep(0.1)  # usually mid-wait by now; correct either way
    await store.publish(job['id'], {'kind': 'progress', 'step': 6})
    await store.publish(job['id'], {'kind': 'succeeded', 'images': 1})

    events = await follower
    assert [event['seq'] for event in events] == [4, 5, 6, 7]
    assert [event.get('step') for event in events] == [4, 5, 6, None]
    assert events[-1] == {'kind': 'succeeded', 'images': 1, 'seq': 7}


async def test_a_follower_of_a_finished_job_gets_its_events_and_ends(open_job_store):
    store = open_job_store()
    job = await created(store)
    await publish_progress(store, job['id'], steps=3, final='failed')

    assert [event['seq'] for event in await collect(store.follow(job['id']))] == [1, 2, 3, 4]
    assert await collect(store.follow(job['id'], after=4)) == []  # the end was already seen: nothing more comes
    assert [event['kind'] for event in await collect(store.follow(job['id'], after=3))] == ['failed']


async def test_following_an_unknown_job_ends_at_once(open_job_store):
    assert await collect(open_job_store().follow('nope')) == []


async def test_followers_started_while_events_are_published_see_each_seq_once_in_order(open_job_store):
    store = open_job_store()
    job = await created(store, status='running')
    steps, published = 150, []
    publisher = asyncio.create_task(publish_progress(store, job['id'], steps, published=published))
    followers = {}
    for after in (0, 10, 40, 90):  # joining mid-run, from the start or from a reconnect's last seq
        await until(lambda after=after: len(published) >= after + 5)
        followers[after] = asyncio.create_task(collect(store.follow(job['id'], after=after)))
    await publisher

    for after, follower in followers.items():
        assert [event['seq'] for event in await follower] == list(range(after + 1, steps + 2))


async def test_large_events_come_back_whole(open_job_store):
    store = open_job_store()
    job = await created(store, status='running')
    png = base64.b64encode(os.urandom(300_000)).decode()
    await store.publish(job['id'], {'kind': 'preview', 'step': 1, 'png': png})
    await store.publish(job['id'], {'kind': 'succeeded', 'images': [png]})

    events = await collect(store.follow(job['id']))
    assert events[0]['png'] == png and events[1]['images'] == [png]


async def test_follow_owner_sees_the_live_events_of_all_the_owners_jobs_and_no_one_elses(open_job_store):
    store = open_job_store()
    first, second, bobs = await created(store, 'alice'), await created(store, 'alice'), await created(store, 'bob')
    await store.publish(first['id'], {'kind': 'progress', 'job': first['id'], 'step': 0})  # before: not replayed
    received = []

    async def follow_alice():
        async for event in store.follow_owner('alice'):
            received.append(event)

    follower = asyncio.create_task(follow_alice())
    try:
        # The follower listens from its first step on; until it does, what is published passes it by.
        async def heard_of_first():
            await store.publish(first['id'], {'kind': 'hello', 'job': first['id']})
            return received

        await until(heard_of_first)
        received.clear()
        await store.publish(bobs['id'], {'kind': 'progress', 'job': bobs['id'], 'step': 1})
        await store.publish(first['id'], {'kind': 'progress', 'job': first['id'], 'step': 1})
        await store.publish(second['id'], {'kind': 'succeeded', 'job': second['id']})
        await until(lambda: any(event['kind'] == 'succeeded' for event in received))
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower

    progress = [event for event in received if event['kind'] != 'hello']
    assert [(event['job'], event['kind']) for event in progress] == [(first['id'], 'progress'), (second['id'], 'succeeded')]
    assert progress[1]['seq'] == 1


# --- expiry ----------------------------------------------------------------------------------------------


async def test_a_job_expires_after_its_ttl(open_job_store):
    store = open_job_store(ttl_seconds=1)
    job = await created(store, status='running')
    await store.publish(job['id'], {'kind': 'progress', 'step': 1})
    await store.request_cancel(job['id'])

    async def expired():
        return await store.get(job['id']) is None

    await until(expired)
    await store.purge_expired()
    assert await store.recent('alice', 10) == []
    assert await store.count_active('alice') == 0 and await store.count_active() == 0
    assert await collect(store.follow(job['id'])) == []


async def test_purge_expired_drops_expired_jobs_and_keeps_live_ones(open_sqlite_store):
    short_lived = open_sqlite_store(ttl_seconds=1)
    old = await created(short_lived, status='succeeded')
    await short_lived.publish(old['id'], {'kind': 'succeeded'})

    async def expired():
        return await short_lived.get(old['id']) is None

    await until(expired)
    new = await created(short_lived)
    assert await short_lived.purge_expired() == 1
    assert await short_lived.get(new['id']) == new
    long_lived = open_sqlite_store(ttl_seconds=3600)  # the same file: the old job's row and events are gone
    assert await long_lived.get(old['id']) is None
    assert await collect(long_lived.follow(old['id'])) == []


# --- one gateway on SQLite: restarts ---------------------------------------------------------------------


async def test_a_job_and_its_events_survive_reopening_the_sqlite_store(open_sqlite_store):
    before = open_sqlite_store()
    job = await created(before, status='running')
    for step in (1, 2):
        await before.publish(job['id'], {'kind': 'progress', 'step': step})
    await before.update(job['id'], images=['a.png'])
    await before.close()

    after = open_sqlite_store()
    assert await after.get(job['id']) == {**job, 'images': ['a.png']}
    assert (await after.publish(job['id'], {'kind': 'succeeded'}))['seq'] == 3
    assert [event['seq'] for event in await collect(after.follow(job['id']))] == [1, 2, 3]


async def test_a_restarted_gateway_fails_the_unfinished_jobs_of_the_stopped_one_and_ends_their_followers(open_sqlite_store):
    before = open_sqlite_store()
    await before.renew_lease()
    queued, running, finished = await created(before), await created(before, status='running'), await created(before)
    await before.publish(running['id'], {'kind': 'progress', 'step': 1})
    await before.finish(finished['id'], {'kind': 'succeeded'})
    await before.release_lease()
    await before.close()  # the gateway stops with two jobs unfinished

    after = open_sqlite_store()
    await after.renew_lease()
    follower = asyncio.create_task(collect(after.follow(running['id'], after=1)))
    await asyncio.sleep(0.1)
    assert await after.fail_lapsed('the gateway restarted') == 2

    events = await follower
    assert [(event['kind'], event['error'], event['seq']) for event in events] == [('failed', 'the gateway restarted', 2)]
    for job in (queued, running):
        record = await after.get(job['id'])
        assert (record['status'], record['error']) == ('failed', 'the gateway restarted')
    assert (await after.get(finished['id']))['status'] == 'succeeded'
    assert await after.count_active() == 0
    assert await after.fail_lapsed('again') == 0


# --- several gateways on one Redis -----------------------------------------------------------------------


async def test_a_job_submitted_through_one_gateway_is_read_and_followed_through_another(open_gateway_store):
    first, second = open_gateway_store(), open_gateway_store()
    job = await created(first)
    assert await second.get(job['id']) == job
    assert [j['id'] for j in await second.recent('alice', 10)] == [job['id']]
    assert await second.count_active('alice') == 1

    follower = asyncio.create_task(collect(second.follow(job['id'])))
    await first.update(job['id'], status='running')
    await publish_progress(first, job['id'], steps=20)
    await first.update(job['id'], status='succeeded')

    assert [event['seq'] for event in await follower] == list(range(1, 22))
    assert await second.count_active() == 0


async def test_a_cancel_requested_through_one_gateway_is_seen_by_another(open_gateway_store):
    first, second = open_gateway_store(), open_gateway_store()
    job = await created(first, status='running')

    assert not await first.cancel_requested(job['id'])
    await second.request_cancel(job['id'])
    assert await first.cancel_requested(job['id'])


async def test_gateways_publishing_to_one_job_get_unique_seqs(open_gateway_store):
    gateways = [open_gateway_store() for _ in range(3)]
    job = await created(gateways[0], status='running')

    async def publish_from(gateway: JobStore, name: int) -> List[int]:
        return [(await gateway.publish(job['id'], {'kind': 'progress', 'by': name, 'n': n}))['seq'] for n in range(40)]

    seqs = await asyncio.gather(*(publish_from(gateway, name) for name, gateway in enumerate(gateways)))
    assert sorted(seq for own in seqs for seq in own) == list(range(1, 121))
    await gateways[1].publish(job['id'], {'kind': 'cancelled'})
    events = await collect(gateways[2].follow(job['id']))
    assert [event['seq'] for event in events] == list(range(1, 122))
    for name, own in enumerate(seqs):  # each gateway's events were stored under the seqs it was told
        assert [event['n'] for event in events if event.get('by') == name] == list(range(40))
        assert [event['seq'] for event in events if event.get('by') == name] == own


# --- one end per job, whoever ends it -------------------------------------------------------------------


async def test_nothing_is_published_after_a_terminal_event_whichever_gateway_publishes(open_job_store):
    first, second = open_job_store(), open_job_store()  # two gateways on one file, or one Redis
    job = await created(first, status='running')
    await first.publish(job['id'], {'kind': 'progress', 'step': 1})
    await second.publish(job['id'], {'kind': 'failed', 'error': 'ended elsewhere'})

    for gateway in (first, second):
        with pytest.raises(JobEnded):
            await gateway.publish(job['id'], {'kind': 'progress', 'step': 2})
        with pytest.raises(JobEnded):
            await gateway.publish(job['id'], {'kind': 'succeeded'})
    assert [event['kind'] for event in await collect(first.follow(job['id']))] == ['progress', 'failed']


async def test_a_job_is_finished_once_and_its_terminal_status_stays(open_job_store):
    first, second = open_job_store(), open_job_store()
    job = await created(first, status='running')
    follower = asyncio.create_task(collect(second.follow(job['id'])))

    record = await first.finish(job['id'], {'kind': 'succeeded', 'job': job['id']}, images=[{'index': 0}])
    assert record == {**job, 'status': 'succeeded', 'images': [{'index': 0}]}
    assert await second.finish(job['id'], {'kind': 'failed', 'job': job['id'], 'error': 'late'}, error='late') is None
    assert await second.update(job['id'], status='running', error='late') == record

    assert [event['kind'] for event in await follower] == ['succeeded']
    assert await second.get(job['id']) == record
    assert await second.count_active('alice') == 0
    assert await first.cancel_requested(job['id'])  # whoever still runs it stops


async def test_a_gateway_fails_only_the_jobs_of_gateways_whose_lease_lapsed(open_job_store):
    alive, dead, reaper = (open_job_store(lease_seconds=0.5) for _ in range(3))
    for gateway in (alive, dead, reaper):
        await gateway.renew_lease()
    kept, lost = await created(alive, status='running'), await created(dead)
    assert await reaper.fail_lapsed('lapsed') == 0  # both gateways are alive
    follower = asyncio.create_task(collect(reaper.follow(lost['id'])))

    failed = []

    async def dead_gateways_jobs_failed():  # the dead gateway no longer renews its lease; the others do
        await alive.renew_lease()
        await reaper.renew_lease()
        failed.append(await reaper.fail_lapsed('lapsed'))
        return sum(failed)

    await until(dead_gateways_jobs_failed)
    assert sum(failed) == 1
    assert [(event['kind'], event['error']) for event in await follower] == [('failed', 'lapsed')]
    assert ((await reaper.get(lost['id']))['status'], (await reaper.get(kept['id']))['status']) == ('failed', 'running')
    assert await reaper.count_active('alice') == 1  # the lost job no longer counts against the key's limit
    with pytest.raises(JobEnded):
        await dead.publish(lost['id'], {'kind': 'progress', 'step': 1})  # were the dead gateway only slow
    assert await dead.finish(lost['id'], {'kind': 'succeeded'}) is None


async def test_a_released_lease_lets_the_next_gateway_fail_its_jobs_at_once(open_job_store):
    stopped, starting = open_job_store(), open_job_store()
    await stopped.renew_lease()
    job = await created(stopped, status='running')
    await starting.renew_lease()
    assert await starting.fail_lapsed('restarted') == 0
    await stopped.release_lease()

    assert await starting.fail_lapsed('restarted') == 1
    assert (await starting.get(job['id']))['error'] == 'restarted'


# --- following: ?after past the end, out of range -------------------------------------------------------


async def test_a_follower_past_the_last_event_ends_when_the_job_ends(open_job_store):
    store = open_job_store()
    job = await created(store, status='running')
    await publish_progress(store, job['id'], steps=0, final='progress')  # one event, seq 1
    follower = asyncio.create_task(collect(store.follow(job['id'], after=10)))
    await asyncio.sleep(0.1)  # usually mid-wait by now; correct either way
    await store.publish(job['id'], {'kind': 'progress', 'step': 2})
    await store.finish(job['id'], {'kind': 'succeeded'})

    assert await follower == []  # its events (2 and 3) were at or before 10: nothing, and the end


@pytest.mark.parametrize('after', [2**63, 2**64 + 5, -1, -(2**63)])
async def test_after_out_of_range_is_taken_as_the_nearest_seq(open_job_store, after):
    store = open_job_store()
    job = await created(store, status='running')
    await publish_progress(store, job['id'], steps=1, final='progress')  # seq 1 and 2; it runs on
    follower = asyncio.create_task(collect(store.follow(job['id'], after=after)))
    await asyncio.sleep(0.1)  # usually mid-wait by now; correct either way
    await store.finish(job['id'], {'kind': 'succeeded'})

    assert [event['seq'] for event in await follower] == ([] if after > 0 else [1, 2, 3])


# --- the owner's events: a reader that stops reading ----------------------------------------------------


async def test_an_owner_follower_that_stops_reading_is_cut_off_and_one_that_reads_is_not(open_job_store):
    store = open_job_store()
    job = await created(store, status='running')
    reading, stalled, reader_may_go_on = [], [], asyncio.Event()

    async def follow_alice(received: List[dict], stall: bool):
        async for event in store.follow_owner('alice'):
            received.append(event)
            if stall:
                await reader_may_go_on.wait()  # a client that stops reading

    followers = [asyncio.create_task(follow_alice(reading, False)), asyncio.create_task(follow_alice(stalled, True))]

    async def both_listen():
        await store.publish(job['id'], {'kind': 'hello'})
        return reading and stalled

    await until(both_listen)
    big = 'x' * 2**20
    count = FOLLOWER_BACKLOG_BYTES // len(big) + 8
    for n in range(count):
        await store.publish(job['id'], {'kind': 'progress', 'n': n, 'payload': big})
        await until(lambda n=n: reading and reading[-1].get('n') == n)  # the reading follower keeps up
    reader_may_go_on.set()

    with pytest.raises(FollowerTooSlow):
        await asyncio.wait_for(followers[1], FOLLOW_LIMIT)
    assert count - 1 not in [event.get('n') for event in stalled]  # cut off, not handed every event
    assert not followers[0].done()
    followers[0].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await followers[0]


# --- images, kept once ----------------------------------------------------------------------------------


def image(seed: int, size: int = 50_000) -> str:
    return base64.b64encode(random.Random(seed).randbytes(size)).decode()


async def test_images_come_back_whole_from_events_and_record_and_are_listed_without_bytes(open_job_store):
    store = open_job_store()
    job = await created(store, status='running')
    images = [{'index': index, 'seed': index, 'b64_json': image(index)} for index in range(2)]
    for described in images:
        await store.publish(job['id'], {'kind': 'image', **described})
    await store.finish(job['id'], {'kind': 'succeeded'}, images=images)

    events = await collect(store.follow(job['id']))
    assert [event['b64_json'] for event in events if event['kind'] == 'image'] == [image(0), image(1)]
    assert (await store.get(job['id']))['images'] == images
    [listed] = await store.recent('alice', 10)
    assert listed['images'] == [{'index': 0, 'seed': 0}, {'index': 1, 'seed': 1}]
    assert (await store.recent('alice', 10, with_images=True))[0]['images'] == images


def file_bytes(path: Path) -> int:
    """The SQLite file's size once its write-ahead log is folded in."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    return path.stat().st_size


async def test_sqlite_keeps_each_image_once_and_gives_the_space_back_when_jobs_expire(open_sqlite_store, sqlite_file):
    store = open_sqlite_store(ttl_seconds=1)
    png_bytes = 0
    for job_number in range(4):
        job = await created(store, status='running')
        images = [{'index': index, 'b64_json': image(job_number * 10 + index, 100_000)} for index in range(2)]
        for described in images:
            await store.publish(job['id'], {'kind': 'image', **described})
        await store.finish(job['id'], {'kind': 'succeeded'}, images=images)
        png_bytes += 2 * 100_000

    assert file_bytes(sqlite_file.sqlite_path) < 1.25 * png_bytes  # base64 twice would be 2.7 times

    async def expired():
        return await store.get(job['id']) is None

    await until(expired)
    assert await store.purge_expired() == 4
    assert file_bytes(sqlite_file.sqlite_path) < 0.1 * png_bytes


async def test_a_jobs_file_from_before_leases_opens_and_its_unfinished_jobs_fail(open_sqlite_store, sqlite_file):
    with contextlib.closing(sqlite3.connect(sqlite_file.sqlite_path)) as db:  # the schema before leases and kept images
        db.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL,
                               touched REAL NOT NULL, cancel INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL);
            CREATE TABLE events (job TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (job, seq)) WITHOUT ROWID;
        """)
        for job_id, status in (('old-running', 'running'), ('old-done', 'succeeded')):
            record = json.dumps({'id': job_id, 'owner': 'alice', 'status': status, 'created': 1.0})
            db.execute('INSERT INTO jobs VALUES (?, ?, ?, ?, ?, 0, ?)', (job_id, 'alice', status, 1.0, time.time(), record))
        db.execute('INSERT INTO events VALUES (?, 1, ?)', ('old-done', json.dumps({'kind': 'succeeded'})))
        db.commit()

    store = open_sqlite_store()
    await store.renew_lease()
    assert await store.fail_lapsed('restarted') == 1
    assert {job['id']: job['status'] for job in await store.recent('alice', 10)} == {'old-running': 'failed', 'old-done': 'succeeded'}
    with pytest.raises(JobEnded):
        await store.publish('old-done', {'kind': 'progress'})
