"""Test files share helpers through tests/testing.py only: none imports another test file.

Imports are read with `ast` from every module in tests/: at module level, inside functions and
classes, and in the string constants that are Python code (the scripts tests hand to
`python -c` or write out for a subprocess, whose PYTHONPATH may hold tests/). A test module is
any tests/*_test.py; `testing` and `conftest` are the support modules.
"""

import ast
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = frozenset(p.stem for p in TESTS.glob("*_test.py"))


def _imported(tree):
    """Yields (line, module name) of every import in `tree`, and of `importlib.import_module("x")` /
    `__import__("x")` calls with a constant name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def _code_strings(tree):
    """Yields (line, AST) of the string constants in `tree` that parse as Python code with an import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                yield node.lineno, ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                continue


def imports_of_test_modules(source, name="<source>", test_modules=TEST_MODULES):
    """Returns "file:line: imports module_test" for each import of one of `test_modules` in `source`
    (code strings too: "file:line (in a code string)")."""
    tree = ast.parse(source, name)
    found = [
        f"{name}:{line}: imports {module}" for line, module in _imported(tree) if module.split(".")[0] in test_modules
    ]
    for line, code in _code_strings(tree):
        found += [
            f"{name}:{line} (in a code string): imports {module}"
            for _, module in _imported(code)
            if module.split(".")[0] in test_modules
        ]
    return found


def test_no_test_file_imports_another_test_file():
    problems = []
    for path in sorted(TESTS.glob("*.py")):
        problems += imports_of_test_modules(path.read_text(), f"tests/{path.name}")
    assert not problems, (
        "test files share helpers through tests/testing.py (import testing), never by "
        "importing each other:\n" + "\n".join(problems)
    )


@pytest.mark.parametrize(
    "source",
    [
        "from a_test import fake_data\n",
        "import a_test\n",
        "import a_test as lt\n",
        "def helper():\n    from a_test import Cluster\n",
        "class C:\n    def m(self):\n        import a_test.sub\n",
        "SCRIPT = '''\nimport json\nfrom a_test import fake_data\n'''\n",
        "import textwrap\nSCRIPT = textwrap.dedent(\n    '''\n    from a_test import fit_small_model\n    ''')\n",
        "import importlib\nmodule = importlib.import_module('a_test')\n",
    ],
)
def test_the_check_finds_a_test_module_import_wherever_it_is(source):
    assert len(imports_of_test_modules(source, test_modules={"a_test"})) == 1, source


@pytest.mark.parametrize(
    "source",
    [
        "from testing import fake_data\n",
        "from clr_loop import lr_range_test as lrt\n",
        "import clr_loop.lr_range_test\n",
        "MESSAGE = 'tests/a_test.py imports nothing here'\n",
        "SCRIPT = 'from testing import fake_data'\n",
    ],
)
def test_the_check_passes_imports_of_the_support_module_and_the_library(source):
    assert imports_of_test_modules(source, test_modules={"a_test", "lr_range_test"}) == []


def test_the_support_module_is_not_collected_and_the_test_modules_are_known():
    assert (TESTS / "testing.py").is_file() and "testing" not in TEST_MODULES
    assert {"loop_test", "trainer_test", "train_cli_test", "distribute_test"} <= TEST_MODULES
