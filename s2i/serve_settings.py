"""The settings flow.yml reads for Jina itself: where ``python -m s2i.serve`` (and ``jina flow --uses
flow.yml``) listen, and how many Stable Diffusion replicas they start. Light on purpose: pydantic only.
"""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from s2i.settings import ComponentSettings


class ServeSettings(ComponentSettings):
    # An empty variable counts as unset, as flow.yml's defaults always have.
    model_config = SettingsConfigDict(env_prefix='S2I_', env_ignore_empty=True)

    host: str = Field('127.0.0.1', description='the gateway\'s address; 0.0.0.0 to serve other machines (set S2I_AUTH_TOKEN, put TLS in front)')
    port: int = Field(8321, ge=1, le=65535, description="the gateway's gRPC port")
    http_port: int = Field(8322, ge=1, le=65535, description="the gateway's HTTP port")
    sd_replicas: int = Field(1, ge=1, description='Stable Diffusion executors started side by side (one GPU each in containers)')
