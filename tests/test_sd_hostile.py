"""Hostile input to the Stable Diffusion executor, and shutdown in the middle of a generation.

Dynamic batching puts other callers' documents into the same call, so whatever one document holds,
it gets its own error or its images, and the documents beside it get theirs. SIGTERM stops a
generation between denoising steps instead of finishing every batch of requests nobody will read."""

import io
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from docarray import DocList
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from executors.stable_diffusion import executor
from executors.stable_diffusion.executor import INTERRUPTED, StableDiffusionExecutor
from s2i.client import Connection
from s2i.contracts.documents import GeneratedImage, PromptDoc
from s2i.contracts.params import MAX_SEED

from conftest import ROOT, draw, free_port
from servers import Server, listening, only_these_settings

MAX_PROMPT_CHARS = 2000
SMALL = {'width': 64, 'height': 64, 'steps': 1, 'guidance_scale': 1.0}  # no classifier-free guidance: half the work
INTERNAL_DETAILS = ('Traceback', 'site-packages', '/home/', '/var/')  # what no client error may show
HANG_LIMIT = 120  # seconds: far beyond what a stopped worker needs, far below the work it was given


@pytest.fixture(scope='module')
def sd(tiny_sd_dir):
    return StableDiffusionExecutor(
        model=tiny_sd_dir, device='cpu', request_defaults=SMALL, max_prompt_chars=MAX_PROMPT_CHARS, warmup=False
    )


def sizes(doc: PromptDoc) -> list:
    return [Image.open(io.BytesIO(image.png)).size for image in doc.matches]


# --- every field a client can set, on one document beside a good one -------------------------------

int32 = st.integers(-(2**31), MAX_SEED)
texts = (
    st.text()
    | st.sampled_from([
        '', ' \r\n\t', 'a\x00b', 'a fox\r\nin the snow', '\ud800', 'a fox \udfff', '🦊' * 100, '<|endoftext|>' * 30,
        'x' * MAX_PROMPT_CHARS, 'x' * (MAX_PROMPT_CHARS + 1),
    ])
    | st.builds(lambda char, count: char * count, st.characters(), st.integers(0, MAX_PROMPT_CHARS + 1))
)
hostile_docs = st.builds(
    PromptDoc,
    text=texts,
    seed=st.none() | int32 | st.sampled_from([0, MAX_SEED - 1, MAX_SEED, -(2**31)]),
    language=st.none() | st.text(max_size=20),
    # audio on a text-to-image document: this executor draws the text and ignores the audio
    uri=st.none() | st.sampled_from(['http://[::1', 'http://h:99999/x', 'file:///etc/passwd']) | st.text(max_size=40),
    blob=st.none() | st.binary(max_size=64),
    tensor=st.none() | st.lists(st.floats(width=32), min_size=1, max_size=8),
    sample_rate=int32,
    transcript=st.text(max_size=40),
    language_probability=st.none() | st.floats(),
    error=st.sampled_from(['', '', 'no speech detected']) | st.text(max_size=20),
    matches=st.lists(st.builds(GeneratedImage, png=st.binary(max_size=16), width=int32, seed=int32), max_size=2).map(
        DocList[GeneratedImage]
    ),
)


@settings(max_examples=50, deadline=None)
@given(hostile=hostile_docs, num_images=st.sampled_from([1, 2]))
@example(hostile=PromptDoc(text='a fox \ud800'), num_images=1)  # the tokenizer failed the whole batch on it
def test_whatever_one_document_holds_it_gets_an_error_or_its_images_and_the_other_document_its_images(sd, hostile, num_images):
    came_with = (hostile.error, len(hostile.matches))
    hostile, good = sd.generate(DocList[PromptDoc]([hostile, PromptDoc(text='a lighthouse')]), {'num_images': num_images})
    assert good.error == '' and sizes(good) == [(64, 64)] * num_images
    if came_with[0]:  # an earlier executor's error: passed through untouched
        assert (hostile.error, len(hostile.matches)) == came_with
    elif hostile.error:
        assert hostile.matches == [] and not any(detail in hostile.error for detail in INTERNAL_DETAILS)
    else:
        assert sizes(hostile) == [(64, 64)] * num_images  # only its own images: those it came with are gone


def test_a_prompt_that_fails_the_pipeline_fails_only_its_own_document(sd, monkeypatch):
    real_call = type(sd.pipe).__call__

    def fails_on_poison(pipe, prompt, **kwargs):
        if 'poison' in prompt:
            raise ValueError('tokenizer failed in /home/someone/.venv/lib/python3.11/site-packages/tokenizers/x.py')
        return real_call(pipe, prompt=prompt, **kwargs)

    monkeypatch.setattr(type(sd.pipe), '__call__', fails_on_poison)
    docs = draw(sd, ['a fox', 'poison', 'a barn', 'a boat'])  # one pipeline call for all four
    assert [doc.error for doc in docs] == ['', 'image generation failed: ValueError; the details are in the service log', '', '']
    assert [len(doc.matches) for doc in docs] == [1, 0, 1, 1]


