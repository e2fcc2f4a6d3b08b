"""The resolved run configuration, and the one place where epoch-based settings become step counts."""

import dataclasses
import json
import math
from typing import Optional, Tuple

import keras

from clr_loop import errors
from clr_loop import augment as augment_lib
from clr_loop import distribute
from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import datasets
from clr_loop import inputs
from clr_loop.experiment import models
from clr_loop import runtime
from clr_loop import schedules

MODES = ("none",) + schedules.MODES + ("one_cycle", "piecewise")
MODES += ("cosine", "cosine_restarts", "wsd")
# Modes whose schedule spans the run's `epochs` (after any warmup), so `epochs` is part of it.
SPANNING_MODES = ("one_cycle", "cosine", "wsd")
# The share of wsd's steps spent decaying when neither decay_epochs nor decay_fraction is set
# (Hägele et al. 2024 cool down over the last 20%).
WSD_DECAY_FRACTION = 0.2
MODES += ("schedule_free",)
# The optimizers --mode=schedule_free has (clr_loop.optimizers.ScheduleFreeSGD / ScheduleFreeAdamW).
SCHEDULE_FREE_OPTIMIZERS = ("sgd", "adamw")
# The schedule-free reference's interpolation beta, used for SGD when --momentum is left at 0.
SCHEDULE_FREE_MOMENTUM = 0.9
JIT_CHOICES = ("auto", "true", "false")
STRATEGIES = distribute.STRATEGIES
OPTIMIZERS = ("sgd", "adam", "adamw")
INPUT_MODES = inputs.INPUT_MODES
PRECISIONS = runtime.PRECISIONS
# Keras AdamW's own default decoupled weight decay, used when weight_decay is not set.
ADAMW_WEIGHT_DECAY = 0.004
# numpy's legacy seeding (behind keras.utils.set_random_seed) takes seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
# Bounds that keep every step count within TensorFlow's int64 (a run this long never ends anyway).
MAX_EPOCHS = 10**9
MAX_COUNT = 2**62
# Virtual CPU devices are for trying distribution out on one machine; TensorFlow takes minutes to
# set up tens of thousands of them.
MAX_VIRTUAL_CPUS = 64
MAX_CLUSTER_TIMEOUT = distribute.MAX_CLUSTER_TIMEOUT
_COUNTS = ("batch_size", "eval_batch_size", "steps_per_loop", "log_every_steps", "keep_checkpoints",
           "max_steps", "checkpoint_every_steps", "virtual_cpus", "batch_splits")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a training run; the trainer and tools take this, never absl FLAGS.

    Durations named `*_epochs` are in epochs and become steps only in `plan_steps`; everything
    else named `*steps*` is in optimizer steps (batches). Rates are per step, as Keras SGD uses them.
    """

    mode: str = "triangular2"
    lr: float = 0.01
    initial_lr: float = 1e-4
    max_lr: float = 1e-2
    step_size_epochs: float = 2.0
    step_size_down_epochs: Optional[float] = None
    gamma: float = 1.0
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    momentum: float = 0.0
    cycle_momentum: Optional[bool] = None
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    seed: int = 42
    steps_per_loop: int = 100
    log_every_steps: int = 100
    max_steps: int = 0
    jit_compile: str = "auto"
    workdir: str = "runs/triangular2"
    profile_steps: Optional[Tuple[int, int]] = None
    tfds_data_dir: Optional[str] = None
    dataset_dir: Optional[str] = None
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    deterministic: bool = False
    overwrite: bool = False
    init_weights: Optional[str] = None
    save_init: Optional[str] = None
    strategy: str = "default"
    devices: Optional[Tuple[str, ...]] = None
    virtual_cpus: int = 0
    batch_splits: int = 0
    cluster_timeout: float = 60.0
    dataset: str = datasets.DEFAULT
    train_split: str = "train"
    eval_split: str = "test"
    model: str = "tutorial_cnn"
    optimizer: str = "sgd"
    weight_decay: Optional[float] = None
    augment: str = "none"
    input_mode: str = "auto"
    boundaries_epochs: Optional[Tuple[float, ...]] = None
    values: Optional[Tuple[float, ...]] = None
    warmup_epochs: float = 0.0
    final_lr: Optional[float] = None
    t_mul: Optional[float] = None
    m_mul: Optional[float] = None
    decay_epochs: Optional[float] = None
    decay_fraction: Optional[float] = None
    decay_shape: Optional[str] = None
    precision: str = "float32"

    def to_json_dict(self):
        """Returns the configuration as a JSON-safe dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json_dict(cls, values):
        """Returns a Config from `to_json_dict` output; unknown keys raise a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        values = dict(values)
        for key in ("profile_steps", "devices", "boundaries_epochs", "values"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def uses_cycle_momentum(self):
        """True when the momentum (SGD's, Adam's beta_1) follows the schedule (default: only for one_cycle)."""
        if self.mode in ("none", "schedule_free"):
            return False
        if self.cycle_momentum is None:
            return self.mode == "one_cycle"
        return self.cycle_momentum


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """A run's durations in optimizer steps, resolved from a Config and the training-set size."""

    steps_per_epoch: int
    total_steps: int
    step_size: int
    step_size_down: Optional[int]
    boundaries: Optional[Tuple[int, ...]] = None
    warmup_steps: int = 0
    decay_steps: Optional[int] = None


