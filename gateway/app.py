"""The gateway as an application: ``create_app(settings, flow)`` builds the whole HTTP service.

What it adds in front of the Flow, in the order a request meets it:

1. **Origin** (origins.py). A browser page of another site may not open a WebSocket or send a
   POST, PUT, PATCH or DELETE here; the page at /ui and programs (no ``Origin``) may.
2. **Token** (auth.py). With S2I_AUTH_TOKEN set, every request needs ``authorization: Bearer <key>``;
   health checks and the page's files stay open.
3. **Body limit** (limits.py): an HTTP body over max_request_bytes is refused with 413.
4. **Routes**: the OpenAI-compatible API (routes/audio.py, images.py, models.py), jobs (routes/jobs.py)
   and the page (gateway/ui), each answering errors by their code (errors.py).

The Flow is any FlowClient (flow_client.py): gateway/jina_adapter.py gives the real one and adds Jina's
own routes; the in-process tests give a fake. The job runner starts and stops with the app (its lifespan).
"""

import dataclasses
import logging
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional, Tuple

from fastapi import FastAPI

from gateway.auth import ApiKeys, RequireToken
from gateway.errors import add_error_handlers
from gateway.flow_client import FlowClient
from gateway.jobs.runner import JobLimits, JobRunner
from gateway.jobs.store import JobStore, open_store
from gateway.jobs.webhooks import Webhooks
from gateway.limits import LimitBody, RequestLimits
from gateway.origins import CheckOrigin
from gateway.routes import audio, images, jobs, models
from gateway.settings import GatewaySettings, JOBS_DB_VARIABLE
from gateway.ui import router as page
from s2i.runtime import cache_dir

ROUTERS = (audio.router, images.router, models.router, jobs.router, page)
IN_MEMORY = ':memory:'  # jobs_db: jobs kept in memory only, lost when the gateway stops


def create_app(settings: GatewaySettings, flow: FlowClient, store: Optional[JobStore] = None,
               logger: Optional[logging.Logger] = None) -> FastAPI:
    """The gateway's HTTP service over ``flow``, its jobs kept in ``store`` (None: the store the settings
    name, opened when the app starts). A webhook secret that is not a Standard Webhooks one stops it here."""
    logger = logger or logging.getLogger('gateway')
    app = FastAPI(title='speech-to-image', description='Speech in any language to images', lifespan=running_jobs)
    app.state.settings, app.state.flow, app.state.logger, app.state.given_store = settings, flow, logger, store
    app.state.keys = ApiKeys(settings.token)
    app.state.webhooks = Webhooks(settings.webhook_hosts, settings.signing_secret, settings.webhook_attempts, logger=logger)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # The last middleware added runs first: the origin, the token, then the body limit.
    app.add_middleware(LimitBody, limits=limits_of(RequestLimits, settings))
    app.add_middleware(RequireToken, keys=app.state.keys)
    app.add_middleware(CheckOrigin, allowed_origins=settings.allowed_origins)
    return app


@asynccontextmanager
async def running_jobs(app: FastAPI):
    """The job runner (``app.state.jobs``), from the app's start to its end."""
    state = app.state
    store, spool = (state.given_store, None) if state.given_store is not None else open_job_store(state.settings, state.logger)
    state.jobs = JobRunner(state.flow, store, state.webhooks, limits_of(JobLimits, state.settings), state.logger, spool_dir=spool)
    await state.jobs.start()
    try:
        yield
    finally:
        await state.jobs.stop()


def limits_of(limits: type, settings: GatewaySettings):
    """A group of limits (RequestLimits, JobLimits) as the settings give them."""
    return limits(**{field.name: getattr(settings, field.name) for field in dataclasses.fields(limits)})


def open_job_store(settings: GatewaySettings, logger: logging.Logger) -> Tuple[JobStore, Optional[Path]]:
    """The job store the settings name, and the folder where queued jobs' audio waits (None: the system's
    temporary folder): beside the jobs file, as the system's /tmp may be RAM."""
    if settings.jobs_db == IN_MEMORY and not settings.redis_url:
        return open_store(None, Path(IN_MEMORY), settings.job_ttl_seconds), None
    path = Path(settings.jobs_db or cache_dir() / 'jobs.sqlite3')
    try:
        return open_store(settings.redis_url or None, path, settings.job_ttl_seconds), path.parent
    except (OSError, sqlite3.Error) as e:  # a read-only home in a container: serve, but say what is lost
        logger.warning(f'cannot keep jobs in {path} ({e}): jobs are kept in memory and lost when the gateway '
                       f'stops; set {JOBS_DB_VARIABLE} to a writable file or S2I_REDIS_URL')
        return open_store(None, Path(IN_MEMORY), settings.job_ttl_seconds), None
