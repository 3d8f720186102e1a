"""Speed, measured side by side in one run: python bench/run.py [--quick] [--json PATH]

Sections (each prints a table; the end compares every target with its measured value):
  stt       faster-whisper vs openai-whisper on identical weights (the bundled base, converted),
            and faster-whisper's throughput on eight short clips at batch sizes 1 to 8
  accuracy  word error rates of the full and the default encoder window (bench/stt_accuracy.py --quick)
  stock     the project's default Whisper path (WhisperExecutor from config.yml) vs stock
            openai-whisper transcribe(task='translate'): same weights, the same eight 3.5-9 s clips, texts side by side
  sd        per-image latency and images/s vs batch size, with and without each fast-path setting,
            for the tiny pipeline and (full run) a full-size SD 1.5-shaped random-weight pipeline:
            256x256 and 2 steps on a CPU; on a GPU 512x512 and 50 steps, plus low-memory mode and
            peak GPU memory
  batching  throughput of 8 concurrent clients vs one sequential client, through a real Flow
  overhead  latency through the gateway minus model time, with a replayed answer and with tiny SD
  cold      seconds from `python -m s2i.serve` to ready (bundled Whisper, tiny SD); then a spoken and
            a typed prompt through it, end to end, and Whisper's share of the spoken one

Every timed request must be answered: a document with an error (or with no text, or without its
images) stops the bench with that error, so no figure is the time it took to refuse a request.

Random-weight pipelines make noise, but their timings are real: the compute does not depend on
the values of the weights. Compare ratios across machines, absolute times only on the same one.
"""

import argparse
import gc
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from s2i.runtime import free_port
from tables import print_table  # bench/tables.py: the folder of the script being run is on the path

ROOT = Path(__file__).resolve().parent.parent

CLIPS = [ROOT / 'examples' / 'fox_in_snow_en.wav', ROOT / 'examples' / 'dog_in_snow_de.wav']
# The speed targets set for this project (its tracker's issue 3, "Make it fast and prove it"); the
# published figures they are drawn from are quoted there. key: (what, target, comparison)
TARGETS = {
    'flow_overhead_ms_p50': ('Flow overhead p50, gRPC on localhost, open channel (ms)', 5.0, '<='),
    'stt_speedup_faster_vs_openai': ('faster-whisper speed-up over openai-whisper, same weights', 4.0, '>='),
    'stt_speedup_vs_stock_openai_whisper': (
        "the project's default Whisper path vs stock openai-whisper transcribe(task='translate'), same weights and clips", 4.0, '>=',
    ),
    'stt_latency_3s_clip_s': ('the default Whisper path on a 3-4 s clip (fox_in_snow_en.wav, 3.5 s), median seconds', 0.6, '<='),
    'stt_batch8_throughput_ratio': ('faster-whisper clips/s at batch 8 / batch 1 (scales with batch size)', 1.0, '>'),
    'sd_batch_throughput_ratio_c8': ('SD throughput, 8 concurrent clients / sequential', None, '>='),
    'cold_start_s': ('Flow ready after start, weights cached (s)', 20.0, '<='),
}


# ---------------------------------------------------------------- speech to text


def bench_stt(quick: bool) -> dict:
    """Each backend in its own process, so its peak RSS is its own."""
    results = {backend: run_worker(['--stt-worker', backend], quick) for backend in ('faster-whisper', 'openai-whisper')}
    fast, slow = results['faster-whisper'], results['openai-whisper']
    speedup = sum(c['latency_s'] for c in slow['clips']) / sum(c['latency_s'] for c in fast['clips'])
    print_table(
        f'Speech to text: VAD + transcribe (+ translate when not English), after a warm-up, median of 3 runs (--quick and the long clip: 1); '
        f'faster-whisper in its default config (encoder window: {fast["window"]}), openai-whisper with the full 30 s window',
        ['backend', 'clip', 'audio s', 'language', 'translated', 'latency s', 'RTF', 'peak RSS MB'],
        [
            [name, c['clip'], f'{c["audio_s"]:.1f}', c['language'], 'yes' if c['translated'] else 'no',
             f'{c["latency_s"]:.2f}', f'{c["latency_s"] / c["audio_s"]:.2f}', f'{r["peak_rss_mb"]:.0f}']
            for name, r in results.items() for c in r['clips']
        ],
    )
    for name, r in results.items():
        for c in r['clips']:
            print(f'  {name}, {c["clip"]}: {c["text"]!r}')
    print(f'weights: {fast["weights"]} (CTranslate2, int8 on CPU) vs {slow["weights"]} (the same weights converted; fp32 on CPU)')
    scaling = fast['batching']
    print_table(
        f'faster-whisper batched decoding: {scaling[0]["clips"]} short clips (en and de, with translation) in one request',
        ['batch size', 'seconds', 'clips/s', 'vs batch 1'],
        [[r['batch_size'], f'{r["seconds"]:.2f}', f'{r["clips_per_s"]:.2f}', f'{r["clips_per_s"] / scaling[0]["clips_per_s"]:.2f}'] for r in scaling],
    )
    return {
        'backends': results, 'stt_speedup_faster_vs_openai': round(speedup, 2),
        'stt_batch8_throughput_ratio': round(scaling[-1]['clips_per_s'] / scaling[0]['clips_per_s'], 2),
    }


