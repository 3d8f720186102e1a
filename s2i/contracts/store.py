"""The result store's request parameters."""

from typing import Optional

from pydantic import Field

from s2i.contracts.params import Integer, RequestParams

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # 604800: the longest lifetime S3's signature version 4 allows


class StoreParams(RequestParams):
    # Lifetime of a presigned HTTPS URL for each stored image (S3 stores only); None: no presigned URL.
    presign_seconds: Optional[Integer] = Field(None, ge=1, le=MAX_PRESIGN_SECONDS)
