"""The real Flow (flow.yml) on 127.0.0.1 and free ports, driven by the real client, library and CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from docarray import DocList

from s2i import client
from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import ERRORS, ErrorCode
from s2i.encoding import read_png_parameters
from s2i.serve import READY_LINE

from conftest import DATA, ENGLISH_CLIP, GERMAN_CLIP, ROOT, free_port, pixels
from servers import flow_on_free_ports

pytestmark = pytest.mark.slow
SMALL = {'width': 64, 'height': 64, 'steps': 2}


@pytest.fixture(scope='module')
def flow(tiny_sd_dir):
    """`python -m s2i.serve` (flow.yml) with the tiny SD model, on free ports, in its own process."""
    server, hosts = flow_on_free_ports([sys.executable, '-m', 's2i.serve'], S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu')
    try:
        server.wait_for(READY_LINE)
        yield hosts
    finally:
        server.kill()


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_audio_in_images_out(flow, protocol):
    (doc,) = client.generate([ENGLISH_CLIP], parameters={**SMALL, 'num_images': 2, 'seed': 3}, host=flow[protocol])
    assert doc.error == ''
    assert doc.language == 'en' and 'fox' in doc.text.lower()
    assert [image.seed for image in doc.matches] == [3, 4]
    for image in doc.matches:
        assert (image.width, image.height) == (64, 64) and pixels(image).shape == (64, 64, 3)
        assert read_png_parameters(image.png)['prompt'] == doc.text


def test_text_prompts_skip_whisper(flow):
    # Audio sent to /text2image is ignored: proof that Whisper never saw the document.
    docs = DocList[PromptDoc]([PromptDoc(text='a lighthouse', blob=ENGLISH_CLIP.read_bytes())])
    from jina import Client

    (doc,) = Client(host=flow['grpc']).post('/text2image', inputs=docs, parameters=SMALL, return_type=DocList[PromptDoc])
    assert doc.transcript == '' and doc.language is None
    assert doc.text == 'a lighthouse' and len(doc.matches) == 1


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_every_answer_is_kept_in_the_store_with_its_record(flow, protocol):
    # conftest points S2I_STORE at a folder of this test session; the default is results/ (README).
    (doc,) = client.generate([ENGLISH_CLIP], parameters={**SMALL, 'seed': 5}, host=flow[protocol])
    (image,) = doc.matches
    stored = Path(image.url)
    assert stored.is_relative_to(os.environ['S2I_STORE']) and stored.read_bytes() == image.png
    record = json.loads(Path(doc.result_url).read_text())
    assert record['input'] == 'audio' and record['language'] == 'en' and record['text'] == doc.text
    assert record['images'][0]['seed'] == 5 and record['images'][0]['url'] == image.url


def test_text_only_requests_through_the_client(flow):
    (doc,) = client.generate(prompts=['a lighthouse in a storm'], parameters=SMALL, host=flow['http'])
    assert doc.error == '' and doc.transcript == ''
    assert read_png_parameters(doc.matches[0].png)['prompt'] == 'a lighthouse in a storm'


def test_one_bad_document_in_a_request_leaves_the_others_answered(flow):
    docs = client.build_docs([ENGLISH_CLIP, DATA / 'empty.wav', DATA / 'silence_3s.wav'], prompts=['a red barn'])
    results = client.generate(docs=docs, parameters=SMALL, host=flow['grpc'], request_size=len(docs))
    english, empty, silence, prompt = results
    assert english.error == '' and len(english.matches) == 1
    assert empty.error == 'empty audio: the file has 0 bytes' and len(empty.matches) == 0
    assert silence.error == 'no speech detected' and len(silence.matches) == 0
    assert prompt.error == '' and len(prompt.matches) == 1
    assert [r.id for r in results] == [d.id for d in docs]


def test_bad_parameters_get_an_error_and_the_flow_keeps_serving(flow):
    (doc,) = client.generate(prompts=['a fox'], parameters={**SMALL, 'width': 65}, host=flow['grpc'])
    assert doc.error == 'invalid parameters: width must be a multiple of 8, got 65'
    (doc,) = client.generate(prompts=['a fox'], parameters=SMALL, host=flow['grpc'])
    assert doc.error == '' and len(doc.matches) == 1


def test_a_connection_kept_open_answers_like_generate(flow):
    parameters = {**SMALL, 'seed': 5}
    with client.Connection(flow['grpc']) as connection:
        english, barn = connection.generate([ENGLISH_CLIP], prompts=['a red barn'], parameters=parameters)
        (again,) = connection.generate(prompts=['a red barn'], parameters=parameters)  # a second request, same channel
        (bad,) = connection.generate(prompts=['a red barn'], parameters={**parameters, 'width': 65})
    assert english.error == '' and english.language == 'en' and 'fox' in english.text.lower()
    assert barn.error == '' and barn.text == 'a red barn' and len(barn.matches) == 1
    assert bad.error == 'invalid parameters: width must be a multiple of 8, got 65'
    (reference,) = client.generate(prompts=['a red barn'], parameters=parameters, host=flow['grpc'])
    assert np.array_equal(pixels(again.matches[0]), pixels(reference.matches[0]))


def test_threads_sharing_a_channel_to_an_unreachable_flow_each_get_connection_error():
    # One thread's failure must not close the shared channel under the others' calls ("Channel closed!").
    from concurrent.futures import ThreadPoolExecutor

    host = f'grpc://127.0.0.1:{free_port()}'

    def one_call(_):
        try:
            client.generate(prompts=['a fox'], host=host, token='')
        except Exception as e:
            return type(e).__name__
        return 'answered'

    first = one_call(0)  # in the main thread: Jina sets its signal handlers when first imported
    with ThreadPoolExecutor(16) as pool:
        outcomes = [first, *pool.map(one_call, range(96))]
    assert set(outcomes) == {'ConnectionError'}


def test_a_connection_names_an_unreachable_flow_and_refuses_http():
    with pytest.raises(ConnectionError, match='127.0.0.1'):
        client.Connection(f'grpc://127.0.0.1:{free_port()}').generate(prompts=['a fox'])
    with pytest.raises(ValueError, match='use generate'):
        client.Connection('http://127.0.0.1:8080')


def test_cli_writes_images_and_prints_one_json_object_per_input(flow, tmp_path):
    command = [
        sys.executable, str(ROOT / 'client.py'), '--host', flow['grpc'], '--json', '--out', str(tmp_path),
        '--num-images', '2', '--width', '64', '--height', '64', '--steps', '2', '--seed', '7',
        str(ENGLISH_CLIP), str(GERMAN_CLIP), str(DATA / 'empty.wav'), '--text', 'a red barn',
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == ERRORS[ErrorCode.AUDIO_UNREADABLE].exit_status, run.stderr  # the empty file failed
    english, german, empty, prompt = [json.loads(line) for line in run.stdout.splitlines()]

    assert english['input'] == str(ENGLISH_CLIP) and english['language'] == 'en' and english['error'] == ''
    assert 'fox' in english['text'].lower()
    assert english['images'] == [str(tmp_path / 'fox_in_snow_en-0.png'), str(tmp_path / 'fox_in_snow_en-1.png')]
    for path in english['images']:
        assert read_png_parameters(Path(path).read_bytes())['prompt'] == english['text']

    assert german['language'] == 'de' and 'Schnee' in german['transcript'] and 'snow' in german['text'].lower()
    assert len(german['images']) == 2

    assert empty['error'] == 'empty audio: the file has 0 bytes' and empty['images'] == []
    assert prompt['text'] == 'a red barn' and prompt['images'][0].endswith('a-red-barn-0.png')


def test_the_installed_s2i_client_command_reports_an_unreachable_flow_and_exits_non_zero(tmp_path):
    s2i_client = Path(sys.executable).parent / 's2i-client'  # pyproject's console script, in the venv
    run = subprocess.run(
        [str(s2i_client), '--host', f'grpc://127.0.0.1:{free_port()}', '--text', 'a fox'],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert run.returncode != 0
    assert 'cannot reach the Flow at grpc://127.0.0.1:' in run.stderr


def test_a_flow_whose_sd_model_cannot_load_fails_at_start_naming_it(tmp_path):
    env = {**os.environ, 'COLUMNS': '1000', 'S2I_SD_MODEL': str(tmp_path / 'no-such-model'), 'S2I_DEVICE': 'cpu',
           'S2I_PORT': str(free_port()), 'S2I_HTTP_PORT': str(free_port())}
    run = subprocess.run([sys.executable, '-m', 's2i.serve'], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert f"Could not load the Stable Diffusion model '{tmp_path / 'no-such-model'}'" in output


def test_concurrent_requests_get_the_images_a_lone_request_gets(flow):
    # Whether or not dynamic batching merges them (it may, within its 10 ms window), each request
    # gets its own seed's image: batched convolutions round differently on the CPU, by a few levels
    # of 255 at most, while another seed is different noise altogether.
    seeds = [21, 22, 23, 24]
    alone = {seed: client.generate(prompts=['a red fox'], parameters={**SMALL, 'seed': seed}, host=flow['grpc'])[0] for seed in seeds}
    docs = DocList[PromptDoc]([PromptDoc(text='a red fox', seed=seed) for seed in seeds])
    together = client.generate(docs=docs, parameters=SMALL, host=flow['grpc'], request_size=1)  # four requests in flight
    for seed, doc in zip(seeds, together):
        assert doc.error == '' and doc.matches[0].seed == seed
        assert np.abs(pixels(doc.matches[0]) - pixels(alone[seed].matches[0])).max() <= 8
        other_seed = seeds[(seeds.index(seed) + 1) % len(seeds)]
        assert np.abs(pixels(doc.matches[0]) - pixels(alone[other_seed].matches[0])).max() > 50


def test_the_client_moves_a_valid_request_seed_onto_documents_without_one():
    docs = DocList[PromptDoc]([PromptDoc(text='own', seed=3), PromptDoc(text='none')])
    seeded, parameters = client.seed_on_documents(docs, {'seed': 7, 'steps': 2})
    assert [doc.seed for doc in seeded] == [3, 7] and parameters == {'steps': 2}
    assert docs[1].seed is None  # the caller's documents are left as they were
    for bad in (-1, 2**31, '7', 7.5, True):  # left in the parameters, for the Flow to name what is wrong
        assert client.seed_on_documents(docs, {'seed': bad})[1] == {'seed': bad}

