"""Jobs through the real service (tests/front_door.py: gateway, bundled Whisper, tiny SD): submit over
HTTP, follow over WebSocket with the `websockets` library, reconnect, cancel, webhooks, and the job
store behind the gateway (SQLite across a restart; Redis shared by two gateways)."""

import asyncio
import base64
import io
import json
import logging
import random
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Tuple

import pytest
import requests
from docarray import DocList
from PIL import Image
from standardwebhooks import Webhook
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import DATA, GERMAN_CLIP
from front_door import (
    EVENT_WAIT, SECOND_KEY, TERMINAL, TOKEN, WEBHOOK_SECRET, auth, events, job, kinds, serve_front_door, submit, submitted,
)
from gateway.flow_client import TRANSCRIBER
from gateway.jobs.runner import LAPSED, JobInput, JobLimits, JobRunner, TooManyJobs
from gateway.jobs.store import LEASE_SECONDS, open_store
from gateway.jobs.webhooks import Webhooks
from s2i.client import generate
from s2i.contracts.documents import GeneratedImage, GenerationEvent, PromptDoc
from step_hooks import HELD_AT, HELD_JOB, HELD_SIZE, HELD_STEPS, StepHold, step_hold
from test_job_store import collect, until

QUICK = {'n': 2, 'size': '64x64', 'steps': 3, 'seed': 11}
STREAM_CLOSED = 'closed before its end'  # the executor's log line once a job's cancel reached it
STOPPED_AT = r'generation cancelled at step (\d+)/(\d+)'  # and once its generation stopped


# Events

def test_an_audio_job_is_transcribed_before_any_image_with_steps_in_order(front_door):
    started = submitted(front_door, audio=GERMAN_CLIP.read_bytes(), **QUICK)
    assert started['status'] == 'queued' and started['events'].endswith(f'/v1/jobs/{started["id"]}/events')
    received = events(front_door, started['id'])

    order = kinds(received)
    assert order[0] == 'queued' and order[1] == 'started' and order[-1] == 'succeeded'
    assert sum(kind in TERMINAL for kind in order) == 1
    assert [event['seq'] for event in received] == list(range(1, len(received) + 1))
    transcribed = next(event for event in received if event['kind'] == 'transcribed')
    assert order.index('transcribed') < order.index('progress') < order.index('image')
    assert transcribed['language'] == 'de' and 'Hund' in transcribed['transcript'] and 'snow' in transcribed['text'].lower()
    steps = [event['step'] for event in received if event['kind'] == 'progress']
    assert steps == sorted(set(steps)) and steps[-1] == QUICK['steps']
    images = [event for event in received if event['kind'] == 'image']
    assert [(image['index'], image['seed']) for image in images] == [(0, 11), (1, 12)]
    for image in images:
        png = Image.open(io.BytesIO(base64.b64decode(image['b64_json'])))
        assert png.size == (64, 64) and json.loads(png.text['parameters'])['seed'] == image['seed']

    record = job(front_door, started['id'])
    assert record['status'] == 'succeeded' and record['language'] == 'de' and 'snow' in record['text'].lower()
    assert len(record['images']) == 2 and record['timings']['transcribe_s'] > 0


def test_a_text_job_has_no_transcribed_event(front_door):
    started = submitted(front_door, prompt='a lighthouse at night', **QUICK)
    order = kinds(events(front_door, started['id']))
    assert 'transcribed' not in order and order[-1] == 'succeeded' and order.count('image') == 2


def test_a_bad_audio_job_fails_with_the_error_the_jina_api_gives(front_door):
    not_audio = (DATA / 'not_audio.wav').read_bytes()
    [through_jina] = generate(audio_files=[DATA / 'not_audio.wav'], host=front_door.grpc, token=TOKEN)
    assert through_jina.error

    started = submitted(front_door, audio=not_audio, **QUICK)
    received = events(front_door, started['id'])
    assert kinds(received)[-1] == 'failed' and 'image' not in kinds(received)
    assert received[-1]['error'] == through_jina.error == job(front_door, started['id'])['error']


