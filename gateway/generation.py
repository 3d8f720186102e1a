"""The generation fields of every route that draws (POST /v1/jobs, /v1/images/generations, edits and
variations), checked by one function against the Stable Diffusion executor's own parameter model
(s2i/contracts/stable_diffusion.py) before any work: a bad value is a 400 naming the field the client
sent, on every route alike.

The fields are OpenAI's ``n`` (the model's ``num_images``) and ``size`` (``WIDTHxHEIGHT``: ``width``
and ``height``), and every other key of the model as it is named there (``steps``, ``seed``, ...): a
key added to the model is a field of every route, with nothing else to change. Values are taken as
JSON gives them (``"12"`` is not a number, ``true`` is not one); a form's text is read first as the
model's field types say (``form_values``), the same on every form route.
"""

import re
from typing import Any, Dict, Mapping, Optional, Tuple, Type, get_args

from gateway.limits import unsendable
from s2i.contracts.errors import ErrorCode
from s2i.contracts.params import ParameterError, RequestParams, quote
from s2i.contracts.stable_diffusion import OPENAI_FIELD_OF, GenerationParams, RestyleParams

URL_SECONDS = 3600  # response_format url: presigned URLs (S3 stores) last an hour, as OpenAI's image URLs do
SIZE = re.compile(r'([0-9]{1,6})x([0-9]{1,6})')  # ASCII digits only: str.isdigit() also takes '²' and '٣'
FIELD_OF = OPENAI_FIELD_OF  # the model's key -> the field the client sends
KEY_OF = {'n': 'num_images'}
INTEGER = re.compile(r'[+-]?[0-9]+')  # ASCII only, as JSON writes numbers: int() and float() also read '٣'
NUMBER = re.compile(r'[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?')


def params_model(restyle: bool) -> Type[RequestParams]:
    """Text-to-image's parameter model, or with ``restyle`` image-to-image's."""
    return RestyleParams if restyle else GenerationParams


def generation_fields(restyle: bool = False) -> Tuple[str, ...]:
    """The generation fields a route takes: ``n``, ``size`` and the model's other keys, in its order."""
    return ('n', 'size', *(key for key in params_model(restyle).model_fields if key not in FIELD_OF))


def generation_parameters(fields: Mapping[str, Any], restyle: bool = False) -> Dict[str, Any]:
    """The Flow's request parameters for a request's generation ``fields``, checked against the executor's
    parameter model (its configured limits, such as max_pixels, are checked where it runs). A field that
    is null or empty is left to the executor's default."""
    given = {key: value for key, value in fields.items() if value is not None and value != ''}
    check_known(given, restyle)
    parameters = {KEY_OF.get(key, key): value for key, value in given.items() if key != 'size'}
    parameters.update(image_size(given.get('size')))
    for key, value in parameters.items():  # e.g. n = 10**30: the model bounds it only where the executor runs
        if problem := unsendable(value, FIELD_OF.get(key, key), max_depth=1):
            raise ParameterError(f'invalid parameters: {problem}', param=FIELD_OF.get(key, key))
    model = params_model(restyle)
    try:
        model.from_request(model(), parameters)
    except ParameterError as e:
        field = FIELD_OF.get(e.param, e.param)
        sent_as = f' (sent as {field})' if field != e.param else ''  # the model names its own key: num_images for n
        raise ParameterError(f'invalid parameters: {e.message}{sent_as}', e.code, param=field) from None
    return parameters


def check_known(fields: Mapping[str, Any], restyle: bool) -> None:
    accepted = generation_fields(restyle)
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ParameterError(f'unknown field(s) {", ".join(map(quote, unknown))}; besides OpenAI\'s fields this service '
                             f'takes {", ".join(accepted[2:])}', ErrorCode.UNKNOWN_PARAMETER, param=unknown[0])


def image_size(size: Optional[Any]) -> Dict[str, int]:
    """``{'width', 'height'}`` from ``'WIDTHxHEIGHT'``; {} (the executor's default) for None or "auto".
    Never a silent default for a malformed size."""
    if size is None or size == 'auto':
        return {}
    found = SIZE.fullmatch(size) if isinstance(size, str) else None
    if found is None:
        raise ParameterError(f'size must be "WIDTHxHEIGHT" in pixels (e.g. "512x512") or "auto", got {quote(size)}', param='size')
    return {'width': int(found[1]), 'height': int(found[2])}


def form_values(fields: Mapping[str, Any], restyle: bool = False) -> Dict[str, Any]:
    """Generation fields sent as form text, as numbers where the model's field is a number (text that
    does not read as one is left for the model to name); a field the model does not have is left as it is."""
    return {key: form_value(KEY_OF.get(key, key), value, params_model(restyle)) for key, value in fields.items()}


def form_value(key: str, value: Any, model: Type[RequestParams]) -> Any:
    field = model.model_fields.get(key)
    if field is None or not isinstance(value, str):
        return value
    types = types_in(field.annotation)
    if int in types and INTEGER.fullmatch(value):
        return int(value)
    if {int, float} & types and NUMBER.fullmatch(value):
        return float(value)  # for an integer field, "1.5" is refused as the number it is
    return value


def types_in(annotation: Any) -> set:
    """``annotation`` and everything inside it: ``Optional[Annotated[int, ...]]`` holds int."""
    return {annotation}.union(*(types_in(inner) for inner in get_args(annotation)))
