"""Shared pytest set-up: quiet TensorFlow logging before any test imports it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import sys

import pytest


@pytest.fixture(autouse=True)
def _op_determinism_switched_off_after_each_test():
    """`--deterministic` (a Config's `deterministic`) turns TensorFlow's op determinism on for the whole
    process; an in-process run that sets it must not change the kernels of the tests after it (a
    reference computed in-process would then differ in its last bits from a subprocess's run)."""
    yield
    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config  # pylint: disable=import-outside-toplevel

        if config.is_op_determinism_enabled():
            config.disable_op_determinism()
