"""The command line (`s2i-client`, `python client.py`) against a stand-in gateway on 127.0.0.1 that
answers Jina's HTTP routes as it is told: the subcommands, the global options before or after one,
the flags derived from the contracts, and exit statuses from the error code table."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Tuple

import grpc
import pytest

from conftest import ENGLISH_CLIP, ROOT, free_port
from s2i.cli import main
from s2i.client.errors import grpc_code
from s2i.contracts.errors import ERRORS, GRPC_CODE_METADATA, ErrorCode
from s2i.contracts.stable_diffusion import GenerationParams, RestyleParams

S2I_CLIENT = Path(sys.executable).parent / 's2i-client'  # pyproject's console script, in the venv
PNG = b'\x89PNG\r\n\x1a\n'  # the client saves what it gets; it never decodes it


class StandInGateway:
    """Answers every POST with ``answer`` (a status and a JSON body) and keeps what it was sent."""

    def __init__(self) -> None:
        self.received: List[Tuple[str, Dict[str, Any]]] = []  # (path, JSON body)
        self.answer: Tuple[int, Dict[str, Any]] = (200, {'data': [{'text': 'a fox'}]})
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                gateway.received.append((self.path, body))
                status, answer = gateway.answer
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answers(self, status: int = 200, **document: Any) -> None:
        self.answer = (status, {'data': [document]} if status == 200 else document)

    @property
    def paths(self) -> List[str]:
        return [path for path, _ in self.received]


@pytest.fixture
def gateway():
    stand_in = StandInGateway()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / 'photo.png'
    path.write_bytes(PNG)
    return path


@pytest.mark.parametrize('command', [[str(S2I_CLIENT)], [sys.executable, str(ROOT / 'client.py')]], ids=['s2i-client', 'client.py'])
def test_help_lists_every_subcommand_and_prints_no_warning(command, tmp_path):
    run = subprocess.run([*command, '--help'], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == ''
    listed = run.stdout.split('commands:')[1]
    for name in ('generate', 'caption', 'tag', 'interrogate', 'restyle'):
        assert f'\n    {name} ' in listed


def test_host_before_caption_runs_the_caption_subcommand(gateway, image, capsys):
    gateway.answers(caption='a small square')
    assert main(['--host', gateway.url, '--json', 'caption', str(image)]) == 0
    assert gateway.paths == ['/caption']
    assert json.loads(capsys.readouterr().out) == {'input': str(image), 'error': '', 'error_code': '', 'caption': 'a small square'}


def test_global_options_after_a_subcommand_work(gateway, image, tmp_path, capsys):
    gateway.answers(text='as a mosaic', matches=[{'data_uri': 'data:image/png;base64,iVBORw0KGgo='}])
    out = tmp_path / 'restyled'
    assert main(['restyle', str(image), '--style', 'as a mosaic', '--host', gateway.url, '--out', str(out), '--json']) == 0
    assert gateway.paths == ['/restyle']
    assert json.loads(capsys.readouterr().out)['images'] == [str(out / 'photo-restyled-0.png')]
    assert (out / 'photo-restyled-0.png').read_bytes() == PNG


def test_audio_and_text_without_a_subcommand_run_generate(gateway, capsys):
    assert main([str(ENGLISH_CLIP), '--text', 'caption', '--host', gateway.url, '--json', '--steps', '3', '--seed', '7']) == 0
    (audio_path, audio), (text_path, text) = gateway.received
    assert (audio_path, text_path) == ('/generate', '/text2image')  # "caption" after --text is a prompt
    assert audio['data'][0]['uri'].startswith('data:application/octet-stream;base64,')
    assert text['data'][0] == {'text': 'caption', 'seed': 7} and text['parameters'] == {'steps': 3}


def test_every_generation_parameter_is_a_flag_of_generate_and_restyle():
    for command, model in (('generate', GenerationParams), ('restyle', RestyleParams)):
        run = subprocess.run([str(S2I_CLIENT), command, '--help'], capture_output=True, text=True, timeout=60)
        for name in model.model_fields:
            assert f'--{name.replace("_", "-")} ' in run.stdout, (command, name)


@pytest.mark.parametrize('code', [ErrorCode.NO_SPEECH, ErrorCode.OUT_OF_MEMORY, ErrorCode.STORE_FAILED, ErrorCode.UNKNOWN_LANGUAGE])
def test_a_failed_document_exits_with_its_codes_status(gateway, code, capsys):
    gateway.answers(error='what went wrong, in words that may change', error_code=code.value)
    assert main(['--host', gateway.url, '--text', 'a fox', '--json']) == ERRORS[code].exit_status
    assert json.loads(capsys.readouterr().out)['error_code'] == code.value


def test_the_first_failed_input_decides_the_exit_status(gateway, image, tmp_path, capsys):
    gateway.answers(error='no image here', error_code=ErrorCode.IMAGE_UNREADABLE.value)
    assert main(['tag', str(tmp_path / 'missing.png'), str(image), '--host', gateway.url, '--json']) == 66
    missing, refused = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert missing['error_code'] == '' and refused['error_code'] == 'image_unreadable'
    assert gateway.paths == ['/tag']  # the missing file was never sent


def test_a_refused_request_exits_with_its_codes_status_and_the_next_input_is_tried(gateway, capsys):
    gateway.answers(400, error={'message': 'steps must be at most 150', 'type': 'invalid_request_error', 'param': 'steps',
                                'code': 'invalid_parameter'})
    assert main(['--host', gateway.url, '--text', 'one', '--text', 'two', '--json']) == ERRORS[ErrorCode.INVALID_PARAMETER].exit_status
    assert [json.loads(line)['error'] for line in capsys.readouterr().out.splitlines()] == ['steps must be at most 150'] * 2


def test_a_refused_token_stops_the_run_with_its_codes_status(gateway, capsys):
    gateway.answers(401, error={'message': 'missing or wrong token', 'code': 'invalid_api_key'})
    assert main(['--host', gateway.url, '--token', 'wrong', '--text', 'one', '--text', 'two']) == 77
    assert len(gateway.received) == 1 and 'refused the request: missing or wrong token' in capsys.readouterr().err


def test_a_value_the_contract_refuses_is_refused_before_sending(gateway, capsys):
    assert main(['--host', gateway.url, '--text', 'a fox', '--steps', '0']) == ERRORS[ErrorCode.INVALID_PARAMETER].exit_status
    assert gateway.received == [] and 'steps must be greater than or equal to 1' in capsys.readouterr().err


def test_an_unreachable_gateway_exits_69_naming_it(capsys):
    host = f'http://127.0.0.1:{free_port()}'
    assert main(['--host', host, '--text', 'a fox']) == 69
    assert f'cannot reach the Flow at {host}' in capsys.readouterr().err


class Refusal:
    """A grpc.RpcError as the client sees one: a status and the trailing metadata."""

    def __init__(self, status: str, metadata=()):
        self.status, self.metadata = status, metadata

    def code(self):
        return grpc.StatusCode[self.status]

    def trailing_metadata(self):
        return self.metadata


def test_a_grpc_refusal_is_read_by_the_code_it_carries():
    assert grpc_code(Refusal('INVALID_ARGUMENT', ((GRPC_CODE_METADATA, 'unknown_parameter'),))) == ErrorCode.UNKNOWN_PARAMETER
    assert grpc_code(Refusal('RESOURCE_EXHAUSTED', ((GRPC_CODE_METADATA, 'rate_limited'),))) == ErrorCode.RATE_LIMITED


def test_a_grpc_refusal_without_a_code_is_read_as_the_tables_most_general_code_for_its_status():
    assert grpc_code(Refusal('UNAUTHENTICATED')) == ErrorCode.INVALID_API_KEY
    assert grpc_code(Refusal('UNAVAILABLE')) == ErrorCode.EXECUTOR_UNAVAILABLE
    assert grpc_code(Refusal('INTERNAL')) == ErrorCode.INTERNAL_ERROR  # not store_failed, which the table lists first
    assert grpc_code(Refusal('INTERNAL', ((GRPC_CODE_METADATA, 'a_code_from_the_future'),))) == ErrorCode.INTERNAL_ERROR


def test_an_http_error_without_a_code_is_read_by_its_status(gateway, capsys):
    gateway.answers(503, detail='the stable_diffusion executor of the Flow could not be reached; try again')
    assert main(['--host', gateway.url, '--text', 'a fox', '--json']) == ERRORS[ErrorCode.EXECUTOR_UNAVAILABLE].exit_status
    assert json.loads(capsys.readouterr().out)['error_code'] == 'executor_unavailable'


def test_a_call_over_http_imports_neither_docarray_torch_nor_jina(gateway):
    gateway.answers(caption='a square')
    script = ('import sys; from s2i.cli import main; status = main(["--host", sys.argv[1], "caption", sys.argv[2]]); '
              'print(status, sorted({"docarray", "torch", "jina"} & set(sys.modules)))')
    run = subprocess.run([sys.executable, '-c', script, gateway.url, str(ENGLISH_CLIP)], capture_output=True, text=True, timeout=60)
    assert run.stdout.splitlines()[-1] == '0 []', run.stderr

