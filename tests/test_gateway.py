"""The gateway component (gateway/): the unknown-parameter check, images over HTTP, and flow.yml
started by Jina's own command with the S2I_* settings and the token."""

import os
import sys
from pathlib import Path

import pytest
import requests
from docarray import DocList
from jina import Client

from s2i import client
from gateway.auth import is_authorized
from gateway.parameters import unknown_parameters
from gateway.settings import GatewaySettings
from s2i.contracts.documents import ParameterSchema, PromptDoc
from s2i.contracts.errors import ErrorCode
from s2i.encoding import from_data_uri, read_png_parameters
from s2i.runtime import UNAUTHENTICATED

from conftest import ROOT
from recording_flow import received, running_recording_flow
from servers import Server, call_executor_port, executor_ports, flow_on_free_ports, listening, only_these_settings, wait_until_ready

TOKEN = 'jina-flow-token-3b9e'
SCHEMAS = [ParameterSchema(executor='whisper', keys=['beam_size', 'language']),
           ParameterSchema(executor='stable_diffusion', keys=['guidance_scale', 'steps'])]


# --- the pure checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize('parameters', [
    {},
    {'steps': 30, 'beam_size': 5},
    {'__results__': {}, 'steps': 1},  # Jina's own keys
    {'stable_diffusion': {'steps': 30}, 'whisper': {'beam_size': 1}},  # Jina's scoped form
])
def test_every_key_some_executor_owns_is_accepted(parameters):
    assert unknown_parameters(parameters, SCHEMAS) is None


def test_a_key_no_executor_owns_is_named_with_the_known_keys():
    refused = unknown_parameters({'steps': 2, 'step': 1, 'seeed': 3}, SCHEMAS)
    assert refused.message == "unknown parameter(s) 'step', 'seeed'; known: beam_size, guidance_scale, language, steps"
    assert (refused.code, refused.param) == (ErrorCode.UNKNOWN_PARAMETER, 'step')


def test_a_long_unknown_key_is_quoted_short():
    refused = unknown_parameters({'x' * 200_000: 1, 'whisper': {'y' * 100_000: 1}}, SCHEMAS).message
    assert refused.startswith("unknown parameter(s) 'xxxx") and '(200000 characters)' in refused and len(refused) < 200


def test_a_scoped_key_must_belong_to_that_executor():
    refused = unknown_parameters({'stable_diffusion': {'steps': 3, 'beam_size': 1}}, SCHEMAS)
    assert refused.message == "unknown parameter(s) 'beam_size' for stable_diffusion; known: guidance_scale, steps"
    assert (refused.code, refused.param) == (ErrorCode.UNKNOWN_PARAMETER, 'beam_size')


def test_an_executor_name_without_a_dict_is_refused_even_when_some_executor_owns_that_key():
    # Jina itself would fail the whole request on it (it merges the value into that executor's parameters).
    with_style = [*SCHEMAS, ParameterSchema(executor='style', keys=['style'])]
    for schemas in (SCHEMAS, with_style):
        name = schemas[-1].executor
        refused = unknown_parameters({name: 'x'}, schemas)
        assert refused.message.startswith(f"'{name}' names an executor of the Flow: send a dict")
        assert (refused.code, refused.param) == (ErrorCode.INVALID_PARAMETER, name)


def test_the_known_keys_are_those_of_the_executors_described_so_a_new_one_adds_its_own():
    with_captions = [*SCHEMAS, ParameterSchema(executor='caption', keys=['max_words'])]
    assert unknown_parameters({'max_words': 12}, SCHEMAS) is not None
    assert unknown_parameters({'max_words': 12, 'caption': {'max_words': 5}}, with_captions) is None


@pytest.mark.parametrize('authorization, allowed', [
    ('Bearer s3cret', True), ('bearer s3cret', True), ('Bearer wrong', False), ('s3cret', False),
    ('Basic s3cret', False), ('', False), (None, False),
])
def test_only_the_bearer_token_is_authorized(authorization, allowed):
    assert is_authorized(authorization, 's3cret') is allowed
    assert is_authorized(authorization, None) is True  # no token configured: no check


# --- the settings (gateway/settings.py) -----------------------------------------------------------------

