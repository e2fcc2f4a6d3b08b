"""The checks of a `config.Config`'s values: each problem keyed by the field at fault.

`validate(config)` returns the problems as `config.Problem`s (empty when the Config is valid),
whose messages mark the fields they refer to (`{max_lr}`), so that code reads plain names and the
apps' command lines read flags (`Problem.render`). `check(config)` raises `config.ConfigError` with
all of them; the experiment calls it where a Config enters (`trial.Trainer`,
`trial.train_and_evaluate`, the ablation's model builds), so a Config built in code is refused,
naming its field, before anything is built or written.
"""

import math

from clr_loop import augment as augment_lib
from clr_loop import inputs
from clr_loop import schedules
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import datasets
from clr_loop.experiment import models
from clr_loop.experiment.config import Problem


def check(config):
    """Refuses a Config whose values cannot run; returns None for a valid one. Touches no files.

    Args:
        config: the `config.Config` to check.

    Raises:
        config.ConfigError: naming every problem `validate` finds, one per line, the fields
            spelled as plain names (`str(error)`) or as the caller likes (`error.describe(name)`);
            its `argument` is the first problem's field.
    """
    problems = validate(config)
    if problems:
        raise config_lib.ConfigError(problems)


def validate(config):
    """Returns the problems with `config`'s values; touches no files.

    Args:
        config: the `config.Config` to check.

    Returns:
        A list of `config.Problem`, each keyed by the field at fault, its message marking the
        fields it refers to (`{batch_size}`); empty when `config` is valid.
    """
    problems = []

    def positive(name, integer=False):
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if integer:
            ok = ok and float(value).is_integer()
        if not ok:
            problems.append(
                Problem(name, f"{{{name}}} must be a positive {'integer' if integer else 'number'}, got {value!r}")
            )

    if config.mode not in config_lib.MODES:
        problems.append(Problem("mode", f"{{mode}} must be one of {', '.join(config_lib.MODES)}, got {config.mode!r}"))
    for name in ("epochs", "batch_size", "eval_batch_size", "steps_per_loop", "log_every_steps", "keep_checkpoints"):
        positive(name, integer=True)
    for name in ("lr", "initial_lr", "max_lr", "step_size_epochs", "gamma", "div_factor", "final_div_factor"):
        positive(name)
    if config.step_size_down_epochs is not None:
        positive("step_size_down_epochs")
    for name in ("epochs", "step_size_epochs", "step_size_down_epochs"):
        value = getattr(config, name)
        if isinstance(value, (int, float)) and value > config_lib.MAX_EPOCHS:
            problems.append(
                Problem(name, f"{{{name}}} must be at most {config_lib.MAX_EPOCHS:.0e} epochs, got {value!r}")
            )
    for name in config_lib.COUNTS:
        value = getattr(config, name)
        if isinstance(value, int) and value > config_lib.MAX_COUNT:
            problems.append(Problem(name, f"{{{name}}} must be at most 2**62, got {value!r}"))
    if not problems and config.mode in schedules.MODES and config.max_lr <= config.initial_lr:
        problems.append(
            Problem("max_lr", f"{{max_lr}} ({config.max_lr}) must be greater than {{initial_lr}} ({config.initial_lr})")
        )
    if not 0 < config.pct_start < 1:
        problems.append(Problem("pct_start", f"{{pct_start}} must be in (0, 1), got {config.pct_start}"))
    if config.anneal_strategy not in schedules.ANNEAL_STRATEGIES:
        problems.append(
            Problem("anneal_strategy", f"{{anneal_strategy}} must be cos or linear, got {config.anneal_strategy!r}")
        )
    if not 0 <= config.momentum < 1:
        problems.append(Problem("momentum", f"{{momentum}} must be in [0, 1), got {config.momentum}"))
    if not 0 <= config.base_momentum <= config.max_momentum < 1:
        problems.append(
            Problem(
                "base_momentum",
                f"need 0 <= {{base_momentum}} ({config.base_momentum}) <= {{max_momentum}} ({config.max_momentum}) < 1",
            )
        )
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed <= config_lib.MAX_SEED:
        problems.append(Problem("seed", f"{{seed}} must be an integer in [0, 2**32 - 1], got {config.seed!r}"))
    if config.max_steps < 0:
        problems.append(Problem("max_steps", f"{{max_steps}} must be >= 0 (0 means no cap), got {config.max_steps}"))
    if config.checkpoint_every_steps < 0:
        problems.append(
            Problem(
                "checkpoint_every_steps",
                f"{{checkpoint_every_steps}} must be >= 0 (0 means each epoch end), got {config.checkpoint_every_steps}",
            )
        )
    if config.jit_compile not in config_lib.JIT_CHOICES:
        problems.append(
            Problem(
                "jit_compile",
                f"{{jit_compile}} must be one of {', '.join(config_lib.JIT_CHOICES)}, got {config.jit_compile!r}",
            )
        )
    if config.precision not in config_lib.PRECISIONS:
        problems.append(
            Problem(
                "precision",
                f"{{precision}} must be one of {', '.join(config_lib.PRECISIONS)}, got {config.precision!r}",
            )
        )
    if config.deterministic and config.jit_compile == "true":
        problems.append(
            Problem(
                "deterministic",
                "{deterministic} cannot run with {jit_compile}=true: XLA has no deterministic kernel for "
                "some gradients (the CNN's MaxPool); {jit_compile}=auto leaves XLA off under {deterministic}",
            )
        )
    if config.profile_steps is not None:
        start, stop = config.profile_steps
        if not 0 <= start < stop:
            problems.append(
                Problem(
                    "profile_steps", f"{{profile_steps}} must be START,STOP with 0 <= START < STOP, got {start},{stop}"
                )
            )
    for name in ("save_init", "init_weights"):
        path = getattr(config, name)
        if path is not None and not path.endswith(".weights.h5"):
            problems.append(
                Problem(name, f"{{{name}}} must name a Keras weights file ending in .weights.h5, got {path!r}")
            )
    if config.strategy not in config_lib.STRATEGIES:
        problems.append(
            Problem(
                "strategy", f"{{strategy}} must be one of {', '.join(config_lib.STRATEGIES)}, got {config.strategy!r}"
            )
        )
    if config.batch_splits < 0:
        problems.append(
            Problem("batch_splits", f"{{batch_splits}} must be >= 0 (0: automatic), got {config.batch_splits}")
        )
    elif config.batch_splits > 1 and config.batch_size % config.batch_splits:
        problems.append(
            Problem(
                "batch_splits", f"{{batch_splits}}={config.batch_splits} must divide {{batch_size}}={config.batch_size}"
            )
        )
    elif config.batch_splits > 1 and config.strategy != "default":
        problems.append(Problem("batch_splits", "{batch_splits} > 1 needs {strategy}=default (one replica)"))
    if config.input_mode not in inputs.INPUT_MODES:
        problems.append(
            Problem(
                "input_mode",
                f"{{input_mode}} must be one of {', '.join(inputs.INPUT_MODES)}, got {config.input_mode!r}",
            )
        )
    elif config.input_mode == "device" and config.strategy != "default":
        problems.append(
            Problem(
                "input_mode",
                "{input_mode}=device needs {strategy}=default (one replica); {input_mode}=auto feeds "
                "the other strategies through tf.data",
            )
        )
    if not 0 <= config.virtual_cpus <= config_lib.MAX_VIRTUAL_CPUS:
        problems.append(
            Problem(
                "virtual_cpus",
                f"{{virtual_cpus}} must be in [0, {config_lib.MAX_VIRTUAL_CPUS}] (0: no split), got {config.virtual_cpus}",
            )
        )
    if (
        not _finite_numbers([config.cluster_timeout])
        or not 0 < config.cluster_timeout <= config_lib.MAX_CLUSTER_TIMEOUT
    ):
        problems.append(
            Problem(
                "cluster_timeout",
                f"{{cluster_timeout}} must be a number of seconds in (0, {config_lib.MAX_CLUSTER_TIMEOUT}] (a week), "
                f"got {config.cluster_timeout}",
            )
        )
    if config.strategy == "default" and config.devices:
        problems.append(Problem("devices", "{devices} needs {strategy}=mirrored"))
    if not config.workdir:
        problems.append(Problem("workdir", "{workdir} must not be empty"))
    for name in ("tfds_data_dir", "dataset_dir"):
        if getattr(config, name) is not None and not getattr(config, name).strip():
            problems.append(
                Problem(name, f"{{{name}}} must not be empty (leave it out to find the data automatically)")
            )
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
        problems.append(Problem("warmup_epochs", f"{{warmup_epochs}} must be a number of epochs >= 0, got {warmup!r}"))
    elif warmup > config_lib.MAX_EPOCHS:
        problems.append(
            Problem(
                "warmup_epochs", f"{{warmup_epochs}} must be at most {config_lib.MAX_EPOCHS:.0e} epochs, got {warmup!r}"
            )
        )
    elif mode in config_lib.SPANNING_MODES and _finite_numbers([config.epochs]) and warmup >= config.epochs:
        problems.append(
            Problem(
                "warmup_epochs",
                f"{{warmup_epochs}} ({warmup:g}) must be less than {{epochs}} ({config.epochs}) for {{mode}}={mode}",
            )
        )
    elif (
        mode == "piecewise"
        and warmup
        and config.boundaries_epochs
        and _finite_numbers(config.boundaries_epochs)
        and min(config.boundaries_epochs) <= warmup
    ):
        problems.append(
            Problem(
                "boundaries_epochs",
                f"{{boundaries_epochs}} must be after the warmup ({{warmup_epochs}}={warmup:g}), "
                f"got {','.join(map(str, config.boundaries_epochs))}",
            )
        )
    owners = {
        "final_lr": ("cosine", "cosine_restarts", "wsd"),
        "t_mul": ("cosine_restarts",),
        "m_mul": ("cosine_restarts",),
        "decay_epochs": ("wsd",),
        "decay_fraction": ("wsd",),
        "decay_shape": ("wsd",),
    }
    for name, modes in owners.items():
        if getattr(config, name) is not None and mode not in modes:
            owners_text = " or ".join("{mode}=" + owner for owner in modes)
            problems.append(Problem(name, f"{{{name}}} is for {owners_text}, not {{mode}}={mode}"))
    if mode not in ("cosine", "cosine_restarts", "wsd"):
        return problems
    final_lr = config.final_lr
    if final_lr is not None:
        if not _finite_numbers([final_lr]) or final_lr < 0:
            problems.append(Problem("final_lr", f"{{final_lr}} must be a learning rate >= 0, got {final_lr!r}"))
        elif _finite_numbers([config.max_lr]) and final_lr >= config.max_lr:
            problems.append(
                Problem("final_lr", f"{{final_lr}} ({final_lr:g}) must be less than {{max_lr}} ({config.max_lr:g})")
            )
    for name in ("t_mul", "m_mul"):
        value = getattr(config, name)
        if value is not None and (not _finite_numbers([value]) or value <= 0):
            problems.append(Problem(name, f"{{{name}}} must be a positive number, got {value!r}"))
    if config.cycle_momentum:
        problems.append(
            Problem(
                "cycle_momentum",
                f"{{cycle_momentum}} needs a cyclical {{mode}} (triangular, triangular2, exp_range, one_cycle), "
                f"not {mode}; use {{momentum}}",
            )
        )
    if mode != "wsd":
        return problems
    if config.decay_epochs is not None and config.decay_fraction is not None:
        problems.append(
            Problem("decay_epochs", "{decay_epochs} and {decay_fraction} both set the decay's length; give one")
        )
    elif config.decay_epochs is not None:
        if not _finite_numbers([config.decay_epochs]) or config.decay_epochs <= 0:
            problems.append(
                Problem(
                    "decay_epochs", f"{{decay_epochs}} must be a positive number of epochs, got {config.decay_epochs!r}"
                )
            )
        elif _finite_numbers([warmup, config.epochs]) and warmup >= 0 and warmup + config.decay_epochs > config.epochs:
            problems.append(
                Problem(
                    "warmup_epochs",
                    f"{{warmup_epochs}} ({warmup:g}) + {{decay_epochs}} ({config.decay_epochs:g}) must be at most "
                    f"{{epochs}} ({config.epochs})",
                )
            )
    else:
        fraction = config_lib.WSD_DECAY_FRACTION if config.decay_fraction is None else config.decay_fraction
        if not _finite_numbers([fraction]) or not 0 < fraction <= 1:
            problems.append(
                Problem(
                    "decay_fraction",
                    f"{{decay_fraction}} must be in (0, 1] (the share of the run spent decaying), got {fraction!r}",
                )
            )
        elif (
            _finite_numbers([warmup, config.epochs])
            and warmup >= 0
            and warmup + fraction * config.epochs > config.epochs
        ):
            problems.append(
                Problem(
                    "warmup_epochs",
                    f"{{warmup_epochs}} ({warmup:g}) + {{decay_fraction}} ({fraction:g}) x {{epochs}} ({config.epochs}) "
                    f"must be at most {{epochs}}",
                )
            )
    if config.decay_shape is not None and config.decay_shape not in schedules.WSD_DECAYS:
        problems.append(
            Problem(
                "decay_shape",
                f"{{decay_shape}} must be one of {', '.join(schedules.WSD_DECAYS)}, got {config.decay_shape!r}",
            )
        )
    return problems


