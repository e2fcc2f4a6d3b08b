"""Helpers the schedule modules share: argument checks, the step as a tensor, the Keras names.

Part of `clr_loop.schedules` (the public module); nothing here is public API.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

# The Keras registration package of every clr_loop schedule ("clr_loop>CyclicalLearningRate").
_PACKAGE = "clr_loop"
# The module every public schedule class says it comes from (its `__module__`): Keras writes it
# into a saved config's "module", and files saved before the split into submodules carry it.
PUBLIC_MODULE = "clr_loop.schedules"


def public(cls):
    """Class decorator: sets `cls.__module__` to PUBLIC_MODULE, so Keras saves it as before; returns `cls`."""
    cls.__module__ = PUBLIC_MODULE
    return cls


def _check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_steps(name, value, *, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive whole number of steps, got {value!r}")
    if value <= 0 or value != int(value):
        raise ValueError(f"{name} must be a positive whole number of steps, got {value!r}")
    return int(value)


def _as_step_tensor(step):
    """Returns `step` as an int64 tensor, or a float64 tensor when it is a floating-point value.

    Integer steps keep exact integer arithmetic; float steps (allowed by TFA, and produced by some
    callers) go to float64, which is exact for whole numbers up to 2**53.
    """
    if isinstance(step, (tf.Tensor, tf.Variable)) or hasattr(step, "dtype"):
        step = tf.convert_to_tensor(step)
    else:
        step = tf.convert_to_tensor(np.asarray(step))
    if step.dtype.is_floating:
        return tf.cast(step, tf.float64)
    if step.dtype.is_integer:
        return tf.cast(step, tf.int64)
    raise TypeError(f"step must be an integer or float tensor, got dtype {step.dtype.name}")
