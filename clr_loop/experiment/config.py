"""The resolved run configuration, and the one place where epoch-based settings become step counts."""

import dataclasses
import json
import re
from typing import Optional, Tuple

import keras

from clr_loop import errors
from clr_loop import distribute
from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import datasets
from clr_loop import inputs
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
# The integer settings that count steps, examples or files (each at most MAX_COUNT).
COUNTS = (
    "batch_size",
    "eval_batch_size",
    "steps_per_loop",
    "log_every_steps",
    "keep_checkpoints",
    "max_steps",
    "checkpoint_every_steps",
    "virtual_cpus",
    "batch_splits",
)


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
        boundaries=None
        if config.boundaries_epochs is None
        else tuple(int(round(e * steps_per_epoch)) for e in config.boundaries_epochs),
        warmup_steps=to_steps(config.warmup_epochs) if config.warmup_epochs else 0,
        decay_steps=_decay_steps(config, steps_per_epoch) if config.mode == "wsd" else None,
    )


def _decay_steps(config, steps_per_epoch):
    """Returns wsd's decay length in steps (at least 1), from decay_epochs or the run's fraction."""
    if config.decay_epochs is not None:
        return max(1, int(round(config.decay_epochs * steps_per_epoch)))
    fraction = WSD_DECAY_FRACTION if config.decay_fraction is None else config.decay_fraction
    return max(1, int(round(fraction * config.epochs * steps_per_epoch)))


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Config))
# A field named in a Problem's message: `{max_lr}`.
_FIELD_MARK = re.compile(r"\{([a-z_0-9]+)\}")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem with a Config: the field at fault and what is wrong with it.

    `message` refers to Config fields in a marked way, `{name}` (e.g. `"{max_lr} (0.001) must be
    greater than {initial_lr} (0.01)"`), so that each caller names them in its own terms: `render`
    spells them as plain names for code, `render(lambda n: f"--{n}")` as a command line's flags.
    Only names of Config fields are marks; other braces are left as they are.

    Attributes:
        field: the name of the Config field at fault (the first one to change).
        message: the problem, one line, with the fields it refers to marked `{name}`.
    """

    field: str
    message: str

    def render(self, name=errors.same_name):
        """Returns the message with each marked field spelled by `name`.

        Args:
            name: a function from a Config field's name to its spelling (default: the name itself).

        Returns:
            The message, one line.
        """
        return _FIELD_MARK.sub(lambda m: name(m.group(1)) if m.group(1) in _FIELD_NAMES else m.group(0), self.message)


class _ProblemsError(errors.Error):
    """An error made of Config problems: `problems` (a tuple of Problem), `argument` the first one's field.

    `str(error)` names the fields plainly, one problem per line; `describe(name)` spells them with `name`."""

    names_argument = True  # each problem's message names its fields

    def __init__(self, problems):
        problems = (problems,) if isinstance(problems, Problem) else tuple(problems)
        if not problems:
            raise ValueError("an error needs at least one Problem")
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems), argument=problems[0].field)

    def describe(self, name=errors.same_name):
        """Returns the problems, one per line, with the fields they refer to spelled by `name`.

        Args:
            name: a function from a Config field's name to its spelling (for a command line,
                `lambda n: f"--{n}"`).

        Returns:
            The message, one line per problem.
        """
        return "\n".join(p.render(name) for p in self.problems)


class ConfigError(_ProblemsError, ValueError):
    """Raised for a Config that cannot run: invalid values (`checks.check`), or a valid Config that
    cannot run with what it meets only at run time (the replicas of its strategy, the model it builds).

    Built from one Problem or several (`problems`); `argument` is the first problem's field."""


class ScheduleError(_ProblemsError, ValueError):
    """Raised when a valid Config's schedule cannot be built for the data's size (a one-cycle too
    short to have all its phases); `argument` is the field at fault, the message names the settings."""


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
            Problem(
                "warmup_epochs",
                f"{{warmup_epochs}}={config.warmup_epochs} is {plan.warmup_steps} steps, which leaves none of the "
                f"{{epochs}}={config.epochs} x {plan.steps_per_epoch} batches per epoch = {total} steps for {{mode}}={config.mode}",
            )
        )
    return total - plan.warmup_steps


def _wsd(config, plan):
    """Returns mode wsd's `schedules.WarmupStableDecay`; raises ScheduleError when its phases do not fit."""
    total = config.epochs * plan.steps_per_epoch
    try:
        return schedules.WarmupStableDecay(
            config.max_lr,
            total,
            plan.warmup_steps,
            plan.decay_steps,
            final_lr=config.final_lr or 0.0,
            decay=config.decay_shape or "linear",
        )
    except ValueError as e:
        raise ScheduleError(
            Problem(
                "epochs",
                f"{{mode}}=wsd spans {{epochs}}={config.epochs} x {plan.steps_per_epoch} batches per epoch = {total} steps, "
                f"with {plan.warmup_steps} warmup steps ({{warmup_epochs}}) and {plan.decay_steps} decay steps "
                f"({{decay_epochs}} or {{decay_fraction}}): {e}",
            )
        ) from None


def _unwarmed_schedule(config, plan):
    """Returns the rate of `config.mode` (not wsd) before any warmup wraps it; durations count from its end."""
    warmup = plan.warmup_steps
    if config.mode == "none":
        return config.lr
    if config.mode == "piecewise":
        boundaries = [b - warmup for b in plan.boundaries]
        if warmup and boundaries[0] <= 0:
            raise ScheduleError(
                Problem(
                    "boundaries_epochs",
                    f"{{boundaries_epochs}} must be after the warmup: boundary step {plan.boundaries[0]} "
                    f"is within the {warmup} steps of {{warmup_epochs}}={config.warmup_epochs}",
                )
            )
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [float(v) for v in config.values])
    final_lr = config.final_lr or 0.0
    if config.mode == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.max_lr, _run_steps(config, plan), alpha=final_lr / config.max_lr
        )
    if config.mode == "cosine_restarts":
        return keras.optimizers.schedules.CosineDecayRestarts(
            config.max_lr,
            plan.step_size,
            t_mul=2.0 if config.t_mul is None else config.t_mul,
            m_mul=1.0 if config.m_mul is None else config.m_mul,
            alpha=final_lr / config.max_lr,
        )
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
                Problem(
                    "epochs",
                    f"{{mode}}=one_cycle spans {{epochs}}={config.epochs} x {plan.steps_per_epoch} batches per epoch = "
                    f"{config.epochs * plan.steps_per_epoch}{less} steps, too few: {e}",
                )
            ) from None
    return schedules.CyclicalLearningRate(
        config.initial_lr,
        config.max_lr,
        plan.step_size,
        mode=config.mode,
        gamma=config.gamma,
        step_size_down=plan.step_size_down,
    )
