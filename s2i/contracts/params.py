"""What every executor's request parameters have in common: one pydantic model per executor.

Each executor declares the keys it reads in a ``RequestParams`` subclass (``s2i/contracts/<executor>.py``)
and parses them once at the top of its endpoint (``ServiceExecutor.request_params``, which calls
``from_request``). Jina sends one ``parameters`` dict to every executor of the Flow, so an executor
takes its own keys and leaves the others alone; keys that no executor of the Flow owns are
refused by the gateway, which asks each executor for its keys (``/parameters``, s2i/executor_base.py).

Jina's protobuf transport turns every number into a float, so integer fields accept integral
floats (``5.0``) but not ``5.5``; booleans and strings are never read as numbers.
"""

import math
import sys
from typing import Annotated, Any, Dict, Mapping, Type, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from s2i.contracts.errors import CodedError, ErrorCode

PARAMETERS_ENDPOINT = '/parameters'  # every executor answers it with its ParameterSchema
MAX_SEED = 2**31 - 1  # docarray sends ints as protobuf int32
# An error quotes at most this much of a bad value: one 200 KB value in 500 documents would
# otherwise come back 500 times, turning a 0.3 MB request into a 100 MB answer.
MAX_QUOTED_CHARS = 40
MAX_FLOAT = sys.float_info.max


class ParameterError(CodedError, ValueError):
    """A request parameter is of the wrong type or out of range; the message and ``param`` name it."""

    code = ErrorCode.INVALID_PARAMETER


def quote(value: Any) -> str:
    """``repr(value)``, cut to its first MAX_QUOTED_CHARS characters: ``'xxxx…' (200000 characters)``."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of over 4300 digits; lists nested a thousand deep
        return f'a value too large to quote ({type(value).__name__})'
    if len(text) <= MAX_QUOTED_CHARS:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f'{text[:MAX_QUOTED_CHARS]}… ({size} characters)'


def check_unicode(text: str) -> None:
    """ValueError for text that UTF-8 cannot carry: a lone surrogate, such as JSON's "\\ud800"."""
    try:
        text.encode('utf-8')
    except UnicodeEncodeError as e:
        raise ValueError(f'must be valid Unicode text, got a lone surrogate at character {e.start}') from None


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'must be an integer, got {quote(value)}')
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f'must be an integer, got {quote(value)}')
    return int(value)


def _number(value: Any) -> Any:
    # Compared, not math.isfinite(): that raises OverflowError for an int beyond any float.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -MAX_FLOAT <= value <= MAX_FLOAT:
        raise ValueError(f'must be a finite number, got {quote(value)}')
    return float(value)


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f'must be a string, got {quote(value)}')
    check_unicode(value)
    return value


def _flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f'must be true or false, got {quote(value)}')
    return value


# Field types for parameter models: Jina's transport, not pydantic's lax coercion, decides what is accepted.
Integer = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]
Text = Annotated[str, BeforeValidator(_text)]
Flag = Annotated[bool, BeforeValidator(_flag)]

P = TypeVar('P', bound='RequestParams')


class StandardBounds(GenerateJsonSchema):
    """JSON Schema's own names for the bounds of an optional number field. pydantic writes them as
    its keyword names (``ge``) when the field's type has a validator of its own (Integer, Number)
    inside Optional; forms and docs read the standard ``minimum``."""

    RENAMED = {'ge': 'minimum', 'le': 'maximum', 'gt': 'exclusiveMinimum', 'lt': 'exclusiveMaximum', 'multiple_of': 'multipleOf'}

    def generate(self, schema, mode='validation'):
        return renamed_bounds(super().generate(schema, mode))


def renamed_bounds(node: Any) -> Any:
    if isinstance(node, dict):
        return {StandardBounds.RENAMED.get(key, key): renamed_bounds(value) for key, value in node.items()}
    if isinstance(node, list):
        return [renamed_bounds(item) for item in node]
    return node


class RequestParams(BaseModel):
    """Base of every executor's parameter model: frozen, no unknown fields, one error per bad key."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    @classmethod
    def model_json_schema(cls, *args, schema_generator=StandardBounds, **kwargs) -> Dict[str, Any]:
        return super().model_json_schema(*args, schema_generator=schema_generator, **kwargs)

    @classmethod
    def keys(cls) -> frozenset:
        return frozenset(cls.model_fields)

    @classmethod
    def from_request(cls: Type[P], defaults: P, parameters: Mapping[str, Any]) -> P:
        """``defaults`` with this model's keys of ``parameters`` applied; other keys are left to their owners.

        Jina already merged this executor's scoped section (``{"<executor name>": {...}}``) into
        ``parameters``. Raises ParameterError naming the key, its value and what it must be."""
        given = {key: value for key, value in parameters.items() if key in cls.model_fields}
        if not given:
            return defaults
        merged = {**defaults.model_dump(), **given}
        try:
            return cls.model_validate(merged)
        except ValidationError as e:
            raise parameter_error(e) from None

    @classmethod
    def with_defaults(cls: Type[P], overrides: Mapping[str, Any]) -> P:
        """The model's own defaults with an executor's configured ``request_defaults`` on top."""
        try:
            return cls.model_validate(dict(overrides or {}))
        except ValidationError as e:
            raise ValueError(f'request_defaults: {describe_error(e)}') from None


def parameter_error(error: ValidationError) -> ParameterError:
    """The ParameterError for a model's ValidationError: every problem described, the first one's key
    blamed (an unknown key's code is unknown_parameter; a model-wide check blames no key)."""
    first = error.errors()[0]
    param = '.'.join(str(part) for part in first['loc']) or None
    code = ErrorCode.UNKNOWN_PARAMETER if first['type'] == 'extra_forbidden' else ErrorCode.INVALID_PARAMETER
    if isinstance(first.get('ctx', {}).get('error'), ParameterError):  # raised by a model validator
        param = first['ctx']['error'].param
    return ParameterError(describe_error(error), code=code, param=param)


def describe_error(error: ValidationError) -> str:
    """One clause per bad key, joined by "; ": ``steps must be greater than or equal to 1, got 0``."""
    return '; '.join(_describe(item) for item in error.errors())


def _describe(item: Dict[str, Any]) -> str:
    key = '.'.join(str(part) for part in item['loc'])
    value = item.get('input')
    if item['type'] == 'value_error':  # our own checks: the message already says what is wrong
        return ' '.join(filter(None, (key, str(item['ctx']['error']))))
    if item['type'] == 'extra_forbidden':
        return f'unknown parameter {quote(key)}'
    if item['type'] == 'literal_error':  # "expected" lists our own allowed values
        return f'{key} must be {item["ctx"]["expected"]}; got {quote(value)}'
    if value is None:
        return f'{key} must not be null'
    # pydantic's "Input should be greater than or equal to 1" -> "steps must be greater than or equal to 1, got 0"
    return f'{key} {item["msg"].replace("Input should be", "must be")}, got {quote(value)}'
