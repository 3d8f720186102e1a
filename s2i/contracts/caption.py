"""The caption executor's request parameters: the one home of their defaults and ranges.

The executor's ``request_defaults`` setting (config.yml) overrides these defaults, e.g.
``{caption_prefix: 'a photograph of'}`` to caption every image conditionally.
"""

from typing import Optional

from pydantic import Field, field_validator

from s2i.contracts.params import Integer, RequestParams, Text

MAX_PREFIX_CHARS = 200  # a caption prefix is a few words; BLIP's text decoder holds 512 tokens in all


class CaptionParams(RequestParams):
    caption_prefix: Optional[Text] = Field(None, description=(
        'conditional captioning: the caption continues this text ("a photograph of"), which it starts with as the '
        'model returns it (BLIP lowercases it); none or blank: an unconditional caption'))
    max_new_tokens: Integer = Field(30, ge=1, le=128, description='tokens generated after the prefix, at most')
    num_beams: Integer = Field(3, ge=1, le=8, description='beam search width; 1: greedy decoding')

    @field_validator('caption_prefix')
    @classmethod
    def _prefix_is_short(cls, prefix: Optional[str]) -> Optional[str]:
        if prefix is None or not prefix.strip():
            return None
        if len(prefix) > MAX_PREFIX_CHARS:
            raise ValueError(f'must be at most {MAX_PREFIX_CHARS} characters, got {len(prefix)}')
        return prefix.strip()