def test_a_failure_making_one_image_fails_only_its_document_and_takes_all_its_images(sd, monkeypatch):
    real_encode, poisoned_images = executor.encode_png, []

    def fails_on_the_second_poison_image(image, parameters):
        if parameters['prompt'] == 'poison':
            poisoned_images.append(parameters['seed'])
            if len(poisoned_images) == 2:
                raise OSError('No space left on device: /var/tmp/png')
        return real_encode(image, parameters)

    monkeypatch.setattr(executor, 'encode_png', fails_on_the_second_poison_image)
    poisoned, fine = draw(sd, ['poison', 'a fox'], {'num_images': 2})
    assert poisoned.error == 'encoding the image failed: OSError; the details are in the service log'
    assert len(poisoned.matches) == 0  # all of its images or an error, never some of each
    assert fine.error == '' and sizes(fine) == [(64, 64)] * 2


# --- shutdown --------------------------------------------------------------------------------------

@pytest.fixture
def jinas_sigterm_handler():
    """A SIGTERM handler in place of Jina's worker's, installed before the executor is built (as Jina
    does); it records what the executor passes on. The test process's own handler comes back after."""
    received = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, original)


def test_sigterm_mid_generation_stops_at_the_next_step_and_the_request_gets_the_interrupted_error(tiny_sd_dir, jinas_sigterm_handler):
    sd = StableDiffusionExecutor(
        model=tiny_sd_dir, device='cpu', max_batch_size=2, warmup=False,
        request_defaults={'width': 64, 'height': 64, 'steps': 50, 'guidance_scale': 1.0},
    )
    unet_passes = []

    def sigterm_in_the_third_step(unet, args, output):
        unet_passes.append(1)
        if len(unet_passes) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    sd.pipe.unet.register_forward_hook(sigterm_in_the_third_step)
    docs = draw(sd, ['a fox', 'a barn', 'a boat', 'a tree'])  # two batches of 50 steps
    assert [doc.error for doc in docs] == [INTERRUPTED] * 4
    assert [len(doc.matches) for doc in docs] == [0] * 4  # no half-denoised images
    assert len(unet_passes) == 3  # the step the signal came in was the last; the second batch never started
    assert jinas_sigterm_handler == [signal.SIGTERM]  # Jina still hears of it, and stops its server
    (later,) = draw(sd, ['a lighthouse'])
    assert later.error == INTERRUPTED and len(unet_passes) == 3


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@pytest.mark.slow
def test_a_jina_worker_stopped_with_sigterm_mid_request_exits_without_drawing_its_queued_batches(tiny_sd_dir):
    port = free_port()
    command = [
        sys.executable, '-m', 'jina', 'executor', '--uses', 'executors/stable_diffusion/config.yml', '--port', str(port),
        '--uses-with', json.dumps({'warmup': False, 'max_batch_size': 2}),
    ]
    server = Server(command, env=only_these_settings(S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu'), cwd=ROOT)
    pool = ThreadPoolExecutor(1)
    try:
        deadline = time.monotonic() + HANG_LIMIT
        while not listening(port):
            assert server.process.poll() is None and time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.2)
        (worker,) = psutil.Process(server.process.pid).children()  # the CLI runs the executor in a child, as a Flow does
        idle = cpu_seconds(worker)
        # 64 documents x 4 images in batches of 2: 128 pipeline calls of 200 steps, many minutes on a CPU.
        work = {'width': 512, 'height': 512, 'steps': 200, 'num_images': 4, 'guidance_scale': 1.0}
        answer = pool.submit(Connection(f'grpc://127.0.0.1:{port}').generate, prompts=[f'a fox {n}' for n in range(64)], parameters=work)
        while cpu_seconds(worker) - idle < 2:  # drawing the first batch
            assert not answer.done(), answer.result()
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)  # what a Flow's close() sends each of its workers
        worker.wait(timeout=HANG_LIMIT)  # it stops instead of drawing the 127 other batches
        try:  # the server closed the call, or answered it with the documented error
            docs = answer.result(timeout=HANG_LIMIT)
            assert {(doc.error, len(doc.matches)) for doc in docs} == {(INTERRUPTED, 0)}
        except ConnectionError as e:
            assert 'UNAVAILABLE' in str(e)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.kill()