def test_a_reconnecting_client_misses_nothing_and_sees_nothing_twice(front_door):
    with step_hold(HELD_SIZE, HELD_AT) as hold:
        started = submitted(front_door, prompt='a harbour in the rain', seed=5, **HELD_JOB)
        first = events(front_door, started['id'], stop_after=3)  # then the connection drops, mid-generation:
        hold.wait_until_held()
        assert job(front_door, started['id'])['status'] == 'running'
        hold.release()
        rest = events(front_door, started['id'], after=first[-1]['seq'])
    everything = events(front_door, started['id'])  # the whole story again, from the store

    assert kinds(first) == ['queued', 'started', 'progress'] and first[-1]['step'] == HELD_AT
    assert [event['seq'] for event in first + rest] == [event['seq'] for event in everything]
    assert first + rest == everything
    assert kinds(rest)[-2:] == ['image', 'succeeded']


def test_the_owner_stream_carries_every_job_of_the_key(front_door):
    with connect(f'{front_door.ws}/v1/events', additional_headers=auth(SECOND_KEY), open_timeout=30) as ws:
        mine = submitted(front_door, token=SECOND_KEY, prompt='a red kite', **QUICK)
        submitted(front_door, prompt='not for the second key', **QUICK)
        seen = []
        while not seen or seen[-1]['kind'] not in TERMINAL:
            seen.append(json.loads(ws.recv(timeout=EVENT_WAIT)))
    assert {event['job'] for event in seen} == {mine['id']}
    assert kinds(seen)[-1] == 'succeeded'


# Cancelling: each job is held at a known step while the test cancels it (tests/step_hooks.py)

def cancel(door, job_id: str, via=None) -> requests.Response:
    return requests.delete(f'{(via or door).api}/jobs/{job_id}', headers=auth(), timeout=30)


def stopped_step_once_released(door, hold: StepHold, log_mark: int) -> Tuple[int, int]:
    """Release ``hold`` once the executor has seen its job's stream close; the step it then stopped at,
    and the steps it was asked for (from its log, after line ``log_mark``)."""
    door.server.wait_for(STREAM_CLOSED, since=log_mark)
    hold.release()
    stopped = door.server.wait_for(STOPPED_AT, since=log_mark)
    return int(stopped[1]), int(stopped[2])


def test_a_running_job_cancelled_stops_at_its_next_step(front_door):
    log_mark = len(front_door.server.lines)
    with step_hold(HELD_SIZE, HELD_AT) as hold:
        started = submitted(front_door, prompt='a long generation', seed=1, **HELD_JOB)
        before = events(front_door, started['id'], stop_after=3)
        assert hold.wait_until_held() == HELD_AT
        assert cancel(front_door, started['id']).status_code == 202
        after = events(front_door, started['id'], after=before[-1]['seq'])
        stopped = stopped_step_once_released(front_door, hold, log_mark)

    assert kinds(before) == ['queued', 'started', 'progress'] and before[-1]['step'] == HELD_AT
    assert kinds(after) == ['cancelled']  # no progress after the held step, and no image
    assert stopped == (HELD_AT + 1, HELD_STEPS)  # the step under way when the cancel came was its last
    record = job(front_door, started['id'])
    assert record['status'] == 'cancelled' and record['images'] == []
    assert cancel(front_door, started['id']).status_code == 409


def test_a_queued_job_cancelled_never_runs(front_door):
    with step_hold(HELD_SIZE, HELD_AT) as hold:
        blocker = submitted(front_door, prompt='keeps the runner busy', seed=2, **HELD_JOB)
        hold.wait_until_held()  # it runs, and holds the only job slot (max_running_jobs: 1)
        queued = submitted(front_door, prompt='never drawn', **QUICK)
        assert cancel(front_door, queued['id']).json()['status'] == 'cancelled'
        assert cancel(front_door, blocker['id']).status_code == 202
        assert kinds(events(front_door, blocker['id']))[-1] == 'cancelled'

    assert kinds(events(front_door, queued['id'])) == ['queued', 'cancelled']
    assert job(front_door, queued['id'])['images'] == []


# The token, limits and webhooks

@pytest.mark.parametrize('method, path', [
    ('post', '/v1/jobs'), ('get', '/v1/jobs'), ('get', '/v1/jobs/abc'), ('delete', '/v1/jobs/abc'),
    ('get', '/v1/models'), ('post', '/v1/images/generations'), ('post', '/v1/audio/translations'),
])
def test_every_route_wants_the_token_in_openai_s_error_shape(front_door, method, path):
    answer = getattr(requests, method)(front_door.http + path, headers=auth('wrong'), timeout=30)
    assert answer.status_code == 401
    assert answer.json()['error']['code'] == 'invalid_api_key' and 'token' in answer.json()['error']['message']