def run_worker(worker_args: list, quick: bool) -> dict:
    """This script run as a worker in a process of its own; the last line it prints is its JSON."""
    run = subprocess.run(
        [sys.executable, __file__, *worker_args] + (['--quick'] if quick else []),
        capture_output=True, text=True, cwd=ROOT, timeout=1800,  # stock openai-whisper: 25 transcribe() calls, some in temperature fallback
    )
    if run.returncode != 0:
        raise RuntimeError(f'worker {" ".join(worker_args)} failed:\n{run.stderr[-3000:]}')
    return json.loads(run.stdout.strip().splitlines()[-1])


def stt_worker(backend: str, quick: bool) -> None:
    from executors.whisper.executor import WhisperExecutor
    from s2i.contracts.documents import SAMPLE_RATE

    # openai-whisper decodes the full 30 s window only; faster-whisper runs the constructor's defaults
    settings = {'encoder_margin': None} if backend == 'openai-whisper' else {}
    whisper = WhisperExecutor(backend=backend, model='base', **settings)
    clips = {path.name: path.read_bytes() for path in CLIPS}
    if not quick:  # a longer recording: the fixed 30 s encoder window matters less
        from faster_whisper.audio import decode_audio

        speech = [decode_audio(str(path), sampling_rate=SAMPLE_RATE) for path in CLIPS]
        silence = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
        clips['en+de x3 (30.5 s)'] = np.concatenate([part for _ in range(3) for s in speech for part in (s, silence)])
    rows = timed_clips(whisper, clips, quick, backend)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scaling = batch_scaling(whisper, clips, quick) if backend == 'faster-whisper' else None
    print(json.dumps({
        'clips': rows, 'peak_rss_mb': peak_mb, 'weights': whisper.backend.model_path, 'batching': scaling,
        'window': str(getattr(whisper.backend, 'window', 'not reported')),
    }))


def transcribe_one(whisper, audio):
    """One document through the executor's endpoint: the file's bytes (decoded inside), or a waveform."""
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

    doc = PromptDoc(tensor=audio) if isinstance(audio, np.ndarray) else PromptDoc(blob=audio)
    return whisper.transcribe(DocList[PromptDoc]([doc]), {})


def timed_clips(whisper, clips: dict, quick: bool, label: str) -> list:
    """After a warm-up on the first clip, each clip's median of 3 (1 with --quick, and for a waveform: the long clip)."""
    from s2i.contracts.documents import SAMPLE_RATE

    answered(transcribe_one(whisper, next(iter(clips.values()))))  # warm-up
    rows = []
    for name, audio in clips.items():
        times = []
        for _ in range(1 if quick or isinstance(audio, np.ndarray) else 3):
            try:
                seconds, (doc,) = timed_answer(lambda: transcribe_one(whisper, audio))
            except DocumentFailed as e:
                raise DocumentFailed(f'{label}, clip {name!r}: {e}') from e
            times.append(seconds)
        rows.append({
            'clip': name, 'audio_s': len(audio) / SAMPLE_RATE if isinstance(audio, np.ndarray) else audio_seconds(audio),
            'latency_s': statistics.median(times), 'language': doc.language,
            'translated': doc.language != 'en',  # the executor translates every other language to English
            'transcript': doc.transcript, 'text': doc.text,
        })
    return rows


