"""The code's shape, as the project promises it to the people who read and change it (docs/development.md):
short functions, no import cycles, and Jina's internals behind one adapter module of the gateway.

Jina is no longer maintained; every module that touches its internals is a place a Jina upgrade or
replacement must change. Cycles make a module impossible to read (or import) alone."""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
OWN_CODE = ('s2i', 'gateway', 'executors', 'bench', 'scripts', 'deploy')  # tests/ excluded
LONGEST_FUNCTION = 60  # lines, decorators included
LONG_FUNCTION, MOST_LONG_FUNCTIONS = 40, 3
JINA_ADAPTER = 'gateway/jina_adapter.py'


def own_files() -> Iterator[Path]:
    yield ROOT / 'client.py'
    for folder in OWN_CODE:
        yield from sorted((ROOT / folder).rglob('*.py'))


def function_lengths() -> List[Tuple[int, str]]:
    lengths = []
    for path in own_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
                lengths.append((node.end_lineno - first + 1, f'{path.relative_to(ROOT)}:{node.lineno} {node.name}'))
    return sorted(lengths, reverse=True)


def test_no_function_is_longer_than_60_lines():
    assert [(lines, where) for lines, where in function_lengths() if lines > LONGEST_FUNCTION] == []


def test_at_most_three_functions_are_longer_than_40_lines():
    long = [(lines, where) for lines, where in function_lengths() if lines > LONG_FUNCTION]
    assert len(long) <= MOST_LONG_FUNCTIONS, long


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The project's modules that ``path`` imports, at any depth of its code (lazy imports count too).
    A script's bare ``import name`` is its sibling ``name.py`` (the script's folder is on the path)."""
    siblings = {sibling.stem: module_name(sibling) for sibling in path.parent.glob('*.py')}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
        found.update(name for name in names if name in modules)
        found.update(siblings[name] for name in names if name in siblings and isinstance(node, ast.Import))
    return found


def import_graph() -> Dict[str, Set[str]]:
    paths = {module_name(path): path for path in own_files()}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Each import cycle once, as the list of modules around it (depth-first search)."""
    found, done = [], set()

    def visit(module: str, path: List[str]) -> None:
        if module in path:
            cycle = path[path.index(module):]
            if set(cycle) not in [set(known) for known in found]:
                found.append(cycle)
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_module_of_the_project_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_only_the_adapter_touches_jinas_serving_internals():
    touching = []
    for path in sorted((ROOT / 'gateway').rglob('*.py')):
        tree = ast.parse(path.read_text())
        modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        if any(module.startswith('jina.serve') for module in modules):
            touching.append(str(path.relative_to(ROOT)))
    assert touching == [JINA_ADAPTER]
