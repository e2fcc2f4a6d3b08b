"""Where and how the steps run: the XLA policy, batch splitting on CPUs, TensorFlow's thread pools,
and the Keras dtype policy (precision) a model is built under.

Nothing here runs at import. `configure_threads` must run before TensorFlow executes its first op
(an app's entry point does it; library code never does).
"""

import contextlib
import os

import keras
import tensorflow as tf
from absl import logging

from clr_loop import steps as steps_lib

# The Keras dtype policies a run can be built under: float32 everywhere, or float32 variables with
# bfloat16 / float16 computation (float16 with loss scaling, see `clr_loop.steps`).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@contextlib.contextmanager
def precision(name):
    """A context in which Keras layers are built under the dtype policy `name` (one of PRECISIONS);
    on leaving it the global policy is the one before it again. Yields the policy's name."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)


def model_precision(model):
    """Returns the name of `model`'s Keras dtype policy ("float32", "mixed_bfloat16", ...)."""
    return model.dtype_policy.name


def accelerator_present():
    """True when TensorFlow sees a GPU or TPU (reads the physical devices: does not start TensorFlow)."""
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def accelerator_memory_bytes():
    """Returns the bytes of memory TensorFlow's allocator may use on the first GPU (its
    `memory_limit`, about the memory free when TensorFlow started), or None without a GPU or when
    TensorFlow does not say."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    try:
        from tensorflow.python.client import device_lib  # pylint: disable=import-outside-toplevel

        limits = [d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU"]
    except Exception:  # pylint: disable=broad-except  (a private module: any failure means "unknown")
        return None
    return int(limits[0]) if limits and limits[0] else None


def resolve_jit_compile(choice):
    """Returns True/False for a `jit_compile` choice: True, False, "auto" (also "true"/"false").

    "auto" means XLA only where a GPU or TPU is present: on CPU, XLA's convolutions are slower than
    TensorFlow's oneDNN kernels (docs/performance.md), which is also why Keras's own
    `jit_compile="auto"` turns XLA off there. It is off too while TensorFlow's op determinism is on
    (`enable_op_determinism`): XLA has no deterministic kernel for some gradients (MaxPool's) and
    fails to compile the step.
    """
    if choice in (True, "true"):
        return True
    if choice in (False, "false"):
        return False
    if choice != "auto":
        raise ValueError(f"jit_compile must be 'auto', True or False, got {choice!r}")
    from tensorflow.python.framework import config as tf_config  # pylint: disable=import-outside-toplevel

    return accelerator_present() and not tf_config.is_op_determinism_enabled()


def cpu_cores():
    """Returns the number of CPU cores this process may run on (its affinity mask, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_batch_splits(batch_size, cores=None):
    """Returns how many parts a batch is best computed in on a CPU with `cores` cores (no XLA).

    One part per core, but at least 32 examples per part (smaller parts leave the convolutions
    too little work per call) and a number that divides the batch: 2 for the tutorial's batch of
    64 on 2 or more cores, 1 for a batch under 64 or one core. docs/performance.md has the
    measurements behind this choice.
    """
    splits = max(1, min(cores or cpu_cores(), batch_size // 32))
    while batch_size % splits:
        splits -= 1
    return splits


def resolve_batch_splits(batch_splits, model, batch_size, replicas=1, jit_compile=False):
    """Returns `(splits, reason)`: how many parts each batch of `model` is computed in, and why not more.

    `batch_splits` > 0 is taken as given, but raises ValueError when the model has a layer that
    depends on the whole batch (`steps.can_split`), since its parts would compute something else.
    For 0 (automatic): `auto_batch_splits(batch_size)` on a one-replica CPU run without XLA with a
    known batch size and a model that can be split, not under loss scaling; else 1, with the reason.
    """
    ok, why = steps_lib.can_split(model)
    if batch_splits:
        if batch_splits > 1 and not ok:
            raise ValueError(f"batch_splits={batch_splits}: the model cannot be computed in parts: {why}")
        return int(batch_splits), ""
    if not ok:
        return 1, why
    if isinstance(getattr(model, "optimizer", None), keras.optimizers.LossScaleOptimizer):
        # A part's float16 gradients sum fewer examples, so they overflow at another loss scale
        # than the whole batch's: the steps skipped would not be the ones Keras skips.
        return 1, "loss scaling (mixed_float16) skips the steps Keras skips only for whole batches"
    if replicas > 1:
        return 1, f"{replicas} replicas"
    if jit_compile:
        return 1, "XLA runs the parts one after the other"
    if accelerator_present():
        return 1, "a GPU or TPU is present"
    if batch_size is None:
        return 1, "the batch size of a Dataset is not known in advance"
    return auto_batch_splits(batch_size), ""


def thread_pool_sizes(splits, cores=None):
    """Returns the (inter-op, intra-op) pool sizes for `splits` batch parts side by side: `splits`
    inter-op threads and the cores shared among them; (0, 0), TensorFlow's defaults, for one part."""
    if splits < 2:
        return (0, 0)
    return (splits, max(1, (cores or cpu_cores()) // splits))


def configure_threads(splits):
    """Sets TensorFlow's thread pools to `thread_pool_sizes(splits)`. Returns True when set; False
    (changing nothing) for one part, or when TensorFlow has already run an op and its pools are fixed."""
    if splits < 2:
        return False
    inter_op, intra_op = thread_pool_sizes(splits)
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    except RuntimeError:
        logging.warning(
            "TensorFlow has started: its thread pools stay as they are, so the %d batch parts share them", splits
        )
        return False
    return True
