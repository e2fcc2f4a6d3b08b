"""Cyclical learning-rate schedules for Keras 3, a drop-in for `tfa.optimizers.CyclicalLearningRate`.

Every schedule maps a step (a Python int, a numpy array of steps, or a float/int32/int64 tensor such as
`optimizer.iterations`) to a learning rate (float32, or for the CLR family the dtype of
`initial_learning_rate` as in TFA), and works inside `tf.function(jit_compile=True)`.

Precision: TensorFlow Addons computed the position inside a cycle as `step / step_size - 2 * cycle + 1`
in float32, which loses about three digits by step 10^4 when step_size is small. Here the position is
computed with integer arithmetic (int64 steps and whole step sizes) or float64, and powers such as
`gamma ** step` as `exp(step * log(gamma))` in float64, so float32 results stay within about 1e-6
relative of a float64 reference up to step 10^7.

Serialization: schedules are registered with Keras, under clr_loop's names and, for the CLR family,
TFA's (`Addons>CyclicalLearningRate`, ...), so models saved with TFA load. A named mode's config holds
only JSON values (the mode's *name*); a custom `scale_fn` is saved as Keras saves a Lambda layer's
function (see `clr_loop.scale_fns`).
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from clr_loop import scale_fns

MODES = scale_fns.MODES
SCALE_MODES = ("cycle", "iterations")
ANNEAL_STRATEGIES = ("cos", "linear")
_PACKAGE = "clr_loop"


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
        """Returns the cyclical momentum (float32) for `step`: it moves opposite to the rate.

        It is `max_momentum` where the rate is at its initial value and `base_momentum` at the
        (scaled) peak, as PyTorch's `CyclicLR(cycle_momentum=True)` computes it.
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
class ScaleFunction(scale_fns.SavedFunction):
    """A custom `scale_fn` inside a Keras 3 config (see `clr_loop.scale_fns.SavedFunction`)."""

    keras_module = keras

    @staticmethod
    def safe_mode_state():
        from keras.src.saving import serialization_lib  # noqa: PLC0415 (no public accessor)

        return serialization_lib.in_safe_mode()


_CYCLICAL_DOC = """A cyclical learning rate (Smith, 2015), with TensorFlow Addons' arguments and formula.

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
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CyclicalLearningRate(_CyclicalCore, keras.optimizers.schedules.LearningRateSchedule):
    __doc__ = _CYCLICAL_DOC
    _saved_function = ScaleFunction


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TriangularCyclicalLearningRate(_TriangularCore, CyclicalLearningRate):
    """TFA's triangular CLR: a constant-amplitude cycle between the two rates (see CyclicalLearningRate)."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Triangular2CyclicalLearningRate(_Triangular2Core, CyclicalLearningRate):
    """TFA's triangular2 CLR: the amplitude halves every cycle (see CyclicalLearningRate)."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExponentialCyclicalLearningRate(_ExponentialCore, CyclicalLearningRate):
    """TFA's exp_range CLR: the amplitude is multiplied by `gamma**step` (see CyclicalLearningRate)."""


