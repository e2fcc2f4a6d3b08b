"""Runs one pytest file as a Bazel test (the main of every `pytest_test`, see tools/pytest.bzl).

Arguments: the test file (its runfiles path), then any extra pytest arguments. It honours Bazel's
test environment: JUnit XML to $XML_OUTPUT_FILE, `--test_filter` as `-k`, pytest's temporary
directories under $TEST_TMPDIR, and no cache written into the read-only runfiles tree.
"""

import os
import sys

import pytest


def pytest_args(argv, environ):
    """Returns the pytest command line for `argv` (test file, extra arguments) under `environ`."""
    args = list(argv) + ["-p", "no:cacheprovider"]
    if environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + environ["XML_OUTPUT_FILE"])
    if environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
    if environ.get("TEST_TMPDIR"):
        args.append("--basetemp=" + os.path.join(environ["TEST_TMPDIR"], "pytest"))
    return args


if __name__ == "__main__":
    sys.exit(pytest.main(pytest_args(sys.argv[1:], os.environ)))
