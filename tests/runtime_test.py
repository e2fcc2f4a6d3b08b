"""Tests for clr_loop.runtime: the XLA, batch-split and thread-pool policies."""

import keras
import pytest
import tensorflow as tf

from clr_loop import runtime


def test_resolve_jit_compile():
    assert runtime.resolve_jit_compile("true") is True and runtime.resolve_jit_compile(True) is True
    assert runtime.resolve_jit_compile("false") is False and runtime.resolve_jit_compile(False) is False
    assert runtime.resolve_jit_compile("auto") == bool(tf.config.list_logical_devices("GPU"))
    with pytest.raises(ValueError, match="jit_compile"):
        runtime.resolve_jit_compile("sometimes")


@pytest.mark.parametrize(
    "batch, cores, expected",
    [
        (64, 2, 2),
        (64, 16, 2),  # parts of at least 32 examples
        (128, 4, 4),
        (96, 4, 3),  # 4 parts would be 24 examples; 3 divides 96
        (100, 2, 2),
        (160, 4, 4),  # 5 would divide, but there are 4 cores
        (32, 2, 1),
        (63, 2, 1),  # 63 // 32 = 1
        (64, 1, 1),
    ],
)
def test_auto_batch_splits(batch, cores, expected):
    splits = runtime.auto_batch_splits(batch, cores)
    assert splits == expected
    assert batch % splits == 0 and (splits == 1 or batch // splits >= 32)


def test_cpu_cores_is_positive():
    assert runtime.cpu_cores() >= 1


def test_resolve_batch_splits_refuses_to_split_a_batch_dependent_model():
    keras.utils.set_random_seed(0)
    per_example = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.5)])
    batch_norm = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(name="bn")]
    )
    if not tf.config.list_physical_devices("GPU"):
        assert runtime.resolve_batch_splits(0, per_example, 64) == (runtime.auto_batch_splits(64), "")
    assert runtime.resolve_batch_splits(0, per_example, 64, jit_compile=True)[0] == 1
    splits, why = runtime.resolve_batch_splits(0, batch_norm, 64)
    assert splits == 1 and "'bn'" in why
    with pytest.raises(ValueError, match="'bn'"):
        runtime.resolve_batch_splits(2, batch_norm, 64)
    assert runtime.resolve_batch_splits(0, per_example, 64, replicas=2) == (1, "2 replicas")
    assert runtime.resolve_batch_splits(0, per_example, None)[0] == 1  # a Dataset: batch size unknown


def test_thread_pool_sizes():
    assert runtime.thread_pool_sizes(1) == (0, 0)  # TensorFlow's defaults
    assert runtime.thread_pool_sizes(2, cores=8) == (2, 4)
    assert runtime.thread_pool_sizes(2, cores=2) == (2, 1)
    assert runtime.thread_pool_sizes(4, cores=2) == (4, 1)  # at least one thread per op


def test_configure_threads_after_tensorflow_started_changes_nothing(caplog):
    tf.constant(1.0) + 1.0  # the runtime runs (already true in a test session)
    before = (
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    )
    assert runtime.configure_threads(1) is False
    assert runtime.configure_threads(2) is False
    assert "thread pools stay as they are" in caplog.text
    after = (
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    )
    assert after == before


def test_auto_leaves_xla_off_under_op_determinism(monkeypatch):
    """XLA cannot compile a deterministic MaxPool gradient; "auto" must not pick it then, even with a GPU."""
    from tensorflow.python.framework import config as tf_config

    monkeypatch.setattr(runtime, "accelerator_present", lambda: True)
    assert runtime.resolve_jit_compile("auto") is True
    tf.config.experimental.enable_op_determinism()
    try:
        assert runtime.resolve_jit_compile("auto") is False
        assert runtime.resolve_jit_compile("true") is True  # an explicit choice stays the caller's
    finally:
        tf_config.disable_op_determinism()
