"""GPU figures in one call: bash bench/gpu/run.sh --out DIR [--tiny] (see bench/RESULTS.md, "On a GPU").

Stable Diffusion through the project's own pipeline code (executors/stable_diffusion/pipelines.py:
place_pipeline, apply_fast_paths, build_schedulers) on random weights of the real shapes
(bench/gpu/shapes.py), and Whisper large-v3's shape through openai-whisper's torch model. Writes
DIR/bench_gpu.json after every section, so a run stopped at its time limit keeps what it measured.

Every figure is a warm-up call (reported on its own: for a compiled UNet it holds the compile),
then the median of a few calls, each between two torch.cuda.synchronize(). A call that raises
ends its section as failed: no figure is ever the time of a call that errored. A section that
would not finish before the deadline is skipped, and the JSON says so.

--tiny runs small stand-ins of the same architectures on the CPU through the same code: what CI
checks. Its figures are no GPU figures and must never be quoted as such.
"""

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.gpu.shapes import REAL, TINY, random_pipeline
from executors.stable_diffusion.pipelines import apply_fast_paths, build_schedulers, place_pipeline

RESULT_FILE = 'bench_gpu.json'
PROMPT = 'a red fox in the snow, golden hour, highly detailed'
SAMPLE_RATE = 16000  # Hz: Whisper's input
TOKENS_PER_SECOND = 3  # decoder steps per second of audio: English speech runs at about 2-3 words a second
# The Whisper executor's default short encoder window (executors/whisper/backends.py, EncoderWindow()):
# the speech plus 3 s, rounded up to whole seconds, at most the full 30 s. Not imported from there: that
# module needs docarray and PyAV, which the GPU machine lacks. tests/test_bench_gpu.py checks they agree.
WINDOW_MARGIN_S, FULL_FRAMES = 3.0, 3000

log = logging.getLogger('bench.gpu')


def settings_for(tiny: bool, compile_mode: str) -> dict:
    """What each section runs: the real sizes on a GPU, or --tiny's on the CPU."""
    return {
        'tiny': tiny,
        'sd15': {'size': 64 if tiny else 512, 'steps': 2 if tiny else 50, 'guidance_scale': 7.5, 'scheduler': 'dpm++'},
        'sdxl': {'size': 64 if tiny else 1024, 'steps': 2 if tiny else 30, 'guidance_scale': 5.0, 'scheduler': 'dpm++'},
        'turbo': {'size': 64 if tiny else 512, 'steps': [1, 4], 'guidance_scale': 0.0, 'scheduler': 'default'},
        'batch_sizes': [1, 4, 8],
        'repeats': 1 if tiny else 3,  # timed calls after the warm-up; the figure is their median
        'batch_repeats': 1 if tiny else 2,
        'whisper_clips_s': [4, 30],
        'decoder_tokens_per_s': TOKENS_PER_SECOND,
        # --tiny traces the UNet (fullgraph, as on the GPU) without generating code: inductor needs
        # half a minute per model on 2 CPU cores, and its code is torch's, not this project's.
        'compile': {'mode': compile_mode, 'backend': 'eager' if tiny else 'inductor'},
    }


# Each section with the seconds it needs on an H100, about: one that cannot finish before the
# deadline is skipped. In order of what matters most; the long compiles come last.
SECTIONS = {
    'sd15': 30, 'sd15_batch': 45, 'turbo': 30, 'whisper': 25, 'sdxl': 35,
    'sd15_low_memory': 25, 'sd15_compiled': 120, 'sdxl_compiled': 180,
}