def batch_scaling(whisper, clips: dict, quick: bool) -> list:
    """Eight short clips (English and German, so translation too) in one request, at each batch size.

    The sizes take turns, twice over (once with --quick), so a slow spell of a shared machine
    does not land on one size only; each figure is the faster of its runs."""
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

    short = [clips[path.name] for path in CLIPS] * 4
    sizes = (1, 8) if quick else (1, 4, 8)
    runs = {size: [] for size in sizes}
    for _ in range(1 if quick else 2):
        for size in sizes:
            whisper.batch_size = size
            docs = DocList[PromptDoc]([PromptDoc(blob=clip) for clip in short])
            runs[size].append(timed(lambda: whisper.transcribe(docs, {})))
    return [
        {'batch_size': size, 'clips': len(short), 'seconds': min(times), 'clips_per_s': len(short) / min(times)}
        for size, times in runs.items()
    ]


def audio_seconds(blob: bytes) -> float:
    import io

    from faster_whisper.audio import decode_audio

    return len(decode_audio(io.BytesIO(blob))) / 16000


def bench_stt_vs_stock(quick: bool) -> dict:
    """Stock openai-whisper and the project's default Whisper path, each in a process of its own, on the same clips."""
    stock, project = run_worker(['--vs-stock-worker', 'stock'], quick), run_worker(['--vs-stock-worker', 'project'], quick)
    by_clip = {c['clip']: c for c in project['clips']}
    pairs = [(s, by_clip[s['clip']]) for s in stock['clips']]
    stock_s, project_s = (sum(side['latency_s'] for side in sides) for sides in zip(*pairs))
    # Stock falls into temperature fallback on the robotic non-English clips: the English ones alone show the window's share.
    english = [(s, p) for s, p in pairs if p['language'] == 'en']
    stock_en, project_en = (sum(side['latency_s'] for side in sides) for sides in zip(*english))
    print_table(
        f'Speech to English text: stock openai-whisper transcribe(task=\'translate\', fp16=False), the file decoded beforehand '
        f'(not timed), vs the project\'s default Whisper path (WhisperExecutor from config.yml: {project["backend"]}, '
        f'encoder window: {project["window"]}; decoding of the file\'s bytes timed); same weights ({stock["weights"]} '
        f'converted from the bundled CTranslate2 base), after a warm-up, median of 3 per clip (--quick: 1)',
        ['clip', 'audio s', 'language stock / project', 'stock s', 'project s', 'stock / project'],
        [[s['clip'], f'{p["audio_s"]:.1f}', f'{s["language"]} / {p["language"]}', f'{s["latency_s"]:.2f}', f'{p["latency_s"]:.2f}',
          f'{s["latency_s"] / p["latency_s"]:.1f}'] for s, p in pairs]
        + [[f'all {len(pairs)} clips', '', '', f'{stock_s:.2f}', f'{project_s:.2f}', f'{stock_s / project_s:.1f}'],
           [f'the {len(english)} English clips', '', '', f'{stock_en:.2f}', f'{project_en:.2f}', f'{stock_en / project_en:.1f}']],
    )
    for s, p in pairs:
        print(f'  {s["clip"]}\n    stock:   {s["text"]!r}\n    project: {p["text"]!r}')
    return {
        'stt_vs_stock': {'stock': stock, 'project': project},
        'stt_speedup_vs_stock_openai_whisper': round(stock_s / project_s, 2),
        'stt_speedup_vs_stock_openai_whisper_english': round(stock_en / project_en, 2),
        'stt_latency_3s_clip_s': round(by_clip[CLIPS[0].name]['latency_s'], 3),
    }


def stock_comparison_clips() -> list:
    """The two examples and the clips of tests/data that Whisper base understands (files of 3.5-9 s)."""
    data = ROOT / 'tests' / 'data'
    labels = json.loads((data / 'speech_clips.json').read_text())
    return CLIPS + [data / name for name, label in labels.items() if label['base'] == 'understood']


def stock_worker(quick: bool) -> None:
    """openai-whisper as its README uses it: transcribe(task='translate'), every other argument at its default."""
    import whisper

    from executors.whisper.audio import AudioPolicy, decode_bounded
    from s2i.contracts.documents import SAMPLE_RATE
    from s2i.whisper_weights import bundled_openai_checkpoint

    checkpoint = bundled_openai_checkpoint('base')
    model = whisper.load_model(checkpoint, device='cpu')
    clips = {path.name: decode_bounded(path.read_bytes(), AudioPolicy()) for path in stock_comparison_clips()}
    timed_stock(model, CLIPS[0].name, clips[CLIPS[0].name])  # warm-up
    rows = []
    for name, audio in clips.items():
        runs = [timed_stock(model, name, audio) for _ in range(1 if quick else 3)]
        rows.append({
            'clip': name, 'audio_s': len(audio) / SAMPLE_RATE, 'latency_s': statistics.median(seconds for seconds, _ in runs),
            'language': runs[-1][1]['language'], 'text': runs[-1][1]['text'].strip(),
        })
    print(json.dumps({'clips': rows, 'weights': checkpoint}))