def plan_steps(config, num_train_examples):
    """Returns the StepPlan (all in steps) for `config` on a training set of that many examples.

    Steps per epoch are `num_train_examples // batch_size` (the last partial batch is dropped);
    `step_size = round(step_size_epochs * steps_per_epoch)`, at least 1; `total_steps` is
    `epochs * steps_per_epoch`, capped by `max_steps` when that is positive; `boundaries` (mode
    piecewise) are `round(e * steps_per_epoch)` for each of `boundaries_epochs`, else None;
    `warmup_steps = round(warmup_epochs * steps_per_epoch)` (at least 1 when warmup_epochs > 0, 0
    without a warmup); `decay_steps` (mode wsd) is `round(decay_epochs * steps_per_epoch)`, or
    `round(decay_fraction * epochs * steps_per_epoch)` (default fraction 0.2), at least 1, else None.
    """
    steps_per_epoch = fashion_mnist.steps_per_epoch(num_train_examples, config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps > 0:
        total = min(total, config.max_steps)

    def to_steps(epochs):
        return None if epochs is None else max(1, int(round(epochs * steps_per_epoch)))

    return StepPlan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        step_size=to_steps(config.step_size_epochs),
        step_size_down=to_steps(config.step_size_down_epochs),
        boundaries=None if config.boundaries_epochs is None else tuple(
            int(round(e * steps_per_epoch)) for e in config.boundaries_epochs),
        warmup_steps=to_steps(config.warmup_epochs) if config.warmup_epochs else 0,
        decay_steps=_decay_steps(config, steps_per_epoch) if config.mode == "wsd" else None,
    )


def _decay_steps(config, steps_per_epoch):
    """Returns wsd's decay length in steps (at least 1), from decay_epochs or the run's fraction."""
    if config.decay_epochs is not None:
        return max(1, int(round(config.decay_epochs * steps_per_epoch)))
    fraction = WSD_DECAY_FRACTION if config.decay_fraction is None else config.decay_fraction
    return max(1, int(round(fraction * config.epochs * steps_per_epoch)))


class ConfigError(errors.Error, ValueError):
    """Raised when a valid Config cannot run with what it meets only at run time: the replicas of its
    strategy, the model it builds; names the flags."""


class ScheduleError(errors.Error, ValueError):
    """Raised when a valid Config's schedule cannot be built for the data's size (a one-cycle too
    short to have all its phases); names the settings."""