class Bench:
    def __init__(self, out: Path, tiny: bool, budget_s: float, compile_mode: str):
        self.out = out
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        self.dtype = torch.float16 if self.device.type == 'cuda' else torch.float32
        self.shapes = TINY if tiny else REAL
        self.settings = settings_for(tiny, compile_mode)
        self.report = {
            'machine': machine(self.device), 'settings': {**self.settings, 'dtype': str(self.dtype), 'budget_s': budget_s},
            'sections': {}, 'complete': False,
        }

    # ---------------------------------------------------------------- running and recording

    def run(self, names) -> dict:
        for name in names:
            left = self.deadline - time.monotonic()
            needs = 0 if self.settings['tiny'] else SECTIONS[name]
            if left < needs or left <= 0:
                self.record(name, {'status': 'skipped', 'reason': f'time: {max(left, 0):.0f} s left before the deadline, needs about {needs} s'})
                continue
            result = {'status': 'started'}  # what a run stopped during this section leaves in the JSON
            self.record(name, result)
            log.info(f'section {name}: started, {left:.0f} s left')
            try:
                getattr(self, name)(result)
                result['status'] = 'measured'
            except Exception as e:
                log.error(f'section {name} failed', exc_info=True)
                result.update(status='failed', reason=f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}')
            finally:
                free_memory()
            self.record(name, result)
        self.report['complete'] = all(s['status'] == 'measured' for s in self.report['sections'].values())
        self.write()
        return self.report

    def record(self, name: str, result: dict) -> None:
        self.report['sections'][name] = result
        self.write()

    def write(self) -> None:
        self.report['elapsed_s'] = round(time.monotonic() - self.started, 1)
        staging = self.out / f'.{RESULT_FILE}.tmp'
        staging.write_text(json.dumps(self.report, indent=2) + '\n')
        staging.replace(self.out / RESULT_FILE)  # whole or not at all, even if the run is killed

    def timed_calls(self, call, repeats: int, images: int = 1) -> dict:
        """The warm-up call's seconds, then the median of ``repeats`` calls, and the peak GPU memory."""
        reset_peak_memory()
        first = self.seconds(call)
        runs = [self.seconds(call) for _ in range(repeats)]
        median = statistics.median(runs)
        return {
            'first_call_s': round(first, 4), 'median_s': round(median, 4), 'runs_s': [round(r, 4) for r in runs],
            'images_per_s': round(images / median, 3), 'peak_gpu_gib': peak_memory_gib(),
        }

    def seconds(self, call) -> float:
        synchronize()
        started = time.perf_counter()
        call()
        synchronize()
        return time.perf_counter() - started

    # ---------------------------------------------------------------- Stable Diffusion

    def pipeline(self, shape_key: str, low_memory: bool = False):
        pipe = random_pipeline(self.shapes[shape_key], 'cpu' if low_memory else self.device, self.dtype)
        place_pipeline(pipe, self.device, low_memory, log)
        return pipe

    def generation(self, pipe, which: str, batch: int = 1, steps=None):
        """One call as the executor makes it: its scheduler, CPU generators, PIL images out."""
        setting = self.settings[which]
        scheduler = build_schedulers(pipe)[setting['scheduler']]
        steps = steps or setting['steps']

        def call():
            pipe.scheduler = scheduler
            with torch.inference_mode():
                images = pipe(
                    prompt=[PROMPT] * batch, num_inference_steps=steps, guidance_scale=setting['guidance_scale'],
                    width=setting['size'], height=setting['size'],
                    generator=[torch.Generator('cpu').manual_seed(seed) for seed in range(batch)],
                ).images
            if len(images) != batch:
                raise RuntimeError(f'{len(images)} images for a batch of {batch}')
        return call

    def fast_paths(self, pipe, channels_last=False, fuse_qkv=False, compile_unet=False) -> None:
        compile_options = self.settings['compile']
        apply_fast_paths(pipe, channels_last, fuse_qkv, compile_unet, log,
                         compile_mode=compile_options['mode'], compile_backend=compile_options['backend'])

    def sd15(self, result: dict) -> None:
        """Eager with SDPA, then each fast path added on top of the last (one pipeline, as a deployment turns them on)."""
        pipe = self.pipeline('sd15')
        result['eager'] = self.timed_calls(self.generation(pipe, 'sd15'), self.settings['repeats'])
        self.fast_paths(pipe, channels_last=True)
        result['channels_last'] = self.timed_calls(self.generation(pipe, 'sd15'), self.settings['repeats'])
        self.fast_paths(pipe, fuse_qkv=True)
        result['channels_last+fused_qkv'] = self.timed_calls(self.generation(pipe, 'sd15'), self.settings['repeats'])

    def sd15_batch(self, result: dict) -> None:
        """Images per second at each batch size, eager: what dynamic batching buys inside the pipeline."""
        pipe = self.pipeline('sd15')
        for batch in self.settings['batch_sizes']:
            result[f'batch{batch}'] = self.timed_calls(self.generation(pipe, 'sd15', batch), self.settings['batch_repeats'], images=batch)
        first, last = self.settings['batch_sizes'][0], self.settings['batch_sizes'][-1]
        result[f'batch{last}_vs_batch{first}'] = round(result[f'batch{last}']['images_per_s'] / result[f'batch{first}']['images_per_s'], 2)

    def sd15_low_memory(self, result: dict) -> None:
        """place_pipeline(low_memory=True): attention slicing, VAE slicing and tiling, model CPU offload."""
        pipe = self.pipeline('sd15', low_memory=True)
        result['low_memory'] = self.timed_calls(self.generation(pipe, 'sd15'), 1)

    def sd15_compiled(self, result: dict) -> None:
        """Every fast path, the UNet compiled: the warm-up holds the compile."""
        pipe = self.pipeline('sd15')
        self.fast_paths(pipe, channels_last=True, fuse_qkv=True, compile_unet=True)
        result['compiled'] = with_compile_time(self.timed_calls(self.generation(pipe, 'sd15'), self.settings['repeats']))

    def sdxl(self, result: dict) -> None:
        pipe = self.pipeline('sdxl')
        result['eager'] = self.timed_calls(self.generation(pipe, 'sdxl'), self.settings['repeats'])

    def sdxl_compiled(self, result: dict) -> None:
        pipe = self.pipeline('sdxl')
        self.fast_paths(pipe, channels_last=True, fuse_qkv=True, compile_unet=True)
        result['compiled'] = with_compile_time(self.timed_calls(self.generation(pipe, 'sdxl'), self.settings['repeats']))

    def turbo(self, result: dict) -> None:
        """SD-Turbo and SDXL-Turbo shapes: 1 and 4 steps, no classifier-free guidance, the model's own scheduler."""
        for key in ('sd_turbo', 'sdxl_turbo'):
            pipe = self.pipeline(key)
            result[key] = {
                f'steps{steps}': self.timed_calls(self.generation(pipe, 'turbo', steps=steps), self.settings['repeats'])
                for steps in self.settings['turbo']['steps']
            }
            del pipe
            free_memory()

    # ---------------------------------------------------------------- Whisper

    def whisper(self, result: dict) -> None:
        """Encoder and decoder of Whisper large-v3's shape, fp16, for each clip length with the
        executor's short encoder window and with the full 30 s one."""
        model, tokenizer = whisper_model(self.shapes['whisper'], self.device, self.dtype)
        result['model'] = 'openai-whisper Whisper, large-v3 dimensions' if not self.settings['tiny'] else 'openai-whisper Whisper, tiny dimensions'
        for seconds in self.settings['whisper_clips_s']:
            samples = seconds * SAMPLE_RATE
            tokens = math.ceil(seconds * TOKENS_PER_SECOND)
            clip = {}
            for window, frames in (('short_window', short_window_frames(samples)), ('full_window', FULL_FRAMES)):
                mel = torch.randn(1, model.dims.n_mels, frames, device=self.device, dtype=self.dtype)
                with torch.inference_mode(), encoder_window(model.encoder, frames):
                    encoder = self.timed_calls(lambda: model.encoder(mel), self.settings['repeats'])
                    features = model.encoder(mel)
                    decoder = self.timed_calls(lambda: greedy_decode(model, features, tokenizer, tokens), self.settings['repeats'])
                clip[window] = {
                    'frames': frames, 'encoder_s': encoder['median_s'], 'decoder_s': decoder['median_s'], 'decoder_tokens': tokens,
                    'decoder_ms_per_token': round(1000 * decoder['median_s'] / tokens, 3),
                    'encoder_first_call_s': encoder['first_call_s'], 'peak_gpu_gib': max_or_none(encoder['peak_gpu_gib'], decoder['peak_gpu_gib']),
                }
            result[f'clip{seconds}s'] = {'samples': samples, **clip}