def timed_stock(model, name: str, audio: np.ndarray):
    """Seconds that stock transcribe() took, and its result, which must hold text (checked after the clock stopped)."""
    started = time.perf_counter()
    result = model.transcribe(audio, task='translate', fp16=False)
    seconds = time.perf_counter() - started
    if not result['text'].strip():
        raise DocumentFailed(f'stock openai-whisper, clip {name!r}: no text (language {result["language"]})')
    return seconds, result


def project_worker(quick: bool) -> None:
    """The WhisperExecutor as the default deployment configures it: config.yml's settings, the bundled base weights."""
    from jina import Executor

    whisper = Executor.load_config(str(ROOT / 'executors' / 'whisper' / 'config.yml'), uses_with={'model': 'base'})
    clips = {path.name: path.read_bytes() for path in stock_comparison_clips()}
    print(json.dumps({
        'clips': timed_clips(whisper, clips, quick, 'default Whisper path'), 'weights': whisper.backend.model_path,
        'backend': type(whisper.backend).__name__, 'window': str(getattr(whisper.backend, 'window', 'not reported')),
    }))


def bench_stt_accuracy() -> dict:
    """Word error rates with the full window and the default one: bench/stt_accuracy.py --quick, in
    every mode (its full table takes 15 minutes: run that script for it)."""
    import stt_accuracy  # bench/stt_accuracy.py: the folder of the script being run is on the path

    clips = stt_accuracy.make_clips(quick=True)
    summaries = stt_accuracy.report([stt_accuracy.run_setting(*setting, clips) for setting in stt_accuracy.QUICK_SETTINGS])
    full, default = summaries
    return {
        'stt_accuracy': summaries,
        'stt_english_wer_full_window': round(full['english_clips_wer'], 3),
        'stt_english_wer_default_window': round(default['english_clips_wer'], 3),
    }


# ---------------------------------------------------------------- stable diffusion


def bench_sd(quick: bool) -> dict:
    import torch

    from s2i.tiny_sd import write_tiny_pipeline

    on_gpu = torch.cuda.is_available()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results['tiny'] = sd_batch_table('tiny', write_tiny_pipeline(f'{tmp}/tiny'), 256, 8, batch_sizes=(1, 2, 4), repeats=2)
        if quick:
            return results
        sd15 = write_sd15_shaped_pipeline(f'{tmp}/sd15')
        if on_gpu:  # the setting of the H100 target (verdicts): SD 1.5, 512x512, 50 steps
            results['sd15-shaped'] = sd_batch_table('sd15-shaped', sd15, 512, 50, batch_sizes=(1, 2, 4), repeats=3)
        else:  # ~10 s a call on 2 CPU cores: one timed call per cell keeps the bench under 10 minutes
            results['sd15-shaped'] = sd_batch_table('sd15-shaped', sd15, 256, 2, batch_sizes=(1, 2), repeats=1)
    if on_gpu:
        full = results['sd15-shaped']
        results['sd15_512_50steps_s'] = round(full['default/batch1']['s_per_image'], 3)
        results['sd15_low_memory_peak_gib'] = round(full['low_memory/peak_gpu_gib'], 2)
    return results


def sd_batch_table(name: str, path: str, size: int, steps: int, batch_sizes, repeats: int) -> dict:
    import torch

    from executors.stable_diffusion.executor import StableDiffusionExecutor

    on_gpu = torch.cuda.is_available()
    settings = {'default': {}, 'channels_last': {'channels_last': True}, 'fuse_qkv': {'fuse_qkv': True}}
    if on_gpu:  # on the CPU it only slices work that already fits
        settings['low_memory'] = {'low_memory': True}
    rows, figures = [], {}
    for label, setting in settings.items():
        if on_gpu:  # the previous setting's pipeline must be gone, or its memory counts here too
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sd = StableDiffusionExecutor(
            model=path, request_defaults={'width': size, 'height': size, 'steps': steps}, max_num_images=4, **setting,
        )
        for batch in batch_sizes:
            if repeats > 1:  # the first call at a new batch shape pays for kernel selection
                answered(generate_direct(sd, {'num_images': batch, 'seed': 1}), images_each=batch)
            seconds = median_call(partial(generate_direct, sd, {'num_images': batch, 'seed': 1}), repeats, images_each=batch)
            figures[f'{label}/batch{batch}'] = {'s_per_image': seconds / batch, 'images_per_s': batch / seconds}
            rows.append([label, batch, f'{seconds / batch:.3f}', f'{batch / seconds:.2f}'])
        if on_gpu:
            figures[f'{label}/peak_gpu_gib'] = torch.cuda.max_memory_allocated() / 2**30
            for row in rows[-len(batch_sizes):]:
                row.append(f'{figures[f"{label}/peak_gpu_gib"]:.2f}')
        del sd
    header = ['setting', 'batch', 's/image', 'images/s'] + (['peak GPU GiB'] if on_gpu else [])
    print_table(f'Stable Diffusion, {name}: {size}x{size}, {steps} steps, dpm++, CFG 7.5', header, rows)
    return figures


