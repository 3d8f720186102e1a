"""Following jobs over WebSocket against the real service (tests/front_door.py): a client that leaves
mid-stream costs the gateway nothing (one that reads too slowly: tests/test_front_door.py)."""

import json

from websockets.sync.client import connect

from front_door import EVENT_WAIT, auth, events, kinds, submitted

TEXT_JOB = {'prompt': 'a red fox in the snow', 'size': '64x64', 'steps': 3, 'seed': 3}


def test_a_client_that_leaves_mid_stream_leaves_no_traceback_in_the_log(front_door):
    logged_before = len(front_door.server.lines)
    with connect(f'{front_door.ws}/v1/events', additional_headers=auth(), open_timeout=30) as everything:
        job = submitted(front_door, **TEXT_JOB)
        assert json.loads(everything.recv(timeout=EVENT_WAIT))['job'] == job['id']
    # Gone after its first event: the relay meets a closed connection at the next one.
    assert kinds(events(front_door, job['id']))[-1] == 'succeeded'
    logged = ''.join(line for line in front_door.server.lines[logged_before:] if line)
    assert 'Traceback' not in logged and 'ConnectionClosed' not in logged, logged[-3000:]
