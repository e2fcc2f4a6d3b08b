"""The learning-rate range test (Smith, "Cyclical Learning Rates", 2017) as a library function.

`find_lr(model, x, y, ...)` takes a compiled Keras model and `fit`'s inputs (arrays or a
`tf.data.Dataset`), and runs `clr_loop.steps`' train step with a fresh copy of the model's
optimizer whose rate ramps up from `start_lr` to `end_lr`, one batch per step. It records the
loss and fastai's bias-corrected EMA of it, and stops when the smoothed loss exceeds
`diverge_factor` times its best value or a step is not finite. It returns a `RangeTestResult`
whose `Suggestions` are read off the smoothed curve (fastai's "valley" point as the maximal rate,
the steepest descent, a base rate of max / 4); the model and its optimizer end as they began.
`plot` draws a result. No flags: bad arguments raise ValueError naming the argument.
`python -m clr_loop.lr_range_test` is the app that runs it on the tutorial's CNN.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from clr_loop import _keras
from clr_loop import inputs
from clr_loop import runtime
from clr_loop import steps as steps_lib

RAMPS = ("exp", "linear")
STOP_REASONS = ("completed", "diverged", "non_finite", "out_of_data", "interrupted")
# Smith (2017, section 3.3): base_lr is 1/3 or 1/4 of max_lr; 4 is the cautious end of his range.
BASE_LR_DIVISOR = 4.0
# fastai's lr_find leaves out the first tenth of the planned steps (the loss has not moved yet)
# and the last 5 recorded points (the blow-up) before it suggests rates.
SKIP_START_FRACTION = 10
SKIP_END_POINTS = 5


@keras.saving.register_keras_serializable(package="clr_loop")
class RangeRamp(keras.optimizers.schedules.LearningRateSchedule):
    """The range test's rising rate: step k of n uses a rate between `start_lr` (k = 0) and `end_lr` (k = n - 1).

    "exp" gives `start_lr * (end_lr / start_lr) ** (k / (n - 1))` (equal steps in log rate),
    "linear" gives `start_lr + (end_lr - start_lr) * k / (n - 1)`. Steps past n - 1 hold
    `end_lr`. Returns float32; works on `optimizer.iterations` inside `tf.function(jit_compile=True)`.
    """

    def __init__(self, start_lr, end_lr, num_steps, ramp="exp"):
        super().__init__()
        problems = check_ramp(start_lr, end_lr, num_steps, ramp)
        if problems:
            raise ValueError("; ".join(problems))
        self.start_lr = float(start_lr)
        self.end_lr = float(end_lr)
        self.num_steps = int(num_steps)
        self.ramp = ramp

    def __call__(self, step):
        t = tf.minimum(tf.cast(step, tf.float64) / (self.num_steps - 1), 1.0)
        if self.ramp == "exp":
            lr = self.start_lr * tf.exp(t * math.log(self.end_lr / self.start_lr))
        else:
            lr = self.start_lr + (self.end_lr - self.start_lr) * t
        return tf.cast(lr, tf.float32)

    def get_config(self):
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "num_steps": self.num_steps, "ramp": self.ramp}


def check_ramp(start_lr, end_lr, num_steps, ramp, *, label=str):
    """Returns a list of problems with the ramp's arguments (empty when they are valid), one str each.

    Each problem names the argument it is about as `label(argument name)`: the bare name by
    default (`start_lr`), which an app may turn into the name of its flag.
    """
    problems = []
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not (number(start_lr) and start_lr > 0):
        problems.append(f"{label('start_lr')} must be a finite number > 0, got {start_lr!r}")
    if not number(end_lr):
        problems.append(f"{label('end_lr')} must be a finite number, got {end_lr!r}")
    elif number(start_lr) and end_lr <= start_lr:
        problems.append(f"{label('end_lr')} ({end_lr}) must be greater than {label('start_lr')} ({start_lr})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        problems.append(f"{label('num_steps')} must be an integer >= 2, got {num_steps!r}")
    if ramp not in RAMPS:
        problems.append(f"{label('ramp')} must be one of {', '.join(RAMPS)}, got {ramp!r}")
    return problems


@dataclasses.dataclass(frozen=True)
class Suggestions:
    """Rates read off the smoothed loss curve (all per-step rates, as SGD uses them).

    `steepest_lr`: where the smoothed loss falls fastest per unit of log rate. `valley_lr`:
    fastai's valley point, which is also the suggested maximal rate `max_lr`. `base_lr`:
    `max_lr / BASE_LR_DIVISOR`. `window`: the (first, last) step indices the suggestions were read
    from.
    """

    steepest_lr: float
    valley_lr: float
    max_lr: float
    base_lr: float
    window: tuple


@dataclasses.dataclass(frozen=True)
class RangeTestResult:
    """One range test: per recorded step the rate used, the batch loss and the smoothed loss.

    `lr`, `loss`, `smoothed_loss` are lists of equal length, one entry per step that ran with a
    finite loss (the loss is the batch mean before that step's update). `stop_reason` is one of
    STOP_REASONS; `stop_lr` the rate of the step that stopped it (for "non_finite" that step is
    not recorded). `settings` holds the ramp, smoothing and divergence factor; `suggestions` is a
    Suggestions, or None when too few steps ran or the smoothed loss never fell.
    """

    lr: list
    loss: list
    smoothed_loss: list
    stop_reason: str
    stop_lr: float
    settings: dict
    suggestions: Suggestions

    def to_json_dict(self):
        """Returns the result as a JSON-safe dict, the content of `lr_range.json` (plus `flags` there)."""
        value = dataclasses.asdict(self)
        if self.suggestions is not None:
            value["suggestions"]["window"] = list(self.suggestions.window)
            value["suggestions"]["base_lr_rule"] = f"max_lr / {BASE_LR_DIVISOR:g}"
        return value


def _fresh_copy(optimizer, learning_rate):
    """Returns a new, unbuilt optimizer of `optimizer`'s class and settings, with `learning_rate` as its rate.

    A `LossScaleOptimizer` is copied around a fresh copy of its inner optimizer.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        config = optimizer.get_config()
        config.pop("inner_optimizer")
        return type(optimizer)(_fresh_copy(optimizer.inner_optimizer, learning_rate), **config)
    config = optimizer.get_config()
    config["learning_rate"] = learning_rate
    return type(optimizer).from_config(config)


def _build(model, spec):
    """Builds `model`, its compiled loss and its compiled metrics from a batch spec, as `fit` does
    before its first step, without building `model.optimizer` (which the range test never uses)."""
    optimizer = model.optimizer
    was_built = optimizer.built
    optimizer.built = True  # Keras's symbolic build would create the optimizer's slots otherwise
    try:
        with model.distribute_strategy.scope():
            _keras.symbolic_build(model, spec)
    finally:
        optimizer.built = was_built


def _state_variables(model):
    """Returns every variable the range test may change: the model's, the compiled metrics' and
    loss's, and the dropout seed states, each once."""
    metrics = _keras.compiled_metrics(model)
    candidates = (
        list(model.variables)
        + list(model.metrics_variables)
        + (list(metrics.variables) if metrics is not None else [])
        + _keras.seed_generator_states(model)
    )
    unique = {}
    for variable in candidates:
        unique.setdefault(id(variable), variable)
    return list(unique.values())


def _batches(model, x, y, batch_size, shuffle, seed, num_steps):
    """Returns the tf.data.Dataset of at most `num_steps` `(x, y)` training batches for `find_lr`.

    The input is checked as `fit` checks it (`inputs.make_train_input`, `inputs.check_fits_model`),
    so bad input raises the same InputError.
    """
    if isinstance(x, tf.data.Dataset):
        # Only the first `num_steps` batches are used, so an endless dataset is fine here.
        x = x.take(num_steps)
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise inputs.InputError(f"seed must be an integer, got {seed!r}", argument="seed")
    train_input = inputs.make_train_input(x, y, batch_size, shuffle=shuffle, drop_remainder=True)
    if train_input.dataset is not None:
        spec = train_input.dataset.element_spec
        dataset = train_input.dataset
    else:
        spec = inputs.element_spec_of(train_input.arrays)
        dataset = inputs.array_train_dataset(
            train_input.arrays, train_input.batch_size, int(seed), shuffle=shuffle, drop_remainder=True
        ).take(num_steps)
    inputs.check_fits_model(model, spec, "x")
    return dataset, spec


def find_lr(
    model,
    x=None,
    y=None,
    *,
    batch_size=None,
    shuffle=True,
    seed=0,
    start_lr=1e-7,
    end_lr=10.0,
    num_steps=100,
    ramp="exp",
    smoothing=0.98,
    diverge_factor=4.0,
    jit_compile=False,
):
    """Runs the range test on a compiled `model` and returns a RangeTestResult; the model ends as it began.

    `model` must be compiled (`model.compile(optimizer, loss, ...)`): the test trains with that
    loss plus `model.losses`, in `clr_loop.steps`' compiled train step (XLA when `jit_compile`,
    which is True, False or "auto"), with a fresh copy of `model.optimizer`'s class and settings
    (`get_config`/`from_config`) whose rate is `RangeRamp(start_lr, end_lr, num_steps, ramp)`:
    step k (0-based) trains one batch at the ramp's rate k. `model.optimizer` (its iterations,
    slots and rate) is never touched. The inputs are `fit`'s: arrays `x`, `y` in batches of
    `batch_size` (default 32) in the order of `seed` (a stateless shuffle per epoch unless
    `shuffle=False`; each epoch's last partial batch is dropped, and a test longer than an epoch
    goes on into the next), or a `tf.data.Dataset` `x` of `(x, y)` batches (`y` and `batch_size`
    None), of which at most `num_steps` are used. The model's variables, its compiled metrics'
    state and its dropout seed states are restored when the test ends, also when it raises.

    The recorded loss of a step is its batch's mean loss before the update; the smoothed loss is
    fastai's bias-corrected EMA: `avg = smoothing * avg + (1 - smoothing) * loss`,
    `smoothed = avg / (1 - smoothing ** (k + 1))`. The test stops after a step whose smoothed
    loss exceeds `diverge_factor` times the best so far, at a non-finite step, or when a Dataset
    ends. A KeyboardInterrupt (Ctrl-C) during the steps stops it too (stop_reason "interrupted"): the
    steps recorded so far are returned.

    Args:
        model: a compiled Keras model (built or not), on one device.
        x: the inputs: an array (or structure of arrays, as `fit` takes), or a `tf.data.Dataset`
            of `(x, y)` batches.
        y: the targets, for array inputs; None with a Dataset.
        batch_size: keyword only: the batch size for array inputs (default 32); None with a Dataset.
        shuffle: keyword only: whether to shuffle array inputs each epoch.
        seed: keyword only: the seed of that shuffle.
        start_lr: keyword only: the rate of the first step, > 0.
        end_lr: keyword only: the rate of step `num_steps - 1`, > start_lr.
        num_steps: keyword only: the most steps to run, an integer >= 2.
        ramp: keyword only: "exp" (equal steps in log rate) or "linear".
        smoothing: keyword only: the EMA's factor, in [0, 1).
        diverge_factor: keyword only: stop when the smoothed loss exceeds this times its best, > 1.
        jit_compile: keyword only: True, False or "auto": whether the train step is XLA-compiled.

    Returns:
        A `RangeTestResult`: per recorded step the rate, the loss and the smoothed loss, the
        `stop_reason` (one of STOP_REASONS) and `stop_lr`, and `suggestions` (a `Suggestions`, or
        None when too few steps ran or the smoothed loss never fell).

    Raises:
        ValueError: naming the argument, for bad arguments; for an uncompiled model, one built
            under a multi-replica strategy, or one with no trainable variables.
        inputs.InputError: (a ValueError) for bad input, as `fit` raises it.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> from clr_loop.lr_finder import find_lr
        >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
        >>> y = x @ np.ones((4, 1), "float32")
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
        >>> result = find_lr(model, x, y, batch_size=32, start_lr=1e-4, end_lr=10.0, num_steps=50)
        >>> result.stop_reason  # SGD on this regression blows up for rates above about 1
        'diverged'
        >>> 0.01 < result.suggestions.max_lr < 1.0
        True
        >>> result.suggestions.base_lr == result.suggestions.max_lr / 4
        True
    """
    problems = check_ramp(start_lr, end_lr, num_steps, ramp)
    if problems:
        raise ValueError("; ".join(problems))
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if not diverge_factor > 1:
        raise ValueError(f"diverge_factor must be > 1, got {diverge_factor!r}")
    steps_lib.check_compiled(model)
    jit_compile = runtime.resolve_jit_compile(jit_compile)
    strategy = model.distribute_strategy
    if strategy.num_replicas_in_sync > 1:
        raise ValueError(
            f"find_lr runs on one device, but the model was built under a strategy of "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    dataset, spec = _batches(model, x, y, batch_size, shuffle, seed, num_steps)
    _build(model, spec)
    if not model.trainable_variables:
        raise ValueError("the model has no trainable variables: there is nothing for the range test to train")
    schedule = RangeRamp(start_lr, end_lr, num_steps, ramp)
    with strategy.scope():
        optimizer = _fresh_copy(model.optimizer, schedule)
        optimizer.build(model.trainable_variables)
    steps = steps_lib.Steps(model, jit_compile=jit_compile, splits=1, optimizer=optimizer)

    variables = _state_variables(model)
    saved = [v.numpy() for v in variables]
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    stop_reason, stop_lr = "completed", float(schedule(num_steps - 1))
    iterator = iter(dataset)
    k = 0
    try:
        for k in range(num_steps):
            batch = next(iterator, None)
            if batch is None:
                stop_reason, stop_lr = "out_of_data", float(schedule(k))
                break
            metrics = steps.train_step(*batch)
            lr = float(metrics["lr"])
            loss = float(metrics["loss_sum"]) / float(metrics["count"])
            if not bool(metrics["finite"]):
                stop_reason, stop_lr = "non_finite", lr
                break
            avg = smoothing * avg + (1.0 - smoothing) * loss
            value = avg / (1.0 - smoothing ** (k + 1))
            best = min(best, value)
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            if value > diverge_factor * best:
                stop_reason, stop_lr = "diverged", lr
                break
    except KeyboardInterrupt:
        # Ctrl-C (or a notebook's interrupt) ends the test, not the work: the steps so far are the result.
        stop_reason, stop_lr = "interrupted", float(schedule(k))
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
    settings = {
        "start_lr": float(start_lr),
        "end_lr": float(end_lr),
        "num_steps": int(num_steps),
        "ramp": ramp,
        "smoothing": float(smoothing),
        "diverge_factor": float(diverge_factor),
    }
    return RangeTestResult(
        lr=lrs,
        loss=losses,
        smoothed_loss=smoothed,
        stop_reason=stop_reason,
        stop_lr=stop_lr,
        settings=settings,
        suggestions=suggest(lrs, smoothed, num_steps),
    )


def steepest_index(lrs, losses):
    """Returns the index i of the lowest slope `(losses[i+1] - losses[i]) / (log lrs[i+1] - log lrs[i])`.

    That is fastai's `steep` rule: where the loss falls fastest per unit of log rate.
    """
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return int(np.argmin(slopes))


def valley_index(losses):
    """Returns the valley index into `losses` (fastai's `valley` rule), or None when no point is below an earlier one.

    The valley is the longest strictly decreasing subsequence of the curve (O(n^2) dynamic
    programming), which skips over noise. With L its length and e its last index, it spans
    [e - L, e] and the suggestion is `e - L + int(L / 3) + int(L / 6)`, fastai's arithmetic: about
    half way along, although fastai's documentation describes the point as "roughly 2/3 through
    the longest valley". (fastai can record a shorter L when a run's length jumps, so on ragged
    curves its index may come out a little later.)
    """
    n = len(losses)
    longest = [1] * n  # longest[i]: length of the longest decreasing subsequence ending at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j]:
                longest[i] = max(longest[i], longest[j] + 1)
        if longest[i] > longest[end]:
            end = i
    length = longest[end]
    if length < 2:
        return None
    return max(0, end - length + int(length / 3) + int(length / 6))


def suggest(lrs, smoothed, num_steps):
    """Returns Suggestions from a range test's rates and smoothed losses, or None (too few points, or no descent).

    As fastai's `lr_find`, the first `num_steps // 10` and the last 5 recorded points are left
    out (when at least 3 points remain; otherwise all are used).
    """
    if len(lrs) < 3:
        return None
    first, last = num_steps // SKIP_START_FRACTION, len(lrs) - SKIP_END_POINTS
    if last - first < 3:
        first, last = 0, len(lrs)
    window_lrs, window_losses = lrs[first:last], smoothed[first:last]
    steepest = window_lrs[steepest_index(window_lrs, window_losses)]
    valley = valley_index(window_losses)
    if valley is None:
        return None
    max_lr = float(window_lrs[valley])
    return Suggestions(
        steepest_lr=float(steepest),
        valley_lr=max_lr,
        max_lr=max_lr,
        base_lr=max_lr / BASE_LR_DIVISOR,
        window=(first, last - 1),
    )


def plot(result, path):
    """Draws the loss against lr (log axis), raw and smoothed, with the suggestions marked, into a PNG at `path`.

    matplotlib (the `clr_loop[plot]` extra) is imported here, with no pyplot and no display.
    Returns `path`; raises ImportError when matplotlib is missing.
    """
    from matplotlib import figure  # pylint: disable=import-outside-toplevel

    fig = figure.Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.plot(result.lr, result.loss, color="0.75", linewidth=1, label="batch loss")
    ax.plot(result.lr, result.smoothed_loss, color="C0", linewidth=2, label="smoothed loss (EMA 0.98)")
    sug = result.suggestions
    if sug is not None:
        marks = (
            (sug.steepest_lr, "C2", ":", f"steepest {sug.steepest_lr:.2g}"),
            (sug.max_lr, "C3", "-", f"valley = max_lr {sug.max_lr:.2g}"),
            (sug.base_lr, "C1", "--", f"base_lr {sug.base_lr:.2g}"),
        )
        for lr, color, style, label in marks:
            ax.axvline(lr, color=color, linestyle=style, linewidth=1.5, label=label)
    if result.smoothed_loss:
        best = int(np.argmin(result.smoothed_loss))
        low = result.smoothed_loss[best]
        ax.plot(result.lr[best], low, "o", color="C0", label=f"lowest smoothed loss, lr {result.lr[best]:.2g}")
        # The frame holds the curve up to its lowest point; the blow-up after it runs off the top.
        high = max(result.smoothed_loss[: best + 1])
        margin = 0.15 * (high - low) or 0.1 * abs(high) or 1.0
        ax.set_ylim(low - margin, high + 2 * margin)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({result.settings['ramp']} ramp, stop: {result.stop_reason})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
