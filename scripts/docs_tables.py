"""The docs' generated tables, written from the code that is their one home:

- ``parameters:<executor>``: each executor's request parameters, from its model in s2i/contracts;
- ``errors``: every error code and its answer on each surface, from s2i/contracts/errors.py;
- ``settings``: the configuration reference, from the settings classes in s2i/settings.py.

Each table sits in a docs page between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``;
everything else on the page is written by hand.

    .venv/bin/python scripts/docs_tables.py            # rewrite the tables in docs/
    .venv/bin/python scripts/docs_tables.py --check    # list the stale pages, exit 1 if any (CI's test)
"""

import argparse
import enum
import importlib
import inspect
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Type

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / 'docs'
REGENERATE = '.venv/bin/python scripts/docs_tables.py'
REGION = re.compile(r'(<!-- generated: (?P<name>[\w:]+) -->\n)(?P<body>.*?)(<!-- end generated -->)', re.S)

# name: (model, the model it extends or None); a model that extends another shows only what differs.
PARAMETER_MODELS = {
    'whisper': ('s2i.contracts.whisper:TranscriptionParams', None),
    'stable_diffusion': ('s2i.contracts.stable_diffusion:GenerationParams', None),
    'restyle': ('s2i.contracts.stable_diffusion:RestyleParams', 's2i.contracts.stable_diffusion:GenerationParams'),
    'caption': ('s2i.contracts.caption:CaptionParams', None),
    'clip': ('s2i.contracts.clip:ClipParams', None),
    'store': ('s2i.contracts.store:StoreParams', None),
}
BOUNDS = ((annotated_types.Ge, '≥', 'ge'), (annotated_types.Gt, '>', 'gt'),
          (annotated_types.Le, '≤', 'le'), (annotated_types.Lt, '<', 'lt'))


def load(path: str) -> type:
    module, _, name = path.partition(':')
    return getattr(importlib.import_module(module), name)


# --- one field: its type, default, allowed values and description ---

def type_name(annotation) -> str:
    """A field's type in a reader's words: ``integer``, ``text``, ``list of text``, ``integer or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Union:
        kinds = [type_name(arg) for arg in args if arg is not type(None)]
        return ' or '.join(kinds + ['null'] * (type(None) in args))
    if origin is typing.Literal:
        return 'text' if all(isinstance(arg, str) for arg in args) else 'one of'
    if origin in (list, tuple, set, frozenset):
        return f'list of {type_name(args[0])}' if args else 'list'
    if origin is dict:
        return 'mapping'
    names = {int: 'integer', float: 'number', str: 'text', bool: 'true or false', Path: 'path'}
    return names.get(annotation, getattr(annotation, '__name__', str(annotation)))


def literal_values(annotation) -> Tuple:
    """The values a Literal (possibly inside Optional or Annotated) allows; () for other types."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return args
    if origin in (typing.Union, typing.Annotated):
        return tuple(value for arg in args for value in literal_values(arg))
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return tuple(member.value for member in annotation)
    return ()


def constraints(annotation) -> List:
    """The annotated_types rules inside an annotation (``Optional[Annotated[int, Field(ge=0)]]``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        extras = args[1:]
        found = [rule for extra in extras for rule in (extra.metadata if isinstance(extra, FieldInfo) else [extra])]
        return found + constraints(args[0])
    if origin is typing.Union:
        return [rule for arg in args for rule in constraints(arg)]
    return []


def allowed(field: FieldInfo) -> str:
    """What the field accepts: ``1 … 200``, ``≥ 1``, ``> 0 … 1``, a list of choices, ``multiple of 8``."""
    choices = literal_values(field.annotation)
    if choices:
        return ', '.join(f'`{value}`' for value in choices)
    rules = field.metadata + constraints(field.annotation)
    bounds = {symbol: getattr(rule, attribute) for rule in rules
              for kind, symbol, attribute in BOUNDS if isinstance(rule, kind)}
    low = next(((s, v) for s, v in bounds.items() if s in '≥>'), None)
    high = next(((s, v) for s, v in bounds.items() if s in '≤<'), None)
    parts = []
    if low and high:
        parts.append(f'{"> " * (low[0] == ">")}{value_text(low[1])} … {"< " * (high[0] == "<")}{value_text(high[1])}')
    elif low or high:
        parts.append(f'{(low or high)[0]} {value_text((low or high)[1])}')
    parts += [f'multiple of {rule.multiple_of}' for rule in rules if isinstance(rule, annotated_types.MultipleOf)]
    return ', '.join(parts)


def value_text(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f'{value:,}'
    return str(value)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return 'computed at start'
    value = field.default
    if value is PydanticUndefined:
        return 'required'
    if value is None:
        return 'none'
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f'`{str(value).lower()}`'
    if isinstance(value, (str, Path)):
        return f'`"{value}"`' if value == '' else f'`{value}`'
    return f'`{value}`'


def source_comments(cls: type) -> Dict[str, str]:
    """Each field's comments in ``cls``'s source: the comment lines just above it and the one after it
    on its line. Fields without a ``description`` are documented by these, so nothing is said twice."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    comments = {}
    for token in tokenize.generate_tokens(iter(lines).__next__):
        if token.type == tokenize.COMMENT:
            comments[token.start[0] - 1] = token.string.lstrip('#').strip()
    found, pending = {}, []
    for number, line in enumerate(lines):
        field = re.match(r'\s+(\w+)\s*:', line)
        if field and field.group(1) in getattr(cls, '__annotations__', {}):
            found[field.group(1)] = ' '.join(pending + ([comments[number]] if number in comments else []))
        full_line_comment = number in comments and line.lstrip().startswith('#')
        pending = pending + [comments[number]] if full_line_comment else []
    return found