def test_health_routes_stay_open_and_websockets_want_the_token(front_door):
    assert requests.get(front_door.http + '/', timeout=30).status_code == 200
    with pytest.raises(InvalidStatus):
        connect(f'{front_door.ws}/v1/events', open_timeout=30)


def test_another_key_cannot_see_or_cancel_a_job(front_door):
    started = submitted(front_door, prompt='private', **QUICK)
    assert requests.get(f'{front_door.api}/jobs/{started["id"]}', headers=auth(SECOND_KEY), timeout=30).status_code == 404
    assert requests.delete(f'{front_door.api}/jobs/{started["id"]}', headers=auth(SECOND_KEY), timeout=30).status_code == 404
    assert started['id'] not in [listed['id'] for listed in requests.get(f'{front_door.api}/jobs', headers=auth(SECOND_KEY), timeout=30).json()['data']]
    assert kinds(events(front_door, started['id']))[-1] == 'succeeded'


@pytest.mark.parametrize('fields, param', [
    ({'prompt': 'x', 'size': '64by64'}, 'size'),
    ({'prompt': 'x', 'steps': 0}, 'steps'),
    ({}, 'file'),
    ({'prompt': 'x', 'colour': 'red'}, 'colour'),
    ({'prompt': 'x', 'callback_url': 'http://169.254.169.254/latest'}, 'callback_url'),
])
def test_a_bad_job_is_refused_at_once_naming_the_field(front_door, fields, param):
    answer = submit(front_door, **fields)
    assert answer.status_code == 400, answer.text
    assert answer.json()['error']['param'] == param


class Receiver(BaseHTTPRequestHandler):
    received: List[tuple] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers['content-length']))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def posted(job_id: str) -> List[tuple]:
    return [(headers, body) for headers, body in Receiver.received if json.loads(body)['id'] == job_id]