def make_schedule(config, plan):
    """Returns the learning rate for `config`: a float for mode "none", else a Keras schedule in steps.

    With `plan.warmup_steps` > 0 the mode's schedule is wrapped in `schedules.Warmup` (linear from 0
    to its first rate, then the schedule with its steps counted from the end of the warmup); the
    modes that span the run (one_cycle, cosine) then span the `epochs * steps_per_epoch -
    warmup_steps` steps left, piecewise's boundaries stay where their epochs are, and wsd takes the
    warmup as its own (the same rates). cosine is Keras's `CosineDecay` from `max_lr` to `final_lr`
    (default 0) over those steps; cosine_restarts Keras's `CosineDecayRestarts` with a first period
    of `plan.step_size` steps, `t_mul` (default 2), `m_mul` (default 1) and the same end rate; wsd
    `schedules.WarmupStableDecay` at peak `max_lr` with `plan.decay_steps` of `decay_shape`
    (default linear) decay to `final_lr`.

    For piecewise, Keras's `PiecewiseConstantDecay` with the plan's step boundaries: `values[0]`
    for steps up to and including `boundaries[0]`, `values[i]` for steps in (boundaries[i-1],
    boundaries[i]], the last value after the last boundary (steps count from 0, as
    `optimizer.iterations` before the update). For one_cycle, the schedule spans
    `epochs * steps_per_epoch` steps (not `max_steps`), so a capped smoke run sees the start of the
    real schedule. Raises ScheduleError when those steps are too few for its phases.
    """
    warmup = plan.warmup_steps
    if config.mode == "schedule_free":
        return config.max_lr  # constant: the optimizer warms it up and averages (trainer.make_optimizer)
    if config.mode == "wsd":
        return _wsd(config, plan)
    schedule = _unwarmed_schedule(config, plan)
    if not warmup:
        return schedule
    return schedules.Warmup(schedule, warmup)


def _run_steps(config, plan):
    """Returns the steps the spanning modes' schedule lasts: `epochs * steps_per_epoch - warmup_steps`;
    raises ScheduleError when the warmup leaves none."""
    total = config.epochs * plan.steps_per_epoch
    if plan.warmup_steps >= total:
        raise ScheduleError(
            f"--warmup_epochs={config.warmup_epochs} is {plan.warmup_steps} steps, which leaves none of the "
            f"--epochs={config.epochs} x {plan.steps_per_epoch} batches per epoch = {total} steps for --mode={config.mode}"
        )
    return total - plan.warmup_steps


def _wsd(config, plan):
    """Returns mode wsd's `schedules.WarmupStableDecay`; raises ScheduleError when its phases do not fit."""
    total = config.epochs * plan.steps_per_epoch
    try:
        return schedules.WarmupStableDecay(
            config.max_lr, total, plan.warmup_steps, plan.decay_steps,
            final_lr=config.final_lr or 0.0, decay=config.decay_shape or "linear")
    except ValueError as e:
        raise ScheduleError(
            f"--mode=wsd spans --epochs={config.epochs} x {plan.steps_per_epoch} batches per epoch = {total} steps, "
            f"with {plan.warmup_steps} warmup steps (--warmup_epochs) and {plan.decay_steps} decay steps "
            f"(--decay_epochs or --decay_fraction): {e}"
        ) from None


