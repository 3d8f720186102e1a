"""The generation fields of /v1/images/generations and /v1/jobs (OpenAI's ``n`` and ``size``, and this
service's extras) as the Flow's request parameters, checked before any work: a bad value is a 400
naming the field the client sent."""

from typing import Any, Dict, Mapping, Optional

from executors.stable_diffusion.params import GenerationParams
from gateway.errors import APIError
from s2i.params import ParameterError, quote

EXTRAS = ('seed', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler', 'best_of')  # ours, beside OpenAI's fields
URL_SECONDS = 3600  # response_format url: presigned URLs (S3 stores) last an hour, as OpenAI's image URLs do
FIELD_OF = {'width': 'size', 'height': 'size', 'num_images': 'n'}  # the executor's key -> the field the client sent


def generation_parameters(n: Optional[int], size: Optional[str], extras: Mapping[str, Any]) -> Dict[str, Any]:
    """``num_images``, ``width``, ``height`` and the extras given, checked against the executor's own
    parameter model (its configured limits, such as max_pixels, are checked where it runs)."""
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise APIError(400, f'unknown field(s) {", ".join(map(quote, unknown))}; besides OpenAI\'s fields this service '
                       f'takes {", ".join(EXTRAS)}', param=unknown[0])
    parameters = {key: value for key, value in extras.items() if value is not None}
    if n is not None:
        parameters['num_images'] = n
    parameters.update(image_size(size))
    try:
        GenerationParams.from_request(GenerationParams(), parameters)
    except ParameterError as e:
        raise APIError(400, f'invalid parameters: {e}', param=named_field(str(e))) from None
    return parameters


def image_size(size: Optional[str]) -> Dict[str, int]:
    """``{'width', 'height'}`` from ``'WIDTHxHEIGHT'``; {} (the executor's default) for None or "auto".
    Never a silent default for a malformed size."""
    if size is None or size == 'auto':
        return {}
    width, x, height = str(size).partition('x')
    if not (x and width.isdigit() and height.isdigit()):
        raise APIError(400, f'size must be "WIDTHxHEIGHT" in pixels (e.g. "512x512") or "auto", got {quote(size)}', param='size')
    return {'width': int(width), 'height': int(height)}


def named_field(message: str) -> Optional[str]:
    """The request field a parameter error names by its first word (``width must be ...``)."""
    key = message.split(' ', 1)[0]
    return FIELD_OF.get(key, key if key in EXTRAS else None)
