"""Holding a Stable Diffusion generation at a known denoising step, so that a test acts on a running
generation (a cancel) at a step it chose instead of hoping the work is still going.

The service under test runs as ``python -m tests.step_hooks`` (tests/front_door.py): exactly
``python -m s2i.serve`` (``python -m tests.step_hooks jina executor ...``: ``python -m jina executor
...``), after a forward pre-hook is registered for every torch module of the process. Jina forks its
executors from that process, so the Stable Diffusion executor inherits the hook, and it acts on the
UNet alone: before each UNet pass (one pass per denoising step), it looks
in the folder named by STEP_HOLDS_DIR (tests/conftest.py sets it for the whole session) for

    hold.json   written by ``step_hold``: {"id", "latent": [h, w], "step": k}. The first generation
                whose latents are h x w (its image size / 8: tests give a held generation a size no
                other test uses) is held once k steps are done, before the UNet pass of step k+1
    held.ID     written by the hook while it holds (ID: the hold's id)
    release.ID  written by the test: the generation goes on (the hook also gives up after
                HOLD_LIMIT, so that a failed test never leaves the service stuck)

A generation's step callback runs after its UNet pass, so a generation whose stream closed while it
was held at step k stops at step k+1 (the executor logs "generation cancelled at step k+1/N").
"""

import json
import os
import runpy
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

HOLDS_DIR_VARIABLE = 'STEP_HOLDS_DIR'  # not S2I_*: no setting of the service
HOLD_FILE, HELD_PREFIX, RELEASE_PREFIX = 'hold.json', 'held.', 'release.'
HOLD_LIMIT = 600  # seconds a generation stays held at most
POLL_SECONDS = 0.02
UNET_CLASS_NAME = 'UNet2DConditionModel'  # diffusers' UNet of SD 1.x/2.x, the tiny model's too
LATENT_FACTOR = 8  # SD's VAE: an image of w x h pixels is denoised as latents of w/8 x h/8
HELD_SIZE = (72, 64)  # width, height: the size of the generations tests hold; no other test draws it
# A job that the tests hold while they act on it: held after its first step, because the first step's
# progress event is always sent (later ones at most every PROGRESS_INTERVAL), so the events before the
# hold are known exactly. HELD_JOB is its fields for POST /v1/jobs.
HELD_AT, HELD_STEPS = 1, 10
HELD_JOB = {'n': 1, 'size': f'{HELD_SIZE[0]}x{HELD_SIZE[1]}', 'steps': HELD_STEPS}


class UNetStepHold:
    """The hook's side, in each process of the service: counts the UNet passes of held-size latents."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.hold_id: Optional[str] = None
        self.passes = 0  # UNet passes of the held size since the current hold was armed

    def before_module(self, module, args) -> None:
        if type(module).__name__ != UNET_CLASS_NAME or not args:
            return
        hold = self._current_hold()
        if hold is None or tuple(args[0].shape[-2:]) != tuple(hold['latent']):
            return
        if hold['id'] != self.hold_id:
            self.hold_id, self.passes = hold['id'], 0
        self.passes += 1
        if self.passes == hold['step'] + 1:  # k steps done: this pass is step k+1's
            self._hold_until_released(hold['id'], hold['step'])

    def _current_hold(self) -> Optional[dict]:
        try:
            return json.loads((self.folder / HOLD_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _hold_until_released(self, hold_id: str, step: int) -> None:
        write_whole(self.folder / f'{HELD_PREFIX}{hold_id}', str(step))
        deadline = time.monotonic() + HOLD_LIMIT
        while not (self.folder / f'{RELEASE_PREFIX}{hold_id}').exists() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)


def write_whole(path: Path, text: str) -> None:
    """``text`` in ``path``, all of it or nothing: the other side may read it at any moment."""
    partial = path.with_name(f'{path.name}.partial')
    partial.write_text(text)
    partial.replace(path)


def install_unet_hold(folder: Path) -> None:
    """Register the hold for every module of this process (and the processes it forks)."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    register_module_forward_pre_hook(UNetStepHold(folder).before_module)


class StepHold:
    """The test's side of one hold (see the module's docstring)."""

    def __init__(self, folder: Path, hold_id: str):
        self.held = folder / f'{HELD_PREFIX}{hold_id}'
        self.released = folder / f'{RELEASE_PREFIX}{hold_id}'

    def wait_until_held(self, limit: float = 240) -> int:
        """The step the generation is held at, once it is; fails after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while not self.held.exists():
            assert time.monotonic() < deadline, f'no generation was held within {limit} s'
            time.sleep(POLL_SECONDS)
        return int(self.held.read_text())

    def release(self) -> None:
        self.released.touch()


@contextmanager
def step_hold(size: Tuple[int, int], step: int) -> Iterator[StepHold]:
    """Hold the next generation of ``size`` (width, height) once ``step`` steps are done, in any service
    started as ``python -m tests.step_hooks``; released at the latest when the block ends."""
    folder = Path(os.environ[HOLDS_DIR_VARIABLE])
    width, height = size
    hold = {'id': uuid.uuid4().hex, 'latent': [height // LATENT_FACTOR, width // LATENT_FACTOR], 'step': step}
    write_whole(folder / HOLD_FILE, json.dumps(hold))
    held = StepHold(folder, hold['id'])
    try:
        yield held
    finally:
        held.release()
        (folder / HOLD_FILE).unlink(missing_ok=True)


def main() -> None:
    """``python -m tests.step_hooks [MODULE [ARG...]]``: ``python -m MODULE ARG...`` (s2i.serve by default)
    with the hold installed, when STEP_HOLDS_DIR is set."""
    folder = os.environ.get(HOLDS_DIR_VARIABLE)
    if folder:
        install_unet_hold(Path(folder))
    module, *arguments = sys.argv[1:] or ['s2i.serve']
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
    main()
