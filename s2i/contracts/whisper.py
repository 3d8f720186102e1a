"""The Whisper executor's request parameters: the one home of their defaults and ranges.

The executor's ``request_defaults`` setting (config.yml) overrides these defaults.
"""

from typing import Optional

from pydantic import Field, field_validator

from s2i.contracts.params import Integer, RequestParams, Text, quote


class TranscriptionParams(RequestParams):
    language: Optional[Text] = Field(None, description="spoken language (ISO 639-1) of every document; none: detected. A document's own wins")
    beam_size: Integer = Field(5, ge=1, le=20, description='beams searched while decoding')

    @field_validator('language')
    @classmethod
    def _iso_639_1(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not (value.isalpha() and 2 <= len(value) <= 3):
            raise ValueError(f'must be an ISO 639-1 code such as "en" or "de", got {quote(value)}')
        return value