def _unwarmed_schedule(config, plan):
    """Returns the rate of `config.mode` (not wsd) before any warmup wraps it; durations count from its end."""
    warmup = plan.warmup_steps
    if config.mode == "none":
        return config.lr
    if config.mode == "piecewise":
        boundaries = [b - warmup for b in plan.boundaries]
        if warmup and boundaries[0] <= 0:
            raise ScheduleError(f"--boundaries_epochs must be after the warmup: boundary step {plan.boundaries[0]} "
                                f"is within the {warmup} steps of --warmup_epochs={config.warmup_epochs}")
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [float(v) for v in config.values])
    final_lr = config.final_lr or 0.0
    if config.mode == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.max_lr, _run_steps(config, plan), alpha=final_lr / config.max_lr)
    if config.mode == "cosine_restarts":
        return keras.optimizers.schedules.CosineDecayRestarts(
            config.max_lr, plan.step_size, t_mul=2.0 if config.t_mul is None else config.t_mul,
            m_mul=1.0 if config.m_mul is None else config.m_mul, alpha=final_lr / config.max_lr)
    if config.mode == "one_cycle":
        total = _run_steps(config, plan)
        try:
            return schedules.OneCycle(
                config.max_lr,
                total,
                pct_start=config.pct_start,
                anneal_strategy=config.anneal_strategy,
                div_factor=config.div_factor,
                final_div_factor=config.final_div_factor,
                three_phase=config.three_phase,
            )
        except ValueError as e:
            less = f" less {warmup} warmup steps = {total}" if warmup else ""
            raise ScheduleError(
                f"--mode=one_cycle spans --epochs={config.epochs} x {plan.steps_per_epoch} batches per epoch = "
                f"{config.epochs * plan.steps_per_epoch}{less} steps, too few: {e}"
            ) from None
    return schedules.CyclicalLearningRate(
        config.initial_lr,
        config.max_lr,
        plan.step_size,
        mode=config.mode,
        gamma=config.gamma,
        step_size_down=plan.step_size_down,
    )


