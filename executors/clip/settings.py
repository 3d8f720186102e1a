"""The CLIP executor's settings: variables S2I_CLIP_<NAME> (and S2I_DEVICE), or its config.yml's ``with:``.

Light on purpose: pydantic only.
"""

from typing import List, Optional

from pydantic import Field, field_validator

from s2i.executor_settings import ModelImageSettings


class ClipSettings(ModelImageSettings, env_prefix='S2I_CLIP_'):
    model: str = Field('openai/clip-vit-large-patch14', description=(
        "any transformers CLIP id or local folder (the default is the CLIP Interrogator's ViT-L/14); "
        'tiny: a tiny random-weight model, loudly'))
    labels: List[str] = Field([], description="/tag's labels when a request gives none; []: requests must give labels")
    label_template: str = Field('a photo of {}', description='how /tag puts a label into words ({} is the label)')
    multi_label_offset: float = Field(0.2, description='/tag multi mode: the cosine similarity that scores 0.5 (a heuristic; tune per model)')
    max_labels: int = Field(1000, ge=1, description='labels per request')
    max_label_chars: int = Field(200, ge=1, description='characters per label')
    label_cache_size: int = Field(32, ge=0, description='label lists whose text embeddings stay in memory (least recently used dropped)')
    batch_size: int = Field(32, ge=1, description='images per CLIP call')
    text_batch_size: int = Field(256, ge=1, description="texts per CLIP call (the interrogator's lists are embedded in these)")
    interrogator_at_startup: bool = Field(True, description=(
        "/interrogate's lists (about 107,000 labels) are embedded once per model and cached under $S2I_CACHE/clip/; "
        'true: at start-up (when the model loads at start), false: at the first /interrogate'))
    max_labels_per_list: Optional[int] = Field(None, ge=1, description=(
        'use only the first N labels of each interrogator list (tests, small machines); null: all (12 with the tiny model)'))

    @field_validator('label_template')
    @classmethod
    def _has_a_place_for_the_label(cls, template: str) -> str:
        if '{}' not in template:
            raise ValueError(f'must contain {{}} where the label goes, got {template!r}')
        return template