def short_window_frames(samples: int) -> int:
    seconds = math.ceil(samples / SAMPLE_RATE + WINDOW_MARGIN_S)
    return min(math.ceil(seconds * 100 / 2) * 2, FULL_FRAMES)  # 100 mel frames a second, an even count


@contextmanager
def encoder_window(encoder, frames: int):
    """openai-whisper's encoder takes exactly 30 s (it asserts the input matches its positional
    embedding); a shorter window uses the first frames/2 positions, as whisper.cpp's audio_ctx and
    the CTranslate2 encoder do."""
    full = encoder.positional_embedding
    encoder.positional_embedding = full[: frames // 2]
    try:
        yield
    finally:
        encoder.positional_embedding = full


def whisper_model(dims: dict, device, dtype):
    """openai-whisper's torch model with random weights, and its tokenizer (bundled with the package)."""
    with numba_stand_in():
        from whisper.model import ModelDimensions, Whisper
        from whisper.tokenizer import get_tokenizer
    torch.manual_seed(0)
    with torch.device(device):
        model = Whisper(ModelDimensions(**dims)).to(dtype).eval()
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language='en', task='transcribe')
    return model, tokenizer


@contextmanager
def numba_stand_in():
    """whisper/__init__.py imports whisper.transcribe, which imports whisper.timing, which imports
    numba for word timestamps (DTW), which this bench never asks for. numba and llvmlite are ~45 MB
    of binary wheels, tied to numpy's version: more than the GPU call can carry. Where numba is
    missing, a stand-in whose ``jit`` leaves a function as it is lets whisper import; it is taken
    out of sys.modules again afterwards, so nothing else mistakes it for numba."""
    if importlib.util.find_spec('numba') is not None:
        yield
        return
    stand_in = types.ModuleType('numba')
    stand_in.jit = lambda *args, **kwargs: (lambda function: function)
    before = sys.modules.get('numba', stand_in)
    sys.modules['numba'] = stand_in
    try:
        yield
    finally:
        if before is stand_in:
            del sys.modules['numba']
        else:
            sys.modules['numba'] = before