def _schedule_free_problems(config):
    """Returns the problems of {mode}=schedule_free (its optimizer and the settings it cannot use).

    Its peak rate is {max_lr}, warmed up over {warmup_epochs}; {lr}, {initial_lr}, the cycle and
    one-cycle settings are ignored (documented), as the rate has no schedule.
    """
    if config.mode != "schedule_free":
        return []
    problems = []
    if config.optimizer not in config_lib.SCHEDULE_FREE_OPTIMIZERS:
        problems.append(
            Problem(
                "optimizer",
                f"{{mode}}=schedule_free needs {{optimizer}}=sgd or {{optimizer}}=adamw "
                f"(ScheduleFreeSGD / ScheduleFreeAdamW), got {{optimizer}}={config.optimizer}",
            )
        )
    if config.cycle_momentum:
        problems.append(
            Problem(
                "cycle_momentum",
                "{cycle_momentum} cannot run with {mode}=schedule_free: its momentum is the constant "
                "interpolation beta ({momentum} for sgd; 0 means the reference's 0.9)",
            )
        )
    return problems


def _finite_numbers(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _piecewise_problems(config):
    """Returns the problems with the piecewise-constant schedule's settings (boundaries_epochs, values)."""
    boundaries, values = config.boundaries_epochs, config.values
    if config.mode != "piecewise":
        given = [name for name in ("boundaries_epochs", "values") if getattr(config, name) is not None]
        named = " and ".join("{" + name + "}" for name in given)
        problems = (
            [
                Problem(
                    given[0],
                    f"{named} {'is' if len(given) == 1 else 'are'} for {{mode}}=piecewise, not {{mode}}={config.mode}",
                )
            ]
            if given
            else []
        )
        if config.mode == "none" and config.cycle_momentum:
            problems.append(
                Problem(
                    "cycle_momentum",
                    "{cycle_momentum} needs a cyclical {mode} (triangular, triangular2, exp_range, one_cycle), "
                    "not none (a constant rate); use {momentum}",
                )
            )
        return problems
    problems = []
    if not boundaries:
        problems.append(
            Problem(
                "boundaries_epochs",
                "{mode}=piecewise needs {boundaries_epochs}=E1,E2,... (the epochs where the rate changes)",
            )
        )
    elif not _finite_numbers(boundaries) or min(boundaries) <= 0:
        problems.append(
            Problem(
                "boundaries_epochs",
                f"{{boundaries_epochs}} must be positive numbers of epochs, got {','.join(map(str, boundaries))}",
            )
        )
    elif any(b >= a for a, b in zip(boundaries[1:], boundaries)):
        problems.append(
            Problem("boundaries_epochs", f"{{boundaries_epochs}} must increase, got {','.join(map(str, boundaries))}")
        )
    elif max(boundaries) > config_lib.MAX_EPOCHS:
        problems.append(
            Problem(
                "boundaries_epochs",
                f"{{boundaries_epochs}} must be at most {config_lib.MAX_EPOCHS:.0e} epochs, got {max(boundaries)!r}",
            )
        )
    if not values:
        problems.append(
            Problem(
                "values",
                "{mode}=piecewise needs {values}=V0,V1,... (the rate before the first boundary, then after each)",
            )
        )
    elif not _finite_numbers(values) or min(values) <= 0:
        problems.append(
            Problem("values", f"{{values}} must be positive learning rates, got {','.join(map(str, values))}")
        )
    elif boundaries and len(values) != len(boundaries) + 1:
        problems.append(
            Problem(
                "values",
                f"{{values}} needs one rate more than {{boundaries_epochs}} (before the first boundary, then "
                f"after each): {len(boundaries)} boundaries, {len(values)} values",
            )
        )
    if config.cycle_momentum:
        problems.append(
            Problem(
                "cycle_momentum",
                "{cycle_momentum} needs a cyclical {mode} (triangular, triangular2, exp_range, one_cycle), "
                "not piecewise; use {momentum}",
            )
        )
    return problems


def _experiment_problems(config):
    """Returns the problems with the dataset, model, optimizer and augmentation settings."""
    problems = []
    dataset = config.dataset
    if not isinstance(dataset, str) or not dataset.strip():
        problems.append(Problem("dataset", "{dataset} must name a dataset (fashion_mnist, a TFDS name, or npz:PATH)"))
    elif datasets.is_npz(dataset):
        if not dataset[len(datasets.NPZ_PREFIX) :].strip():
            problems.append(Problem("dataset", "{dataset}=npz:PATH needs the path of a .npz file after npz:"))
        if config.tfds_data_dir is not None:
            problems.append(Problem("tfds_data_dir", "{tfds_data_dir} is for TFDS datasets, not {dataset}=npz:PATH"))
    if config.dataset_dir is not None and dataset != datasets.DEFAULT:
        problems.append(
            Problem(
                "dataset_dir",
                f"{{dataset_dir}} (the raw Fashion-MNIST IDX files) needs {{dataset}}={datasets.DEFAULT}, got {dataset!r}",
            )
        )
    for name in ("train_split", "eval_split"):
        if not str(getattr(config, name)).strip():
            problems.append(Problem(name, f"{{{name}}} must name a split"))
    if (
        (config.train_split, config.eval_split) != ("train", "test")
        and isinstance(dataset, str)
        and datasets.is_npz(dataset)
    ):
        problems.append(
            Problem("train_split", "{train_split}/{eval_split} are for TFDS datasets; a .npz file has x_train/x_test")
        )
    if config.model not in models.MODELS and not models.is_user_function(config.model):
        problems.append(
            Problem(
                "model",
                f"{{model}} must be one of {', '.join(models.MODELS)} or module.path:function, got {config.model!r}",
            )
        )
    if config.optimizer not in config_lib.OPTIMIZERS:
        problems.append(
            Problem(
                "optimizer",
                f"{{optimizer}} must be one of {', '.join(config_lib.OPTIMIZERS)}, got {config.optimizer!r}",
            )
        )
    elif config.optimizer != "sgd":
        if config.momentum:
            problems.append(
                Problem(
                    "momentum",
                    f"{{momentum}} is SGD's; {{optimizer}}={config.optimizer} uses Keras's beta_1=0.9 "
                    "(or {base_momentum}/{max_momentum} when cycled)",
                )
            )
    decay = config.weight_decay
    if decay is not None and (
        isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) or decay < 0
    ):
        problems.append(Problem("weight_decay", f"{{weight_decay}} must be a number >= 0, got {decay!r}"))
    if config.augment not in augment_lib.AUGMENTS:
        problems.append(
            Problem("augment", f"{{augment}} must be one of {', '.join(augment_lib.AUGMENTS)}, got {config.augment!r}")
        )
    return problems
