"""The Stable Diffusion executor's streaming endpoint, served by a Jina worker in its own process
(what the gateway's connection pool talks to): progress while it denoises, then the document;
every failure as the document's error; closing the stream stops the generation."""

import asyncio
import json
import sys
import time
from itertools import groupby
from typing import List, Tuple

import numpy as np
import pytest
from docarray import DocList
from jina import Client

from s2i.contracts.documents import GenerationEvent, GenerationRequest, PromptDoc
from s2i.encoding import read_png_parameters
from s2i.runtime import INTERNAL_KEY_PARAMETER, UNAUTHENTICATED, internal_key

from conftest import ROOT, free_port, pixels
from servers import Server, listening, only_these_settings

pytestmark = pytest.mark.slow  # each test talks to a served executor

TOKEN = 'stream-test-token'
THROUGH_THE_GATEWAY = {INTERNAL_KEY_PARAMETER: internal_key(TOKEN)}  # what the gateway adds to every request
SMALL = {'width': 64, 'height': 96, 'steps': 6, 'guidance_scale': 1.0, **THROUGH_THE_GATEWAY}
START_LIMIT = 240  # seconds for the worker to load the tiny pipeline and listen
CANCEL_LIMIT = 60  # seconds: far beyond a step of the tiny model, far below the 200 steps asked for
PROMPT = 'a red fox in the snow'


@pytest.fixture(scope='module')
def served(tiny_sd_dir) -> Tuple[int, Server]:
    """The executor's config.yml in a Jina worker with a token and pipeline calls of at most 2 images."""
    port = free_port()
    command = [
        sys.executable, '-m', 'jina', 'executor', '--uses', 'executors/stable_diffusion/config.yml',
        '--host', '127.0.0.1', '--port', str(port), '--uses-with', json.dumps({'warmup': False, 'max_batch_size': 2}),
    ]
    # COLUMNS: Jina's log lines are wrapped at the terminal width, and a pipe's is 80.
    settings = only_these_settings(S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu', S2I_AUTH_TOKEN=TOKEN, COLUMNS='400')
    server = Server(command, env=settings, cwd=ROOT)
    try:
        deadline = time.monotonic() + START_LIMIT
        while not listening(port):
            assert server.process.poll() is None and time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.2)
        yield port, server
    finally:
        server.kill()


def stream_client(port: int) -> Client:
    return Client(host='127.0.0.1', port=port, protocol='grpc', asyncio=True)


def request(parameters: dict) -> GenerationRequest:
    return GenerationRequest(text=PROMPT, parameters=parameters)


def stream(port: int, parameters: dict) -> List[GenerationEvent]:
    """Every event of one streamed generation, in order."""

    async def collect():
        events = stream_client(port).stream_doc(on='/generate_stream', inputs=request(parameters), return_type=GenerationEvent)
        return [event async for event in events]

    return asyncio.run(collect())


def generate(port: int, parameters: dict) -> PromptDoc:
    """The same prompt through /generate, as the gateway sends it."""
    client = Client(host='127.0.0.1', port=port, protocol='grpc')
    (doc,) = client.post('/generate', inputs=DocList[PromptDoc]([PromptDoc(text=PROMPT)]), parameters=parameters,
                         return_type=DocList[PromptDoc])
    return doc


def test_a_stream_reports_each_calls_steps_in_order_then_ends_with_the_document(served):
    port, _ = served
    events = stream(port, {**SMALL, 'num_images': 3, 'seed': 7})
    *progress, done = events
    assert done.kind == 'done' and {event.kind for event in progress} == {'progress'}
    calls = [(call, [event.step for event in group]) for call, group in groupby(progress, lambda e: (e.first_image, e.images))]
    assert [call for call, _ in calls] == [(0, 2), (2, 1)]  # 3 images in calls of at most 2, in order
    for _, steps in calls:
        assert steps == sorted(set(steps)) and steps[-1] == SMALL['steps']  # strictly increasing, to the last step
    assert done.error == ''
    assert [(image.width, image.height, image.seed) for image in done.matches] == [(64, 96, 7), (64, 96, 8), (64, 96, 9)]
    for image in done.matches:
        assert pixels(image).shape == (96, 64, 3)
        recorded = read_png_parameters(image.png)
        assert recorded['seed'] == image.seed and recorded['steps'] == SMALL['steps'] and recorded['prompt'] == PROMPT


def test_a_streamed_generation_has_the_same_pixels_as_generate_with_the_same_parameters(served):
    port, _ = served
    parameters = {**SMALL, 'num_images': 3, 'seed': 1234}
    streamed, generated = stream(port, parameters)[-1], generate(port, parameters)
    assert generated.error == '' and len(generated.matches) == 3
    for ours, theirs in zip(streamed.matches, generated.matches, strict=True):
        assert np.array_equal(pixels(ours), pixels(theirs))
        assert ours.parameters == theirs.parameters


def test_bad_parameters_end_the_stream_with_one_done_event_that_names_them(served):
    port, _ = served
    (done,) = stream(port, {**SMALL, 'steps': 0})
    assert done.kind == 'done'
    assert done.error.startswith('invalid parameters: steps must be greater than or equal to 1')
    assert (done.error_code, done.error_param) == ('invalid_parameter', 'steps')
    assert len(done.matches) == 0


def test_a_request_without_the_gateways_key_gets_no_image(served):
    port, _ = served
    (done,) = stream(port, {'width': 64, 'height': 64, 'steps': 1})
    assert done.kind == 'done' and done.error == UNAUTHENTICATED and len(done.matches) == 0
    assert done.error_code == 'invalid_api_key'


def test_closing_the_stream_stops_the_generation_and_the_next_request_is_served(served):
    port, server = served
    long_generation = {**THROUGH_THE_GATEWAY, 'width': 512, 'height': 512, 'steps': 200, 'guidance_scale': 1.0}

    async def close_after_the_first_event():
        first = asyncio.get_running_loop().create_future()

        async def relay():
            async for event in stream_client(port).stream_doc(on='/generate_stream', inputs=request(long_generation), return_type=GenerationEvent):
                if not first.done():
                    first.set_result(event)

        relaying = asyncio.create_task(relay())
        event = await first
        # Cancelled, as a server cancels the task of a client that went away: that cancels the gRPC
        # call. (aclose() on Jina's stream_doc iterator does not: its call ends with the event loop.)
        relaying.cancel()
        # Waited for with this loop still running, so that its end is not what closed the call.
        cancelled = await asyncio.to_thread(server.wait_for, r'generation cancelled at step (\d+)/200', CANCEL_LIMIT)
        return event, int(cancelled.group(1))

    first, cancelled_at = asyncio.run(close_after_the_first_event())
    assert first.kind == 'progress'
    assert 1 <= cancelled_at < 200
    done = stream(port, {**SMALL, 'steps': 1})[-1]
    assert done.error == '' and len(done.matches) == 1
