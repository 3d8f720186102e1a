"""Label lists and their CLIP text embeddings: the CLIP Interrogator's lists, cached on disk per
model, and the requests' own label lists, cached in memory.

The lists in data/ are the ``clip-interrogator`` package's (MIT, see data/LICENSE); the
"trending" list and the "by <artist>" / "inspired by <artist>" forms are built as it builds them.
"""

import hashlib
import logging
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from s2i.runtime import cache_dir

DATA = Path(__file__).resolve().parent / 'data'
SITES = [
    'Artstation', 'behance', 'cg society', 'cgsociety', 'deviantart', 'dribble', 'flickr', 'instagram', 'pexels',
    'pinterest', 'pixabay', 'pixiv', 'polycount', 'reddit', 'shutterstock', 'tumblr', 'unsplash', 'zbrush central',
]
# The interrogator's lists, in the order a classic prompt names them.
INTERROGATOR_LISTS = ('mediums', 'artists', 'trendings', 'movements', 'flavors')
CACHE_FORMAT = 1  # bump when what a cache file holds changes, so older files are recomputed

Embed = Callable[[List[str]], torch.Tensor]  # texts -> their unit-length CLIP text embeddings, one row each


def interrogator_labels(max_per_list: Optional[int] = None) -> Dict[str, List[str]]:
    """Each of the CLIP Interrogator's lists by name; each cut to its first ``max_per_list`` labels if given."""
    artists = read_list('artists.txt')
    lists = {
        'mediums': read_list('mediums.txt'),
        'artists': [f'by {name}' for name in artists] + [f'inspired by {name}' for name in artists],
        'trendings': SITES + [f'trending on {site}' for site in SITES] + [f'featured on {site}' for site in SITES]
        + [f'{site} contest winner' for site in SITES],
        'movements': read_list('movements.txt'),
        'flavors': read_list('flavors.txt'),
    }
    return {name: labels[:max_per_list] for name, labels in lists.items()}


def read_list(filename: str) -> List[str]:
    lines = (DATA / filename).read_text(encoding='utf-8').splitlines()
    return [line.strip() for line in lines if line.strip()]


class LabelTable:
    """Labels and their text embeddings (one unit-length row per label), ranked against images."""

    def __init__(self, labels: List[str], embeddings: torch.Tensor):
        self.labels = labels
        self.embeddings = embeddings

    def top(self, image_features: torch.Tensor, count: int) -> List[List[str]]:
        """For each image (a row of ``image_features``), its ``count`` most similar labels, best first."""
        similarity = image_features.to(self.embeddings.dtype) @ self.embeddings.T
        best = similarity.float().topk(min(count, len(self.labels)), dim=-1).indices.tolist()
        return [[self.labels[i] for i in row] for row in best]

    @staticmethod
    def merged(tables: Sequence['LabelTable']) -> 'LabelTable':
        return LabelTable([label for table in tables for label in table.labels],
                          torch.cat([table.embeddings for table in tables]))


def cached_table(name: str, labels: List[str], model_id: str, model_key: str, embed: Embed,
                 logger: logging.Logger) -> Tuple[LabelTable, bool]:
    """``labels`` with their embeddings from the on-disk cache, computed and saved there when the
    file is missing or was made for another model or list; and whether they were computed."""
    path = cache_dir() / 'clip' / slug(model_id) / f'{name}.pt'
    key = hashlib.sha256('\n'.join([f'format {CACHE_FORMAT}', model_key, *labels]).encode()).hexdigest()
    embeddings = _load(path, key, len(labels), logger)
    if embeddings is not None:
        logger.info(f'loaded the embeddings of {len(labels)} {name} from {path}')
        return LabelTable(labels, embeddings), False
    embeddings = embed(labels)
    _save(path, {'key': key, 'embeddings': embeddings.to('cpu', torch.float16)})
    logger.info(f'embedded {len(labels)} {name} and saved them to {path}')
    return LabelTable(labels, embeddings), True


def slug(model_id: str) -> str:
    """A folder name for a model id or path: ``openai/clip-vit-large-patch14`` -> ``openai--clip-vit-large-patch14``."""
    return re.sub(r'[^A-Za-z0-9._-]+', '--', model_id.strip('/')) or 'model'


def model_key(model_id: str, path: str) -> str:
    """What the cached embeddings depend on: the model id, and for a local folder its weights files
    (size and modification time), so that rewritten weights are embedded again."""
    folder = Path(path)
    if not folder.is_dir():
        return model_id
    weights = sorted(p for p in folder.iterdir() if p.suffix in ('.safetensors', '.bin'))
    return '\n'.join([model_id, *(f'{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}' for p in weights)])


def _load(path: Path, key: str, count: int, logger: logging.Logger) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a truncated or foreign file: computed again and overwritten
        logger.warning(f'ignoring the unreadable embedding cache {path}: {type(e).__name__}: {e}')
        return None
    if saved.get('key') != key or tuple(saved['embeddings'].shape[:1]) != (count,):
        return None
    return saved['embeddings']


def _save(path: Path, content: dict) -> None:
    """Written beside its final name and renamed, so another replica never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}-')
    os.close(handle)
    try:
        torch.save(content, staging)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


class LabelCache:
    """The embeddings of recent label lists, least recently used dropped first; keyed by the
    labels and the prompt template they were embedded with."""

    def __init__(self, size: int):
        self.size = size
        self.entries: 'OrderedDict[Tuple[Tuple[str, ...], str], torch.Tensor]' = OrderedDict()

    def get(self, labels: Tuple[str, ...], template: str, embed: Embed) -> torch.Tensor:
        key = (labels, template)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        embeddings = embed([template.replace('{}', label) for label in labels])
        self.entries[key] = embeddings
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return embeddings