@pytest.fixture
def environment(monkeypatch):
    """This process's environment without S2I_* variables; the test sets its own."""
    for name in [name for name in os.environ if name.startswith('S2I_')]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_variables_the_gateway_always_read_keep_their_names_and_lists_are_comma_separated(environment):
    environment.setenv('S2I_WEBHOOK_HOSTS', 'hooks.example, 127.0.0.1:8443')
    environment.setenv('S2I_ALLOWED_ORIGINS', 'https://studio.example')
    environment.setenv('S2I_REDIS_URL', 'redis://cache:6379/1')
    environment.setenv('S2I_JOBS_DB', '/var/lib/s2i/jobs.sqlite3')
    environment.setenv('S2I_AUTH_TOKEN', 'one,two')
    settings = GatewaySettings.load()
    assert settings.webhook_hosts == ['hooks.example', '127.0.0.1:8443']
    assert settings.allowed_origins == ['https://studio.example']
    assert (settings.redis_url, settings.jobs_db, settings.token) == ('redis://cache:6379/1', '/var/lib/s2i/jobs.sqlite3', 'one,two')


def test_config_yml_wins_over_the_environment_which_wins_over_the_defaults(environment):
    environment.setenv('S2I_GATEWAY_MAX_RUNNING_JOBS', '3')
    environment.setenv('S2I_WEBHOOK_HOSTS', 'from-the-environment.example')
    settings = GatewaySettings.load({'webhook_hosts': ['from-config.example']})
    assert (settings.max_running_jobs, settings.webhook_hosts) == (3, ['from-config.example'])
    assert settings.max_depth == GatewaySettings.model_fields['max_depth'].default


def test_a_bad_setting_stops_the_start_naming_it_and_its_variable(environment):
    environment.setenv('S2I_GATEWAY_MAX_DOCUMENTS', '0')
    with pytest.raises(ValueError, match='max_documents .S2I_GATEWAY_MAX_DOCUMENTS.: Input should be greater than or equal to 1'):
        GatewaySettings.load()


def test_an_empty_token_means_no_token(environment):
    environment.setenv('S2I_AUTH_TOKEN', '')  # what a Compose file's ${S2I_AUTH_TOKEN:-} gives
    assert GatewaySettings.load().token is None


# --- the component in a Flow, without a token -----------------------------------------------------------

@pytest.fixture(scope='module')
def open_flow(tmp_path_factory):
    """tests/recording_flow.py (the gateway in front of `tagger` and `painter`) with no S2I_AUTH_TOKEN."""
    with running_recording_flow(tmp_path_factory.mktemp('gateway') / 'requests.log', token=None) as flow:
        yield flow


def post_json(flow, body):
    return requests.post(f'{flow["http"]}/text2image', json=body, timeout=60)


@pytest.mark.slow
def test_without_a_token_requests_need_none(open_flow):
    for protocol in ('grpc', 'http'):
        (doc,) = client.generate(prompts=[f'no token needed over {protocol}'], host=open_flow[protocol], token='')
        assert doc.text == f'no token needed over {protocol}'


