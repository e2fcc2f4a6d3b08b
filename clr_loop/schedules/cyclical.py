"""The cyclical family: `CyclicalLearningRate` and TFA's three named subclasses.

Part of `clr_loop.schedules` (import the classes from there). The shared core (`_CyclicalCore` and
the subclasses' cores) is mixed with Keras 3's `LearningRateSchedule` here and with tf_keras's in
`clr_loop.tf_keras`.
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from clr_loop import scale_fns
from clr_loop.schedules._common import _PACKAGE, _as_step_tensor, public

MODES = scale_fns.MODES
SCALE_MODES = ("cycle", "iterations")


def _warn(message):
    warnings.warn(message, UserWarning, stacklevel=4)


def _is_variable(value):
    return isinstance(value, (tf.Variable, keras.Variable))


def _number(name, value, what):
    """Returns a Python float (or int for integer input) of a number, numpy scalar or constant tensor.

    Raises a ValueError naming `name` for anything else (a string, a callable, a non-scalar, a
    tensor whose value is not known).
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if isinstance(value, numbers.Real):
        return value
    if isinstance(value, (np.ndarray, np.generic)) or tf.is_tensor(value):
        static = tf.get_static_value(value) if tf.is_tensor(value) else np.asarray(value)
        if static is None:
            raise ValueError(f"{name} must be {what}; got a tensor whose value is unknown here ({value!r})")
        static = np.asarray(static)
        if static.shape != () or static.dtype.kind not in "iuf":
            raise ValueError(f"{name} must be {what} (a scalar), got {value!r}")
        return static.item()
    raise ValueError(f"{name} must be {what}, got {value!r}")


def _tfa_rate(name, value):
    """Returns `(number or variable, dtype)` for a TFA learning-rate bound.

    TFA accepted Python numbers and float tensors, and read a variable at every call; its output had
    `tf.convert_to_tensor(initial_learning_rate)`'s dtype. Here integers count as float32 (TFA could
    not compute with an integer rate). Only non-finite values are refused.
    """
    if _is_variable(value):
        dtype = tf.as_dtype(value.dtype)
        current = float(np.asarray(value.numpy()))
        if not dtype.is_floating:
            raise ValueError(f"{name} must be a float variable, got dtype {dtype.name}")
    else:
        current = _number(name, value, "a finite number")
        dtype = tf.as_dtype(value.dtype) if hasattr(value, "dtype") else tf.float32
        dtype = dtype if dtype.is_floating else tf.float32
        value = float(current)
    if not math.isfinite(current):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if current < 0:
        _warn(f"{name} is negative ({current}): the schedule will give negative learning rates, as TFA did")
    return value, dtype


def _tfa_steps(name, value, *, allow_none=False):
    """Returns a positive step count: an int when whole, else a float (TFA accepted 3.75 or a tensor)."""
    if value is None and allow_none:
        return None
    if _is_variable(value):
        raise ValueError(f"{name} must be a number or a constant tensor, not a variable, got {value!r}")
    number = _number(name, value, "a positive number of steps")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number of steps, got {value!r}")
    return int(number) if float(number).is_integer() else float(number)


def _tfa_gamma(gamma):
    if _is_variable(gamma):
        raise ValueError(f"gamma must be a number or a constant tensor, not a variable, got {gamma!r}")
    number = _number("gamma", gamma, "a finite number")
    if not math.isfinite(number):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    return float(number)


def _cycle_position(step, up, down):
    """Returns (cycle, height) for a cycle that rises over `up` steps and falls over `down` steps.

    `cycle` counts from 1 (float64). `height` in [0, 1] (float64) is 0 at the start of each cycle and
    1 at its peak. It equals TFA's `max(0, 1 - x)` and PyTorch CyclicLR's `scale_factor`. Integer
    steps with whole `up` and `down` use integer arithmetic; anything else float64.
    """
    total = up + down
    if step.dtype.is_integer and isinstance(up, int) and isinstance(down, int):
        cycle = tf.math.floordiv(step, total) + 1
        pos = tf.math.floormod(step, total)
    else:
        step = tf.cast(step, tf.float64)
        cycle = tf.math.floor(step / total) + 1.0
        pos = step - (cycle - 1.0) * total
    pos = tf.cast(pos, tf.float64)
    height = tf.where(pos <= up, pos / up, (total - pos) / down)
    return tf.cast(cycle, tf.float64), height


