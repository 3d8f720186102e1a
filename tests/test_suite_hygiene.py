"""Every test asserts something: a test that cannot fail checks nothing a user relies on.

The rule, read from the source (Python's ast), never from running the tests: a test function
(``test_*`` at module level, or in a ``Test*`` class) of tests/test_*.py asserts if its body,
nested functions and lambdas included (a test defines them to call them), holds at least one of

- an ``assert`` statement whose test is not a constant (``assert True`` checks nothing);
- ``pytest.raises``, ``pytest.warns``, ``pytest.deprecated_call`` or ``pytest.fail``;
- Playwright's ``expect(...)`` (its web-first assertions, which retry, then fail);
- a call to a helper defined in tests/ whose name starts with ``assert_``, ``expect_`` or
  ``check_``, where that helper itself asserts by this same rule.

Other helpers do not count even if they assert inside (``submitted`` checks the status code): a
test says what it checks in its own body, or through a helper whose name says that it checks.
Nothing is exempt: the test names every offender, in any file, so that it gets fixed.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Union

TESTS = Path(__file__).resolve().parent
ASSERTING_PREFIXES = ('assert_', 'expect_', 'check_')
PYTEST_ASSERTIONS = {'raises', 'warns', 'deprecated_call', 'fail'}
PLAYWRIGHT_ASSERTION = 'expect'
Function = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def called_name(call: ast.Call) -> str:
    """``f`` for ``f(...)`` and ``module.f(...)``; '' for anything else (``f()(...)``, ``x[0](...)``)."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ''


def is_pytest_assertion(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr in PYTEST_ASSERTIONS
            and isinstance(func.value, ast.Name) and func.value.id == 'pytest')


def asserts(function: Function, helpers: Dict[str, Function], seen: Set[str] = frozenset()) -> bool:
    """Whether ``function`` asserts by the rule above; ``helpers`` are tests/' asserting-named ones."""
    for node in ast.walk(function):
        if isinstance(node, ast.Assert) and not isinstance(node.test, ast.Constant):
            return True
        if not isinstance(node, ast.Call):
            continue
        name = called_name(node)
        if is_pytest_assertion(node) or name == PLAYWRIGHT_ASSERTION:
            return True
        if name in helpers and name not in seen and asserts(helpers[name], helpers, seen | {name}):
            return True
    return False


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding='utf-8'), filename=str(path))


def asserting_helpers() -> Dict[str, Function]:
    """Functions anywhere in tests/ named like an assertion (ASSERTING_PREFIXES), by name."""
    helpers = {}
    for path in sorted(TESTS.glob('*.py')):
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(ASSERTING_PREFIXES):
                helpers[node.name] = node
    return helpers


def collected_tests(module: ast.Module) -> Iterator[Function]:
    """The functions pytest collects as tests from ``module`` (default naming rules)."""
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith('test'):
            yield node
        elif isinstance(node, ast.ClassDef) and node.name.startswith('Test'):
            yield from (item for item in node.body
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith('test'))


def non_asserting_tests() -> List[str]:
    helpers = asserting_helpers()
    return [f'{path.name}:{test.lineno} {test.name}'
            for path in sorted(TESTS.glob('test_*.py'))
            for test in collected_tests(parsed(path))
            if not asserts(test, helpers)]


def test_every_test_asserts_something():
    offenders = non_asserting_tests()
    assert offenders == [], 'these tests assert nothing (see the rule in tests/test_suite_hygiene.py):\n' + '\n'.join(offenders)


def test_every_helper_named_like_an_assertion_asserts():
    helpers = asserting_helpers()
    misnamed = sorted(name for name, helper in helpers.items() if not asserts(helper, helpers, frozenset({name})))
    assert misnamed == [], f'these helpers are named like assertions but assert nothing: {misnamed}'


# The rule itself, on made-up tests: each kind of assertion counts, and what is not one does not.

def verdicts(source: str) -> Dict[str, bool]:
    module = ast.parse(source)
    helpers = {node.name: node for node in module.body
               if isinstance(node, ast.FunctionDef) and node.name.startswith(ASSERTING_PREFIXES)}
    return {test.name: asserts(test, helpers) for test in collected_tests(module)}


def test_the_rule_counts_asserts_pytest_raises_playwright_and_asserting_helpers():
    source = '''
def assert_red(x):
    assert x == 'red'
def test_assert(): assert 1 + 1 == 2
def test_raises():
    with pytest.raises(ValueError): int('x')
def test_in_a_nested_scenario():
    async def scenario():
        assert await thing()
    asyncio.run(scenario())
def test_playwright(page): sync_api.expect(page.locator('#x')).to_be_visible()
def test_helper(): assert_red('red')
class TestGrouped:
    def test_method(self): assert self
'''
    assert verdicts(source) == dict.fromkeys(
        ['test_assert', 'test_raises', 'test_in_a_nested_scenario', 'test_playwright', 'test_helper', 'test_method'], True)


def test_the_rule_refuses_tests_that_cannot_fail():
    source = '''
def check_nothing(x):
    return x
def submitted(x):
    assert x
def test_calls_only(): run_the_thing()
def test_constant_assert(): assert True
def test_a_check_helper_that_checks_nothing(): check_nothing(1)
def test_a_helper_not_named_as_a_check(): submitted(1)
def test_pytest_but_no_assertion(): pytest.skip('later')
'''
    assert verdicts(source) == dict.fromkeys(
        ['test_calls_only', 'test_constant_assert', 'test_a_check_helper_that_checks_nothing',
         'test_a_helper_not_named_as_a_check', 'test_pytest_but_no_assertion'], False)
