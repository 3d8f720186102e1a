"""The result store's settings: S2I_STORE, variables S2I_STORE_<NAME>, or its config.yml's ``with:``.

Light on purpose: pydantic only.
"""

from typing import Optional

from pydantic import Field

from s2i.executor_settings import ExecutorSettings


class StoreSettings(ExecutorSettings, env_prefix='S2I_STORE_'):
    store: str = Field('results', validation_alias='S2I_STORE', description=(
        'where results go: a folder (relative paths from the working directory at start: results/ beside the '
        'checkout when the Flow starts from the repository root), file:///path, s3://bucket/prefix (any '
        'S3-compatible service, configured the standard AWS way: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, '
        'AWS_REGION, AWS_ENDPOINT_URL), or none (results are not stored)'))
    store_audio: bool = Field(False, validation_alias='S2I_STORE_AUDIO',
                              description="also keep each document's input audio file (input.<ext>), as sent")
    max_age_days: Optional[int] = Field(None, ge=1, description=(
        'local folders: delete date folders older than this, checked at most once an hour; null: keep forever '
        '(for buckets, give the bucket a lifecycle rule instead)'))
