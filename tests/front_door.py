"""The service as users run it, for the tests of the gateway's own routes (OpenAI-compatible API,
jobs): `python -m s2i.serve` (flow.yml) with the tiny SD model and the bundled Whisper weights, a
token, and webhooks allowed to 127.0.0.1, on free ports, in its own process; one per test session."""

import json
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import requests
from websockets.sync.client import connect

from s2i.serve import READY_LINE
from tests.servers import Server, flow_on_free_ports

TOKEN = 'front-door-token'
SECOND_KEY = 'front-door-second-key'  # S2I_AUTH_TOKEN holds both: jobs belong to the key that sent them
WEBHOOK_SECRET = 'whsec_ZnJvbnQtZG9vci13ZWJob29rLXNlY3JldA=='  # Standard Webhooks: whsec_ and the base64 of b'front-door-webhook-secret'


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
        [sys.executable, '-m', 'tests.step_hooks'],  # s2i.serve, where a test can hold a generation at a step
        S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu',
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


# Jobs, as a client uses them: submit over HTTP, follow over WebSocket (tests/test_jobs.py and others)

TERMINAL = {'succeeded', 'failed', 'cancelled'}
EVENT_WAIT = 120  # seconds any one event may take to arrive (a cold Whisper on 2 cores)


def auth(token: str = TOKEN) -> Dict[str, str]:
    return {'authorization': f'Bearer {token}'}


def submit(door: FrontDoor, audio: Optional[bytes] = None, token: str = TOKEN, **fields) -> requests.Response:
    if audio is not None:
        form = {key: str(value) for key, value in fields.items()}
        return requests.post(f'{door.api}/jobs', files={'file': ('speech.wav', audio)}, data=form, headers=auth(token), timeout=30)
    return requests.post(f'{door.api}/jobs', json=fields, headers=auth(token), timeout=30)


def submitted(door: FrontDoor, **fields) -> Dict[str, Any]:
    answer = submit(door, **fields)
    assert answer.status_code == 202, answer.text
    return answer.json()


def events(door: FrontDoor, job_id: str, after: int = 0, stop_after: Optional[int] = None, token: str = TOKEN) -> List[dict]:
    """The job's events after ``after`` until its terminal event (or ``stop_after`` of them: then disconnect)."""
    received = []
    with connect(f'{door.ws}/v1/jobs/{job_id}/events?after={after}', additional_headers=auth(token), open_timeout=30) as ws:
        while stop_after is None or len(received) < stop_after:
            event = json.loads(ws.recv(timeout=EVENT_WAIT))
            received.append(event)
            if event['kind'] in TERMINAL:
                break
    return received


def job(door: FrontDoor, job_id: str, token: str = TOKEN) -> Dict[str, Any]:
    answer = requests.get(f'{door.api}/jobs/{job_id}', headers=auth(token), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def kinds(received: List[dict]) -> List[str]:
    return [event['kind'] for event in received]
