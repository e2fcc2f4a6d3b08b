"""Smith's one-cycle policy (`OneCycle`), with PyTorch `OneCycleLR`'s values.

Part of `clr_loop.schedules` (import the class from there).
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

ANNEAL_STRATEGIES = ("cos", "linear")


@keras.saving.register_keras_serializable(package=_PACKAGE)
@public
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's one-cycle policy, with the values of PyTorch's `OneCycleLR` for the same arguments.

    Calling it with a step returns a float32 rate. The rate warms up from
    `maximal_learning_rate / div_factor` to `maximal_learning_rate` over the first
    `pct_start * total_steps` steps, then anneals ("cos" or "linear") down to
    `initial / final_div_factor` at step `total_steps - 1`. With `three_phase`, it first returns to
    the initial rate symmetrically and only then anneals to the minimum. Durations are steps.
    Unlike PyTorch, which raises, steps past `total_steps - 1` hold the final (minimum) rate.

    Args:
        maximal_learning_rate: the peak rate, > 0 (PyTorch's `max_lr`).
        total_steps: positive whole number of steps of the run.
        pct_start: the fraction of `total_steps` spent warming up, in (0, 1).
        anneal_strategy: "cos" or "linear".
        div_factor: the initial rate is `maximal_learning_rate / div_factor`, > 0.
        final_div_factor: the final rate is `initial / final_div_factor`, > 0.
        three_phase: whether to return to the initial rate before annealing to the final one.
        name: name scope of the ops.

    Returns:
        A Keras `LearningRateSchedule`; called with a step (int, numpy array, or int/float
        tensor), a float32 rate. `momentum(step, base_momentum, max_momentum)` gives OneCycleLR's
        cycled momentum.

    Raises:
        ValueError: naming the argument: a rate or factor that is not a finite number > 0,
            `total_steps` not a positive whole number, `pct_start` outside (0, 1), an unknown
            `anneal_strategy`, or a `total_steps` and `pct_start` that leave a phase with no steps.

    Example:
        >>> from clr_loop.schedules import OneCycle
        >>> lr = OneCycle(0.1, total_steps=100)
        >>> [round(float(lr(t)), 6) for t in (0, 29, 99)]  # initial, peak, final
        [0.004, 0.1, 0.0]
        >>> round(float(lr.momentum(29, base_momentum=0.85, max_momentum=0.95)), 6)
        0.85
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
            in_phase = (
                tf.logical_not(done) if i == len(self._ends) - 1 else tf.logical_and(tf.logical_not(done), step <= end)
            )
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
        """Returns PyTorch OneCycleLR's cycled momentum: max -> base while the rate warms up, then back.

        Args:
            step: the step (int, numpy array, or int/float tensor).
            base_momentum: the momentum at the peak rate.
            max_momentum: the momentum at the initial (and final) rate.

        Returns:
            The momentum, a float32 tensor of `step`'s shape.
        """
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