def write_sd15_shaped_pipeline(out_dir: str) -> str:
    """SD 1.5's architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder) with random weights, saved as a
    diffusers folder: bench/gpu/shapes.py's SD 1.5 shape, with the DPM-Solver scheduler as its default."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from gpu.shapes import SD15, random_pipeline  # bench/gpu/shapes.py, beside this file

    pipe = random_pipeline(SD15, 'cpu', torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler(**SD15.scheduler)
    pipe.save_pretrained(out_dir)
    return out_dir


def generate_direct(sd, parameters: dict):
    from docarray import DocList

    from s2i.contracts.documents import PromptDoc

    return sd.generate(DocList[PromptDoc]([PromptDoc(text='a red fox in the snow')]), parameters)


def median_call(call, repeats: int, images_each: int = 0) -> float:
    return statistics.median(timed(call, images_each) for _ in range(repeats))


# ---------------------------------------------------------------- through the Flow


def sd_flow(tiny_dir: str, dynamic_batching: bool, width: int, steps: int):
    """The Stable Diffusion executor behind a gateway: the /text2image path of flow.yml."""
    from jina import Flow

    port = free_port()
    override = {} if dynamic_batching else {
        endpoint: {'use_dynamic_batching': False} for endpoint in ('/generate', '/text2image')
    }
    flow = Flow(protocol='grpc', port=port, host='127.0.0.1').add(
        name='stable_diffusion', uses=str(ROOT / 'executors' / 'stable_diffusion' / 'config.yml'),
        uses_with={'model': tiny_dir, 'request_defaults': {'width': width, 'height': width, 'steps': steps}},
        uses_dynamic_batching=override,
    )
    return flow, f'grpc://127.0.0.1:{port}'


def bench_batching(quick: bool, tiny_dir: str) -> dict:
    """Each request with a seed of its own, as from real clients: the client puts it on the document."""
    from s2i import client

    requests_per_client, clients = (2 if quick else 4), 8
    total = requests_per_client * clients
    figures = {}

    def request(seed: int):
        (doc,) = answered(client.generate(prompts=['a red fox'], parameters={'seed': seed}, host=host), images_each=1)
        return doc

    for batching in (False, True):
        flow, host = sd_flow(tiny_dir, batching, width=256, steps=8)
        with flow:
            request(0)  # warm-up
            started = time.perf_counter()
            for seed in range(total):
                request(seed)
            sequential = total / (time.perf_counter() - started)

            def one_client(index: int):
                return [request(index * requests_per_client + k) for k in range(requests_per_client)]

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                docs = [doc for answered in pool.map(one_client, range(clients)) for doc in answered]
            concurrent = len(docs) / (time.perf_counter() - started)
        figures['on' if batching else 'off'] = {
            'sequential_images_per_s': sequential, 'c8_images_per_s': concurrent, 'ratio': concurrent / sequential,
            'c8_mean_batch_size': statistics.mean(doc.matches[0].batch_size for doc in docs),
        }
    print_table(
        f'Throughput through the Flow: tiny SD 256x256, 8 steps; {total} requests, each with its own seed, '
        f'sequential vs from {clients} concurrent clients',
        ['dynamic batching', 'sequential img/s', 'c8 img/s', 'c8 / sequential', 'c8 images per pipeline call'],
        [[k, f'{v["sequential_images_per_s"]:.2f}', f'{v["c8_images_per_s"]:.2f}', f'{v["ratio"]:.2f}', f'{v["c8_mean_batch_size"]:.2f}']
         for k, v in figures.items()],
    )
    return {'dynamic_batching': figures, 'sd_batch_throughput_ratio_c8': round(figures['on']['ratio'], 2)}


def bench_overhead(quick: bool, tiny_dir: str) -> dict:
    """What the Flow adds to a request: latency through the gateway minus the same work without it.

    Behind the gateway, either a replay of a recorded Stable Diffusion answer (no model time: the
    gateway, serialisation and the loopback network alone; the target's figure), or tiny SD itself
    (measured against the same call in-process; on a small CPU the model, the gateway and the
    client share the cores). In front, either client.Connection (what client.generate() uses
    over gRPC), which keeps its channel open, or Jina's own Client, which opens one per call.
    """
    import base64

    from jina import Flow
    from replay import ReplayExecutor  # bench/replay.py: the folder of the script being run is on the path

    n = 30 if quick else 100
    answer, direct = sd_in_process(tiny_dir, n)
    port = free_port()
    replay = Flow(protocol='grpc', port=port, host='127.0.0.1').add(uses=ReplayExecutor, uses_with={
        'png_base64': base64.b64encode(answer.png).decode(), 'width': answer.width, 'height': answer.height,
        'parameters': answer.parameters,
    })
    behind = {
        'replay': ((replay, f'grpc://127.0.0.1:{port}'), 0.0),
        'tiny SD': (sd_flow(tiny_dir, False, width=64, steps=1), direct),
        'tiny SD, dynamic batching': (sd_flow(tiny_dir, True, width=64, steps=1), direct),
    }
    figures, rows = {'direct_ms_p50': direct * 1000}, []
    for executor, ((flow, host), model_seconds) in behind.items():
        with flow:
            for client_name, figure in overhead_by_client(host, model_seconds, n):
                figures[f'{executor} / {client_name}'] = figure
                rows.append([executor, client_name, *(f'{figure[f"overhead_ms_p{q}"]:.1f}' for q in (50, 95, 99))])
    print_table(
        f'Flow overhead: {n} sequential gRPC requests, one 64x64 image each; latency minus model time '
        f'(tiny SD in-process: p50 {direct * 1000:.1f} ms)',
        ['behind the gateway', 'client', 'p50 ms', 'p95 ms', 'p99 ms'], rows,
    )
    return {
        'overhead': figures,
        'flow_overhead_ms_p50': round(figures['replay / Connection']['overhead_ms_p50'], 2),
        'flow_overhead_ms_p50_jina_client': round(figures['replay / jina Client']['overhead_ms_p50'], 2),
    }


OVERHEAD_PROMPT, OVERHEAD_PARAMETERS = 'a red fox in the snow', {'seed': 1, 'steps': 1, 'guidance_scale': 1.0}


def sd_in_process(tiny_dir: str, n: int):
    """Tiny SD's answer to the overhead request, and its median seconds in-process (no Flow)."""
    from executors.stable_diffusion.executor import StableDiffusionExecutor

    sd = StableDiffusionExecutor(model=tiny_dir, request_defaults={'width': 64, 'height': 64, 'steps': 1})
    (answer,) = answered(generate_direct(sd, OVERHEAD_PARAMETERS), images_each=1)[0].matches
    direct = percentile_ms([timed(partial(generate_direct, sd, OVERHEAD_PARAMETERS), images_each=1) for _ in range(n)], 50) / 1000
    return answer, direct


def overhead_by_client(host: str, model_seconds: float, n: int):
    """(client name, latency percentiles minus ``model_seconds``) for client.Connection and Jina's Client."""
    from docarray import DocList
    from jina import Client

    from s2i import client
    from s2i.contracts.documents import PromptDoc

    with client.Connection(host) as connection:
        jina_client = Client(host=host)
        clients = {
            'Connection': lambda: connection.generate(prompts=[OVERHEAD_PROMPT], parameters=OVERHEAD_PARAMETERS),
            'jina Client': lambda: jina_client.post(
                '/text2image', inputs=DocList[PromptDoc]([PromptDoc(text=OVERHEAD_PROMPT)]), parameters=OVERHEAD_PARAMETERS,
                return_type=DocList[PromptDoc],
            ),
        }
        for client_name, post in clients.items():
            answered(post(), images_each=1)  # warm-up
            latencies = [timed(post, images_each=1) - model_seconds for _ in range(n)]
            yield client_name, {f'overhead_ms_p{q}': percentile_ms(latencies, q) for q in (50, 95, 99)}


def bench_cold_start(tiny_dir: str, whisper_s: float, quick: bool) -> dict:
    """Seconds until the server says it is ready; then one spoken request must get its image through it.

    Then the spoken prompt against the same words typed, through the same Flow: ``whisper_s`` is
    Whisper alone on that clip, in-process (the default path, bench_stt_vs_stock)."""
    from s2i import client

    port = free_port()
    env = {**os.environ, 'S2I_SD_MODEL': tiny_dir, 'S2I_PORT': str(port), 'S2I_HTTP_PORT': str(free_port())}
    server, seconds = started_server(env)
    try:
        with client.Connection(f'grpc://127.0.0.1:{port}') as flow:
            (doc,) = answered(flow.generate(audio_files=[CLIPS[0]], parameters={'seed': 1}), images_each=1)
            spoken_s, typed_s = spoken_vs_typed(flow, doc.text, 3 if quick else 5)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f'\nCold start: `python -m s2i.serve` (faster-whisper base, tiny SD) ready in {seconds:.1f}s; '
          f'then {CLIPS[0].name} got its image ({doc.text!r})')
    print_spoken_vs_typed(doc.text, spoken_s, typed_s, whisper_s, 3 if quick else 5)
    return {
        'cold_start_s': round(seconds, 1), 'spoken_prompt_e2e_s': round(spoken_s, 3), 'typed_prompt_e2e_s': round(typed_s, 3),
        'spoken_prompt_whisper_s': whisper_s, 'spoken_prompt_whisper_share': round(whisper_s / spoken_s, 3),
    }


