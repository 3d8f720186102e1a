"""The docs stay true to the code: the tables generated from it are current, the configuration
reference names the variables that set each setting, and the README's links lead somewhere.

The docs site itself (links between its pages, anchors, the nav) is checked by
``mkdocs build --strict`` in CI; the README is outside it, so its links are checked here."""

import importlib.util
from pathlib import Path
from typing import Iterator, Set

from markdown.extensions.toc import slugify
from markdown_it import MarkdownIt
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from conftest import ROOT
from s2i.settings import ComponentSettings


def docs_tables():
    """scripts/docs_tables.py, the generator of the docs' tables, as a module."""
    spec = importlib.util.spec_from_file_location('docs_tables', ROOT / 'scripts' / 'docs_tables.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_tables_match_the_code():
    tables = docs_tables()
    assert tables.stale_pages() == [], f'the docs tables are stale: run {tables.REGENERATE}'


class ExampleSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix='S2I_EXAMPLE_')

    max_items: int = Field(4, ge=1, le=10, description='items per request')
    device: str = Field('auto', validation_alias=AliasChoices('s2i_example_device', 's2i_device'), description='where it runs')


def test_the_configuration_reference_names_each_setting_with_its_variables_default_and_range():
    table = docs_tables().settings_table(ExampleSettings)
    assert '| `max_items` | `S2I_EXAMPLE_MAX_ITEMS` | `4` | 1 … 10 | items per request |' in table
    assert '| `device` | `S2I_EXAMPLE_DEVICE` or `S2I_DEVICE` | `auto` |  | where it runs |' in table


def links(page: Path) -> Iterator[str]:
    for token in MarkdownIt('commonmark').parse(page.read_text(encoding='utf-8')):
        for child in token.children or []:
            if child.type == 'link_open':
                yield child.attrs['href']
            elif child.type == 'image':
                yield child.attrs['src']


def heading_anchors(page: Path) -> Set[str]:
    """The anchors mkdocs gives the page's headings (its toc extension's slugs)."""
    tokens = MarkdownIt('commonmark').parse(page.read_text(encoding='utf-8'))
    return {slugify(tokens[i + 1].content, '-') for i, token in enumerate(tokens) if token.type == 'heading_open'}


def test_the_readme_links_lead_to_files_and_headings_that_exist():
    broken = []
    for href in links(ROOT / 'README.md'):
        if '://' in href:
            continue
        path, _, anchor = href.partition('#')
        target = ROOT / path
        if not target.is_file() or (anchor and anchor not in heading_anchors(target)):
            broken.append(href)
    assert broken == []
