"""The training flags and flags -> Config, for the apps (`train`, `ablate`, `plot`, the range test).

Nothing is defined at import: an app calls `define_training_flags(flags.FLAGS)` in its own module,
so a program that imports clr_loop's library modules keeps its own flag names (`--batch_size`, ...).
`config_from_flags` reads them back as a checked `config.Config`; its errors name the flags.
"""

import dataclasses
import os
import sys

from absl import app
from absl import flags

from clr_loop import errors
from clr_loop.experiment import checks
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import fashion_mnist
from clr_loop import process


def _definitions():
    """Returns (absl DEFINE function, name, default, help, extra keyword arguments) per training flag."""
    d = config_lib.Config()
    enum, boolean, floating, integer = flags.DEFINE_enum, flags.DEFINE_bool, flags.DEFINE_float, flags.DEFINE_integer
    string, listing = flags.DEFINE_string, flags.DEFINE_list
    return [
        (
            string,
            "dataset",
            d.dataset,
            "fashion_mnist (the tutorial's), any TFDS image-classification dataset (mnist, cifar10, ...), or npz:PATH (a .npz of x_train, y_train, x_test, y_test).",
            {},
        ),
        (string, "train_split", d.train_split, "TFDS split to train on (e.g. train[:90%]).", {}),
        (string, "eval_split", d.eval_split, "TFDS split to evaluate on.", {}),
        (
            string,
            "model",
            d.model,
            "tutorial_cnn (the tutorial's), resnet20 (He et al. 2016), or module.path:function (your (input_shape, num_classes) -> keras.Model).",
            {},
        ),
        (
            enum,
            "optimizer",
            d.optimizer,
            "Optimizer the schedule drives.",
            {"enum_values": list(config_lib.OPTIMIZERS)},
        ),
        (
            floating,
            "weight_decay",
            None,
            f"Keras's decoupled weight decay (w -= lr * weight_decay * w each step; default: none, adamw {config_lib.ADAMW_WEIGHT_DECAY}).",
            {},
        ),
        (
            enum,
            "augment",
            d.augment,
            "flip_crop: pad 4, random crop, random horizontal flip, in the compiled step.",
            {"enum_values": ["none", "flip_crop"]},
        ),
        (
            enum,
            "mode",
            d.mode,
            "Learning-rate schedule; `none` is plain SGD at --lr; `schedule_free` is ScheduleFreeSGD/AdamW at --max_lr (no schedule).",
            {"enum_values": config_lib.MODES},
        ),
        (
            listing,
            "boundaries_epochs",
            None,
            "piecewise: comma-separated epochs where the rate changes, e.g. 82,123 (fractions allowed; round(epochs * steps per epoch) steps).",
            {},
        ),
        (
            listing,
            "values",
            None,
            "piecewise: comma-separated rates, one more than --boundaries_epochs: the rate before the first boundary, then after each, e.g. 0.1,0.01,0.001.",
            {},
        ),
        (floating, "lr", d.lr, "Constant learning rate for --mode=none (Keras SGD's default).", {}),
        (floating, "initial_lr", d.initial_lr, "Lower bound of the cyclical rate.", {}),
        (
            floating,
            "max_lr",
            d.max_lr,
            "Upper bound of the cyclical rate; the peak rate of one_cycle, cosine, cosine_restarts and wsd.",
            {},
        ),
        (
            floating,
            "step_size_epochs",
            d.step_size_epochs,
            "Half-cycle (rising part) in epochs; cosine_restarts: the first period; step_size = round(this * steps per epoch).",
            {},
        ),
        (
            floating,
            "step_size_down_epochs",
            None,
            "Falling part of each cycle in epochs (default: same as --step_size_epochs).",
            {},
        ),
        (floating, "gamma", d.gamma, "exp_range decay: the amplitude is multiplied by gamma**step.", {}),
        (floating, "pct_start", d.pct_start, "one_cycle: fraction of the steps spent warming up.", {}),
        (enum, "anneal_strategy", d.anneal_strategy, "one_cycle: anneal shape.", {"enum_values": ["cos", "linear"]}),
        (floating, "div_factor", d.div_factor, "one_cycle: initial rate = max_lr / div_factor.", {}),
        (
            floating,
            "final_div_factor",
            d.final_div_factor,
            "one_cycle: final rate = initial rate / final_div_factor.",
            {},
        ),
        (boolean, "three_phase", d.three_phase, "one_cycle: return to the initial rate before the final anneal.", {}),
        (
            floating,
            "warmup_epochs",
            d.warmup_epochs,
            "Any mode: first warm up linearly from 0 to the schedule's first rate over this many epochs (round(this * steps per epoch) steps); the schedule starts after it; --mode=schedule_free: the optimizer's own warmup_steps.",
            {},
        ),
        (floating, "final_lr", None, "cosine, cosine_restarts, wsd: the rate the decay ends at (default 0).", {}),
        (
            floating,
            "t_mul",
            None,
            "cosine_restarts: each period is this many times the previous one (default 2; the first is --step_size_epochs).",
            {},
        ),
        (
            floating,
            "m_mul",
            None,
            "cosine_restarts: each restart's peak is this many times the previous one (default 1).",
            {},
        ),
        (floating, "decay_epochs", None, "wsd: the decay's length in epochs (or give --decay_fraction).", {}),
        (
            floating,
            "decay_fraction",
            None,
            f"wsd: the decay's share of the run (default {config_lib.WSD_DECAY_FRACTION:g}).",
            {},
        ),
        (
            enum,
            "decay_shape",
            None,
            "wsd: linear, cos, or sqrt (1 - sqrt, Hägele et al. 2024) (default linear).",
            {"enum_values": ["linear", "cos", "sqrt"]},
        ),
        (
            floating,
            "momentum",
            d.momentum,
            "SGD momentum when it is not cycled; with --mode=schedule_free the interpolation beta (0: the reference's 0.9).",
            {},
        ),
        (boolean, "cycle_momentum", None, "Cycle momentum opposite to the rate (default: on for one_cycle only).", {}),
        (floating, "base_momentum", d.base_momentum, "Cyclical momentum at the rate's peak.", {}),
        (floating, "max_momentum", d.max_momentum, "Cyclical momentum at the rate's low point.", {}),
        (integer, "epochs", d.epochs, "Number of epochs.", {}),
        (integer, "batch_size", d.batch_size, "Training batch size.", {}),
        (integer, "eval_batch_size", d.eval_batch_size, "Evaluation batch size (does not change the metrics).", {}),
        (
            integer,
            "seed",
            d.seed,
            "Seed for weights, data order and dropout, in [0, 2**32 - 1].",
            {"lower_bound": 0, "upper_bound": config_lib.MAX_SEED},
        ),
        (
            integer,
            "steps_per_loop",
            d.steps_per_loop,
            "Training steps per compiled loop call (Python runs once per loop).",
            {},
        ),
        (integer, "log_every_steps", d.log_every_steps, "Write train summaries about this often (in steps).", {}),
        (integer, "max_steps", d.max_steps, "Stop after this many steps in all (0: no cap); the eval still runs.", {}),
        (
            enum,
            "precision",
            d.precision,
            "Keras dtype policy the model is built under: float32, or float32 variables computing in bfloat16 / float16 (with loss scaling). A run resumes only in its own precision.",
            {"enum_values": list(config_lib.PRECISIONS)},
        ),
        (
            enum,
            "jit_compile",
            d.jit_compile,
            "XLA for the steps: auto = on where a GPU/TPU is present.",
            {"enum_values": config_lib.JIT_CHOICES},
        ),
        (string, "workdir", None, "Output folder (default: runs/<mode>).", {}),
        (listing, "profile_steps", None, "START,STOP: capture a TF profiler trace of these steps.", {}),
        (string, "tfds_data_dir", None, "Use TFDS data from this data_dir (downloads when online).", {}),
        (string, "dataset_dir", None, "Use the raw Fashion-MNIST IDX .gz files in this folder.", {}),
        (
            integer,
            "checkpoint_every_steps",
            d.checkpoint_every_steps,
            "Also checkpoint every this many steps (0: only at each epoch end and on SIGTERM/SIGINT).",
            {},
        ),
        (integer, "keep_checkpoints", d.keep_checkpoints, "How many recent checkpoints to keep.", {}),
        (
            boolean,
            "deterministic",
            False,
            "Bit-reproducible runs: op determinism on (see docs/training.md for the cost).",
            {},
        ),
        (boolean, "overwrite", False, "Start over in a workdir that holds another run (removes its outputs).", {}),
        (
            enum,
            "strategy",
            d.strategy,
            "default: one device; mirrored: local GPUs (or --devices); multi_worker: the TF_CONFIG cluster.",
            {"enum_values": config_lib.STRATEGIES},
        ),
        (
            listing,
            "devices",
            None,
            "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1 (default: all GPUs, else all CPUs).",
            {},
        ),
        (
            integer,
            "virtual_cpus",
            d.virtual_cpus,
            "Split the host CPU into this many logical devices (for trying distribution on a CPU).",
            {},
        ),
        (
            enum,
            "input_mode",
            d.input_mode,
            "How training batches reach the step: device = the whole set on the GPU/CPU once, batches gathered inside the compiled loop; pipeline = tf.data; auto = device where it fits (streamed data and several replicas: pipeline).",
            {"enum_values": list(config_lib.INPUT_MODES)},
        ),
        (
            integer,
            "batch_splits",
            d.batch_splits,
            "Compute each batch as this many parts side by side, one thread per op (0: automatic, one per CPU core of at least 32 examples on a CPU-only run, else 1).",
            {},
        ),
        (
            floating,
            "cluster_timeout",
            d.cluster_timeout,
            "multi_worker: seconds to wait for peers and for any collective op.",
            {},
        ),
        (string, "save_init", None, "Write the model's initial weights to this .weights.h5 file, then train.", {}),
        (string, "init_weights", None, "Start from the weights in this .weights.h5 file (from --save_init).", {}),
    ]


