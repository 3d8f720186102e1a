"""The caption executor's settings: variables S2I_CAPTION_<NAME> (and S2I_DEVICE), or its config.yml's ``with:``.

Light on purpose: pydantic only.
"""

from pydantic import Field

from s2i.executor_settings import ModelImageSettings


class CaptionSettings(ModelImageSettings, env_prefix='S2I_CAPTION_'):
    model: str = Field('Salesforce/blip-image-captioning-large', description=(
        'any transformers image-to-text id or local folder that AutoModelForImageTextToText and AutoProcessor load; '
        'tiny: a tiny random-weight BLIP, loudly'))
    batch_size: int = Field(16, ge=1, description='images per generate call; a failed call is retried one image at a time')