def description(cls: type, name: str) -> str:
    """The field's ``description``, else its comments in the source of the class that declares it."""
    field = cls.model_fields[name]
    if field.description:
        return prose(field.description)
    owner = next((c for c in cls.__mro__ if name in getattr(c, '__annotations__', {})), cls)
    return prose(source_comments(owner).get(name, ''))


# --- tables ---

def cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def prose(text: str) -> str:
    """Written text for a cell: a '<' starts no HTML tag ("input.<ext>", "Bearer <key>")."""
    return text.replace('<', '&lt;')


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cell(text) for text in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def differs(model: Type[BaseModel], base: Optional[Type[BaseModel]], name: str) -> bool:
    return base is None or name not in base.model_fields or repr(base.model_fields[name]) != repr(model.model_fields[name])


def parameters_table(path: str, base_path: Optional[str]) -> str:
    model, base = load(path), base_path and load(base_path)
    rows = [[f'`{name}`', type_name(field.annotation), default_text(field), allowed(field), description(model, name)]
            for name, field in model.model_fields.items() if differs(model, base, name)]
    source = path.partition(':')[0].replace('.', '/') + '.py'
    return f'From `{model.__name__}` in `{source}`.\n\n' + table(['key', 'type', 'default', 'allowed', 'meaning'], rows)


def errors_table() -> str:
    from s2i.contracts.errors import ERRORS

    rows = [[f'`{code.value}`', str(kind.http_status), f'`{kind.openai_type}`', f'`{kind.grpc_status}`',
             str(kind.exit_status), kind.page, prose(kind.meaning)] for code, kind in ERRORS.items()]
    return table(['code', 'HTTP', 'OpenAI type', 'gRPC status', 'CLI exit', 'page shows it at', 'meaning'], rows)


def available_settings_classes() -> Tuple[List[type], List[str]]:
    """The settings classes of s2i/settings.py, and the entries of SETTINGS_CLASSES not written yet."""
    from s2i import settings

    try:
        return settings.settings_classes(), []
    except (ImportError, AttributeError):  # a component's settings class is still to be written
        found, missing = [], []
        for path in settings.SETTINGS_CLASSES:
            try:
                found.append(load(path))
            except (ImportError, AttributeError):
                missing.append(path)
        return found, missing


def settings_table(cls: type) -> str:
    variables = cls.variables()
    rows = [[f'`{name}`', ' or '.join(f'`{v}`' for v in variables[name].split(' or ') if v), default_text(field),
             allowed(field), description(cls, name)] for name, field in cls.model_fields.items()]
    source = cls.__module__.replace('.', '/') + '.py'
    return f'### {cls.__name__}\n\nFrom `{source}`.\n\n' + table(['setting', 'variable', 'default', 'allowed', 'meaning'], rows)


def settings_tables() -> str:
    classes, _ = available_settings_classes()
    return '\n'.join(settings_table(cls) for cls in classes)


def renderers() -> Dict[str, Callable[[], str]]:
    found = {f'parameters:{name}': (lambda paths=paths: parameters_table(*paths)) for name, paths in PARAMETER_MODELS.items()}
    found['errors'] = errors_table
    found['settings'] = settings_tables
    return found


# --- pages ---

def regenerated(text: str, render: Dict[str, Callable[[], str]], used: set) -> str:
    def fill(match: re.Match) -> str:
        name = match.group('name')
        if name not in render:
            raise KeyError(f'no table named {name!r} (known: {", ".join(sorted(render))})')
        used.add(name)
        return match.group(1) + render[name]() + match.group(4)

    return REGION.sub(fill, text)


def pages_with_new_tables() -> Dict[Path, str]:
    """Every docs page with its tables written afresh (pages without tables left out)."""
    render, used, pages = renderers(), set(), {}
    for page in sorted(DOCS.rglob('*.md')):
        text = page.read_text(encoding='utf-8')
        if REGION.search(text):
            pages[page] = regenerated(text, render, used)
    unplaced = sorted(set(render) - used)
    if unplaced:
        raise KeyError(f'no docs page has a region for {", ".join(unplaced)}')
    return pages


def stale_pages() -> List[str]:
    return [str(page.relative_to(ROOT)) for page, text in pages_with_new_tables().items()
            if page.read_text(encoding='utf-8') != text]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 if a table is stale')
    args = parser.parse_args(argv)
    _, missing = available_settings_classes()
    for path in missing:
        print(f'not yet written, left out of docs/configuration.md: {path}', file=sys.stderr)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f'{page}: its generated tables are stale; run {REGENERATE}')
        return 1 if stale else 0
    for page, text in pages_with_new_tables().items():
        page.write_text(text, encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