TRAINING_FLAGS = tuple(name for _, name, _, _, _ in _definitions())


def define_training_flags(flag_values):
    """Defines the training flags (`TRAINING_FLAGS`: `--mode`, `--batch_size`, ...) on `flag_values`.

    `flag_values` is an `absl.flags.FlagValues` (an app passes `flags.FLAGS`). The defaults are
    `config.Config`'s. Calling it again on the same FlagValues defines nothing more (several apps
    imported into one process share them); a flag of the same name that another module defined
    raises absl's DuplicateFlagError. Returns None.
    """
    for define, name, default, help_text, extra in _definitions():
        if name in flag_values and flag_values.find_module_defining_flag(name) == __name__:
            continue
        define(name, default, help=help_text, flag_values=flag_values, **extra)


def _profile_steps(values):
    if values is None:
        return None
    try:
        start, stop = (int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--profile_steps must be START,STOP (two integers), got {','.join(values)!r}")
    return (start, stop)


def _numbers(name, values):
    """Returns a list flag's values as a tuple of floats (None when unset); raises app.UsageError naming the flag."""
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated numbers, got {','.join(values)!r}") from None


def config_from_flags(flag_values):
    """Returns the `config.Config` that the parsed training flags of `flag_values` describe.

    `--workdir` defaults to `runs/<mode>`. Raises app.UsageError naming each bad flag (the
    problems `checks.validate` finds, one per line, their fields rendered as flags).
    """
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(config_lib.Config) if f.name in flag_values}
    values["profile_steps"] = _profile_steps(flag_values["profile_steps"].value)
    for name in ("boundaries_epochs", "values"):
        values[name] = _numbers(name, flag_values[name].value)
    devices = flag_values["devices"].value
    values["devices"] = tuple(devices) if devices else None
    workdir = flag_values["workdir"].value
    if workdir is not None and not workdir.strip():
        raise app.UsageError("--workdir must not be empty (leave it out for the default folder)")
    values["workdir"] = workdir or f"runs/{flag_values['mode'].value}"
    config = config_lib.Config(**values)
    problems = checks.validate(config)
    if problems:
        raise app.UsageError("\n".join(problem.render(flag_name) for problem in problems))
    return config


