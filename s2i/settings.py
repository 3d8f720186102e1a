"""Settings: one pydantic-settings class per component, each default in one place.

Every component (the gateway, each executor, ``python -m s2i.serve``) declares its settings in a
``ComponentSettings`` subclass in a light module of its folder (``<component>/settings.py``: pydantic
only, no torch, no jina), listed in SETTINGS_CLASSES. A setting comes from, first to last:

1. the component's ``with:`` section in its config.yml (or flow.yml), which carries only what differs
   from the defaults, e.g. to pin one executor whatever the environment says;
2. its environment variable: ``S2I_`` + the component's prefix + the field's name, upper-case
   (``S2I_SD_MAX_PIXELS``), or the variable a field's ``validation_alias`` names (``S2I_DEVICE``,
   which every executor shares);
3. the class's default.

The configuration reference (docs/configuration.md) is generated from these classes, and a
misspelt ``S2I_`` variable is named in a warning at start (``warn_unknown_variables``) instead of
being silently ignored.
"""

import difflib
import importlib
import logging
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Type, TypeVar

from pydantic import AliasChoices, AliasPath, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = 'S2I_'
# Where each component's settings class lives ("module:Class"); the reference and the check read them all.
SETTINGS_CLASSES = (
    's2i.serve_settings:ServeSettings',
    'gateway.settings:GatewaySettings',
    'executors.whisper.settings:WhisperSettings',
    'executors.stable_diffusion.settings:StableDiffusionSettings',
    'executors.caption.settings:CaptionSettings',
    'executors.clip.settings:ClipSettings',
    'executors.store.settings:StoreSettings',
)
# Variables read outside any settings class: the token (gateway, executors and client alike), the
# cache folder every component shares, and the test suite's own switches.
SHARED_VARIABLES = frozenset({'S2I_AUTH_TOKEN', 'S2I_CACHE'})
IGNORED_PREFIXES = ('S2I_TEST_',)

S = TypeVar('S', bound='ComponentSettings')


class ComponentSettings(BaseSettings):
    """Base of every component's settings: ``S2I_`` variables, no unknown keys, frozen."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra='forbid', frozen=True, populate_by_name=True)

    @classmethod
    def load(cls: Type[S], given: Optional[Mapping[str, Any]] = None, owner: str = '') -> S:
        """The settings, with ``given`` (a config.yml's ``with:`` values, where null is a value, such as
        encoder_margin: null) over the environment over the defaults. An unknown key (a config.yml
        written for an older version) or a bad value stops the start, naming the setting, its variable
        and what it must be."""
        given, owner = dict(given or {}), owner or cls.__name__
        unknown = sorted(set(given) - set(cls.model_fields))
        if unknown:
            raise TypeError(f'{owner} has no setting(s) {", ".join(unknown)}: see its config.yml for the ones it has')
        try:
            return cls(**given)
        except ValidationError as e:
            raise ValueError(f'{owner}: {settings_problems(cls, e)}') from None

    @classmethod
    def variables(cls) -> Dict[str, str]:
        """Each field's environment variable(s), by field name."""
        return {name: ' or '.join(variable_names(cls, name)) for name in cls.model_fields}


def variable_names(cls: Type[ComponentSettings], field: str) -> List[str]:
    """The environment variables that set ``field`` of ``cls``, first the one that wins."""
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [choice.upper() for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, AliasPath):
        return []
    return [(cls.model_config.get('env_prefix') or '').upper() + field.upper()]


def settings_problems(cls: Type[ComponentSettings], error: ValidationError) -> str:
    clauses = []
    for item in error.errors():
        name = '.'.join(str(part) for part in item['loc'])
        where = f' ({", ".join(variable_names(cls, name))})' if name in cls.model_fields else ''
        clauses.append(f'{name}{where}: {item["msg"]}')
    return '; '.join(clauses)


def settings_classes() -> List[Type[ComponentSettings]]:
    classes = []
    for path in SETTINGS_CLASSES:
        module, _, name = path.partition(':')
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def known_variables(classes: Optional[Iterable[Type[ComponentSettings]]] = None) -> frozenset:
    names = set(SHARED_VARIABLES)
    for cls in settings_classes() if classes is None else classes:
        for field in cls.model_fields:
            names.update(variable_names(cls, field))
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str] = os.environ, known: Optional[frozenset] = None) -> List[str]:
    """Each ``S2I_`` variable in ``environ`` that no component reads, with the closest known name."""
    known = known_variables() if known is None else known
    found = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in known and not name.startswith(IGNORED_PREFIXES):
            close = difflib.get_close_matches(name, known, n=1)
            found.append(f'{name} (did you mean {close[0]}?)' if close else name)
    return found


def warn_unknown_variables(logger: Optional[logging.Logger] = None) -> List[str]:
    """Warn about every ``S2I_`` variable nothing reads (a typo would otherwise change nothing, silently)."""
    unknown = unknown_variables()
    if unknown:
        (logger or logging.getLogger('s2i')).warning(
            f'ignoring unknown setting(s) {", ".join(unknown)}: no component reads them (docs/configuration.md)'
        )
    return unknown