class _CyclicalCore:
    """The CLR family's arguments, math and config, shared by the Keras 3 and tf_keras classes.

    A concrete class mixes it with its Keras's `LearningRateSchedule` and sets `_saved_function`
    (a `scale_fns.SavedFunction` subclass registered with that Keras).
    """

    _saved_function = None

    def __init__(
        self,
        initial_learning_rate,
        maximal_learning_rate,
        step_size,
        scale_fn=None,
        scale_mode=None,
        name="CyclicalLearningRate",
        *,
        mode=None,
        gamma=1.0,
        step_size_down=None,
        dtype=None,
    ):
        super().__init__()
        self.initial_learning_rate, rate_dtype = _tfa_rate("initial_learning_rate", initial_learning_rate)
        self.maximal_learning_rate, _ = _tfa_rate("maximal_learning_rate", maximal_learning_rate)
        self.dtype = tf.as_dtype(dtype) if dtype is not None else rate_dtype
        if not self.dtype.is_floating:
            raise ValueError(f"dtype must be a float dtype, got {dtype!r}")
        lo, hi = self._bound_value(self.initial_learning_rate), self._bound_value(self.maximal_learning_rate)
        if hi < lo:
            _warn(
                f"maximal_learning_rate ({hi}) is below initial_learning_rate ({lo}): each cycle dips "
                "down to it instead of rising, as in TFA"
            )
        self.step_size = _tfa_steps("step_size", step_size)
        self.step_size_down = _tfa_steps("step_size_down", step_size_down, allow_none=True)
        self.gamma = _tfa_gamma(gamma)
        if scale_fn is not None and mode is not None:
            raise ValueError(f"pass either mode ({mode!r}) or scale_fn, not both")
        if isinstance(scale_fn, scale_fns.SavedFunction):
            scale_fn = scale_fn.fn
        if scale_fn is not None and not callable(scale_fn):
            raise ValueError(f"scale_fn must be callable, got {scale_fn!r}")
        if scale_mode is None:  # TFA's base class defaulted to "cycle"; exp_range counts steps.
            scale_mode = "iterations" if mode == "exp_range" else "cycle"
        if not isinstance(scale_mode, str):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        if scale_mode not in SCALE_MODES:
            _warn(f"scale_mode {scale_mode!r} is not 'cycle': it counts iterations, as in TFA")
        self._custom = None
        if scale_fn is not None:
            recognised = scale_fns.named_mode(scale_fn)
            if recognised is None:
                self._custom = scale_fn
            else:
                mode, self.gamma = recognised
        elif mode is None:
            mode = "triangular"
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "exp_range" and not 0 < self.gamma <= 1:
            _warn(f"gamma is {self.gamma}: outside (0, 1] the exp_range amplitude does not decay, as in TFA")
        self.mode = mode
        self.scale_fn = scale_fn if scale_fn is not None else scale_fns.ModeScale(mode, self.gamma)
        self.scale_mode = scale_mode
        self.name = name

    @staticmethod
    def _bound_value(bound):
        return float(np.asarray(bound.numpy())) if _is_variable(bound) else bound

    @staticmethod
    def _bound_tensor(bound):
        return tf.cast(bound, tf.float64) if _is_variable(bound) else bound

    def _scale(self, cycle, step, raw_step):
        """Returns the amplitude multiplier (float64) for the given cycle number and step."""
        by_cycle = self.scale_mode == "cycle"
        if self._custom is not None:
            # As TFA: the cycle number in the schedule's dtype, or the step exactly as passed in.
            if by_cycle:
                return tf.cast(self._custom(tf.cast(cycle, self.dtype)), tf.float64)
            try:
                out = self._custom(raw_step)
            except (TypeError, ValueError):
                # TFA failed here (an integer tensor the function cannot take); Keras 2's optimizers
                # passed the step cast to the rate's dtype.
                if not (tf.is_tensor(raw_step) and raw_step.dtype.is_integer):
                    raise
                out = self._custom(tf.cast(raw_step, self.dtype))
            return tf.cast(out, tf.float64)
        arg = cycle if by_cycle else tf.cast(step, tf.float64)
        if self.mode == "triangular":
            return tf.ones_like(arg)
        if self.mode == "triangular2":
            return tf.exp(-(arg - 1.0) * math.log(2.0))
        if self.gamma > 0:
            return tf.exp(arg * math.log(self.gamma))
        return tf.pow(tf.constant(self.gamma, tf.float64), arg)  # 0**0 == 1; a negative gamma alternates

    def _height(self, step):
        """Returns the schedule's normalised height (float64): 0 at the bounds' low end, 1 at the top."""
        raw_step = step
        step = _as_step_tensor(step)
        down = self.step_size_down or self.step_size
        cycle, height = _cycle_position(step, self.step_size, down)
        return height * self._scale(cycle, step, raw_step)

    def __call__(self, step):
        with tf.name_scope(self.name or "CyclicalLearningRate"):
            lo = self._bound_tensor(self.initial_learning_rate)
            hi = self._bound_tensor(self.maximal_learning_rate)
            return tf.cast(lo + (hi - lo) * self._height(step), self.dtype)

    def momentum(self, step, base_momentum, max_momentum):
        """Returns the cyclical momentum for `step`: it moves opposite to the rate.

        It is `max_momentum` where the rate is at its initial value and `base_momentum` at the
        (scaled) peak, as PyTorch's `CyclicLR(cycle_momentum=True)` computes it.

        Args:
            step: the step (int, numpy array, or int/float tensor).
            base_momentum: the momentum at an unscaled peak of the rate.
            max_momentum: the momentum at `initial_learning_rate`.

        Returns:
            The momentum, a float32 tensor of `step`'s shape.
        """
        return tf.cast(max_momentum - (max_momentum - base_momentum) * self._height(step), tf.float32)

    def get_config(self):
        """Returns the config: JSON values for a named mode; a custom `scale_fn` under "scale_fn".

        The custom function is held by a `SavedFunction`, which Keras's serializer writes as a JSON
        dict (see `clr_loop.scale_fns`) and `from_config` turns back into the function in memory.
        """
        config = {
            "initial_learning_rate": self._bound_value(self.initial_learning_rate),
            "maximal_learning_rate": self._bound_value(self.maximal_learning_rate),
            "step_size": self.step_size,
            "step_size_down": self.step_size_down,
            "scale_mode": self.scale_mode,
            "mode": self.mode,
            "gamma": self.gamma,
            "name": self.name,
            "dtype": self.dtype.name,
        }
        if self._custom is not None:
            config["scale_fn"] = self._saved_function(self._custom)
        return config

    @classmethod
    def from_config(cls, config):
        """Returns the schedule a config describes: clr_loop's own, or one TFA's classes wrote.

        Numbers Keras wrote as `__numpy__`/`__tensor__` dicts are read back; `scale_fn` may be a
        saved function, bytecode (which needs `safe_mode=False`), a reference or a bare name.
        """
        config = dict(config)
        keras_module = cls._saved_function.keras_module
        for key in ("initial_learning_rate", "maximal_learning_rate", "step_size", "step_size_down", "gamma"):
            if isinstance(config.get(key), dict):
                config[key] = keras_module.saving.deserialize_keras_object(config[key])
        if config.get("scale_fn") is not None:
            config["scale_fn"] = scale_fns.load(config["scale_fn"], cls._saved_function)
        return cls(**config)