TFA_NAMES = {
    "Addons>CyclicalLearningRate": CyclicalLearningRate,
    "Addons>TriangularCyclicalLearningRate": TriangularCyclicalLearningRate,
    "Addons>Triangular2CyclicalLearningRate": Triangular2CyclicalLearningRate,
    "Addons>ExponentialCyclicalLearningRate": ExponentialCyclicalLearningRate,
}
# TFA registered its classes under these names; models saved by TFA users carry them.
keras.saving.get_custom_objects().update(TFA_NAMES)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's one-cycle policy, with the values of PyTorch's `OneCycleLR` for the same arguments.

    Calling it with a step returns a float32 rate. The rate warms up from
    `maximal_learning_rate / div_factor` to `maximal_learning_rate` over the first
    `pct_start * total_steps` steps, then anneals ("cos" or "linear") down to
    `initial / final_div_factor` at step `total_steps - 1`. With `three_phase`, it first returns to
    the initial rate symmetrically and only then anneals to the minimum. Durations are steps.
    Unlike PyTorch, which raises, steps past `total_steps - 1` hold the final (minimum) rate.
    """

    def __init__(
        self,
        maximal_learning_rate,
        total_steps,
        pct_start=0.3,
        anneal_strategy="cos",
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
        name="OneCycle",
    ):
        super().__init__()
        self.maximal_learning_rate = _check_rate("maximal_learning_rate", maximal_learning_rate)
        if self.maximal_learning_rate <= 0:
            raise ValueError(f"maximal_learning_rate must be > 0, got {maximal_learning_rate!r}")
        self.total_steps = _check_steps("total_steps", total_steps)
        if isinstance(pct_start, bool) or not isinstance(pct_start, numbers.Real) or not 0 < pct_start < 1:
            raise ValueError(f"pct_start must be a number in (0, 1), got {pct_start!r}")
        if anneal_strategy not in ANNEAL_STRATEGIES:
            raise ValueError(f"anneal_strategy must be one of {ANNEAL_STRATEGIES}, got {anneal_strategy!r}")
        for arg, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")
        self.pct_start = float(pct_start)
        self.anneal_strategy = anneal_strategy
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.three_phase = bool(three_phase)
        self.name = name
        # The phase boundaries are PyTorch's, including its float end steps.
        up_end = self.pct_start * self.total_steps - 1.0
        if self.three_phase:
            self._ends = (up_end, 2.0 * self.pct_start * self.total_steps - 2.0, self.total_steps - 1.0)
        else:
            self._ends = (up_end, self.total_steps - 1.0)
        starts = (0.0,) + self._ends[:-1]
        if any(end <= start for start, end in zip(starts, self._ends)):
            raise ValueError(
                f"total_steps={total_steps} with pct_start={pct_start} leaves a phase with no steps; "
                "use more total_steps or a pct_start further from 0 and 1"
            )

    @property
    def initial_learning_rate(self):
        """The starting rate, `maximal_learning_rate / div_factor` (float)."""
        return self.maximal_learning_rate / self.div_factor

    @property
    def minimal_learning_rate(self):
        """The final rate, `initial_learning_rate / final_div_factor` (float)."""
        return self.initial_learning_rate / self.final_div_factor

    def _interpolate(self, step, values):
        """Returns the float64 value at `step` of the phase-wise anneal through `values`."""
        step = tf.minimum(tf.cast(_as_step_tensor(step), tf.float64), self._ends[-1])
        result = tf.zeros_like(step)
        start = 0.0
        done = tf.zeros_like(step, dtype=tf.bool)
        for i, end in enumerate(self._ends):
            pct = (step - start) / (end - start)
            v0, v1 = values[i], values[i + 1]
            if self.anneal_strategy == "cos":
                value = v1 + (v0 - v1) / 2.0 * (tf.cos(math.pi * pct) + 1.0)
            else:
                value = (v1 - v0) * pct + v0
            in_phase = tf.logical_not(done) if i == len(self._ends) - 1 else tf.logical_and(tf.logical_not(done), step <= end)
            result = tf.where(in_phase, value, result)
            done = tf.logical_or(done, in_phase)
            start = end
        return result

    def __call__(self, step):
        with tf.name_scope(self.name or "OneCycle"):
            lo, hi, lowest = self.initial_learning_rate, self.maximal_learning_rate, self.minimal_learning_rate
            values = (lo, hi, lo, lowest) if self.three_phase else (lo, hi, lowest)
            return tf.cast(self._interpolate(step, values), tf.float32)

    def momentum(self, step, base_momentum, max_momentum):
        """Returns PyTorch OneCycleLR's cycled momentum (float32): max -> base while the rate warms up, then back."""
        values = (
            (max_momentum, base_momentum, max_momentum, max_momentum)
            if self.three_phase
            else (max_momentum, base_momentum, max_momentum)
        )
        return tf.cast(self._interpolate(step, values), tf.float32)

    def get_config(self):
        return {
            "maximal_learning_rate": self.maximal_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "three_phase": self.three_phase,
            "name": self.name,
        }


WARMUP_SHAPES = ("linear", "cos")
WSD_DECAYS = ("linear", "cos", "sqrt")