def validate(config):
    """Returns a list of problems with `config`'s values (empty when it is valid); touches no files."""
    problems = []

    def positive(name, integer=False):
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if integer:
            ok = ok and float(value).is_integer()
        if not ok:
            problems.append(f"--{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")

    if config.mode not in MODES:
        problems.append(f"--mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    for name in ("epochs", "batch_size", "eval_batch_size", "steps_per_loop", "log_every_steps", "keep_checkpoints"):
        positive(name, integer=True)
    for name in ("lr", "initial_lr", "max_lr", "step_size_epochs", "gamma", "div_factor", "final_div_factor"):
        positive(name)
    if config.step_size_down_epochs is not None:
        positive("step_size_down_epochs")
    for name in ("epochs", "step_size_epochs", "step_size_down_epochs"):
        value = getattr(config, name)
        if isinstance(value, (int, float)) and value > MAX_EPOCHS:
            problems.append(f"--{name} must be at most {MAX_EPOCHS:.0e} epochs, got {value!r}")
    for name in _COUNTS:
        value = getattr(config, name)
        if isinstance(value, int) and value > MAX_COUNT:
            problems.append(f"--{name} must be at most 2**62, got {value!r}")
    if not problems and config.mode in schedules.MODES and config.max_lr <= config.initial_lr:
        problems.append(f"--max_lr ({config.max_lr}) must be greater than --initial_lr ({config.initial_lr})")
    if not 0 < config.pct_start < 1:
        problems.append(f"--pct_start must be in (0, 1), got {config.pct_start}")
    if config.anneal_strategy not in schedules.ANNEAL_STRATEGIES:
        problems.append(f"--anneal_strategy must be cos or linear, got {config.anneal_strategy!r}")
    if not 0 <= config.momentum < 1:
        problems.append(f"--momentum must be in [0, 1), got {config.momentum}")
    if not 0 <= config.base_momentum <= config.max_momentum < 1:
        problems.append(
            f"need 0 <= --base_momentum ({config.base_momentum}) <= --max_momentum ({config.max_momentum}) < 1"
        )
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed <= MAX_SEED:
        problems.append(f"--seed must be an integer in [0, 2**32 - 1], got {config.seed!r}")
    if config.max_steps < 0:
        problems.append(f"--max_steps must be >= 0 (0 means no cap), got {config.max_steps}")
    if config.checkpoint_every_steps < 0:
        problems.append(f"--checkpoint_every_steps must be >= 0 (0 means each epoch end), got {config.checkpoint_every_steps}")
    if config.jit_compile not in JIT_CHOICES:
        problems.append(f"--jit_compile must be one of {', '.join(JIT_CHOICES)}, got {config.jit_compile!r}")
    if config.precision not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.deterministic and config.jit_compile == "true":
        problems.append("--deterministic cannot run with --jit_compile=true: XLA has no deterministic kernel for "
                        "some gradients (the CNN's MaxPool); --jit_compile=auto leaves XLA off under --deterministic")
    if config.profile_steps is not None:
        start, stop = config.profile_steps
        if not 0 <= start < stop:
            problems.append(f"--profile_steps must be START,STOP with 0 <= START < STOP, got {start},{stop}")
    for name in ("save_init", "init_weights"):
        path = getattr(config, name)
        if path is not None and not path.endswith(".weights.h5"):
            problems.append(f"--{name} must name a Keras weights file ending in .weights.h5, got {path!r}")
    if config.strategy not in STRATEGIES:
        problems.append(f"--strategy must be one of {', '.join(STRATEGIES)}, got {config.strategy!r}")
    if config.batch_splits < 0:
        problems.append(f"--batch_splits must be >= 0 (0: automatic), got {config.batch_splits}")
    elif config.batch_splits > 1 and config.batch_size % config.batch_splits:
        problems.append(f"--batch_splits={config.batch_splits} must divide --batch_size={config.batch_size}")
    elif config.batch_splits > 1 and config.strategy != "default":
        problems.append("--batch_splits > 1 needs --strategy=default (one replica)")
    if config.input_mode not in inputs.INPUT_MODES:
        problems.append(f"--input_mode must be one of {', '.join(inputs.INPUT_MODES)}, got {config.input_mode!r}")
    elif config.input_mode == "device" and config.strategy != "default":
        problems.append("--input_mode=device needs --strategy=default (one replica); --input_mode=auto feeds "
                        "the other strategies through tf.data")
    if not 0 <= config.virtual_cpus <= MAX_VIRTUAL_CPUS:
        problems.append(f"--virtual_cpus must be in [0, {MAX_VIRTUAL_CPUS}] (0: no split), got {config.virtual_cpus}")
    if not _finite_numbers([config.cluster_timeout]) or not 0 < config.cluster_timeout <= MAX_CLUSTER_TIMEOUT:
        problems.append(f"--cluster_timeout must be a number of seconds in (0, {MAX_CLUSTER_TIMEOUT}] (a week), "
                        f"got {config.cluster_timeout}")
    if config.strategy == "default" and config.devices:
        problems.append("--devices needs --strategy=mirrored")
    if not config.workdir:
        problems.append("--workdir must not be empty")
    for name in ("tfds_data_dir", "dataset_dir"):
        if getattr(config, name) is not None and not getattr(config, name).strip():
            problems.append(f"--{name} must not be empty (leave it out to find the data automatically)")
    problems.extend(_experiment_problems(config))
    problems.extend(_piecewise_problems(config))
    problems.extend(_warmup_and_decay_problems(config))
    problems.extend(_schedule_free_problems(config))
    return problems


def _warmup_and_decay_problems(config):
    """Returns the problems with the warmup and the cosine / cosine_restarts / wsd settings."""
    problems = []
    mode = config.mode
    warmup = config.warmup_epochs
    if not _finite_numbers([warmup]) or warmup < 0:
        problems.append(f"--warmup_epochs must be a number of epochs >= 0, got {warmup!r}")
    elif warmup > MAX_EPOCHS:
        problems.append(f"--warmup_epochs must be at most {MAX_EPOCHS:.0e} epochs, got {warmup!r}")
    elif mode in SPANNING_MODES and _finite_numbers([config.epochs]) and warmup >= config.epochs:
        problems.append(f"--warmup_epochs ({warmup:g}) must be less than --epochs ({config.epochs}) for --mode={mode}")
    elif mode == "piecewise" and warmup and config.boundaries_epochs and _finite_numbers(config.boundaries_epochs) \
            and min(config.boundaries_epochs) <= warmup:
        problems.append(f"--boundaries_epochs must be after the warmup (--warmup_epochs={warmup:g}), "
                        f"got {','.join(map(str, config.boundaries_epochs))}")
    owners = {"final_lr": ("cosine", "cosine_restarts", "wsd"), "t_mul": ("cosine_restarts",),
              "m_mul": ("cosine_restarts",), "decay_epochs": ("wsd",), "decay_fraction": ("wsd",),
              "decay_shape": ("wsd",)}
    for name, modes in owners.items():
        if getattr(config, name) is not None and mode not in modes:
            problems.append(f"--{name} is for --mode={' or --mode='.join(modes)}, not --mode={mode}")
    if mode not in ("cosine", "cosine_restarts", "wsd"):
        return problems
    final_lr = config.final_lr
    if final_lr is not None:
        if not _finite_numbers([final_lr]) or final_lr < 0:
            problems.append(f"--final_lr must be a learning rate >= 0, got {final_lr!r}")
        elif _finite_numbers([config.max_lr]) and final_lr >= config.max_lr:
            problems.append(f"--final_lr ({final_lr:g}) must be less than --max_lr ({config.max_lr:g})")
    for name in ("t_mul", "m_mul"):
        value = getattr(config, name)
        if value is not None and (not _finite_numbers([value]) or value <= 0):
            problems.append(f"--{name} must be a positive number, got {value!r}")
    if config.cycle_momentum:
        problems.append(f"--cycle_momentum needs a cyclical --mode (triangular, triangular2, exp_range, one_cycle), "
                        f"not {mode}; use --momentum")
    if mode != "wsd":
        return problems
    if config.decay_epochs is not None and config.decay_fraction is not None:
        problems.append("--decay_epochs and --decay_fraction both set the decay's length; give one")
    elif config.decay_epochs is not None:
        if not _finite_numbers([config.decay_epochs]) or config.decay_epochs <= 0:
            problems.append(f"--decay_epochs must be a positive number of epochs, got {config.decay_epochs!r}")
        elif _finite_numbers([warmup, config.epochs]) and warmup >= 0 and warmup + config.decay_epochs > config.epochs:
            problems.append(f"--warmup_epochs ({warmup:g}) + --decay_epochs ({config.decay_epochs:g}) must be at most "
                            f"--epochs ({config.epochs})")
    else:
        fraction = WSD_DECAY_FRACTION if config.decay_fraction is None else config.decay_fraction
        if not _finite_numbers([fraction]) or not 0 < fraction <= 1:
            problems.append(f"--decay_fraction must be in (0, 1] (the share of the run spent decaying), got {fraction!r}")
        elif _finite_numbers([warmup, config.epochs]) and warmup >= 0 and warmup + fraction * config.epochs > config.epochs:
            problems.append(f"--warmup_epochs ({warmup:g}) + --decay_fraction ({fraction:g}) x --epochs ({config.epochs}) "
                            f"must be at most --epochs")
    if config.decay_shape is not None and config.decay_shape not in schedules.WSD_DECAYS:
        problems.append(f"--decay_shape must be one of {', '.join(schedules.WSD_DECAYS)}, got {config.decay_shape!r}")
    return problems


def _schedule_free_problems(config):
    """Returns the problems of --mode=schedule_free (its optimizer and the settings it cannot use).

    Its peak rate is --max_lr, warmed up over --warmup_epochs; --lr, --initial_lr, the cycle and
    one-cycle settings are ignored (documented), as the rate has no schedule.
    """
    if config.mode != "schedule_free":
        return []
    problems = []
    if config.optimizer not in SCHEDULE_FREE_OPTIMIZERS:
        problems.append(f"--mode=schedule_free needs --optimizer=sgd or --optimizer=adamw "
                        f"(ScheduleFreeSGD / ScheduleFreeAdamW), got --optimizer={config.optimizer}")
    if config.cycle_momentum:
        problems.append("--cycle_momentum cannot run with --mode=schedule_free: its momentum is the constant "
                        "interpolation beta (--momentum for sgd; 0 means the reference's 0.9)")
    return problems


def _finite_numbers(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _piecewise_problems(config):
    """Returns the problems with the piecewise-constant schedule's settings (boundaries_epochs, values)."""
    boundaries, values = config.boundaries_epochs, config.values
    if config.mode != "piecewise":
        given = [f"--{name}" for name in ("boundaries_epochs", "values") if getattr(config, name) is not None]
        problems = [f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for --mode=piecewise, "
                    f"not --mode={config.mode}"] if given else []
        if config.mode == "none" and config.cycle_momentum:
            problems.append("--cycle_momentum needs a cyclical --mode (triangular, triangular2, exp_range, one_cycle), "
                            "not none (a constant rate); use --momentum")
        return problems
    problems = []
    if not boundaries:
        problems.append("--mode=piecewise needs --boundaries_epochs=E1,E2,... (the epochs where the rate changes)")
    elif not _finite_numbers(boundaries) or min(boundaries) <= 0:
        problems.append(f"--boundaries_epochs must be positive numbers of epochs, got {','.join(map(str, boundaries))}")
    elif any(b >= a for a, b in zip(boundaries[1:], boundaries)):
        problems.append(f"--boundaries_epochs must increase, got {','.join(map(str, boundaries))}")
    elif max(boundaries) > MAX_EPOCHS:
        problems.append(f"--boundaries_epochs must be at most {MAX_EPOCHS:.0e} epochs, got {max(boundaries)!r}")
    if not values:
        problems.append("--mode=piecewise needs --values=V0,V1,... (the rate before the first boundary, then after each)")
    elif not _finite_numbers(values) or min(values) <= 0:
        problems.append(f"--values must be positive learning rates, got {','.join(map(str, values))}")
    elif boundaries and len(values) != len(boundaries) + 1:
        problems.append(f"--values needs one rate more than --boundaries_epochs (before the first boundary, then "
                        f"after each): {len(boundaries)} boundaries, {len(values)} values")
    if config.cycle_momentum:
        problems.append("--cycle_momentum needs a cyclical --mode (triangular, triangular2, exp_range, one_cycle), "
                        "not piecewise; use --momentum")
    return problems


def _experiment_problems(config):
    """Returns the problems with the dataset, model, optimizer and augmentation settings."""
    problems = []
    dataset = config.dataset
    if not isinstance(dataset, str) or not dataset.strip():
        problems.append("--dataset must name a dataset (fashion_mnist, a TFDS name, or npz:PATH)")
    elif datasets.is_npz(dataset):
        if not dataset[len(datasets.NPZ_PREFIX):].strip():
            problems.append("--dataset=npz:PATH needs the path of a .npz file after npz:")
        if config.tfds_data_dir is not None:
            problems.append("--tfds_data_dir is for TFDS datasets, not --dataset=npz:PATH")
    if config.dataset_dir is not None and dataset != datasets.DEFAULT:
        problems.append(f"--dataset_dir (the raw Fashion-MNIST IDX files) needs --dataset={datasets.DEFAULT}, got {dataset!r}")
    for name in ("train_split", "eval_split"):
        if not str(getattr(config, name)).strip():
            problems.append(f"--{name} must name a split")
    if (config.train_split, config.eval_split) != ("train", "test") and isinstance(dataset, str) and datasets.is_npz(dataset):
        problems.append("--train_split/--eval_split are for TFDS datasets; a .npz file has x_train/x_test")
    if config.model not in models.MODELS and not models.is_user_function(config.model):
        problems.append(f"--model must be one of {', '.join(models.MODELS)} or module.path:function, got {config.model!r}")
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    elif config.optimizer != "sgd":
        if config.momentum:
            problems.append(f"--momentum is SGD's; --optimizer={config.optimizer} uses Keras's beta_1=0.9 "
                            "(or --base_momentum/--max_momentum when cycled)")
    decay = config.weight_decay
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float))
                              or not math.isfinite(decay) or decay < 0):
        problems.append(f"--weight_decay must be a number >= 0, got {decay!r}")
    if config.augment not in augment_lib.AUGMENTS:
        problems.append(f"--augment must be one of {', '.join(augment_lib.AUGMENTS)}, got {config.augment!r}")
    return problems