def set_up_process(config):
    """Sets up this process for `config`'s run; returns its tf.distribute strategy.

    TensorFlow's thread pools (sized for the run's batch splitting: `runtime.configure_threads`),
    `config.virtual_cpus`, op determinism for `config.deterministic`, then the strategy: all of them
    must be in place before TensorFlow runs its first op, and all are the process's, which is why
    the apps set them and the library and the experiment never do. Raises ClusterError for a
    strategy that cannot be made.
    """
    # Imported here: cli is imported by the apps before their tuned TensorFlow import.
    from clr_loop import distribute  # pylint: disable=import-outside-toplevel
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    runtime.configure_threads(trial.planned_batch_splits(config))
    if config.virtual_cpus:
        distribute.configure_virtual_cpus(config.virtual_cpus)
    make_deterministic(config)
    return distribute.make_strategy(config.strategy, config.devices, config.cluster_timeout)


def make_deterministic(config):
    """Turns TensorFlow's op determinism on for the whole process when `config.deterministic` says so."""
    if config.deterministic:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tf.config.experimental.enable_op_determinism()


def _named_flagfiles(args):
    """Yields the flagfile paths that `--flagfile=PATH` / `--flagfile PATH` arguments in `args` name, as absl reads them."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg in ("--flagfile", "-flagfile"):
            if i + 1 < len(args):
                yield os.path.expanduser(args[i + 1])
        elif arg.startswith(("--flagfile=", "-flagfile=")):
            yield os.path.expanduser(arg.split("=", 1)[1].strip())


# The most bytes a flagfile may have: flagfiles are a few lines; absl reads one whole, so without a
# limit `--flagfile=/dev/zero` (or a multi-gigabyte file named by mistake) grows without bound.
MAX_FLAGFILE_BYTES = 2**20


def _first_problem(args, seen, only_undecodable=False):
    """Returns the message naming the first flagfile of `args` (depth-first, as absl reads them) that absl
    cannot or should not read, or None. With `only_undecodable`, only one that is not text is named."""
    for path in _named_flagfiles(args):
        if not path or path in seen:
            continue
        seen.add(path)
        what = fashion_mnist.not_a_regular_file(path)
        if what is not None:
            if only_undecodable:
                continue
            return f"flagfile {path} {what}"
        try:
            size = os.path.getsize(path)
            if size > MAX_FLAGFILE_BYTES and not only_undecodable:
                return f"flagfile {path} is {size} bytes, more than a flagfile may have ({MAX_FLAGFILE_BYTES})"
            with open(path) as f:  # absl's encoding: the locale's
                lines = f.read(MAX_FLAGFILE_BYTES + 1).splitlines()
        except UnicodeDecodeError as e:
            return f"flagfile {path} is not {e.encoding} text ({e.reason}: byte 0x{e.object[e.start]:02x} at offset {e.start})"
        except OSError as e:
            if only_undecodable:
                continue
            return f"flagfile {path} cannot be read ({e.strerror or e})"
        found = _first_problem([line.strip() for line in lines], seen, only_undecodable)
        if found is not None:
            return found
    return None


def flagfile_problem(args):
    """Returns the one-line message naming the first flagfile that `args` (command-line arguments) name,
    or that those name in turn, which absl should not read; None when every one reads.

    A flagfile must be a regular file (not missing, a directory, or a device such as /dev/zero,
    whose reading never ends) of at most MAX_FLAGFILE_BYTES bytes of text in the locale's encoding
    (absl's). Reads at most that much of each.
    """
    return _first_problem(args, set())


def undecodable_flagfile(args, error):
    """Returns the one-line message for a UnicodeDecodeError absl raised while reading a flagfile of `args`.

    absl's own error names no file: this reads the flagfiles the arguments name (and the ones
    they name in turn) as absl does and names the first one that is not text, with the byte at
    fault; a message naming no file when every flagfile reads.
    """
    found = _first_problem(args, set(), only_undecodable=True)
    return found or f"a flagfile is not {error.encoding} text ({error.reason} at offset {error.start})"


def parse_flags(argv):
    """The apps' flags parser for `app.run`: absl's `parse_flags_with_usage`, after the flagfiles' checks.

    Returns the arguments left after the flags (program name first). A flagfile that absl should
    not read (`flagfile_problem`: not a regular file, too big, not text) is reported as absl reports a
    bad flag, naming the file, and exits 1 before absl reads it.
    """
    problem = flagfile_problem(argv[1:])
    if problem is not None:
        sys.stderr.write(f"FATAL Flags parsing error: {problem}\n")
        sys.stderr.write(process.HELP_HINT + "\n")
        sys.exit(1)
    try:
        return app.parse_flags_with_usage(argv)
    except UnicodeDecodeError as e:
        sys.stderr.write(f"FATAL Flags parsing error: {undecodable_flagfile(argv[1:], e)}\n")
        sys.stderr.write(process.HELP_HINT + "\n")
        sys.exit(1)


def flag_name(name):
    """Returns the command-line spelling of a Config field or library argument: `--<name>`.

    Args:
        name: the field's or argument's name (`batch_size`).

    Returns:
        The flag that sets it (`--batch_size`).
    """
    return f"--{name}"


def error_message(error):
    """Returns the app's one-line message for an error of a run, naming the flag that fixes it.

    Built from the error's type and attributes, never from its text: an `errors.Error` whose
    `argument` names the field at fault is `--<argument>: <message>` (a Config problem, which names
    its fields itself, is rendered with them as flags); a workdir that starting over would fix
    (`starting_over_helps`) points to `--overwrite`, and one holding a run of another precision to
    `--precision`. Any other exception is its message.

    Args:
        error: the exception the run raised, an `errors.Error` (`actions.TrainingDiverged` is one).

    Returns:
        The message, without the app's `error: ` prefix.
    """
    if isinstance(error, errors.Error):
        text = error.describe(flag_name)
        if error.argument and not error.names_argument:
            text = f"{flag_name(error.argument)}: {text}"
    else:
        text = str(error)
    if "precision" in getattr(error, "settings", ()):
        text += " (--precision must be the saved run's to resume it)"
    if getattr(error, "starting_over_helps", False):
        text += " (--overwrite starts the run over in the same --workdir; another --workdir keeps it)"
    return text
