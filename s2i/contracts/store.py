"""The result store's request parameters."""

from typing import Annotated, Optional

from pydantic import Field

from s2i.contracts.params import Integer, RequestParams

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # 604800: the longest lifetime S3's signature version 4 allows


class StoreParams(RequestParams):
    presign_seconds: Optional[Annotated[Integer, Field(ge=1, le=MAX_PRESIGN_SECONDS)]] = Field(
        None, description='lifetime of a presigned HTTPS URL for each stored image (S3 stores only); none: no presigned URL')