class _TriangularCore:
    """TFA's TriangularCyclicalLearningRate: the constant-amplitude mode."""

    def __init__(
        self,
        initial_learning_rate,
        maximal_learning_rate,
        step_size,
        scale_mode="cycle",
        name="TriangularCyclicalLearningRate",
        *,
        step_size_down=None,
        dtype=None,
    ):
        super().__init__(
            initial_learning_rate,
            maximal_learning_rate,
            step_size,
            scale_mode=scale_mode,
            name=name,
            mode="triangular",
            step_size_down=step_size_down,
            dtype=dtype,
        )

    def get_config(self):
        config = super().get_config()
        del config["mode"], config["gamma"]
        return config


class _Triangular2Core:
    """TFA's Triangular2CyclicalLearningRate: the amplitude halves every cycle."""

    def __init__(
        self,
        initial_learning_rate,
        maximal_learning_rate,
        step_size,
        scale_mode="cycle",
        name="Triangular2CyclicalLearningRate",
        *,
        step_size_down=None,
        dtype=None,
    ):
        super().__init__(
            initial_learning_rate,
            maximal_learning_rate,
            step_size,
            scale_mode=scale_mode,
            name=name,
            mode="triangular2",
            step_size_down=step_size_down,
            dtype=dtype,
        )

    def get_config(self):
        config = super().get_config()
        del config["mode"], config["gamma"]
        return config


