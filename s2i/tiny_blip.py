"""A tiny random-weight BLIP captioning model, for checking wiring without downloading weights.

Its captions are noise. Everything that uses it says so: the caption executor logs a warning at
start-up. It is a transformers ``BlipForConditionalGeneration`` with a ``BlipProcessor``, written to
a folder with ``save_pretrained`` and read back through ``AutoModelForImageTextToText`` and
``AutoProcessor``: the same path a hub id (``Salesforce/blip-image-captioning-large``) takes.

The tokenizer is BERT-style, as BLIP's, with a vocabulary this module writes: the special tokens
BLIP needs, then one token per lowercase letter, digit and ASCII punctuation mark, each also as a
word-continuing ``##`` piece. Any ASCII text therefore tokenizes without [UNK] and decodes back to
itself (lowercased), so a conditional caption's prefix survives the round trip as it does with BLIP.
The output layer never picks a special token: every caption is ``max_new_tokens`` pieces long.

    python -m s2i.tiny_blip OUT_DIR   # write it as a transformers folder; S2I_CAPTION_MODEL=OUT_DIR uses it
"""

import string
import sys
import tempfile
from pathlib import Path

from s2i.runtime import built_once
from s2i.tiny_sd import is_tiny_model, mark_tiny

TINY_BLIP_NAME = 'tiny'  # S2I_CAPTION_MODEL value that selects this model
TINY_BLIP_WARNING = 'tiny random-weight test model: its captions are noise'
TINY_BLIP_VERSION = 1  # bump when the architecture changes, so cached copies are rebuilt
IMAGE_SIZE = 32  # pixels per side the tiny vision tower sees
HIDDEN_SIZE = 32  # both towers' width (the text decoder attends to the vision tower's output)
INIT_RANGE = 0.2  # weights' spread; BLIP's 0.02 leaves tiny towers deaf to the image: every caption the same
# BERT's specials first (as bert-base-uncased numbers them: [PAD] 0 ... ), BLIP's decoder start last.
SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
DECODER_START, ENCODER_START = '[DEC]', '[ENC]'  # BLIP's bos token and its image-grounded encoder token


def tiny_vocabulary() -> list:
    """The tokens, in id order: the specials, every single character, every ``##`` piece, [DEC], [ENC]."""
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    return [*SPECIAL_TOKENS, *characters, *(f'##{c}' for c in characters), DECODER_START, ENCODER_START]


def write_tiny_blip(folder: str, seed: int = 0) -> str:
    """Build the tiny BLIP model with weights drawn from ``seed`` and save it, with its processor, to ``folder``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = tiny_vocabulary()
    ids = {token: i for i, token in enumerate(vocab)}
    text_config = dict(
        vocab_size=len(vocab), hidden_size=HIDDEN_SIZE, encoder_hidden_size=HIDDEN_SIZE, intermediate_size=37,
        projection_dim=HIDDEN_SIZE, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
        pad_token_id=ids['[PAD]'], sep_token_id=ids['[SEP]'], eos_token_id=ids['[SEP]'], bos_token_id=ids[DECODER_START],
        initializer_range=INIT_RANGE,
    )
    vision_config = dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=HIDDEN_SIZE, intermediate_size=37, projection_dim=HIDDEN_SIZE,
        num_hidden_layers=2, num_attention_heads=4, initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=HIDDEN_SIZE)
    )
    with torch.no_grad():  # random weights end captions at random; never: every caption has max_new_tokens pieces
        model.text_decoder.cls.predictions.bias[[ids[token] for token in (*SPECIAL_TOKENS, DECODER_START, ENCODER_START)]] = -1e4
    image_processor = BlipImageProcessor(size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE})
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=_bert_tokenizer(vocab)).save_pretrained(folder)
    return mark_tiny(folder, TINY_BLIP_WARNING)


def tiny_blip_dir() -> str:
    """The tiny model in the cache folder, written on first use (same weights every time)."""
    return built_once(f'tiny-blip-v{TINY_BLIP_VERSION}', write_tiny_blip, is_tiny_model)


def _bert_tokenizer(vocab: list):
    """BLIP's tokenizer (bert-base-uncased's, with [DEC] as its bos token) over ``vocab``: no download needed."""
    from transformers import BertTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
        return BertTokenizer.from_pretrained(
            tmp, do_lower_case=True, bos_token=DECODER_START, additional_special_tokens=[ENCODER_START],
            model_max_length=512,
        )


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m s2i.tiny_blip OUT_DIR')
    print(f'wrote {write_tiny_blip(sys.argv[1])}  ({TINY_BLIP_WARNING})')
