"""The generation fields of /v1/images/generations, /v1/images/edits and /v1/jobs (OpenAI's ``n`` and
``size``, and this service's extras) as the Flow's request parameters, checked before any work: a bad
value is a 400 naming the field the client sent."""

import re
from typing import Any, Dict, Mapping, Optional, get_args

from s2i.contracts.stable_diffusion import GenerationParams, RestyleParams
from gateway.errors import APIError
from gateway.limits import unsendable
from s2i.contracts.params import ParameterError, quote

EXTRAS = ('seed', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler', 'best_of')  # ours, beside OpenAI's fields
RESTYLE_EXTRAS = tuple(sorted(RestyleParams.keys() - GenerationParams.keys()))  # /restyle's own keys (strength)
URL_SECONDS = 3600  # response_format url: presigned URLs (S3 stores) last an hour, as OpenAI's image URLs do
SIZE = re.compile(r'([0-9]{1,6})x([0-9]{1,6})')  # ASCII digits only: str.isdigit() also takes '²' and '٣'
FIELD_OF = {'width': 'size', 'height': 'size', 'num_images': 'n'}  # the executor's key -> the field the client sent


def generation_parameters(n: Optional[int], size: Optional[str], extras: Mapping[str, Any],
                          restyle: bool = False) -> Dict[str, Any]:
    """``num_images``, ``width``, ``height`` and the extras given, checked against the executor's own
    parameter model: text-to-image's, or with ``restyle`` image-to-image's (its configured limits, such
    as max_pixels, are checked where it runs)."""
    accepted, model = (EXTRAS + RESTYLE_EXTRAS, RestyleParams) if restyle else (EXTRAS, GenerationParams)
    unknown = sorted(set(extras) - set(accepted))
    if unknown:
        raise APIError(400, f'unknown field(s) {", ".join(map(quote, unknown))}; besides OpenAI\'s fields this service '
                       f'takes {", ".join(accepted)}', param=unknown[0])
    parameters = {key: value for key, value in extras.items() if value is not None}
    if n is not None:
        parameters['num_images'] = n
    parameters.update(image_size(size))
    for key, value in parameters.items():  # e.g. n = 10**30: the model bounds it only where the executor runs
        if problem := unsendable(value, FIELD_OF.get(key, key), max_depth=1):
            raise APIError(400, f'invalid parameters: {problem}', param=FIELD_OF.get(key, key))
    try:
        model.from_request(model(), parameters)
    except ParameterError as e:
        raise APIError(400, f'invalid parameters: {e}', param=named_field(str(e))) from None
    return parameters


def form_extras(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """Extras sent as multipart form fields, where every value is text: numbers again for the keys
    whose values are numbers (a value that does not read as one is left for the check to name)."""
    return {key: form_value(key, value) for key, value in fields.items()}


def form_value(key: str, value: Any) -> Any:
    field = RestyleParams.model_fields.get(key)
    if field is None or not isinstance(value, str) or not {int, float} & types_in(field.annotation):
        return value
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return value


def types_in(annotation: Any) -> set:
    """``annotation`` and everything inside it: ``Optional[Annotated[int, ...]]`` holds int."""
    return {annotation}.union(*(types_in(inner) for inner in get_args(annotation)))


def image_size(size: Optional[str]) -> Dict[str, int]:
    """``{'width', 'height'}`` from ``'WIDTHxHEIGHT'``; {} (the executor's default) for None or "auto".
    Never a silent default for a malformed size."""
    if size is None or size == 'auto':
        return {}
    found = SIZE.fullmatch(str(size))
    if found is None:
        raise APIError(400, f'size must be "WIDTHxHEIGHT" in pixels (e.g. "512x512") or "auto", got {quote(size)}', param='size')
    return {'width': int(found[1]), 'height': int(found[2])}


def named_field(message: str) -> Optional[str]:
    """The request field a parameter error names by its first word (``width must be ...``)."""
    key = message.split(' ', 1)[0]
    return FIELD_OF.get(key, key if key in EXTRAS + RESTYLE_EXTRAS else None)
