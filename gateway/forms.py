"""Forms, read the same way on every route that takes one: a field given twice is refused, naming it,
rather than one of its values silently chosen."""

from collections import Counter
from typing import Iterable

from starlette.datastructures import FormData
from starlette.requests import Request

from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote


async def form_once(request: Request, repeatable: Iterable[str] = ()) -> FormData:
    """The request's form, each field given once (but the ``repeatable`` ones, OpenAI's lists)."""
    form = await request.form()
    counts = Counter(name for name, _ in form.multi_items())  # a form holds up to 1000 fields (Starlette's max_fields)
    repeated = sorted(name for name, count in counts.items() if count > 1 and name not in set(repeatable))
    if repeated:
        name = repeated[0]
        what = 'audio file (one multipart "file" part)' if name == 'file' else f'{quote(name)} field'
        raise CodedError(f'send one {what} per request; {quote(name)} was given {counts[name]} times',
                         ErrorCode.DUPLICATE_FIELD, param=name)
    return form