def test_a_finished_job_is_posted_once_to_its_callback_url_signed(front_door):
    receiver = ThreadingHTTPServer(('127.0.0.1', 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{receiver.server_address[1]}/hook'
        started = submitted(front_door, prompt='a webhook', callback_url=url, **QUICK)
        assert kinds(events(front_door, started['id']))[-1] == 'succeeded'
        deadline = time.monotonic() + 60
        while not posted(started['id']) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        receiver.shutdown()
    [(headers, body)] = posted(started['id'])
    record = Webhook(WEBHOOK_SECRET).verify(body, headers)  # as a receiver checks it: Standard Webhooks
    assert record['status'] == 'succeeded' and len(record['images']) == 2


@pytest.mark.slow  # 100 jobs
def test_a_hundred_jobs_at_concurrency_16_each_end_exactly_once(front_door):
    def one(number: int) -> List[str]:
        started = submitted(front_door, prompt=f'job {number}', n=1, size='64x64', steps=2, seed=number)
        if number % 10 == 3:  # some are cancelled on the way
            requests.delete(f'{front_door.api}/jobs/{started["id"]}', headers=auth(), timeout=30)
        return kinds(events(front_door, started['id']))

    with ThreadPoolExecutor(16) as pool:
        stories = list(pool.map(one, range(100)))
    for story in stories:
        assert sum(kind in TERMINAL for kind in story) == 1 and story[-1] in TERMINAL
    assert sum(story[-1] == 'succeeded' for story in stories) >= 90


# The job store behind the gateway

@pytest.mark.slow  # starts the service twice
def test_finished_jobs_survive_a_restart_of_the_service(tiny_sd_dir, tmp_path):
    database = str(tmp_path / 'jobs.sqlite3')
    first = serve_front_door(tiny_sd_dir, S2I_JOBS_DB=database)
    door = next(first)
    started = submitted(door, prompt='kept across a restart', **QUICK)
    story = events(door, started['id'])
    first.close()  # kills the service

    second = serve_front_door(tiny_sd_dir, S2I_JOBS_DB=database)
    door = next(second)
    try:
        assert job(door, started['id'])['status'] == 'succeeded'
        assert events(door, started['id']) == story
    finally:
        second.close()


@pytest.mark.slow  # two services
def test_with_redis_a_second_gateway_follows_and_cancels_a_job_of_the_first(tiny_sd_dir, redis_url):
    services = [serve_front_door(tiny_sd_dir, S2I_REDIS_URL=redis_url) for _ in range(2)]
    first, second = [next(service) for service in services]
    try:
        done = submitted(first, prompt='shared through redis', **QUICK)
        assert kinds(events(second, done['id']))[-1] == 'succeeded'
        assert job(second, done['id'])['images'] == job(first, done['id'])['images']

        log_mark = len(first.server.lines)
        with step_hold(HELD_SIZE, HELD_AT) as hold:
            long = submitted(first, prompt='cancelled elsewhere', seed=3, **HELD_JOB)
            hold.wait_until_held()
            assert cancel(first, long['id'], via=second).status_code == 202
            story = kinds(events(first, long['id']))
            stopped = stopped_step_once_released(first, hold, log_mark)
        assert story[-1] == 'cancelled' and 'image' not in story
        assert stopped == (HELD_AT + 1, HELD_STEPS)  # the first service's executor stopped at its next step
    finally:
        for service in services:
            service.close()


def test_an_unknown_route_under_v1_answers_in_openai_s_shape(front_door):
    answer = requests.get(f'{front_door.api}/no-such-route', headers=auth(), timeout=30)
    assert answer.status_code == 404 and 'message' in answer.json()['error']


def test_submissions_over_the_active_job_limits_are_refused_naming_them(tmp_path):
    """The runner's limits, with a real SQLite store and no workers started: submitted jobs stay queued."""

    async def first_refusal(limits: JobLimits, owners: List[str]) -> Tuple[int, str]:
        """Which of the owners' submissions (in order) is refused first, and why; (-1, '') if none is."""
        runner = JobRunner(None, open_store(None, tmp_path / f'{id(limits)}.sqlite3', 60), Webhooks(), limits, logging.getLogger('test'))
        try:
            for number, owner in enumerate(owners):
                await runner.submit(owner, JobInput(prompt='x'))
        except TooManyJobs as e:
            return number, str(e)
        finally:
            await runner.store.close()
        return -1, ''

    per_key = asyncio.run(first_refusal(JobLimits(max_active_jobs_per_key=2), ['a', 'a', 'b', 'a']))
    overall = asyncio.run(first_refusal(JobLimits(max_active_jobs=3), ['a', 'b', 'c', 'd']))
    assert per_key[0] == 3 and 'max_active_jobs_per_key' in per_key[1] and '2 jobs' in per_key[1]  # a's third
    assert overall[0] == 3 and 'max_active_jobs)' in overall[1] and '3 jobs' in overall[1]  # the fourth


# Gateways sharing a job store: leases, one end per job, queued audio (a stand-in Flow, no service)

class FakeFlow:
    """Stands for the Flow: Whisper hears "a fox" (keeping each clip it was sent), Stable Diffusion makes one
    8x8 image in three steps, each step waiting until ``steps_may_go_on``; the store hands documents back."""

    def __init__(self):
        self.audio_heard: List[bytes] = []
        self.steps_may_go_on = asyncio.Event()
        self.steps_may_go_on.set()
        self.generating = asyncio.Event()
        self.generations_stopped = 0  # calls cancelled mid-way, as a cancelled job's executor stops

    async def call_executor(self, executor, docs, parameters=None):
        if executor == TRANSCRIBER:
            self.audio_heard.append(docs[0].blob)
            return DocList[PromptDoc]([PromptDoc(transcript='un renard', text='a fox', language='fr')])
        return docs

    async def generate_stream(self, request):
        try:
            for step in (1, 2, 3):
                self.generating.set()
                await self.steps_may_go_on.wait()
                await asyncio.sleep(0)  # each step comes over the network
                yield GenerationEvent(kind='progress', step=step, steps=3, images=1)
        except asyncio.CancelledError:
            self.generations_stopped += 1
            raise
        png = io.BytesIO()
        Image.new('RGB', (8, 8)).save(png, format='PNG')
        yield GenerationEvent(kind='done', text=request.text,
                              matches=DocList[GeneratedImage]([GeneratedImage(png=png.getvalue(), seed=1, width=8, height=8)]))


def job_runner(flow: FakeFlow, database, lease_seconds: float = LEASE_SECONDS, **limits) -> JobRunner:
    """A gateway's job runner on the SQLite file ``database``."""
    store = open_store(None, database, 3600, lease_seconds=lease_seconds)
    return JobRunner(flow, store, Webhooks(), JobLimits(**limits), logging.getLogger('tests.jobs'))


async def running_at_its_first_step(database):
    """A started gateway on ``database`` with one job, held at its first denoising step (until
    ``flow.steps_may_go_on`` is set): the flow, the runner and the job."""
    flow = FakeFlow()
    flow.steps_may_go_on.clear()
    runner = job_runner(flow, database)
    await runner.start()
    job = await runner.submit('alice', JobInput(prompt='a fox'))
    await asyncio.wait_for(flow.generating.wait(), EVENT_WAIT)
    return flow, runner, job


def test_a_second_gateway_on_the_same_jobs_file_leaves_the_first_ones_running_job_alone(tmp_path):
    async def scenario():
        flow, first, started = await running_at_its_first_step(tmp_path / 'jobs.sqlite3')
        second = job_runner(FakeFlow(), tmp_path / 'jobs.sqlite3')
        await second.start()
        flow.steps_may_go_on.set()
        story = await collect(second.store.follow(started['id']))
        record = await second.store.get(started['id'])
        await first.stop()
        await second.stop()
        return story, record

    story, record = asyncio.run(scenario())
    assert kinds(story) == ['queued', 'started', 'progress', 'progress', 'progress', 'image', 'succeeded']
    assert record['status'] == 'succeeded' and record['images'][0]['b64_json'] == story[-2]['b64_json']


def test_a_dead_gateways_jobs_fail_so_their_followers_end_and_the_keys_limit_frees_up(tmp_path):
    async def scenario():
        live = job_runner(FakeFlow(), tmp_path / 'jobs.sqlite3', lease_seconds=0.5, max_active_jobs_per_key=2)
        await live.start()
        dead = job_runner(FakeFlow(), tmp_path / 'jobs.sqlite3', lease_seconds=1, max_active_jobs_per_key=2)
        await dead.store.renew_lease()  # it accepts two jobs, then dies before running them
        lost = [await dead.submit('alice', JobInput(prompt=f'lost {n}')) for n in range(2)]
        with pytest.raises(TooManyJobs):
            await live.submit('alice', JobInput(prompt='refused while the dead gateway holds the key'))
        await live.cancel(lost[0]['id'])  # through the live gateway: the dead one never answers

        stories = [await collect(live.store.follow(job['id'])) for job in lost]
        records = [await live.store.get(job['id']) for job in lost]
        accepted = await live.submit('alice', JobInput(prompt='accepted once they failed'))
        await live.stop()
        await dead.store.close()
        return stories, records, accepted

    stories, records, accepted = asyncio.run(scenario())
    for story, record in zip(stories, records):
        assert kinds(story) == ['queued', 'failed'] and story[-1]['error'] == LAPSED
        assert (record['status'], record['error']) == ('failed', LAPSED)
    assert accepted['status'] == 'queued'


def test_a_gateway_whose_job_another_gateway_ended_stops_it_without_another_event(tmp_path):
    async def scenario():
        flow, runner, started = await running_at_its_first_step(tmp_path / 'jobs.sqlite3')
        other = open_store(None, tmp_path / 'jobs.sqlite3', 3600)  # e.g. one that found this gateway's lease lapsed
        await other.finish(started['id'], {'kind': 'failed', 'error': LAPSED}, error=LAPSED)
        flow.steps_may_go_on.set()
        await until(lambda: flow.generations_stopped)
        story = await collect(other.follow(started['id']))
        record = await other.get(started['id'])
        await runner.stop()
        await other.close()
        return story, record

    story, record = asyncio.run(scenario())
    assert kinds(story)[-1] == 'failed' and 'image' not in kinds(story)
    assert (record['status'], record['error']) == ('failed', LAPSED)


CLIP_BYTES = 2 * 2**20


def clip(number: int) -> bytes:
    """Stands for an uploaded audio file: 2 MiB, different for each number."""
    return random.Random(number).randbytes(CLIP_BYTES)


def test_queued_audio_waits_on_disk_not_in_the_gateways_memory_and_runs_intact(tmp_path):
    count = 12

    async def scenario():
        flow = FakeFlow()
        runner = job_runner(flow, tmp_path / 'jobs.sqlite3')
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            jobs = [await runner.submit('alice', JobInput(audio=clip(n))) for n in range(count)]  # queued: no worker yet
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        await runner.start()
        stories = [await collect(runner.store.follow(job['id'])) for job in jobs]
        await runner.stop()
        return held, flow.audio_heard, stories

    held, heard, stories = asyncio.run(scenario())
    assert held < 2 * CLIP_BYTES  # twelve clips wait, not even two of them in memory
    assert heard == [clip(n) for n in range(count)]  # each job's own audio, whole
    assert all(kinds(story)[-1] == 'succeeded' for story in stories)
