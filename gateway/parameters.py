"""The Flow's request parameters: a key that no executor of the Flow owns is refused, naming it.

Each executor lists its keys on ``/parameters``; the gateway asks once, on the first request that
needs them, and keeps the answer until it restarts.
"""

import asyncio
import time
from typing import Any, Awaitable, Callable, List, Mapping, Optional, Sequence

from s2i.contracts.documents import ParameterSchema
from s2i.contracts.errors import ErrorCode
from s2i.contracts.params import PARAMETERS_ENDPOINT, ParameterError, quote

UNCHECKED_ENDPOINTS = frozenset({PARAMETERS_ENDPOINT, '_jina_dry_run_'})
RETRY_SECONDS = 10  # after the executors could not be asked for their parameters


def unknown_parameters(parameters: Mapping[str, Any], schemas: Sequence[ParameterSchema]) -> Optional[ParameterError]:
    """Why no executor of the Flow described by ``schemas`` would read some of ``parameters``; None if all are known.

    Allowed: any executor's keys, Jina's own keys (``__...``), and an executor's name holding a dict
    of that executor's keys (Jina's scoped form, ``{"stable_diffusion": {"steps": 30}}``)."""
    keys_of = {schema.executor: sorted(schema.keys) for schema in schemas}
    known = sorted({key for keys in keys_of.values() for key in keys})
    unknown, scoped = [], []
    for key, value in parameters.items():
        if key in keys_of:  # Jina reads an executor's name as its scoped section, whatever else owns the key
            if not isinstance(value, Mapping):
                return ParameterError(f'{quote(key)} names an executor of the Flow: send a dict of its parameters, '
                                      f'e.g. {{"{key}": {{...}}}}', param=key)
            scoped += [(key, inner) for inner in value if inner not in keys_of[key]]
        elif not (key.startswith('__') or key in known):
            unknown.append(key)
    if unknown:
        return ParameterError(f'unknown parameter(s) {", ".join(map(quote, unknown))}; known: {", ".join(known)}',
                              ErrorCode.UNKNOWN_PARAMETER, param=unknown[0])
    if scoped:
        executor = scoped[0][0]
        names = ', '.join(quote(inner) for owner, inner in scoped if owner == executor)
        return ParameterError(f'unknown parameter(s) {names} for {executor}; known: {", ".join(keys_of[executor])}',
                              ErrorCode.UNKNOWN_PARAMETER, param=scoped[0][1])
    return None


class ExecutorParameters:
    """Every executor's parameter schemas, asked with ``ask`` once and kept."""

    def __init__(self, ask: Callable[[], Awaitable[List[ParameterSchema]]], logger):
        self.ask = ask
        self.logger = logger
        self.known: Optional[List[ParameterSchema]] = None  # kept until the gateway restarts
        self.ask_again_at = 0.0
        self.asking = asyncio.Lock()

    async def refusal(self, endpoint: Optional[str], parameters: Optional[Mapping[str, Any]]) -> Optional[ParameterError]:
        """The error for a request to ``endpoint`` with ``parameters``, or None to let it through."""
        if not parameters or endpoint in UNCHECKED_ENDPOINTS:
            return None
        schemas = await self.schemas()
        return None if schemas is None else unknown_parameters(parameters, schemas)

    async def schemas(self) -> Optional[List[ParameterSchema]]:
        async with self.asking:
            if self.known is None and time.monotonic() >= self.ask_again_at:
                try:
                    self.known = await self.ask()
                except Exception as e:
                    # Fail open: requests go through unchecked (each executor still checks the values of
                    # its own keys), and the executors are asked again after a pause, not on every request.
                    self.ask_again_at = time.monotonic() + RETRY_SECONDS
                    self.logger.warning(f'could not ask the executors for their parameters (again in {RETRY_SECONDS} s): {e!r}')
            return self.known
