"""A tiny random-weight Stable Diffusion pipeline, for checking wiring without downloading weights.

Its images are noise. Everything that uses it says so: the executor logs a warning at start-up
and every image carries ``parameters["warning"]``.

    python -m s2i.tiny_sd OUT_DIR   # write it as a diffusers folder; S2I_SD_MODEL=OUT_DIR uses it
"""

import json
import sys
import tempfile
from pathlib import Path

from s2i.runtime import built_once

TINY_MODEL_NAME = 'tiny'  # S2I_SD_MODEL value that selects this pipeline
TINY_MARKER_FILE = 'S2I_TINY_RANDOM_WEIGHTS'  # in every folder holding a tiny model (SD here; CLIP, BLIP too)
TINY_WARNING = 'tiny random-weight test model: this image is noise, not a generation'
TINY_VERSION = 2  # bump when the architecture changes, so cached copies are rebuilt


def is_tiny_model(path: str) -> bool:
    """Whether ``path`` holds a tiny random-weight model this package wrote (SD, CLIP or BLIP)."""
    return (Path(path) / TINY_MARKER_FILE).is_file()


def mark_tiny(folder: str, warning: str) -> str:
    """Mark ``folder`` as a tiny random-weight model (the marker holds what it is good for)."""
    (Path(folder) / TINY_MARKER_FILE).write_text(warning + '\n')
    return folder


def write_tiny_pipeline(out_dir: str, seed: int = 0) -> str:
    """Build the tiny pipeline with weights drawn from ``seed`` and save it to ``out_dir``."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)  # the parts draw their weights in this order: UNet, VAE, text encoder
    unet, vae, text_encoder = tiny_unet(), tiny_vae(), tiny_text_encoder()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', num_train_timesteps=1000, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=byte_level_clip_tokenizer(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    return mark_tiny(out_dir, TINY_WARNING)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'), up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=32, norm_num_groups=16,
    )


def tiny_vae():
    """Four blocks give the VAE the factor-8 downsampling of real SD, so sizes behave the same."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 16, 16, 16), in_channels=3, out_channels=3,
        down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
        latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=512,  # as SD 1.5's VAE: tiled decoding (low-memory mode) starts above 512 px
    )


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, vocab_size=1000, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5,
    ))


def tiny_pipeline_dir() -> str:
    """The tiny pipeline in the cache folder, written on first use (same weights every time)."""
    return built_once(f'tiny-sd-v{TINY_VERSION}', write_tiny_pipeline, is_tiny_model)


def byte_level_clip_tokenizer():
    """A CLIP tokenizer with only the 256 byte-level symbols and no merges: no download needed."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = symbols + [s + '</w>' for s in symbols] + ['<|startoftext|>', '<|endoftext|>']
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / 'vocab.json').write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        (Path(tmp) / 'merges.txt').write_text('#version: 0.2\n')
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def _byte_symbols() -> list:
    """GPT-2/CLIP's printable stand-in for each of the 256 byte values, in byte order."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[byte] = chr(byte)
        else:
            stand_ins[byte] = chr(256 + extra)
            extra += 1
    return [stand_ins[b] for b in range(256)]


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m s2i.tiny_sd OUT_DIR')
    print(f'wrote {write_tiny_pipeline(sys.argv[1])}  ({TINY_WARNING})')
