"""The parameters of a hypothetical new executor: its own keys, in its own folder."""

from pydantic import Field

from s2i.contracts.params import RequestParams, Text


class StyleParams(RequestParams):
    style: Text = Field('', max_length=200)  # appended to every prompt, e.g. ", oil painting"
