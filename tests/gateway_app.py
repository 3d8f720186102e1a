"""The gateway's own routes in-process: the same ``add_front_door`` wiring that Jina's HTTP server gets
(origin check, token, body limit, error shapes, the /v1 routes and the page), on a plain FastAPI app,
driven by Starlette's TestClient. No Flow runs: a stand-in answers for it, and fails the test if a
request that should have been refused reaches it."""

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional, Sequence

from fastapi import FastAPI
from starlette.testclient import TestClient

from gateway.gateway import Guard, add_front_door
from gateway.jobs.runner import JobLimits, JobRunner
from gateway.jobs.store import SqliteJobStore
from gateway.jobs.webhooks import Webhooks
from gateway.limits import RequestLimits

LOGGER = logging.getLogger('tests.gateway_app')


class NoFlow:
    """Stands for the Flow where a request must be refused before any executor works."""

    async def call(self, *args, **kwargs):
        raise AssertionError('the request reached the Flow')

    call_executor = call

    async def generate_stream(self, *args, **kwargs):
        raise AssertionError('the request reached the Flow')
        yield  # an async generator, like the real one

    async def models(self):
        return {}


class NoParameters:
    """The executors' parameter schemas, as a Flow without executors describes them."""

    async def schemas(self):
        return []

    async def refusal(self, endpoint, parameters):
        return None


def gateway_client(token: Optional[str] = None, allowed_origins: Sequence[str] = (), flow=None,
                   limits: JobLimits = JobLimits(), request_limits: RequestLimits = RequestLimits()) -> TestClient:
    """A TestClient (use it in a ``with`` block) for the gateway's routes behind ``token``; jobs are kept
    in an in-memory SQLite store and stay queued (no job runs)."""
    guard = Guard(token, request_limits, NoParameters(), LOGGER)
    runner = JobRunner(flow or NoFlow(), None, Webhooks(), limits, LOGGER)

    @asynccontextmanager
    async def lifespan(app):
        runner.store = SqliteJobStore(Path(':memory:'), limits.job_ttl_seconds)  # in the thread that uses it
        yield
        await runner.store.close()

    app = add_front_door(FastAPI(lifespan=lifespan), guard, flow or NoFlow(), runner, allowed_origins)
    app.state.jobs = runner  # for tests that publish events as a running job would
    return TestClient(app, base_url='http://127.0.0.1:8322')