def started_server(env: dict):
    """``python -m s2i.serve`` with ``env``, once it says it is ready, and the seconds that took."""
    from s2i.serve import READY_LINE

    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, '-m', 's2i.serve'], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:
        if READY_LINE in line:
            threading.Thread(target=server.stdout.read, daemon=True).start()  # keep its pipe from filling up
            return server, time.perf_counter() - started
    server.wait(timeout=60)
    raise RuntimeError('the Flow exited before it was ready')


def print_spoken_vs_typed(text: str, spoken_s: float, typed_s: float, whisper_s: float, repeats: int) -> None:
    print_table(
        f'A spoken prompt ({CLIPS[0].name}) and the same words typed ({text!r}), through the Flow of `python -m s2i.serve` '
        f'(tiny SD, seed 1), taking turns, median of {repeats} after the first request',
        ['what', 'seconds', 'share of spoken'],
        [
            ['spoken prompt end to end (Whisper + the same as below)', f'{spoken_s:.3f}', '100%'],
            ['text prompt end to end (tiny SD at the server\'s defaults + the Flow: gateway, hops, flow.yml\'s other executors)', f'{typed_s:.3f}', f'{typed_s / spoken_s:.0%}'],
            ['what the speech adds through the Flow (spoken - typed)', f'{spoken_s - typed_s:.3f}', f'{(spoken_s - typed_s) / spoken_s:.0%}'],
            ['Whisper alone, in-process (same clip, section above)', f'{whisper_s:.3f}', f'{whisper_s / spoken_s:.0%}'],
        ],
    )