def _check_schedule(name, value):
    """Returns `value` if it is a learning rate: a Keras LearningRateSchedule or a number >= 0 (as a float)."""
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a Keras LearningRateSchedule or a number >= 0, got {value!r}")
    return _check_rate(name, value)


def _rate_at(schedule, step):
    """Returns the float32 rate of `schedule` (a LearningRateSchedule or a float) at `step` (a tensor)."""
    if isinstance(schedule, float):
        return tf.fill(tf.shape(step), tf.constant(schedule, tf.float32))
    return tf.broadcast_to(tf.cast(schedule(step), tf.float32), tf.shape(step))


def _serialize_schedule(schedule):
    """Returns a JSON-safe config of a rate: the float itself, or the schedule's nested Keras config."""
    return schedule if isinstance(schedule, float) else keras.saving.serialize_keras_object(schedule)


def _deserialize_schedule(config):
    """Returns the rate a `_serialize_schedule` config describes (a float or a LearningRateSchedule)."""
    if isinstance(config, dict):
        return keras.saving.deserialize_keras_object(config)
    return config


def _check_count(name, value):
    """Returns `value` as an int if it is a whole number of steps >= 0; raises a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a whole number of steps >= 0, got {value!r}")
    if value < 0 or value != int(value):
        raise ValueError(f"{name} must be a whole number of steps >= 0, got {value!r}")
    return int(value)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _shifted(step, offset):
    """Returns `step - offset` clipped at 0, in `step`'s dtype (int64 or float64)."""
    return tf.maximum(step - tf.cast(offset, step.dtype), tf.zeros_like(step))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """A warmup in front of any schedule: the wrapped schedule starts once the warmup is over.

    Calling it with a step returns a float32 rate. For `step < warmup_steps` the rate rises from
    `start_lr` to `target = schedule(0)`: "linear" `start_lr + (target - start_lr) * step /
    warmup_steps`, "cos" `start_lr + (target - start_lr) * (1 - cos(pi * step / warmup_steps)) / 2`.
    From `warmup_steps` on it is `schedule(step - warmup_steps)`: the wrapped schedule sees the step
    *shifted*, as PyTorch's `SequentialLR`, optax's `join_schedules` and Keras's own `CosineDecay`
    warmup do, so it runs whole (its peak, cycles and end come `warmup_steps` later than alone) and
    the rate is continuous at the end of the warmup. Durations are optimizer steps.

    With `momentum` (as `CyclicalMomentum` uses it), a wrapped clr_loop schedule's momentum is shifted
    likewise and held at `max_momentum` (the momentum of a low rate) during the warmup.

    Args:
        schedule: the rate after the warmup: a Keras `LearningRateSchedule` (clr_loop's or Keras's
            own) or a constant rate (a number >= 0).
        warmup_steps: positive whole number of steps the warmup lasts.
        start_lr: the rate at step 0, >= 0.
        shape: "linear" or "cos" (half a cosine: slow at both ends).
        name: name scope of the ops.

    Returns:
        A schedule; called with a step (int, numpy array, or int/float tensor such as
        `optimizer.iterations`), a float32 rate.

    Example:
        >>> lr = Warmup(keras.optimizers.schedules.CosineDecay(0.1, 1000), warmup_steps=100)
        >>> [round(float(lr(t)), 6) for t in (50, 100, 1100)]  # halfway up, the peak, the cosine's end
        [0.05, 0.1, 0.0]
    """

    def __init__(self, schedule, warmup_steps, start_lr=0.0, shape="linear", name="Warmup"):
        super().__init__()
        self.schedule = _check_schedule("schedule", schedule)
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps)
        self.start_lr = _check_rate("start_lr", start_lr)
        self.shape = _check_choice("shape", shape, WARMUP_SHAPES)
        self.name = name

    def _ramp(self, step):
        """Returns the warmup's progress (float64): 0 at step 0, 1 at `warmup_steps` and after."""
        pct = tf.minimum(tf.cast(step, tf.float64) / self.warmup_steps, 1.0)
        if self.shape == "cos":
            return (1.0 - tf.cos(math.pi * pct)) / 2.0
        return pct

    def __call__(self, step):
        with tf.name_scope(self.name or "Warmup"):
            step = _as_step_tensor(step)
            after = _rate_at(self.schedule, _shifted(step, self.warmup_steps))
            target = tf.cast(_rate_at(self.schedule, tf.zeros_like(step)), tf.float64)
            warm = tf.cast(self.start_lr + (target - self.start_lr) * self._ramp(step), tf.float32)
            return tf.where(step < tf.cast(self.warmup_steps, step.dtype), warm, after)

    def momentum(self, step, base_momentum, max_momentum):
        """Returns the float32 momentum: `max_momentum` during the warmup, then the wrapped schedule's, shifted.

        Raises AttributeError when the wrapped schedule has no `momentum` method.
        """
        inner = getattr(self.schedule, "momentum", None)
        if not callable(inner):
            raise AttributeError(f"the wrapped schedule {self.schedule!r} has no momentum method")
        step = _as_step_tensor(step)
        after = tf.cast(inner(_shifted(step, self.warmup_steps), base_momentum, max_momentum), tf.float32)
        held = tf.fill(tf.shape(step), tf.constant(max_momentum, tf.float32))
        return tf.where(step < tf.cast(self.warmup_steps, step.dtype), held, after)

    def get_config(self):
        return {
            "schedule": _serialize_schedule(self.schedule),
            "warmup_steps": self.warmup_steps,
            "start_lr": self.start_lr,
            "shape": self.shape,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = _deserialize_schedule(config["schedule"])
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Sequence(keras.optimizers.schedules.LearningRateSchedule):
    """Schedules one after another, with PyTorch `SequentialLR`'s semantics: each segment counts from 0.

    `segments` is a list of `(schedule, num_steps)` pairs, the last with `num_steps=None` (it runs
    for ever). Segment i covers steps `[b_i, b_i + num_steps_i)` with `b_i` the sum of the earlier
    segments' lengths, and there the rate is `schedule_i(step - b_i)`: its own step count from 0, as
    PyTorch restarts the next scheduler at each milestone. Durations are optimizer steps. Sequences
    nest (a segment may be a Sequence or a Warmup), and the nested configs round-trip through JSON.

    Args:
        segments: list of `(schedule, num_steps)`; a schedule is a Keras `LearningRateSchedule` or a
            constant rate (a number >= 0); every `num_steps` but the last's is a positive whole number,
            the last is None.
        name: name scope of the ops.

    Returns:
        A schedule; called with a step (int, numpy array, or int/float tensor), a float32 rate.

    Example:
        >>> lr = Sequence([(0.01, 100), (keras.optimizers.schedules.CosineDecay(0.1, 900), None)])
        >>> [round(float(lr(t)), 6) for t in (99, 100)]  # the constant's last step, the cosine's step 0
        [0.01, 0.1]
    """

    def __init__(self, segments, name="Sequence"):
        super().__init__()
        if isinstance(segments, (str, bytes)) or not isinstance(segments, (list, tuple)) or not segments:
            raise ValueError(f"segments must be a non-empty list of (schedule, num_steps) pairs, got {segments!r}")
        checked = []
        for i, segment in enumerate(segments):
            if not isinstance(segment, (list, tuple)) or len(segment) != 2:
                raise ValueError(f"segments[{i}] must be a (schedule, num_steps) pair, got {segment!r}")
            schedule, num_steps = segment
            schedule = _check_schedule(f"segments[{i}] schedule", schedule)
            last = i == len(segments) - 1
            if last and num_steps is not None:
                raise ValueError(f"segments[{i}] num_steps must be None (the last segment runs for ever), got {num_steps!r}")
            if not last:
                num_steps = _check_steps(f"segments[{i}] num_steps", num_steps)
            checked.append((schedule, num_steps))
        self.segments = checked
        self.name = name

    @property
    def boundaries(self):
        """The steps where each segment after the first starts (a list of ints)."""
        ends, total = [], 0
        for _, num_steps in self.segments[:-1]:
            total += num_steps
            ends.append(total)
        return ends

    def __call__(self, step):
        with tf.name_scope(self.name or "Sequence"):
            step = _as_step_tensor(step)
            starts = [0] + self.boundaries
            result = _rate_at(self.segments[0][0], step)
            for (schedule, _), start in zip(self.segments[1:], starts[1:]):
                value = _rate_at(schedule, _shifted(step, start))
                result = tf.where(step >= tf.cast(start, step.dtype), value, result)
            return result

    def get_config(self):
        return {
            "segments": [[_serialize_schedule(s), n] for s, n in self.segments],
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["segments"] = [(_deserialize_schedule(s), n) for s, n in config["segments"]]
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The warmup-stable-decay (WSD) schedule of MiniCPM (Hu et al. 2024), with Hägele et al.'s decays.

    Calling it with a step `t` returns a float32 rate. With `W = warmup_steps`, `D = decay_steps`,
    `T = total_steps` and `p = (t - (T - D)) / D`:

    - warmup, `t < W`: `peak_lr * t / W` (linear from 0);
    - stable, `W <= t < T - D`: `peak_lr`;
    - decay, `T - D <= t < T`: `final_lr + (peak_lr - final_lr) * f(p)` with "linear" `f = 1 - p`,
      "cos" `f = (1 + cos(pi * p)) / 2`, "sqrt" `f = 1 - sqrt(p)` (Hägele et al. 2024's 1-sqrt);
    - `t >= T`: `final_lr`.

    So the rate is `peak_lr` at step `T - D`, and step `T` (one past a `T`-step run) would be the
    first at `final_lr`. Durations are optimizer steps.

    Args:
        peak_lr: the stable rate, > 0.
        total_steps: positive whole number of steps of the run.
        warmup_steps: whole number of warmup steps >= 0.
        decay_steps: positive whole number of decay steps; `warmup_steps + decay_steps <= total_steps`.
        final_lr: the rate the decay ends at, in [0, peak_lr].
        decay: "linear", "cos" or "sqrt".
        name: name scope of the ops.

    Returns:
        A schedule; called with a step (int, numpy array, or int/float tensor), a float32 rate.

    Example:
        >>> lr = WarmupStableDecay(0.1, total_steps=1000, warmup_steps=100, decay_steps=200)
        >>> [round(float(lr(t)), 6) for t in (50, 500, 900, 1000)]
        [0.05, 0.1, 0.05, 0.0]
    """

    def __init__(self, peak_lr, total_steps, warmup_steps, decay_steps, final_lr=0.0, decay="linear",
                 name="WarmupStableDecay"):
        super().__init__()
        self.peak_lr = _check_rate("peak_lr", peak_lr)
        if self.peak_lr <= 0:
            raise ValueError(f"peak_lr must be > 0, got {peak_lr!r}")
        self.total_steps = _check_steps("total_steps", total_steps)
        self.warmup_steps = _check_count("warmup_steps", warmup_steps)
        self.decay_steps = _check_steps("decay_steps", decay_steps)
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) + decay_steps ({decay_steps}) must be at most total_steps "
                f"({total_steps})"
            )
        self.final_lr = _check_rate("final_lr", final_lr)
        if self.final_lr > self.peak_lr:
            raise ValueError(f"final_lr ({final_lr}) must be at most peak_lr ({peak_lr})")
        self.decay = _check_choice("decay", decay, WSD_DECAYS)
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name or "WarmupStableDecay"):
            t = tf.cast(_as_step_tensor(step), tf.float64)
            peak, final = self.peak_lr, self.final_lr
            decay_start = float(self.total_steps - self.decay_steps)
            p = tf.clip_by_value((t - decay_start) / self.decay_steps, 0.0, 1.0)
            if self.decay == "cos":
                f = (1.0 + tf.cos(math.pi * p)) / 2.0
            elif self.decay == "sqrt":
                f = 1.0 - tf.sqrt(p)
            else:
                f = 1.0 - p
            value = final + (peak - final) * f
            if self.warmup_steps:
                value = tf.where(t < self.warmup_steps, peak * t / self.warmup_steps, value)
            return tf.cast(value, tf.float32)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "final_lr": self.final_lr,
            "decay": self.decay,
            "name": self.name,
        }
