"""What the routes take from the app (FastAPI dependencies): create_app puts each in ``app.state``.

    flow: FlowClient = Depends(get_flow)
    jobs: JobRunner = Depends(get_jobs)
    owner: str = Depends(get_owner)          # the key's name, checked by the token middleware
    owner: str = Depends(require_key)        # on a route the middleware leaves open (GET /ui/...)
"""

from starlette.requests import HTTPConnection

from gateway.auth import ApiKeys
from gateway.flow_client import FlowClient
from gateway.jobs.runner import JobRunner
from gateway.settings import GatewaySettings
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.runtime import UNAUTHENTICATED


def get_flow(connection: HTTPConnection) -> FlowClient:
    return connection.app.state.flow


def get_jobs(connection: HTTPConnection) -> JobRunner:
    """The job runner, with its store (``.store``) and webhooks (``.webhooks``); started with the app."""
    return connection.app.state.jobs


def get_settings(connection: HTTPConnection) -> GatewaySettings:
    return connection.app.state.settings


def get_keys(connection: HTTPConnection) -> ApiKeys:
    return connection.app.state.keys


def get_owner(connection: HTTPConnection) -> str:
    """Who sent the request: the name of its key, or ``anonymous`` without a token (RequireToken sets it)."""
    return connection.state.owner


def require_key(connection: HTTPConnection) -> str:
    """The owner of a request to a route that the token middleware leaves open; 401 without a key."""
    owner = get_keys(connection).owner(connection.headers.get('authorization'))
    if owner is None:
        raise CodedError(UNAUTHENTICATED, ErrorCode.INVALID_API_KEY)
    return owner
