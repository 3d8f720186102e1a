"""Adding an executor with a request key of its own touches nothing outside its folder.

tests/styled_executor/ is such an executor (config.yml, executor.py, params.py with one key,
``style``), put in a Flow with the real gateway and Stable Diffusion executor, unchanged."""

import sys
from pathlib import Path

import pytest

from s2i import client
from s2i.client.errors import ServiceError
from s2i.encoding import read_png_parameters

from servers import flow_on_free_ports, wait_until_ready

pytestmark = pytest.mark.slow
SMALL = {'steps': 1, 'width': 64, 'height': 64}


@pytest.fixture(scope='module')
def styled_flow(tiny_sd_dir):
    command = [str(Path(sys.executable).parent / 'jina'), 'flow', '--uses', 'tests/styled_flow.yml']
    server, hosts = flow_on_free_ports(command, S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu')
    try:
        wait_until_ready(server, hosts['grpc'])
        yield hosts
    finally:
        server.kill()


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_the_new_executors_key_reaches_it_and_the_others_keep_theirs(styled_flow, protocol):
    (doc,) = client.generate(prompts=['a fox'], parameters={**SMALL, 'style': ', oil painting', 'seed': 3},
                             host=styled_flow[protocol], token='')
    assert doc.error == ''
    recorded = read_png_parameters(doc.matches[0].png)
    assert recorded['prompt'] == 'a fox, oil painting'  # StyleExecutor read `style`
    assert (recorded['steps'], recorded['width'], recorded['seed']) == (1, 64, 3)  # Stable Diffusion read its own


def test_a_misspelt_key_is_still_refused_naming_it_and_the_new_key_is_known(styled_flow):
    with pytest.raises(ServiceError) as refused:
        client.generate(prompts=['a fox'], parameters={**SMALL, 'stlye': ', oil painting'}, host=styled_flow['grpc'], token='')
    message = str(refused.value)
    assert refused.value.kind.grpc_status == 'INVALID_ARGUMENT' and "unknown parameter(s) 'stlye'" in message
    assert 'style' in message.split('known:')[1].split(', ')  # listed among the known keys


def test_a_bad_value_for_the_new_key_is_that_executors_per_document_error(styled_flow):
    (doc,) = client.generate(prompts=['a fox'], parameters={**SMALL, 'style': 7}, host=styled_flow['grpc'], token='')
    assert doc.error == 'invalid parameters: style must be a string, got 7.0' and len(doc.matches) == 0
    assert (doc.error_code, doc.error_param) == ('invalid_parameter', 'style')


def test_a_key_named_after_an_executor_must_hold_that_executors_parameters(styled_flow):
    with pytest.raises(RuntimeError) as refused:
        client.generate(prompts=['a fox'], parameters={**SMALL, 'styler': ', oil painting'}, host=styled_flow['grpc'], token='')
    assert "'styler' names an executor of the Flow: send a dict of its parameters" in str(refused.value)
    (doc,) = client.generate(prompts=['a fox'], parameters={**SMALL, 'styler': {'style': ', ink'}}, host=styled_flow['grpc'], token='')
    assert read_png_parameters(doc.matches[0].png)['prompt'] == 'a fox, ink'  # Jina's scoped form
