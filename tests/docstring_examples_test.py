"""The `Example:` sections of the public API's docstrings run, and print what they say (doctest).

Modules: the schedules (`clr_loop.schedules` and its modules), `clr_loop.scale_fns`,
`clr_loop.optimizers`, `clr_loop.tf_keras` (where tf_keras is installed) and `find_lr` of
`clr_loop.lr_finder`. Every public class and function there must have an example.
"""

import doctest
import importlib
import importlib.util
import inspect

import pytest

from clr_loop import lr_finder
from clr_loop import optimizers
from clr_loop import scale_fns
from clr_loop import schedules


def tf_keras_module():
    """Returns clr_loop.tf_keras, or None where the tf_keras package is not installed (its examples do not run)."""
    if importlib.util.find_spec("tf_keras") is None:
        return None
    from clr_loop import tf_keras as clr_tf_keras

    return clr_tf_keras


SCHEDULE_MODULES = [schedules] + [
    importlib.import_module(f"clr_loop.schedules.{name}") for name in ("_common", "compose", "cyclical", "one_cycle")
]
MODULES = SCHEDULE_MODULES + [scale_fns, optimizers] + [m for m in [tf_keras_module()] if m]
# lr_finder's other names are not documented here: only find_lr.
EXTRA = {"clr_loop.lr_finder.find_lr": lr_finder.find_lr}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def public_objects():
    """Returns {qualified name: object} for the public classes and functions the modules define."""
    found = dict(EXTRA)
    for module in MODULES:
        if module.__name__.rpartition(".")[2].startswith("_"):
            continue  # a private module (clr_loop.schedules._common)
        for name in getattr(module, "__all__", None) or dir(module):
            obj = getattr(module, name)
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def doctests():
    """Returns the doctests with examples in the modules' docstrings (modules, classes, functions,
    methods) and in EXTRA's, by name. An object is found once, under the first name reached."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for module in MODULES:
        for test in finder.find(module):
            if test.examples:
                tests[test.name] = test
    for name, obj in EXTRA.items():
        module = importlib.import_module(obj.__module__)
        for test in finder.find(obj, name, module=module, globs=vars(module)):
            if test.examples:
                tests[test.name] = test
    return tests


DOCTESTS = doctests()


def test_every_public_class_and_function_has_an_example():
    missing = [
        name
        for name, obj in sorted(public_objects().items())
        if "Example:" not in (obj.__doc__ or "") or ">>>" not in (obj.__doc__ or "")
    ]
    assert not missing, "no `Example:` with `>>>` lines in the docstring of: " + ", ".join(missing)


def test_the_examples_are_found():
    """doctest finds every public object's example (it skips an object defined in another module)."""
    found = {test.docstring for test in DOCTESTS.values()}
    missed = [name for name, obj in sorted(public_objects().items()) if obj.__doc__ not in found]
    assert not missed, missed


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_example(name):
    test = DOCTESTS[name]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    output = []
    runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