def spoken_vs_typed(flow, text: str, repeats: int):
    """Median seconds of the clip and of ``text``, sent in turns (so a slow spell of a shared machine hits both), one image each."""
    parameters = {'seed': 1}
    spoken = partial(flow.generate, audio_files=[CLIPS[0]], parameters=parameters)
    typed = partial(flow.generate, prompts=[text], parameters=parameters)
    times = [(timed(spoken, images_each=1), timed(typed, images_each=1)) for _ in range(repeats)]
    return tuple(statistics.median(column) for column in zip(*times))


# ---------------------------------------------------------------- reporting


class DocumentFailed(RuntimeError):
    """A timed request was not answered: its time would say how fast the service refuses, not serves."""


def answered(docs, images_each: int = 0):
    """``docs``, once each one is known to be answered: no error, a text, and ``images_each`` images."""
    for doc in docs:
        if doc.error:
            raise DocumentFailed(f'document {doc.id} failed: {doc.error}')
        if not doc.text:
            raise DocumentFailed(f'document {doc.id} came back with no text and no error')
        if len(doc.matches) != images_each:
            raise DocumentFailed(f'document {doc.id} came back with {len(doc.matches)} images, not {images_each}')
    return docs


def timed_answer(call, images_each: int = 0):
    """Seconds that ``call`` took, and the documents it returned, checked (``answered``) after the clock stopped."""
    started = time.perf_counter()
    docs = call()
    seconds = time.perf_counter() - started
    return seconds, answered(docs, images_each)