@pytest.mark.slow
def test_a_misspelt_variable_is_named_when_the_gateway_starts(tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_GATEWAY_MAX_DOCUMNETS', '5')
    monkeypatch.setenv('COLUMNS', '1000')  # one log record per line
    with running_recording_flow(tmp_path / 'requests.log', token=None) as flow:
        warned = flow['server'].wait_for(r'unknown setting.*S2I_GATEWAY_MAX_DOCUMNETS \(did you mean (\w+)\?\)', limit=60)
    assert warned.group(1) == 'S2I_GATEWAY_MAX_DOCUMENTS'


@pytest.mark.slow
def test_an_unknown_parameter_is_refused_over_grpc_before_any_executor(open_flow):
    with pytest.raises(client.ServiceError) as refused:
        client.generate(prompts=['unknown key over grpc'], parameters={'size': 4, 'step': 1}, host=open_flow['grpc'], token='')
    assert refused.value.code == ErrorCode.UNKNOWN_PARAMETER  # the gateway's code, in the call's trailing metadata
    assert refused.value.message == "unknown parameter(s) 'step'; known: size, tag"
    assert 'unknown key over grpc' not in received(open_flow)


@pytest.mark.slow
def test_an_unknown_parameter_is_refused_over_http_with_its_code(open_flow):
    refused = post_json(open_flow, {'data': [{'text': 'unknown key over http'}], 'parameters': {'step': 1}})
    assert refused.status_code == 400
    assert refused.json() == {'detail': "unknown parameter(s) 'step'; known: size, tag", 'code': 'unknown_parameter'}
    scoped = post_json(open_flow, {'data': [{'text': 'scoped key of another executor'}], 'parameters': {'painter': {'tag': '!'}}})
    assert scoped.status_code == 400
    assert scoped.json() == {'detail': "unknown parameter(s) 'tag' for painter; known: size", 'code': 'unknown_parameter'}
    assert 'unknown key over http' not in received(open_flow)
    assert 'scoped key of another executor' not in received(open_flow)


@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_each_executors_keys_and_scoped_sections_reach_it(open_flow, protocol):
    parameters = {'tag': '!', 'painter': {'size': 4}}
    (doc,) = client.generate(prompts=[f'known keys over {protocol}'], parameters=parameters, host=open_flow[protocol], token='')
    assert doc.text == f'known keys over {protocol}!'  # tagger read `tag`
    assert (doc.matches[0].width, doc.matches[0].height) == (4, 4)  # painter read its scoped `size`


@pytest.mark.slow
def test_parameters_endpoint_lists_every_executor(open_flow):
    schemas = Client(host=open_flow['grpc']).post('/parameters', inputs=DocList[ParameterSchema](), return_type=DocList[ParameterSchema])
    assert {schema.executor: schema.keys for schema in schemas} == {'tagger': ['tag'], 'painter': ['size']}


@pytest.mark.slow
def test_http_answers_carry_images_as_data_uris_and_grpc_as_bytes(open_flow):
    answer = post_json(open_flow, {'data': [{'text': 'an image over http'}]})
    assert answer.status_code == 200, answer.text
    (image,) = answer.json()['data'][0]['matches']
    assert image['png'] is None
    assert read_png_parameters(from_data_uri(image['data_uri'])) == {'prompt': 'an image over http'}

    (doc,) = Client(host=open_flow['grpc']).post('/text2image', inputs=DocList[PromptDoc]([PromptDoc(text='an image over grpc')]),
                                                 return_type=DocList[PromptDoc])
    assert doc.matches[0].data_uri is None
    assert read_png_parameters(doc.matches[0].png) == {'prompt': 'an image over grpc'}


# --- flow.yml through `jina flow` ------------------------------------------------------------------------

JINA_FLOW = [str(Path(sys.executable).parent / 'jina'), 'flow', '--uses', 'flow.yml']  # run from the repository root
TINY_MODELS = {'S2I_WHISPER_MODEL': 'tiny.en', 'S2I_DEVICE': 'cpu'}  # and S2I_SD_MODEL: the tiny_sd_dir fixture


@pytest.fixture(scope='module')
def jina_flow_with_token(tiny_sd_dir):
    server, hosts = flow_on_free_ports(JINA_FLOW, S2I_SD_MODEL=tiny_sd_dir, S2I_AUTH_TOKEN=TOKEN, **TINY_MODELS)
    try:
        wait_until_ready(server, hosts['grpc'])
        yield {**hosts, 'server': server}
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_jina_flow_serves_flow_yml_on_the_s2i_ports_and_enforces_the_token(jina_flow_with_token, protocol):
    small = {'steps': 1, 'width': 64, 'height': 64}
    with pytest.raises(Exception) as refused:
        client.generate(prompts=['without the token'], parameters=small, host=jina_flow_with_token[protocol], token='')
    assert UNAUTHENTICATED in str(refused.value)
    (doc,) = client.generate(prompts=['a red fox'], parameters=small, host=jina_flow_with_token[protocol], token=TOKEN)
    assert doc.error == '' and len(doc.matches) == 1
    assert read_png_parameters(doc.matches[0].png)['prompt'] == 'a red fox'


@pytest.mark.slow
def test_with_a_token_the_executors_answer_only_the_gateway(jina_flow_with_token):
    """A caller who reaches an executor's port directly, around the gateway, gets no work done."""
    ports = executor_ports(jina_flow_with_token['server'], jina_flow_with_token).values()
    assert len(ports) == 5, ports  # whisper, stable_diffusion, caption, clip and store
    for port in ports:
        response = call_executor_port(port, '/generate', {'steps': 1, 'width': 64, 'height': 64},
                                      [PromptDoc(text='around the gateway')], PromptDoc)
        (doc,) = response.docs
        assert doc.error == UNAUTHENTICATED and len(doc.matches) == 0, port


@pytest.mark.slow
def test_jina_flow_without_settings_uses_the_documented_defaults(tiny_sd_dir):
    from s2i.serve import DEFAULTS

    ports = int(DEFAULTS['S2I_PORT']), int(DEFAULTS['S2I_HTTP_PORT'])
    if any(listening(port) for port in ports):
        pytest.skip(f'something already listens on the default ports {ports}')
    server = Server(JINA_FLOW, env=only_these_settings(S2I_SD_MODEL=tiny_sd_dir, **TINY_MODELS), cwd=ROOT)
    try:
        wait_until_ready(server, f'grpc://127.0.0.1:{ports[0]}')
        assert Client(host=f'http://127.0.0.1:{ports[1]}').is_flow_ready()
        (doc,) = client.generate(prompts=['defaults'], parameters={'steps': 1, 'width': 64, 'height': 64},
                                 host=f'grpc://127.0.0.1:{ports[0]}', token='')
        assert doc.error == '' and len(doc.matches) == 1
    finally:
        server.kill()
