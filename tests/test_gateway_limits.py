"""What the gateway refuses at the door, and what it never lets out: the request limits, what Jina's
transport cannot carry, short errors, and internal failures without their tracebacks.

Against tests/recording_flow.py (the real gateway component in front of two small executors), with
the limits set low so that crossing them is cheap."""

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
import requests
from docarray import DocList

from s2i import client
from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import ERRORS, ErrorCode

from conftest import ROOT
from recording_flow import FAIL, received, running_recording_flow
from servers import executor_ports

MAX_DOCUMENTS = 150  # over Jina's own 100 documents per request, to show that none are dropped
MAX_REQUEST_BYTES = 2**20

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def flow(tmp_path_factory):
    log = tmp_path_factory.mktemp('limits') / 'requests.log'
    with running_recording_flow(log, token=None, max_documents=MAX_DOCUMENTS, max_request_bytes=MAX_REQUEST_BYTES) as flow:
        yield flow


def post(flow, body=None, data=None, endpoint='/text2image'):
    if body is not None:
        data = json.dumps(body)
    return requests.post(f'{flow["http"]}{endpoint}', data=data, headers={'content-type': 'application/json'}, timeout=60)


def prompts(label: str, count: int):
    return [f'{label} {i}' for i in range(count)]


# --- nothing lost: every document comes back, or the request is refused whole ------------------------

@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_every_document_up_to_the_limit_comes_back_in_order(flow, protocol):
    sent = prompts(f'all back over {protocol}', MAX_DOCUMENTS)
    docs = client.generate(prompts=sent, host=flow[protocol], token='', request_size=MAX_DOCUMENTS)
    assert [doc.text for doc in docs] == sent
    assert all(len(doc.matches) == 1 for doc in docs)


def test_over_http_a_request_over_the_document_limit_is_refused_with_413_and_reaches_no_executor(flow):
    answer = post(flow, {'data': [{'text': f'one too many {i}'} for i in range(MAX_DOCUMENTS + 1)]})
    assert (answer.status_code, answer.json()['code']) == (413, 'input_too_large')
    assert answer.json()['detail'] == (f'too many documents: {MAX_DOCUMENTS + 1} in one request, the limit is '
                                       f'{MAX_DOCUMENTS} (max_documents); send them in several requests')
    assert 'one too many 0' not in received(flow)


def test_over_grpc_a_request_over_the_document_limit_is_resource_exhausted(flow):
    with pytest.raises(client.ServiceError, match=f'too many documents: {MAX_DOCUMENTS + 1}') as refused:
        client.generate(prompts=prompts('grpc one too many', MAX_DOCUMENTS + 1), host=flow['grpc'], token='',
                        request_size=MAX_DOCUMENTS + 1)
    assert refused.value.code == ErrorCode.INPUT_TOO_LARGE  # the gateway's code, in the call's trailing metadata
    assert 'grpc one too many 0' not in received(flow)


def test_the_client_splits_a_long_list_into_requests_under_the_limit_and_gets_all_back(flow):
    sent = prompts('in several requests', 2 * MAX_DOCUMENTS + 3)
    docs = client.generate(prompts=sent, host=flow['http'], token='', request_size=MAX_DOCUMENTS)
    assert [doc.text for doc in docs] == sent


# --- request bytes -------------------------------------------------------------------------------------

def test_an_http_body_over_the_byte_limit_is_refused_with_413_whether_announced_or_streamed(flow):
    body = json.dumps({'data': [{'text': 'too big ' + 'x' * MAX_REQUEST_BYTES}]}).encode()
    announced = post(flow, data=body)
    streamed = post(flow, data=(body[i : i + 65536] for i in range(0, len(body), 65536)))  # chunked, no length
    for answer in (announced, streamed):
        assert answer.status_code == 413
        assert answer.json() == {'detail': f'request too large: more than {MAX_REQUEST_BYTES} bytes (max_request_bytes)',
                                 'code': 'input_too_large'}
    assert not any(line.startswith('too big') for line in received(flow))


def test_a_grpc_message_over_the_byte_limit_is_resource_exhausted(flow):
    with pytest.raises(client.ServiceError) as refused:
        client.generate(prompts=['too big ' + 'x' * MAX_REQUEST_BYTES], host=flow['grpc'], token='')
    assert refused.value.code == ErrorCode.INPUT_TOO_LARGE  # gRPC's own RESOURCE_EXHAUSTED


# --- what Jina's transport cannot carry: a named 4xx, not a 500 without a message -----------------------

