"""What every command shares: one call per input, a result per input (printed, or one JSON object),
and the exit status, from the error code table (s2i/contracts/errors.py)."""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from s2i.client import ServiceError, call_flow
from s2i.contracts.errors import ErrorCode, kind_of

# Exit statuses of the client's own failures (sysexits.h), beside the table's for the service's.
EX_NOINPUT = 66  # an input file cannot be read
EX_UNAVAILABLE = 69  # the gateway cannot be reached
EX_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
# Refusals that every later input would get too: the run stops at the first.
STOPS_THE_RUN = (ErrorCode.INVALID_API_KEY, ErrorCode.ORIGIN_NOT_ALLOWED)

Result = Dict[str, Any]
Outcome = Tuple[Result, int]  # an input's result, and its exit status (0: it succeeded)


class Stop(Exception):
    """The run cannot go on (the gateway is unreachable, the token refused): ``message``, ``exit_status``."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.message, self.exit_status = message, exit_status


def exit_status(code: Union[str, ErrorCode, None]) -> int:
    """A failure's exit status, by its code; a failure without a known code is an internal error's."""
    return kind_of(code).exit_status


def failed(result: Result, message: str, code: Optional[ErrorCode] = None, status: Optional[int] = None) -> Outcome:
    """``result`` with its error (and code); the exit status is the code's unless ``status`` is given."""
    result.update(error=message, error_code=code.value if code else '')
    return result, status if status is not None else exit_status(code)


def ask(args: argparse.Namespace, endpoint: str, fields: Dict[str, Any], parameters: Dict[str, Any]) -> Union[Dict[str, Any], ServiceError]:
    """One input through the Flow: the answered document, or the service's refusal of this input.
    Raises Stop when no later input can succeed either."""
    try:
        (answer,) = call_flow(args.host, endpoint, [fields], parameters, token=args.token or '')
    except ServiceError as e:  # an executor down is this input's error: the next ones may find it back
        if e.code in STOPS_THE_RUN:
            raise Stop(f'the Flow at {args.host} refused the request: {e.message}', e.kind.exit_status) from None
        return e
    except ConnectionError as e:
        raise Stop(f'{e}; start it with `make serve` or `jina flow --uses flow.yml`', EX_UNAVAILABLE) from None
    return answer


def answered(result: Result, answer: Dict[str, Any]) -> Outcome:
    """``result`` with the answered document's error and code (if it failed), and its exit status."""
    result.update(error=answer.get('error') or '', error_code=answer.get('error_code') or '')
    return result, exit_status(result['error_code']) if result['error'] else 0


def run_each(inputs: Sequence[Tuple[str, Any]], run_one: Callable[[str, Any, str], Outcome],
             lines: Callable[[str, Result], List[str]], as_json: bool) -> int:
    """``run_one(label, what, head)`` for each ``(label, what)`` input in turn, reporting each as it
    finishes: one input's failure never costs the others their results. The exit status is the first
    failure's."""
    first_failure = 0
    for number, (label, what) in enumerate(inputs, start=1):
        head = f'[{number}/{len(inputs)}] {label}'
        result, status = run_one(label, what, head)
        report(result, head, as_json, lines)
        first_failure = first_failure or status
    return first_failure


def report(result: Result, head: str, as_json: bool, lines: Callable[[str, Result], List[str]]) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    elif result['error']:
        print(f'{head}: ERROR {result["error"]}', file=sys.stderr, flush=True)
    else:
        for line in lines(head, result):
            print(line, flush=True)


def input_stem(label: str, is_file: bool) -> str:
    """The start of an input's PNG names: a file's stem, or a prompt's first words."""
    if is_file:
        return Path(label).stem
    return re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')[:40] or 'prompt'
