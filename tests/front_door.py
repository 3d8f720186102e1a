"""The service as users run it, for the tests of the gateway's own routes (OpenAI-compatible API,
jobs): `python -m s2i.serve` (flow.yml) with the tiny SD model and the bundled Whisper weights, a
token, and webhooks allowed to 127.0.0.1, on free ports, in its own process; one per test session."""

import sys
from dataclasses import dataclass
from typing import Iterator

from s2i.serve import READY_LINE
from tests.servers import Server, flow_on_free_ports

TOKEN = 'front-door-token'
SECOND_KEY = 'front-door-second-key'  # S2I_AUTH_TOKEN holds both: jobs belong to the key that sent them
WEBHOOK_SECRET = 'front-door-webhook-secret'


@dataclass
class FrontDoor:
    server: Server
    grpc: str  # grpc://127.0.0.1:P
    http: str  # http://127.0.0.1:Q

    @property
    def api(self) -> str:
        """The OpenAI-compatible base URL."""
        return f'{self.http}/v1'

    @property
    def ws(self) -> str:
        return self.http.replace('http://', 'ws://', 1)


def serve_front_door(tiny_sd_dir: str, **settings: str) -> Iterator[FrontDoor]:
    server, hosts = flow_on_free_ports(
        [sys.executable, '-m', 's2i.serve'], S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu',
        COLUMNS='1000',  # one log record per line, for Server.wait_for
        S2I_CAPTION_MODEL='tiny', S2I_CLIP_MODEL='tiny',  # loaded at the first request that needs them
        S2I_AUTH_TOKEN=f'{TOKEN},{SECOND_KEY}', S2I_WEBHOOK_HOSTS='127.0.0.1', S2I_WEBHOOK_SECRET=WEBHOOK_SECRET,
        **settings,
    )
    try:
        server.wait_for(READY_LINE)
        yield FrontDoor(server, hosts['grpc'], hosts['http'])
    finally:
        server.kill()