class _ExponentialCore:
    """TFA's ExponentialCyclicalLearningRate: the amplitude is multiplied by `gamma**step`."""

    def __init__(
        self,
        initial_learning_rate,
        maximal_learning_rate,
        step_size,
        scale_mode="iterations",
        gamma=1.0,
        name="ExponentialCyclicalLearningRate",
        *,
        step_size_down=None,
        dtype=None,
    ):
        super().__init__(
            initial_learning_rate,
            maximal_learning_rate,
            step_size,
            scale_mode=scale_mode,
            name=name,
            mode="exp_range",
            gamma=gamma,
            step_size_down=step_size_down,
            dtype=dtype,
        )

    def get_config(self):
        config = super().get_config()
        del config["mode"]
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
@public
class ScaleFunction(scale_fns.SavedFunction):
    """A custom `scale_fn` inside a Keras 3 config (see `clr_loop.scale_fns.SavedFunction`).

    A `CyclicalLearningRate` with a custom `scale_fn` puts one in its `get_config`; Keras's
    serializer writes it as a JSON dict, and loading it gives back the function itself.

    Args:
        fn: the callable to save.

    Example:
        >>> import keras
        >>> from clr_loop.schedules import ScaleFunction
        >>> saved = keras.saving.serialize_keras_object(ScaleFunction(abs))
        >>> saved["registered_name"], saved["config"]
        ('clr_loop>ScaleFunction', {'kind': 'import', 'module': 'builtins', 'name': 'abs'})
        >>> keras.saving.deserialize_keras_object(saved) is abs
        True
    """

    keras_module = keras

    @staticmethod
    def safe_mode_state():
        from keras.src.saving import serialization_lib  # noqa: PLC0415 (no public accessor)

        return serialization_lib.in_safe_mode()


