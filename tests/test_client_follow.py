"""`client.py --follow` and `follow_job()` against the real service (tests/front_door.py): a job per
input, its transcript shown as soon as it is known, its steps as bars, the images saved as without
--follow, a dropped event stream resumed, and Ctrl-C cancelling the job."""

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List

import pytest
from PIL import Image

from conftest import GERMAN_CLIP, ROOT
from front_door import TOKEN
from step_hooks import HELD_AT, HELD_JOB, HELD_SIZE, HELD_STEPS, step_hold
from s2i.cli import main
from s2i.client import JobInterrupted, follow_job, job_events
from s2i.contracts.errors import ERRORS, ErrorCode
from s2i.runtime import UNAUTHENTICATED

QUICK = ['--num-images', '2', '--width', '64', '--height', '64', '--steps', '3', '--seed', '5']
RESULT_KEYS = {'input', 'language', 'transcript', 'text', 'images', 'stored', 'record', 'error', 'error_code'}  # as without --follow


def follow_args(front_door, *args: str) -> List[str]:
    return ['--follow', '--host', front_door.http, '--token', TOKEN, *args]


def kinds(events: List[dict]) -> List[str]:
    return [event['kind'] for event in events]


def test_follow_saves_each_inputs_images_and_prints_the_same_json_with_the_job(front_door, tmp_path, capsys):
    code = main(follow_args(front_door, str(GERMAN_CLIP), '--text', 'a red barn', *QUICK, '--out', str(tmp_path), '--json'))

    assert code == 0
    heard, drawn = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(heard) == set(drawn) == RESULT_KEYS | {'job'}
    assert heard['language'] == 'de' and 'Hund' in heard['transcript'] and 'snow' in heard['text'].lower()
    assert drawn['text'] == 'a red barn' and heard['job'] != drawn['job']
    for result, stem in [(heard, 'dog_in_snow_de'), (drawn, 'a-red-barn')]:
        assert result['images'] == [str(tmp_path / f'{stem}-{i}.png') for i in range(2)]
        for i, path in enumerate(result['images']):
            png = Image.open(path)
            assert png.size == (64, 64) and json.loads(png.text['parameters'])['seed'] == 5 + i


def test_follow_prints_the_transcript_before_the_steps_and_the_saved_images(front_door, tmp_path):
    shown = io.StringIO()  # stdout and stderr in one stream, in the order they were written
    with contextlib.redirect_stdout(shown), contextlib.redirect_stderr(shown):
        code = main(follow_args(front_door, str(GERMAN_CLIP), *QUICK, '--out', str(tmp_path)))

    assert code == 0
    output = shown.getvalue()
    transcript = output.index(f'[1/1] {GERMAN_CLIP}: (de) ')
    first_bar, last_step = output.index('images 1-2'), output.index('3/3')
    saved = output.index(f'-> {tmp_path / "dog_in_snow_de-0.png"}')
    assert transcript < first_bar < last_step < saved
    assert 'English: ' in output[transcript:first_bar] and output.count('(de) ') == 1


def test_follow_job_hands_on_every_event_in_order_and_returns_the_record(front_door):
    seen = []
    fields = {'n': 2, 'size': '64x64', 'steps': 3, 'seed': 7}
    record = follow_job(front_door.http, TOKEN, audio_path=GERMAN_CLIP, fields=fields, on_event=seen.append)

    order = kinds(seen)
    assert [event['seq'] for event in seen] == list(range(1, len(seen) + 1))
    assert order.index('transcribed') < order.index('progress') < order.index('image') and order[-1] == 'succeeded'
    steps = [event['step'] for event in seen if event['kind'] == 'progress']
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert record['status'] == 'succeeded' and [image['seed'] for image in record['images']] == [7, 8]
    assert 'snow' in record['text'].lower()


def test_a_wrong_token_stops_with_the_gateways_401_message_and_its_codes_status(front_door, tmp_path, capsys):
    status = main(['--follow', '--host', front_door.http, '--token', 'wrong', '--text', 'a fox', '--text', 'a cat', '--out', str(tmp_path)])
    assert status == ERRORS[ErrorCode.INVALID_API_KEY].exit_status
    assert UNAUTHENTICATED in capsys.readouterr().err


def test_a_size_the_service_refuses_is_that_inputs_error_with_its_code(front_door, tmp_path, capsys):
    # Within the model's range (so the CLI sends it), over the executor's max_pixels (so the service refuses it).
    status = main(follow_args(front_door, '--text', 'a fox', '--width', '2048', '--height', '2048', '--out', str(tmp_path), '--json'))
    result = json.loads(capsys.readouterr().out)
    assert status == ERRORS[ErrorCode.INVALID_PARAMETER].exit_status and result['error_code'] == 'invalid_parameter'
    assert 'max_pixels' in result['error']