def timed(call, images_each: int = 0) -> float:
    return timed_answer(call, images_each)[0]


def percentile_ms(seconds, q: int) -> float:
    return float(np.percentile(np.array(seconds) * 1000, q))


def machine() -> dict:
    import importlib.metadata as md

    import torch

    packages = ['torch', 'diffusers', 'transformers', 'jina', 'docarray', 'faster-whisper', 'ctranslate2', 'openai-whisper']
    return {
        'python': platform.python_version(), 'platform': platform.platform(), 'cpus': os.cpu_count(),
        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        'versions': {name: md.version(name) for name in packages},
    }


def verdicts(figures: dict, on_gpu: bool) -> list:
    rows = []
    for key, (what, target, comparison) in TARGETS.items():
        if key == 'sd_batch_throughput_ratio_c8':
            target = 1.4 if on_gpu else 1.0  # project target: >= 1.4x on a GPU, no worse than sequential on a CPU
        value = figures.get(key)
        met = None if value is None else {'<=': value <= target, '>=': value >= target, '>': value > target}[comparison]
        rows.append({'key': key, 'what': what, 'target': f'{comparison} {target}', 'measured': value, 'met': met})
    # Measured only on a GPU (bench_sd). 0.6 s is the project's bar for an H100: the published TensorRT
    # figure for SD 1.5 (alexeigor/sd-benchmarks; eager PyTorch there: 1.00 s).
    gpu_targets = {
        'sd15_512_50steps_s': ('SD 1.5 512x512, 50 steps, batch 1, end to end (s; H100 bar)', 0.6),
        'sd15_low_memory_peak_gib': ('SD 1.5 in low-memory mode, peak GPU memory (GiB)', 4.0),
    }
    for key, (what, target) in gpu_targets.items():
        value = figures.get('sd', {}).get(key)
        rows.append({'key': key, 'what': what, 'target': f'<= {target}', 'measured': value, 'met': None if value is None else value <= target})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='fewer repeats; no full-size SD, no long clip')
    parser.add_argument('--json', type=Path, help='also write the figures here')
    parser.add_argument('--stt-worker', help=argparse.SUPPRESS)
    parser.add_argument('--vs-stock-worker', choices=('stock', 'project'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stt_worker:
        return stt_worker(args.stt_worker, args.quick)
    if args.vs_stock_worker:
        return (stock_worker if args.vs_stock_worker == 'stock' else project_worker)(args.quick)

    # Executors in Flows start in fresh processes: forking after torch has run in this process (the
    # in-process SD tables) can deadlock the child.
    multiprocessing.set_start_method('spawn')
    # A killed bench must still close its Flows: orphaned executors keep Jina's per-class start lock.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit('bench: terminated'))
    started = time.perf_counter()
    info = machine()
    print(f'machine: {info["platform"]}, {info["cpus"]} CPUs, GPU: {info["gpu"] or "none"}; ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()))
    if not info['gpu']:
        print('No GPU: Stable Diffusion runs fp32 on the CPU with random-weight pipelines (tiny and SD 1.5-shaped); images are noise, timings are real.')
    figures = all_sections(args.quick)
    rows = verdicts(figures, info['gpu'] is not None)
    print_table(
        'Targets',
        ['target', 'wanted', 'measured', 'met'],
        [[r['what'], r['target'], '-' if r['measured'] is None else r['measured'], {True: 'yes', False: 'NO', None: 'not measured'}[r['met']]] for r in rows],
    )
    elapsed = time.perf_counter() - started
    print(f'\nbench finished in {elapsed:.0f}s')
    if args.json:
        report = {'machine': info, 'quick': args.quick, 'elapsed_s': round(elapsed, 1), 'targets': rows, **figures}
        args.json.write_text(json.dumps(report, indent=2, default=float) + '\n')
        print(f'wrote {args.json}')


def all_sections(quick: bool) -> dict:
    """Every section's figures, in the order the tables print."""
    from s2i.tiny_sd import write_tiny_pipeline

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = write_tiny_pipeline(f'{tmp}/tiny')
        figures.update(bench_stt(quick))
        figures.update(bench_stt_vs_stock(quick))
        figures.update(bench_stt_accuracy())
        figures['sd'] = bench_sd(quick)
        figures.update(bench_batching(quick, tiny_dir))
        figures.update(bench_overhead(quick, tiny_dir))
        figures.update(bench_cold_start(tiny_dir, figures['stt_latency_3s_clip_s'], quick))
    return figures


if __name__ == '__main__':
    main()