@keras.saving.register_keras_serializable(package=_PACKAGE)
@public
class CyclicalLearningRate(_CyclicalCore, keras.optimizers.schedules.LearningRateSchedule):
    """A cyclical learning rate (Smith, 2015), with TensorFlow Addons' arguments and formula.

    Calling the schedule with a step returns the learning rate
    `initial + (maximal - initial) * height(step) * scale(cycle or step)`, in the dtype of
    `initial_learning_rate` (float32 for a Python number; `dtype` overrides it), where `height` rises
    linearly from 0 to 1 over `step_size` steps and falls back over `step_size_down` steps (default
    `step_size`; PyTorch's `CyclicLR(step_size_up, step_size_down)`), and `scale` is picked by `mode`
    ("triangular": 1, "triangular2": 1/2**(cycle-1), "exp_range": gamma**step) or given as a Python
    `scale_fn` as in TFA. Durations are in optimizer steps (batches), not epochs; `step_size` may be
    fractional or a constant tensor, as in TFA. With neither `mode` nor `scale_fn` the schedule is
    triangular. `scale_mode` says whether the scale function sees the cycle number (from 1, as a
    float tensor of the schedule's dtype) or the step (as passed in); anything but "cycle" counts
    steps, and `None` picks "iterations" for exp_range and "cycle" otherwise.

    A `scale_fn` written as one of the named modes (the tutorial's `lambda x: 1/(2.**(x-1))`) is
    computed and saved as that mode. Any other is saved as Keras saves a Lambda layer's function:
    loading it needs `safe_mode=False`. Odd but computable arguments (maximal below initial, a
    gamma outside (0, 1], a negative rate) warn; non-finite numbers and step sizes <= 0 raise.

    Args:
        initial_learning_rate: the rate at the start of each cycle: a number, a float tensor, or a
            float variable (read at every call, as TFA did). Its dtype is the schedule's.
        maximal_learning_rate: the rate at the peak of an unscaled cycle (same kinds); below
            `initial_learning_rate` it warns and each cycle dips instead of rising.
        step_size: steps from the start of a cycle to its peak, > 0 (fractional or a constant
            tensor allowed, as in TFA).
        scale_fn: a callable of the cycle number or the step giving the amplitude factor (TFA's
            argument), or None; not together with `mode`.
        scale_mode: "cycle" or "iterations": what `scale_fn` (or the mode) is a function of; None
            picks "iterations" for "exp_range" and "cycle" otherwise.
        name: name scope of the ops.
        mode: keyword only: "triangular", "triangular2" or "exp_range"; None (with no `scale_fn`)
            is "triangular".
        gamma: keyword only: the per-step factor of "exp_range" (1.0 by default).
        step_size_down: keyword only: steps from the peak to the end of a cycle, > 0; None means
            `step_size` (PyTorch's `step_size_down`).
        dtype: keyword only: a float dtype for the rate; None takes `initial_learning_rate`'s.

    Returns:
        A Keras `LearningRateSchedule`. Called with a step (a Python int, numpy array, or int/float
        tensor such as `optimizer.iterations`), it returns the rate as a tensor of its dtype;
        `momentum(step, base_momentum, max_momentum)` returns the cyclical momentum to go with it.

    Raises:
        ValueError: naming the argument: a rate or gamma that is not a finite number, a step size
            that is not > 0, an unknown `mode`, both `mode` and `scale_fn`, a `scale_fn` that is not
            callable, a `scale_mode` that is not a string, or a `dtype` that is not a float dtype.

    Example:
        >>> from clr_loop.schedules import CyclicalLearningRate
        >>> lr = CyclicalLearningRate(1e-4, 1e-2, step_size=4, mode="triangular2")
        >>> [round(float(lr(t)), 6) for t in (0, 2, 4, 8, 12)]  # the second peak (12) is half as high
        [0.0001, 0.00505, 0.01, 0.0001, 0.00505]
        >>> round(float(lr.momentum(4, base_momentum=0.85, max_momentum=0.95)), 6)  # low at the peak
        0.85
    """

    _saved_function = ScaleFunction