@pytest.mark.parametrize('args, words', [
    (['--host', 'grpc://127.0.0.1:8321'], 'HTTP port'),
    (['--host', 'http://127.0.0.1:8322', '--width', '64'], 'both --width and --height'),
])
def test_follow_refuses_what_it_cannot_send(args, words, capsys):
    with pytest.raises(SystemExit) as exit:
        main(['--follow', *args, '--text', 'a fox'])
    assert exit.value.code == 2 and words in capsys.readouterr().err


class DroppingProxy:
    """A TCP proxy to the gateway that cuts its first WebSocket connection as soon as events flow
    through it, without a closing handshake: a dropped connection, as a flaky network makes one."""

    def __init__(self, target_port: int):
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.url = f'http://127.0.0.1:{self.listener.getsockname()[1]}'
        self.target_port = target_port
        self.websocket_requests: List[str] = []  # their request lines
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.relay, args=(client,), daemon=True).start()

    def relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(('127.0.0.1', self.target_port))
        request = client.recv(65536)
        if b'upgrade: websocket' in request.lower():
            self.websocket_requests.append(request.split(b'\r\n', 1)[0].decode())
        upstream.sendall(request)
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client, cut=len(self.websocket_requests) == 1 and b'upgrade: websocket' in request.lower())

    def close(self) -> None:
        self.listener.close()


def pipe(source: socket.socket, sink: socket.socket, cut: bool = False) -> None:
    """Copy until either side ends (or, with ``cut``, until the first bytes after the HTTP headers); then end both."""
    seen = b''
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
            seen += chunk
            if cut and b'\r\n\r\n' in seen and not seen.endswith(b'\r\n\r\n'):
                break
    except OSError:
        pass
    finally:
        for side in (source, sink):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)
            side.close()


def test_a_dropped_event_stream_is_resumed_after_the_last_event_seen(front_door):
    proxy = DroppingProxy(int(front_door.http.rsplit(':', 1)[1]))
    seen = []
    try:
        record = follow_job(proxy.url, TOKEN, prompt='a harbour in the rain',
                            fields={'n': 1, 'size': '64x64', 'steps': 20, 'seed': 3}, on_event=seen.append)
    finally:
        proxy.close()

    assert len(proxy.websocket_requests) >= 2
    first, second = proxy.websocket_requests[:2]
    assert 'after=0 ' in first and int(re.search(r'after=(\d+)', second)[1]) > 0
    assert [event['seq'] for event in seen] == list(range(1, len(seen) + 1))  # nothing lost, nothing twice
    assert kinds(seen)[-1] == 'succeeded' and record['status'] == 'succeeded'


def test_ctrl_c_in_follow_job_cancels_the_job(front_door):
    def interrupt_at_the_first_step(event):
        if event['kind'] == 'progress':
            raise KeyboardInterrupt

    with step_hold(HELD_SIZE, HELD_AT) as hold:  # the job waits at its first step: it runs when the cancel comes
        with pytest.raises(JobInterrupted) as interrupted:
            follow_job(front_door.http, TOKEN, prompt='a long one', fields=HELD_JOB, on_event=interrupt_at_the_first_step)
        assert hold.wait_until_held() == HELD_AT
    assert interrupted.value.cancel_error == ''
    rest = list(job_events(front_door.http, TOKEN, interrupted.value.job_id))
    assert kinds(rest)[-1] == 'cancelled' and 'image' not in kinds(rest)


def test_ctrl_c_in_the_cli_cancels_the_job_and_exits_130(front_door, tmp_path):
    command = [sys.executable, str(ROOT / 'client.py'), *follow_args(front_door, '--text', 'a long one'),
               '--width', str(HELD_SIZE[0]), '--height', str(HELD_SIZE[1]), '--steps', str(HELD_STEPS), '--out', str(tmp_path)]
    with step_hold(HELD_SIZE, HELD_AT) as hold:  # the job waits at its first step: it runs when Ctrl-C comes
        cli = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert hold.wait_until_held() == HELD_AT
            written, deadline = b'', time.monotonic() + 120
            while f'/{HELD_STEPS}'.encode() not in written:  # its bar has started
                assert time.monotonic() < deadline and cli.poll() is None, written.decode(errors='replace')
                written += os.read(cli.stderr.fileno(), 4096)
            cli.send_signal(signal.SIGINT)
            written += cli.stderr.read()
            assert cli.wait(timeout=60) == 130
        finally:
            if cli.poll() is None:
                cli.kill()
            cli.stderr.close()
    job_id = re.search(rb'interrupted: job (\w+) cancelled', written)[1].decode()
    assert kinds(list(job_events(front_door.http, TOKEN, job_id)))[-1] == 'cancelled'
