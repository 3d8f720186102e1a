"""The generation fields of /v1/images/generations and /v1/jobs (OpenAI's ``n`` and ``size``, and our
extras) as the Flow's request parameters, checked before any work: a bad value is a 400 naming it."""

import re
from typing import Any, Dict, Mapping, Optional

from executors.stable_diffusion.params import GenerationParams
from gateway.errors import APIError
from s2i.params import ParameterError, quote

SIZE = re.compile(r'([0-9]{1,5})x([0-9]{1,5})')
EXTRAS = ('seed', 'steps', 'guidance_scale', 'negative_prompt', 'scheduler')  # our fields beyond OpenAI's


def generation_parameters(n: Optional[int], size: Optional[str], extras: Mapping[str, Any]) -> Dict[str, Any]:
    """``num_images``, ``width``, ``height`` and the extras given, as GenerationParams checks them
    (its types and ranges; the executor's own limits, such as max_pixels, come later)."""
    parameters = {key: value for key, value in extras.items() if key in EXTRAS and value is not None}
    if n is not None:
        parameters['num_images'] = n
    if size is not None:
        parameters['width'], parameters['height'] = parse_size(size)
    try:
        GenerationParams.from_request(GenerationParams(), parameters)
    except ParameterError as e:
        raise APIError(400, f'invalid parameters: {e}', param=named_field(str(e))) from None
    return parameters


def parse_size(size: str) -> tuple:
    """``"WxH"`` as (W, H): never a silent default for a malformed size."""
    found = SIZE.fullmatch(size.strip()) if isinstance(size, str) else None
    if not found:
        raise APIError(400, f'size must be "WIDTHxHEIGHT" in pixels, such as "512x512", got {quote(size)}', param='size')
    return int(found.group(1)), int(found.group(2))


def named_field(message: str) -> str:
    """The request field an error message starts with, in the names the API uses."""
    key = message.split(' ', 1)[0]
    return {'num_images': 'n', 'width': 'size', 'height': 'size'}.get(key, key)
