"""The gateway in-process: ``create_app`` (gateway/app.py), the app Jina's HTTP server serves, over a
stand-in for the Flow, driven by Starlette's TestClient. Jobs are kept in an in-memory SQLite store; they
run against the stand-in as they would against a Flow. With ``flow=None`` a request that should have been
refused fails the test if it reaches the Flow, and a job, once running, runs until it is cancelled."""

import asyncio
import dataclasses
import logging
from typing import Optional, Sequence

from starlette.testclient import TestClient

from gateway.app import IN_MEMORY, create_app
from gateway.jobs.runner import JobLimits
from gateway.limits import RequestLimits
from gateway.settings import GatewaySettings

LOGGER = logging.getLogger('tests.gateway_app')
BASE_URL = 'http://127.0.0.1:8322'


class NoFlow:
    """Stands for the Flow where a request must be refused before any executor works. A job taken from the
    queue waits here until it is cancelled (it never ends by itself, so the test decides its state)."""

    async def call(self, *args, **kwargs):
        raise AssertionError('the request reached the Flow')

    call_executor = call

    async def generate_stream(self, *args, **kwargs):
        await asyncio.Event().wait()  # until cancelled
        yield  # an async generator, like the real one

    async def schemas(self):
        return []

    async def models(self):
        return {}


def gateway_settings(token: Optional[str] = None, allowed_origins: Sequence[str] = (), limits: JobLimits = JobLimits(),
                     request_limits: RequestLimits = RequestLimits(), **settings) -> GatewaySettings:
    """The gateway's settings for a test, whatever this process's S2I_* variables say: only what is given,
    else the defaults; jobs in memory, no webhooks."""
    given = {'auth_token': token, 'allowed_origins': list(allowed_origins), 'jobs_db': IN_MEMORY, 'redis_url': None,
             'webhook_hosts': [], 'webhook_secret': None, **dataclasses.asdict(limits), **dataclasses.asdict(request_limits),
             **settings}
    return GatewaySettings(**given)


def gateway_client(token: Optional[str] = None, allowed_origins: Sequence[str] = (), flow=None,
                   limits: JobLimits = JobLimits(), request_limits: RequestLimits = RequestLimits(), **settings) -> TestClient:
    """A TestClient (use it in a ``with`` block: the app starts and stops with it) for the gateway behind
    ``token`` over ``flow`` (None: NoFlow); ``settings`` are any other GatewaySettings fields. The app's job
    runner is ``client.app.state.jobs``, its store ``client.app.state.jobs.store``."""
    settings = gateway_settings(token, allowed_origins, limits, request_limits, **settings)
    return TestClient(create_app(settings, flow or NoFlow(), logger=LOGGER), base_url=BASE_URL)
