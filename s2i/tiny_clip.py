"""A tiny random-weight CLIP model, for checking wiring without downloading weights.

Its scores are noise. Everything that uses it says so: the CLIP executor logs a warning at
start-up. It is a transformers ``CLIPModel`` with a ``CLIPProcessor``, written to a folder with
``save_pretrained`` and read back with ``from_pretrained``: the same path a hub id takes.

Why transformers' CLIPModel and not open_clip: transformers is already a dependency (Stable
Diffusion's text encoder, Whisper), and it loads a hub id (``openai/clip-vit-large-patch14``, the
CLIP Interrogator's ViT-L/14) and a local folder the same way, so this tiny model exercises the
real loading code. open_clip would be one more package whose models load by another route.

    python -m s2i.tiny_clip OUT_DIR   # write it as a transformers folder; S2I_CLIP_MODEL=OUT_DIR uses it
"""

import sys

from s2i.runtime import built_once
from s2i.tiny_sd import byte_level_clip_tokenizer, is_tiny_model, mark_tiny

TINY_CLIP_NAME = 'tiny'  # S2I_CLIP_MODEL value that selects this model
TINY_CLIP_WARNING = 'tiny random-weight test model: its scores, tags and prompts are noise'
TINY_CLIP_VERSION = 1  # bump when the architecture changes, so cached copies are rebuilt
IMAGE_SIZE = 32  # pixels per side the tiny vision tower sees
EMBEDDING_SIZE = 16  # projection_dim: the size of the shared image/text embedding


def write_tiny_clip(folder: str, seed: int = 0) -> str:
    """Build the tiny CLIP model with weights drawn from ``seed`` and save it, with its processor, to ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    # The tokenizer is byte-level (256 symbols, each with and without "</w>", then the two specials):
    # 514 tokens, the last one end-of-text, which CLIP pools its text embedding from.
    tokenizer = byte_level_clip_tokenizer()
    text_config = dict(
        vocab_size=len(tokenizer), bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
        pad_token_id=len(tokenizer) - 1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77,
    )
    vision_config = dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=EMBEDDING_SIZE))
    image_processor = CLIPImageProcessor(
        size={'shortest_edge': IMAGE_SIZE}, crop_size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE}
    )
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return mark_tiny(folder, TINY_CLIP_WARNING)


def tiny_clip_dir() -> str:
    """The tiny model in the cache folder, written on first use (same weights every time)."""
    return built_once(f'tiny-clip-v{TINY_CLIP_VERSION}', write_tiny_clip, is_tiny_model)


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m s2i.tiny_clip OUT_DIR')
    print(f'wrote {write_tiny_clip(sys.argv[1])}  ({TINY_CLIP_WARNING})')