@keras.saving.register_keras_serializable(package=_PACKAGE)
@public
class TriangularCyclicalLearningRate(_TriangularCore, CyclicalLearningRate):
    """TFA's triangular CLR: a constant-amplitude cycle between the two rates.

    `CyclicalLearningRate(..., mode="triangular")` with TFA's signature and config (no `mode` or
    `gamma` keys).

    Args:
        initial_learning_rate: the rate at the start of each cycle (a number, float tensor or
            float variable).
        maximal_learning_rate: the rate at each peak.
        step_size: steps from the start of a cycle to its peak, > 0.
        scale_mode: "cycle" (TFA's default) or "iterations"; with this mode both give the same rates.
        name: name scope of the ops.
        step_size_down: keyword only: steps from the peak to the end of a cycle; None means
            `step_size`.
        dtype: keyword only: a float dtype for the rate; None takes `initial_learning_rate`'s.

    Returns:
        A schedule; called with a step, the rate (see `CyclicalLearningRate`).

    Raises:
        ValueError: as `CyclicalLearningRate`, naming the argument.

    Example:
        >>> from clr_loop.schedules import TriangularCyclicalLearningRate
        >>> lr = TriangularCyclicalLearningRate(1e-4, 1e-2, step_size=4)
        >>> [round(float(lr(t)), 6) for t in (0, 4, 8, 12)]
        [0.0001, 0.01, 0.0001, 0.01]
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
@public
class Triangular2CyclicalLearningRate(_Triangular2Core, CyclicalLearningRate):
    """TFA's triangular2 CLR: the amplitude halves every cycle.

    `CyclicalLearningRate(..., mode="triangular2")` with TFA's signature and config (no `mode` or
    `gamma` keys).

    Args:
        initial_learning_rate: the rate at the start of each cycle (a number, float tensor or
            float variable).
        maximal_learning_rate: the rate at the first peak; peak k is
            `initial + (maximal - initial) / 2**(k - 1)`.
        step_size: steps from the start of a cycle to its peak, > 0.
        scale_mode: "cycle" (TFA's default: halve per cycle) or "iterations" (halve per step).
        name: name scope of the ops.
        step_size_down: keyword only: steps from the peak to the end of a cycle; None means
            `step_size`.
        dtype: keyword only: a float dtype for the rate; None takes `initial_learning_rate`'s.

    Returns:
        A schedule; called with a step, the rate (see `CyclicalLearningRate`).

    Raises:
        ValueError: as `CyclicalLearningRate`, naming the argument.

    Example:
        >>> from clr_loop.schedules import Triangular2CyclicalLearningRate
        >>> lr = Triangular2CyclicalLearningRate(0.1, 0.5, step_size=2)
        >>> [round(float(lr(t)), 6) for t in (2, 6, 10)]  # the peaks
        [0.5, 0.3, 0.2]
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
@public
class ExponentialCyclicalLearningRate(_ExponentialCore, CyclicalLearningRate):
    """TFA's exp_range CLR: the amplitude is multiplied by `gamma**step`.

    `CyclicalLearningRate(..., mode="exp_range")` with TFA's signature and config (no `mode` key).

    Args:
        initial_learning_rate: the rate at the start of each cycle (a number, float tensor or
            float variable).
        maximal_learning_rate: the rate an unscaled peak would reach.
        step_size: steps from the start of a cycle to its peak, > 0.
        scale_mode: "iterations" (TFA's default: `gamma**step`) or "cycle" (`gamma**cycle`).
        gamma: the factor per step (or cycle); outside (0, 1] it warns (the amplitude grows).
        name: name scope of the ops.
        step_size_down: keyword only: steps from the peak to the end of a cycle; None means
            `step_size`.
        dtype: keyword only: a float dtype for the rate; None takes `initial_learning_rate`'s.

    Returns:
        A schedule; called with a step, the rate (see `CyclicalLearningRate`).

    Raises:
        ValueError: as `CyclicalLearningRate`, naming the argument.

    Example:
        >>> from clr_loop.schedules import ExponentialCyclicalLearningRate
        >>> lr = ExponentialCyclicalLearningRate(0.0, 1.0, step_size=10, gamma=0.9)
        >>> round(float(lr(10)), 6)  # the first peak: 0.9**10
        0.348678
    """


TFA_NAMES = {
    "Addons>CyclicalLearningRate": CyclicalLearningRate,
    "Addons>TriangularCyclicalLearningRate": TriangularCyclicalLearningRate,
    "Addons>Triangular2CyclicalLearningRate": Triangular2CyclicalLearningRate,
    "Addons>ExponentialCyclicalLearningRate": ExponentialCyclicalLearningRate,
}
# TFA registered its classes under these names; models saved by TFA users carry them.
keras.saving.get_custom_objects().update(TFA_NAMES)
