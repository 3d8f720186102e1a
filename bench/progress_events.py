"""What streamed progress costs: python bench/progress_events.py [--rounds N] [--model M --device D]

The same generations (same seeds, same parameters) through a served Stable Diffusion executor, by
its two ways in, measured side by side in one run: ``/generate`` (one answer, no events) and
``/generate_stream`` (a progress event at most every PROGRESS_INTERVAL, then the document). The
two take turns, and which goes first alternates, so a slow spell of a shared machine lands on both.
Prints the median seconds of each, their ratio, and the progress events received.

By default the tiny random-weight pipeline on the CPU: its absolute times say nothing about a real
model, only the ratio does. ``--model`` (a hub id or folder) and ``--device cuda`` measure a GPU.
"""

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from s2i.runtime import free_port

ROOT = Path(__file__).resolve().parent.parent
PROMPT = 'a red fox runs through the snow under a full moon'


def served_executor(model: str, device: str):
    """The executor's config.yml in a Jina Deployment on 127.0.0.1, without dynamic batching:
    a lone /generate request would otherwise wait its batching timeout, which a stream never does."""
    from jina import Deployment

    port = free_port()
    deployment = Deployment(
        uses=str(ROOT / 'executors' / 'stable_diffusion' / 'config.yml'), port=port, host='127.0.0.1',
        uses_with={'model': model, 'device': device},
        uses_dynamic_batching={endpoint: {'use_dynamic_batching': False} for endpoint in ('/generate', '/text2image')},
    )
    return deployment, port


def time_generate(port: int, parameters: dict) -> float:
    """Seconds until /generate answers with the images; an answer without them stops the bench."""
    from docarray import DocList
    from jina import Client

    from s2i.contracts.documents import PromptDoc

    started = time.perf_counter()
    (doc,) = Client(host='127.0.0.1', port=port, protocol='grpc').post(
        '/generate', inputs=DocList[PromptDoc]([PromptDoc(text=PROMPT)]), parameters=parameters, return_type=DocList[PromptDoc],
    )
    seconds = time.perf_counter() - started
    check_answered(doc, parameters)
    return seconds


def time_stream(port: int, parameters: dict):
    """Seconds until /generate_stream's done event, and the progress events before it."""
    from jina import Client

    from s2i.contracts.documents import GenerationEvent, GenerationRequest

    async def collect():
        client = Client(host='127.0.0.1', port=port, protocol='grpc', asyncio=True)
        request = GenerationRequest(text=PROMPT, parameters=parameters)
        return [event async for event in client.stream_doc(on='/generate_stream', inputs=request, return_type=GenerationEvent)]

    started = time.perf_counter()
    events = asyncio.run(collect())
    seconds = time.perf_counter() - started
    *progress, done = events
    if done.kind != 'done' or any(event.kind != 'progress' for event in progress):
        raise RuntimeError(f'unexpected events: {[event.kind for event in events]}')
    check_answered(done, parameters)
    return seconds, len(progress)


def check_answered(doc, parameters: dict) -> None:
    """A timed request must have been served: a time to refuse it would be no figure."""
    if doc.error or len(doc.matches) != parameters['num_images']:
        raise RuntimeError(f'not answered: {doc.error or f"{len(doc.matches)} images"}')


def compare(port: int, rounds: int, parameters: dict) -> dict:
    generate_s, stream_s, events = [], [], []
    time_generate(port, {**parameters, 'seed': 0})  # warm-up: the first call of a shape pays for setting it up
    time_stream(port, {**parameters, 'seed': 0})
    for seed in range(1, rounds + 1):
        seeded = {**parameters, 'seed': seed}
        for endpoint in ('generate', 'stream') if seed % 2 else ('stream', 'generate'):
            if endpoint == 'generate':
                generate_s.append(time_generate(port, seeded))
            else:
                seconds, progress_events = time_stream(port, seeded)
                stream_s.append(seconds)
                events.append(progress_events)
    return {
        'generate_s': statistics.median(generate_s), 'stream_s': statistics.median(stream_s),
        'ratio': statistics.median(stream_s) / statistics.median(generate_s),
        'events_per_generation': statistics.median(events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=10, help='generations by each endpoint (default 10)')
    parser.add_argument('--model', help='a diffusers model (hub id or folder); default: the tiny random-weight one')
    parser.add_argument('--device', default='cpu', help='cpu (default), cuda, cuda:1, ...')
    parser.add_argument('--size', type=int, help='width and height (default: 256 tiny, 512 otherwise)')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--num-images', type=int, default=1)
    args = parser.parse_args()
    multiprocessing.set_start_method('spawn')  # the Deployment's worker starts fresh, not forked from here

    from s2i.contracts.documents import PROGRESS_INTERVAL
    from s2i.tiny_sd import write_tiny_pipeline

    size = args.size or (512 if args.model else 256)
    parameters = {'width': size, 'height': size, 'steps': args.steps, 'num_images': args.num_images}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_tiny_pipeline(f'{tmp}/tiny')
        if not args.model:
            print('!' * 100)
            print('!! THE TINY RANDOM-WEIGHT MODEL: its absolute CPU times mean nothing; read the ratio only.')
            print('!' * 100)
        deployment, port = served_executor(model, args.device)
        with deployment:
            figures = compare(port, args.rounds, parameters)
    print(f'\n{args.rounds} rounds of the same generations (seeds 1..{args.rounds}), {model if args.model else "tiny model"} '
          f'on {args.device}: {size}x{size}, {args.steps} steps, {args.num_images} image(s); progress at most every {PROGRESS_INTERVAL} s')
    print(f'  /generate         median {figures["generate_s"]:.3f} s  (no events)')
    print(f'  /generate_stream  median {figures["stream_s"]:.3f} s  ({figures["events_per_generation"]:g} progress events per generation)')
    print(f'  stream / generate {figures["ratio"]:.3f}')


if __name__ == '__main__':
    main()