UNSENDABLE = {
    'NaN': ('{"data": [{"text": "a"}], "parameters": {"size": NaN}}', 'parameters.size must be a finite number, got nan'),
    'Infinity': ('{"data": [{"text": "a"}], "parameters": {"size": Infinity}}', 'parameters.size must be a finite number, got inf'),
    '1e400': ('{"data": [{"text": "a"}], "parameters": {"size": 1e400}}', 'parameters.size must be a finite number, got inf'),
    'lone surrogate': ('{"data": [{"text": "a \\ud800"}]}', 'data[0].text is not valid text'),
    'seed over int32': ('{"data": [{"text": "a", "seed": 1099511627776}]}', 'data[0].seed: Input should be less than or equal to 2147483647'),
    'deep parameters': ('{"data": [{"text": "a"}], "parameters": {"tag": ' + '[' * 900 + ']' * 900 + '}}', 'is nested more than 32 levels deep'),
    'deep tensor': ('{"data": [{"tensor": ' + '[' * 200 + '0.1' + ']' * 200 + '}]}', 'invalid request: '),
}


@pytest.mark.parametrize('name', UNSENDABLE)
def test_what_the_transport_cannot_carry_is_a_named_4xx_and_the_flow_serves_on(flow, name):
    body, error = UNSENDABLE[name]
    endpoint = '/generate' if 'tensor' in body else '/text2image'
    answer = post(flow, data=body.encode(), endpoint=endpoint)
    assert 400 <= answer.status_code < 500, answer.text
    assert error in answer.json()['detail']
    (doc,) = client.generate(prompts=[f'after {name}'], host=flow['http'], token='')
    assert doc.text == f'after {name}' and len(doc.matches) == 1


def test_a_bad_document_quotes_a_short_prefix_of_the_bad_value_not_the_whole_input(flow):
    answer = post(flow, {'data': [{'text': 'x', 'sample_rate': 'y' * 200_000}]})
    assert (answer.status_code, answer.json()['code']) == (400, 'invalid_request')
    detail = answer.json()['detail']
    assert detail.startswith('invalid request: ') and 'sample_rate' in detail
    assert len(answer.content) < 500


# --- internal failures --------------------------------------------------------------------------------

@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_an_executor_failure_reaches_the_client_without_its_traceback_or_server_paths(flow, protocol):
    if protocol == 'grpc':
        with pytest.raises(RuntimeError) as failed:
            client.generate(prompts=[FAIL], host=flow['grpc'], token='')
        message = str(failed.value)
    else:
        answer = post(flow, {'data': [{'text': FAIL}]})
        assert (answer.status_code, answer.json()['code']) == (500, 'internal_error')
        message = answer.json()['detail']
    assert 'the service failed on this request (RuntimeError in Painter, request ' in message
    assert 'the details are in the service log' in message
    assert '/' not in message.split('request ')[-1] and 'Traceback' not in message and '.py' not in message


def test_a_grpc_response_to_an_executor_failure_carries_no_stacks(flow):
    from jina.proto import jina_pb2
    from jina.proto.serializer import DataRequestProto
    from jina.types.request.data import DataRequest

    request = DataRequest()
    request.header.exec_endpoint = '/text2image'
    request.data.docs = DocList[PromptDoc]([PromptDoc(text=FAIL)])
    with grpc.insecure_channel(flow['grpc'].removeprefix('grpc://')) as channel:
        call = channel.unary_unary('/jina.JinaSingleDataRequestRPC/process_single_data',
                                   request_serializer=DataRequestProto.SerializeToString,
                                   response_deserializer=DataRequestProto.FromString)
        response = call(request, timeout=60)
    status = response.header.status
    assert status.code == jina_pb2.StatusProto.ERROR
    assert list(status.exception.stacks) == [] and list(status.exception.args) == []
    assert status.exception.name == 'RuntimeError' and status.exception.executor == 'Painter'


# --- an executor down ------------------------------------------------------------------------------

def test_with_an_executor_down_the_client_names_it_for_each_input_and_tries_the_next(tmp_path):
    with running_recording_flow(tmp_path / 'requests.log', token=None) as flow:
        for pid in executor_ports(flow['server'], flow):
            os.kill(pid, signal.SIGKILL)
        for protocol in ('grpc', 'http'):
            with pytest.raises(client.ExecutorUnavailable, match='tagger'):
                client.generate(prompts=['an executor is down'], host=flow[protocol], token='')
        cli = subprocess.run([sys.executable, str(ROOT / 'client.py'), '--host', flow['grpc'], '--json', '--out', str(tmp_path),
                              '--text', 'first', '--text', 'second'], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    answers = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [answer['input'] for answer in answers] == ['first', 'second']  # the second input was still tried
    assert all('tagger' in answer['error'] and answer['error_code'] == 'executor_unavailable' for answer in answers)
    assert cli.returncode == ERRORS[ErrorCode.EXECUTOR_UNAVAILABLE].exit_status and 'cannot reach the Flow' not in cli.stderr
