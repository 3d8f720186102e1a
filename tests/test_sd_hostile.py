"""Hostile input to the Stable Diffusion executor, and shutdown in the middle of a generation.

Dynamic batching puts other callers' documents into the same call, so whatever one document holds,
it gets its own error or its images, and the documents beside it get theirs. SIGTERM stops a
generation between denoising steps instead of finishing every batch of requests nobody will read.

Each property is checked once with the real (tiny) pipeline; the property test's many examples run
against a pipeline that draws blank images (BlankPipeline), since what they vary is the documents,
not the denoising."""

import io
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator, Tuple

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
from s2i.contracts.errors import ErrorCode
from s2i.contracts.params import MAX_SEED

from conftest import ROOT, draw, free_port
from servers import Server, listening, only_these_settings
from step_hooks import step_hold

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
HOSTILE_TEXTS = [
    '', ' \r\n\t', 'a\x00b', 'a fox\r\nin the snow', '\ud800', 'a fox \udfff', '🦊' * 100, '<|endoftext|>' * 30,
    'x' * MAX_PROMPT_CHARS, 'x' * (MAX_PROMPT_CHARS + 1),
]
HOSTILE_SEEDS = [0, MAX_SEED - 1, MAX_SEED, -(2**31)]
texts = (
    st.text()
    | st.sampled_from(HOSTILE_TEXTS)
    | st.builds(lambda char, count: char * count, st.characters(), st.integers(0, MAX_PROMPT_CHARS + 1))
)
hostile_docs = st.builds(
    PromptDoc,
    text=texts,
    seed=st.none() | int32 | st.sampled_from(HOSTILE_SEEDS),
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
CODES = {code.value for code in ErrorCode}


class BlankPipeline:
    """Stands for the pipeline in the property test: it reads each prompt with the real tokenizer, as the
    real pipeline does first (where a hostile prompt once failed its whole batch), reports every step,
    and returns blank images of the asked size, without denoising or decoding anything."""

    def __init__(self, real):
        self.tokenizer, self.scheduler = real.tokenizer, real.scheduler

    def __call__(self, prompt, num_inference_steps, callback_on_step_end, width, height, negative_prompt=None, **ignored):
        for text in prompt + (negative_prompt or []):
            self.tokenizer(text, padding='max_length', max_length=self.tokenizer.model_max_length, truncation=True)
        for step in range(num_inference_steps):
            callback_on_step_end(self, step, None, {})
        return SimpleNamespace(images=[Image.new('RGB', (width, height)) for _ in prompt])


@contextmanager
def drawing_blanks(sd) -> Iterator[None]:
    real = sd.pipe
    sd.pipe = BlankPipeline(real)
    try:
        yield
    finally:
        sd.pipe = real


def before(doc: PromptDoc) -> Tuple[str, int]:
    """What a document came with: an earlier executor's error, and images."""
    return doc.error, len(doc.matches)


def assert_its_error_or_its_images(doc: PromptDoc, came_with: Tuple[str, int], num_images: int) -> None:
    if came_with[0]:  # an earlier executor's error: passed through untouched
        assert before(doc) == came_with
    elif doc.error:
        assert doc.matches == [] and not any(detail in doc.error for detail in INTERNAL_DETAILS)
        assert doc.error_code in CODES, f'{doc.error!r} has no documented code'
    else:
        assert sizes(doc) == [(64, 64)] * num_images  # only its own images: those it came with are gone


@settings(max_examples=50, deadline=None)
@given(hostile=hostile_docs, num_images=st.sampled_from([1, 2]))
@example(hostile=PromptDoc(text='a fox \ud800'), num_images=1)  # the tokenizer failed the whole batch on it
def test_whatever_one_document_holds_it_gets_an_error_or_its_images_and_the_other_document_its_images(sd, hostile, num_images):
    came_with = before(hostile)
    with drawing_blanks(sd):
        hostile, good = sd.generate(DocList[PromptDoc]([hostile, PromptDoc(text='a lighthouse')]), {'num_images': num_images})
    assert good.error == '' and sizes(good) == [(64, 64)] * num_images
    assert_its_error_or_its_images(hostile, came_with, num_images)


def test_the_hostile_documents_in_one_real_batch_each_get_an_error_or_their_images(sd):
    hostile = [PromptDoc(text=text) for text in HOSTILE_TEXTS] + [PromptDoc(text='a fox', seed=seed) for seed in HOSTILE_SEEDS] + [
        PromptDoc(text='a fox', error='no speech detected', error_code=ErrorCode.NO_SPEECH,
                  matches=DocList[GeneratedImage]([GeneratedImage(png=b'x', width=-1, seed=-(2**31))])),
        PromptDoc(text='a fox', uri='file:///etc/passwd', blob=b'RIFF', tensor=[float('nan')], language='\x00',
                  matches=DocList[GeneratedImage]([GeneratedImage(png=b'not a png', width=2**31 - 1, seed=0)])),
    ]
    came_with = [before(doc) for doc in hostile]
    *answered, good = sd.generate(DocList[PromptDoc]([*hostile, PromptDoc(text='a lighthouse')]), {'num_images': 1})

    assert good.error == '' and sizes(good) == [(64, 64)]
    for doc, came in zip(answered, came_with):
        assert_its_error_or_its_images(doc, came, 1)
    refused = {'': 'missing_input', ' \r\n\t': 'missing_input', '\ud800': 'invalid_request', 'a fox \udfff': 'invalid_request',
               'x' * (MAX_PROMPT_CHARS + 1): 'prompt_too_long'}
    assert [doc.error_code for doc in answered] == [
        *(refused.get(text, '') for text in HOSTILE_TEXTS),
        '', '', '', 'invalid_parameter',  # seeds: 0 to MAX_SEED are drawn, a negative one refused
        'no_speech', '',  # an earlier executor's error, passed on; odd fields beside a good prompt, drawn
    ]
    assert all(image.png.startswith(b'\x89PNG') for doc in answered if not doc.error for image in doc.matches)


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


def answer_once_stopped(answer) -> set:
    """The documents' (error, image count) pairs of a request its worker stopped under; none if the
    worker closed the call as it went down (the client then finds the service unreachable)."""
    try:
        return {(doc.error, len(doc.matches)) for doc in answer.result(timeout=HANG_LIMIT)}
    except ConnectionError:  # a service that answered would have raised ServiceError, not this
        return set()


@pytest.mark.slow
def test_a_jina_worker_stopped_with_sigterm_mid_request_exits_without_drawing_its_queued_batches(tiny_sd_dir):
    port = free_port()
    command = [
        sys.executable, '-m', 'tests.step_hooks',  # `python -m jina executor`, where a generation can be held at a step
        'jina', 'executor', '--uses', 'executors/stable_diffusion/config.yml', '--port', str(port),
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
        # 64 documents x 4 images in batches of 2: 128 pipeline calls of 200 steps, many minutes on a CPU.
        work = {'width': 512, 'height': 512, 'steps': 200, 'num_images': 4, 'guidance_scale': 1.0}
        with step_hold((512, 512), 1) as hold:  # the first batch, after its first step
            answer = pool.submit(Connection(f'grpc://127.0.0.1:{port}').generate, prompts=[f'a fox {n}' for n in range(64)], parameters=work)
            hold.wait_until_held(HANG_LIMIT)
            worker.send_signal(signal.SIGTERM)  # what a Flow's close() sends each of its workers
        worker.wait(timeout=HANG_LIMIT)  # it stops instead of drawing the 127 other batches
        assert answer_once_stopped(answer) in ({(INTERRUPTED, 0)}, set())  # the documented error, or a closed call
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.kill()
