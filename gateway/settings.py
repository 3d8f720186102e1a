"""The gateway's settings, each default in one place (docs/configuration.md is generated from this class).

A setting comes from gateway/config.yml's ``with:`` (or a Flow's ``uses_with``), else its environment
variable (``S2I_GATEWAY_<NAME>``, or the name given below for the variables the gateway has always
read), else the default here. Lists come from the environment comma-separated
(``S2I_WEBHOOK_HOSTS=a.example,b.example:8443``) and from config.yml as YAML lists.
"""

from typing import Annotated, Any, List, Optional

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from s2i.settings import ComponentSettings

CommaSeparated = Annotated[List[str], NoDecode]  # pydantic-settings would read a list variable as JSON


class GatewaySettings(ComponentSettings, env_prefix='S2I_GATEWAY_'):
    # The token. Secrets never go into config.yml: set them in the environment.
    auth_token: Optional[SecretStr] = Field(
        None, validation_alias='S2I_AUTH_TOKEN',
        description='API keys, comma-separated: every request needs "authorization: Bearer <key>"; unset: no check')
    # Requests over a limit are refused whole, before any executor works.
    max_documents: int = Field(100, ge=1, description='documents per request: HTTP 413, gRPC RESOURCE_EXHAUSTED')
    max_request_bytes: int = Field(
        64 * 2**20, ge=1, description='bytes per HTTP body or gRPC message (a 25 MiB clip as a data URI is 33 MiB)')
    max_depth: int = Field(32, ge=1, description='nesting of lists and dicts in HTTP parameters and documents: 400')
    # Jobs (POST /v1/jobs). Queued or running jobs over a limit: 429.
    max_active_jobs: int = Field(100, ge=1, description='jobs queued or running, all API keys together')
    max_active_jobs_per_key: int = Field(32, ge=1, description='jobs queued or running per API key')
    max_running_jobs: int = Field(1, ge=1, description='jobs this gateway runs at once; match the Stable Diffusion replicas')
    max_job_seconds: float = Field(600, gt=0, description='a job still running after this fails (job_timeout)')
    job_ttl_seconds: float = Field(86400, gt=0, description='a job and its events are deleted this long after their last change')
    redis_url: Optional[str] = Field(
        None, validation_alias='S2I_REDIS_URL',
        description='redis://host:port/db: gateway replicas share jobs; unset: SQLite in jobs_db')
    jobs_db: Optional[str] = Field(
        None, validation_alias='S2I_JOBS_DB', description='the SQLite file of jobs; unset: <cache dir>/jobs.sqlite3')
    # Webhooks (a job's callback_url).
    webhook_hosts: CommaSeparated = Field(
        [], validation_alias='S2I_WEBHOOK_HOSTS', description='hosts ("host" or "host:port") webhooks may go to; none: no webhooks')
    webhook_attempts: int = Field(5, ge=1, description='requests per webhook at most, with backoff from 1 s, doubling')
    webhook_secret: Optional[SecretStr] = Field(
        None, validation_alias='S2I_WEBHOOK_SECRET',
        description='whsec_<base64 of 24+ random bytes>: signs each webhook (Standard Webhooks); unset: unsigned')
    # Browsers: the page at /ui and programs that send no Origin always may.
    allowed_origins: CommaSeparated = Field(
        [], validation_alias='S2I_ALLOWED_ORIGINS',
        description='pages of other sites (scheme://host[:port]) that may open WebSockets and POST here')

    @field_validator('webhook_hosts', 'allowed_origins', mode='before')
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(',') if item.strip()]
        return value

    @property
    def token(self) -> Optional[str]:
        """S2I_AUTH_TOKEN's keys as set; None when unset or empty (no check)."""
        return revealed(self.auth_token)

    @property
    def signing_secret(self) -> Optional[str]:
        return revealed(self.webhook_secret)


def revealed(secret: Optional[SecretStr]) -> Optional[str]:
    """A secret's text; None for an unset or empty one (``VAR=`` in a Compose file means "not set")."""
    return (secret.get_secret_value() if secret is not None else '') or None


def default(name: str) -> Any:
    """The default of setting ``name``: for the classes that carry a group of settings (RequestLimits, JobLimits)."""
    return GatewaySettings.model_fields[name].default


# What deploy/export.py passes to the gateway alone, from the environment or a Secret, never from a file.
JOBS_DB_VARIABLE = 'S2I_JOBS_DB'
GATEWAY_VARIABLES = tuple(GatewaySettings.model_fields[name].validation_alias for name in
                          ('redis_url', 'jobs_db', 'webhook_hosts', 'webhook_secret', 'allowed_origins'))
