"""The CLIP executor's request parameters: the one home of their defaults and ranges.

The executor's ``request_defaults`` setting (config.yml) overrides these defaults; its
``max_labels`` and ``max_label_chars`` settings narrow them further (``check_limits``).

``num_images`` is also a Stable Diffusion key, with the same meaning: the images each prompt
gets back. Stable Diffusion draws ``best_of`` candidates when asked; ``/rank`` keeps the
``num_images`` best of them. Configure the same default on both executors.
"""

from typing import Annotated, List, Literal, Optional

from pydantic import Field, field_validator

from s2i.contracts.params import Integer, Number, ParameterError, RequestParams, Text, quote

TagMode = Literal['single', 'multi']  # single: softmax over the labels (one is right); multi: a sigmoid per label
InterrogateMode = Literal['fast', 'classic']  # the CLIP Interrogator's two cheap modes
CLASSIC_FLAVORS, FAST_FLAVORS = 3, 32  # the CLIP Interrogator's flavour counts per mode


class ClipParams(RequestParams):
    labels: Optional[List[Text]] = Field(None, description="/tag: the labels to choose from; none: the executor's configured labels")
    tag_mode: TagMode = Field('single', description='/tag: single, a softmax over the labels (one is right); multi, a sigmoid per label')
    threshold: Number = Field(0.5, ge=0, le=1, description='/tag in multi mode: labels scoring at or below it are left out')
    top_k: Integer = Field(5, ge=1, description='/tag: at most this many tags per image, best first')
    interrogate_mode: InterrogateMode = Field('classic', description="/interrogate: the CLIP Interrogator's mode")
    flavors: Optional[Annotated[Integer, Field(ge=1, le=64)]] = Field(
        None, description='/interrogate: flavours added; none: 3 in classic mode, 32 in fast')
    num_images: Integer = Field(1, ge=1, description='/rank: images kept per document, the best scored first')

    @field_validator('labels')
    @classmethod
    def _labels_are_distinct_and_not_blank(cls, labels: Optional[List[str]]) -> Optional[List[str]]:
        if labels is None:
            return labels
        if not labels:
            raise ValueError('must hold at least one label')
        blank = [i for i, label in enumerate(labels) if not label.strip()]
        if blank:
            raise ValueError(f'must not hold blank labels (at position {blank[0]})')
        seen = set()
        for label in labels:
            if label in seen:
                raise ValueError(f'must not repeat a label, got {quote(label)} twice')
            seen.add(label)
        return labels

    def flavor_count(self) -> int:
        if self.flavors is not None:
            return self.flavors
        return CLASSIC_FLAVORS if self.interrogate_mode == 'classic' else FAST_FLAVORS

    def check_limits(self, max_labels: int, max_label_chars: int) -> None:
        """The executor's own limits, from its configuration."""
        if self.labels is None:
            return
        if len(self.labels) > max_labels:
            raise ParameterError(f'labels must hold at most {max_labels} labels (max_labels), got {len(self.labels)}', param='labels')
        longest = max(self.labels, key=len)
        if len(longest) > max_label_chars:
            raise ParameterError(
                f'labels must each be at most {max_label_chars} characters (max_label_chars), got {quote(longest)}',
                param='labels')