def greedy_decode(model, features, tokenizer, tokens: int):
    """``tokens`` greedy steps with the key/value cache, as whisper.decoding does (a fixed count:
    random weights would stop at an arbitrary end-of-text)."""
    cache, hooks = model.install_kv_cache_hooks()
    try:
        prompt = torch.tensor([list(tokenizer.sot_sequence_including_notimestamps)], device=features.device)
        logits = model.decoder(prompt, features, kv_cache=cache)
        for _ in range(tokens - 1):
            logits = model.decoder(logits[:, -1].argmax(-1, keepdim=True), features, kv_cache=cache)
    finally:
        for hook in hooks:
            hook.remove()


# ---------------------------------------------------------------- the machine


def machine(device) -> dict:
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    on_gpu = device.type == 'cuda'
    return {
        'gpu': torch.cuda.get_device_name(device) if on_gpu else None,  # None: not a GPU run, no GPU figures
        'gpu_memory_gib': round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if on_gpu else None,
        'device': device.type, 'cuda': torch.version.cuda, 'python': platform.python_version(),
        'platform': platform.platform(), 'cpus': os.cpu_count(),
        'versions': {name: version(name) for name in ('torch', 'diffusers', 'transformers', 'accelerate', 'openai-whisper', 'numpy')},
    }


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib():
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def free_memory() -> None:
    """The previous section's models gone, so their memory does not count in the next one's peak."""
    torch._dynamo.reset()  # a compiled UNet's code and guards hold on to it
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def max_or_none(*values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def with_compile_time(figures: dict) -> dict:
    # The first call compiles, then runs once: the compile is what it took beyond a steady call.
    return {**figures, 'compile_s': round(figures['first_call_s'] - figures['median_s'], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=True, help=f'folder for {RESULT_FILE}')
    parser.add_argument('--tiny', action='store_true', help='small stand-in shapes and few steps: the CPU check of CI')
    parser.add_argument('--budget-s', type=float, default=420, help='seconds from the start; sections that would end later are skipped')
    parser.add_argument('--compile-mode', default='default',
                        help="torch.compile mode for the compiled sections; the executor's own is 'max-autotune-no-cudagraphs', "
                             'whose autotuning takes many minutes per model (default: %(default)s)')
    parser.add_argument('--sections', default=','.join(SECTIONS), help='comma-separated, in this order: %(default)s')
    args = parser.parse_args()
    names = [name.strip() for name in args.sections.split(',') if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f'no section {", ".join(unknown)}; the sections are {", ".join(SECTIONS)}')
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s', stream=sys.stdout)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.out, args.tiny, args.budget_s, args.compile_mode)
    log.info(f'machine: {json.dumps(bench.report["machine"])}')
    report = bench.run(names)
    log.info(f'sections: {json.dumps({name: s["status"] for name, s in report["sections"].items()})}')
    log.info(f'wrote {args.out / RESULT_FILE} in {report["elapsed_s"]:.0f} s')


if __name__ == '__main__':
    main()
