"""`pytest_test`: a py_test that runs one pytest file."""

load("@pypi//:requirements.bzl", "requirement")
load("@rules_python//python:defs.bzl", "py_test")

_MAIN = "//tools:pytest_main.py"
_CONFIG = "//:pyproject.toml"

def pytest_test(name, srcs, deps = [], data = [], args = [], **kwargs):
    """Declares a py_test that hands its one test file to pytest.

    Bazel runs a py_test's main file as a script, and a pytest file run that way only defines its
    test functions and exits 0, so every test would pass without running. This macro makes
    tools/pytest_main.py the main and passes it the test file. The runfiles look like the source
    tree so that pytest imports as in a plain `python -m pytest` run: pyproject.toml (its config)
    comes along, and no __init__.py is made up (in tests/ one would stop a test from importing
    tests/testing.py, the shared helpers, as the top-level module `testing`).

    Args:
      name: the test target's name.
      srcs: exactly one file, the pytest file (e.g. ["tests/schedules_test.py"]).
      deps: the py_library targets and requirement()s the test file imports; pytest is added.
      data: files the test reads; pyproject.toml is added.
      args: extra pytest arguments, after the test file.
      **kwargs: passed to py_test (size, tags, ...).
    """
    if len(srcs) != 1:
        fail("pytest_test %s: srcs must be exactly one test file, got %s" % (name, srcs))
    py_test(
        name = name,
        srcs = srcs + [_MAIN],
        main = _MAIN,
        args = ["$(rootpath %s)" % srcs[0]] + args,
        data = data + [_CONFIG],
        deps = deps + [requirement("pytest")],
        legacy_create_init = 0,
        **kwargs
    )
