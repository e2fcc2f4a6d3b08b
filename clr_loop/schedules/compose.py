"""Composing schedules: `Warmup` in front of any schedule, `Sequence` of schedules, and `WarmupStableDecay`.

Part of `clr_loop.schedules` (import the classes from there). A composed schedule's config nests
the configs of the schedules it holds, so it round-trips through JSON.
"""

import math
import numbers

import keras
import tensorflow as tf

from clr_loop.schedules._common import (
    _PACKAGE,
    _as_step_tensor,
    _check_rate,
    _check_steps,
    public,
)

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
@public
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
        A Keras `LearningRateSchedule`; called with a step (int, numpy array, or int/float tensor
        such as `optimizer.iterations`), a float32 rate. `momentum(step, base_momentum,
        max_momentum)` gives the wrapped schedule's momentum, shifted.

    Raises:
        ValueError: naming the argument: a `schedule` that is neither a schedule nor a number
            >= 0, `warmup_steps` not a positive whole number, a negative or non-finite `start_lr`,
            or an unknown `shape`.

    Example:
        >>> import keras
        >>> from clr_loop.schedules import Warmup
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
        """Returns the momentum: `max_momentum` during the warmup, then the wrapped schedule's, shifted.

        Args:
            step: the step (int, numpy array, or int/float tensor).
            base_momentum: the momentum at the wrapped schedule's peak rate.
            max_momentum: the momentum at its low rate, and during the warmup.

        Returns:
            The momentum, a float32 tensor of `step`'s shape.

        Raises:
            AttributeError: the wrapped schedule has no `momentum` method.
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
@public
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
        A Keras `LearningRateSchedule`; called with a step (int, numpy array, or int/float
        tensor), a float32 rate. Its `boundaries` are the steps where segments 2, 3, ... start.

    Raises:
        ValueError: naming the segment: `segments` not a non-empty list of pairs, a schedule that
            is neither a schedule nor a number >= 0, an inner `num_steps` that is not a positive
            whole number, or a last `num_steps` that is not None.

    Example:
        >>> import keras
        >>> from clr_loop.schedules import Sequence
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
                raise ValueError(
                    f"segments[{i}] num_steps must be None (the last segment runs for ever), got {num_steps!r}"
                )
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
@public
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
        A Keras `LearningRateSchedule`; called with a step (int, numpy array, or int/float
        tensor), a float32 rate.

    Raises:
        ValueError: naming the argument: `peak_lr` not > 0, a step count that is not a whole
            number (positive for `total_steps` and `decay_steps`), `warmup_steps + decay_steps >
            total_steps`, `final_lr` outside [0, peak_lr], or an unknown `decay`.

    Example:
        >>> from clr_loop.schedules import WarmupStableDecay
        >>> lr = WarmupStableDecay(0.1, total_steps=1000, warmup_steps=100, decay_steps=200)
        >>> [round(float(lr(t)), 6) for t in (50, 500, 900, 1000)]
        [0.05, 0.1, 0.05, 0.0]
    """

    def __init__(
        self, peak_lr, total_steps, warmup_steps, decay_steps, final_lr=0.0, decay="linear", name="WarmupStableDecay"
    ):
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
