"""The quick start: start the Flow, send the example audio, print what was heard, write the images;
then, in a terminal, keep the Flow up for the web page (/ui) until Ctrl-C.

    make demo                                 # or: .venv/bin/python scripts/demo.py
    S2I_SD_MODEL=/models/sd15 make demo       # real weights: a local folder or a hub id

Without Stable Diffusion weights on this machine it runs the tiny random-weight model, and says so.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from executors.stable_diffusion.settings import StableDiffusionSettings
from s2i import cli
from s2i.encoding import read_png_parameters
from s2i.serve import READY_LINE, apply_defaults

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / 'outputs'
EXAMPLES = sorted((ROOT / 'examples').glob('*.wav'))
READY_TIMEOUT_S = 1800  # a first run with real weights downloads several GB
DEFAULT_MODEL = StableDiffusionSettings.model_fields['model'].default


def choose_sd_model() -> str:
    if os.environ.get('S2I_SD_MODEL'):
        return os.environ['S2I_SD_MODEL']
    if sd_weights_cached(DEFAULT_MODEL):
        return DEFAULT_MODEL
    bar = '!' * 78
    print(
        f'{bar}\n!! No Stable Diffusion weights on this machine ({DEFAULT_MODEL} is not in the Hugging Face cache).\n'
        '!! Running with the TINY RANDOM-WEIGHT model: the pipeline is real, THE IMAGES ARE NOISE.\n'
        '!! For real images: S2I_SD_MODEL=<hub id or local folder> make demo  (a GPU is advised)\n'
        f'{bar}',
        flush=True,
    )
    return 'tiny'


def sd_weights_cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, 'model_index.json'), str)


def start_flow(log_path: Path) -> subprocess.Popen:
    print(f'starting the Flow (log: {log_path.relative_to(ROOT)}) ...', flush=True)
    log = open(log_path, 'w')
    return subprocess.Popen([sys.executable, '-m', 's2i.serve'], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_until_ready(server: subprocess.Popen, log_path: Path) -> None:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if server.poll() is not None:
            tail = ''.join(log_path.read_text().splitlines(True)[-30:])
            sys.exit(f'the Flow failed to start; the end of {log_path}:\n{tail}')
        if READY_LINE in log_path.read_text():
            print(f'Flow ready in {time.monotonic() - started:.0f}s', flush=True)
            return
        time.sleep(1)
    sys.exit(f'the Flow was not ready after {READY_TIMEOUT_S}s; see {log_path}')


def stop_flow(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def main() -> int:
    os.environ['S2I_SD_MODEL'] = choose_sd_model()
    apply_defaults()
    OUT.mkdir(exist_ok=True)
    host = f'grpc://127.0.0.1:{os.environ["S2I_PORT"]}'
    page = f'http://127.0.0.1:{os.environ["S2I_HTTP_PORT"]}/ui'
    server = start_flow(OUT / 'flow.log')
    try:
        wait_until_ready(server, OUT / 'flow.log')
        status = cli.main(['--host', host, '--out', str(OUT), *map(str, EXAMPLES)])
        show_parameters_of_newest_image()
        offer_the_page(page)
    finally:
        stop_flow(server)
    return status


def show_parameters_of_newest_image() -> None:
    newest = max(OUT.glob('*.png'), key=lambda p: p.stat().st_mtime, default=None)
    if newest:
        print(f'\n{newest.relative_to(ROOT)} carries its parameters:')
        print(json.dumps(read_png_parameters(newest.read_bytes()), indent=2))


def offer_the_page(page: str) -> None:
    """In a terminal, keep the Flow up for the web page until Ctrl-C; elsewhere (CI, a pipe), say how to get it."""
    if not sys.stdin.isatty():
        print(f'\nThe web page: `make serve`, then open {page}', flush=True)
        return
    token = ' (the token: $S2I_AUTH_TOKEN)' if os.environ.get('S2I_AUTH_TOKEN') else ''
    print(f'\nThe web page is at {page}{token}: record, upload or type there. Ctrl-C stops the Flow.', flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print('stopping the Flow', flush=True)


if __name__ == '__main__':
    sys.exit(main())
