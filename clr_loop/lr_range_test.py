r"""The learning-rate range test app: ramp the rate up on the tutorial's CNN, watch the loss.

  python -m clr_loop.lr_range_test --start_lr=1e-7 --end_lr=10 --num_steps=100 [--ramp=exp|linear]
      [--workdir=runs/lr_range] [--batch_size=64 --seed=42 --momentum=0 | --optimizer=adamw --jit_compile=auto ...]

`clr_loop.lr_finder.find_lr` runs the test (each step trains one batch with the next rate of a
ramp from `start_lr` to `end_lr`; it stops when the smoothed loss exceeds 4x its best value or a
step is not finite) and suggests a maximal rate (fastai's "valley" point), the steepest-descent
point, and a base rate of max / 4. This app runs it on Fashion-MNIST (`run_range_test`), writes
`lr_range.json` and `lr_range.png` to the workdir, and prints the trainer flags that use the
suggestions, one line per schedule family (triangular2, one_cycle, cosine, wsd, schedule_free); the library's argument errors reach the user named as flags.
"""

import dataclasses
import os
import signal
import sys

from clr_loop import console
from clr_loop import process

if __name__ == "__main__":
    console.report_interrupts()  # a Ctrl-C during the imports: one line, no traceback

# An app's start-up tuning (see clr_loop.process) and console (clr_loop.console).
with console.native_start_up_hidden(sys.argv), process.gc_paused(), process.deferred_imports():
    import keras
    import numpy as np
    from absl import app
    from absl import flags
    from absl import logging

    from clr_loop import checkpointing
    from clr_loop import cli
    from clr_loop import errors
    from clr_loop.experiment import config as config_lib
    from clr_loop.experiment import fashion_mnist
    from clr_loop import lr_finder
    from clr_loop.experiment import models
    from clr_loop import runtime

# One-cycle's momentum is lowest (base_momentum, default 0.85) at the peak rate.
ONE_CYCLE_PEAK_MOMENTUM = config_lib.Config().base_momentum
# Below this relative fall of the smoothed loss, the curve says little (report() warns).
MIN_RELATIVE_DROP = 0.05
JSON_NAME = "lr_range.json"
PNG_NAME = "lr_range.png"


def trainer_flags(suggestions, momentum, optimizer="sgd"):
    """Returns {family: flags}: the `clr_loop.train` flags (a str) that use the suggestions, per schedule family.

    The families are "triangular2" (the CLR line: `--initial_lr` the base rate, `--max_lr` the
    maximal one), "one_cycle", "cosine", "wsd" and "schedule_free" (each peaks at `--max_lr`, the
    maximal rate). With SGD (`optimizer="sgd"`), the CLR, cosine and WSD lines train with the test's
    `momentum`. One-cycle cycles momentum down to `--base_momentum` (0.85) at its peak rate; a rate
    found with less momentum than that would be too high with it, so then the line turns cycled
    momentum off and uses the test's momentum. With "adam" or "adamw" every line names the
    optimizer (Keras's default betas, as the test ran; one-cycle cycles beta_1 down to 0.85 at the
    peak, near the test's 0.9), and the schedule-free line is AdamW's (schedule-free has SGD and
    AdamW). The schedule-free line names only its peak rate: that optimizer has its own momentum.
    """
    fmt = lambda x: f"{x:.2g}"  # noqa: E731
    peak = f"--max_lr={fmt(suggestions.max_lr)}"
    if optimizer == "sgd":
        with_settings = f" --momentum={momentum:g}" if momentum > 0 else ""
        one_cycle = f"--mode=one_cycle {peak}"
        if momentum < ONE_CYCLE_PEAK_MOMENTUM:
            one_cycle += " --cycle_momentum=false" + with_settings
        schedule_free = f"--mode=schedule_free {peak}"
    else:
        with_settings = f" --optimizer={optimizer}"
        one_cycle = f"--mode=one_cycle {peak}" + with_settings
        schedule_free = f"--mode=schedule_free {peak} --optimizer=adamw"
    clr = f"--mode=triangular2 --initial_lr={fmt(suggestions.base_lr)} {peak}" + with_settings
    return {
        "triangular2": clr,
        "one_cycle": one_cycle,
        "cosine": f"--mode=cosine {peak}" + with_settings,
        "wsd": f"--mode=wsd {peak}" + with_settings,
        "schedule_free": schedule_free,
    }


def report(result, momentum, optimizer="sgd"):
    """Returns the human-readable summary of a RangeTestResult (a str of several lines) with the flags to paste."""
    s = result.settings
    lines = [
        f"LR range test: {len(result.lr)} of {s['num_steps']} steps, lr {s['start_lr']:.3g} -> {s['end_lr']:.3g} "
        f"({s['ramp']} ramp), {_optimizer_words(optimizer, momentum)}; stop: {result.stop_reason} at lr {result.stop_lr:.3g}",
    ]
    if result.lr:
        best = int(np.argmin(result.smoothed_loss))
        lines.append(f"  lowest smoothed loss {result.smoothed_loss[best]:.4f} at lr {result.lr[best]:.3g}")
    if result.smoothed_loss:
        drop = 1.0 - min(result.smoothed_loss) / result.smoothed_loss[0]
        if drop < MIN_RELATIVE_DROP:
            lines.append(
                f"  warning: the smoothed loss fell by only {100 * drop:.1f}%, so the model hardly trained and the "
                "suggestions are weak; use more --num_steps (for the tutorial's CNN: about one epoch, "
                "--num_steps=937 at batch 64) or a higher --start_lr"
            )
    sug = result.suggestions
    if sug is None:
        lines.append(
            "  no suggestion: too few steps before the stop, or the loss never fell; "
            "try a lower --start_lr or more --num_steps"
        )
        return "\n".join(lines)
    lines += [
        f"  steepest descent: lr {sug.steepest_lr:.3g} (the smoothed loss falls fastest per log lr)",
        f"  valley:           lr {sug.valley_lr:.3g} -> suggested max_lr",
        f"  base rate:        lr {sug.base_lr:.3g} = max_lr / {lr_finder.BASE_LR_DIVISOR:g} (Smith: 1/3 to 1/4 of max_lr)",
        "Trainer flags:",
    ]
    for line in trainer_flags(sug, momentum, optimizer).values():
        lines.append(f"  python -m clr_loop.train {line}")
    return "\n".join(lines)


def _optimizer_words(optimizer, momentum):
    """Returns how the report names the test's optimizer: "momentum 0.9" for SGD, else "adamw"."""
    return f"momentum {momentum:g}" if optimizer == "sgd" else f"{optimizer} (Keras's default betas)"


def _optimizer(config):
    """Returns the Keras optimizer the test compiles with: SGD at `config.momentum`, or Keras's Adam /
    AdamW with their defaults (AdamW's weight decay 0.004, as `--optimizer=adamw` trains)."""
    if config.optimizer == "adam":
        return keras.optimizers.Adam()
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=config_lib.ADAMW_WEIGHT_DECAY)
    return keras.optimizers.SGD(momentum=config.momentum)


@dataclasses.dataclass(frozen=True)
class RangeTestConfig:
    """Settings of the Fashion-MNIST range test app; rates are per step, `num_steps` in steps."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_steps: int = 100
    ramp: str = "exp"
    batch_size: int = 64
    seed: int = 42
    momentum: float = 0.0
    optimizer: str = "sgd"
    jit_compile: str = "auto"
    workdir: str = "runs/lr_range"
    tfds_data_dir: str = None
    dataset_dir: str = None


def _flag(argument):
    """Returns the flag that sets a `lr_finder.find_lr` argument of the same name: `--<argument>`."""
    return f"--{argument}"


def validate(config):
    """Returns a list of problems with a RangeTestConfig's values, each naming its flag (empty when valid).

    The ramp's problems are `lr_finder.check_ramp`'s, with the arguments named as this app's flags.
    Touches no files.
    """
    problems = lr_finder.check_ramp(config.start_lr, config.end_lr, config.num_steps, config.ramp, label=_flag)
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        problems.append(f"--batch_size must be a positive integer, got {config.batch_size!r}")
    if not 0 <= config.momentum < 1:
        problems.append(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.optimizer not in config_lib.OPTIMIZERS:
        problems.append(f"--optimizer must be one of {', '.join(config_lib.OPTIMIZERS)}, got {config.optimizer!r}")
    elif config.optimizer != "sgd" and config.momentum:
        problems.append(f"--momentum is SGD's; --optimizer={config.optimizer} uses Keras's beta_1=0.9")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed <= config_lib.MAX_SEED:
        problems.append(f"--seed must be an integer in [0, 2**32 - 1], got {config.seed!r}")
    if config.jit_compile not in config_lib.JIT_CHOICES:
        problems.append(f"--jit_compile must be one of {', '.join(config_lib.JIT_CHOICES)}, got {config.jit_compile!r}")
    if not config.workdir:
        problems.append("--workdir must not be empty")
    return problems


def run_range_test(config, data=None):
    """Runs the range test of the tutorial's CNN on Fashion-MNIST per `config`; returns (result, paths written).

    Loads the data unless given (a `data.FashionMnist`), compiles the CNN as the trainer does
    (`trial.compile_model`'s loss and metric) with Keras SGD at `config.momentum` (or Adam / AdamW), runs
    `lr_finder.find_lr` on `config.batch_size`-example batches of the training arrays shuffled by
    `config.seed`, and writes `lr_range.json` (the RangeTestResult, the data source and the
    trainer flags) and, when matplotlib is installed, `lr_range.png` into `config.workdir`.
    Raises checkpointing.WorkdirError naming the folder or file when the workdir cannot be
    written (checked before the test runs) and data.DataError for unusable data (also a training
    split smaller than one batch).
    """
    if data is None:
        data = fashion_mnist.load(tfds_data_dir=config.tfds_data_dir, dataset_dir=config.dataset_dir)
    fashion_mnist.steps_per_epoch(data.train.num_examples, config.batch_size)  # a DataError when no batch fits
    # Before the test runs, so an unusable workdir costs no training.
    checkpointing.check_writable(config.workdir)
    keras.utils.set_random_seed(config.seed)
    model = models.create_model(seed=config.seed)
    # The trainer's loss and metric (trainer.compile_model) with a constant momentum: the range
    # test replaces the rate, and cycled momentum would move during the ramp.
    model.compile(
        optimizer=_optimizer(config),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    result = lr_finder.find_lr(
        model,
        data.train.images,
        data.train.labels,
        batch_size=config.batch_size,
        seed=config.seed,
        start_lr=config.start_lr,
        end_lr=config.end_lr,
        num_steps=config.num_steps,
        ramp=config.ramp,
        jit_compile=runtime.resolve_jit_compile(config.jit_compile),
    )
    value = result.to_json_dict()
    value["settings"].update(
        batch_size=config.batch_size,
        seed=config.seed,
        momentum=config.momentum,
        optimizer=config.optimizer,
        data=data.source,
    )
    value["flags"] = (
        trainer_flags(result.suggestions, config.momentum, config.optimizer) if result.suggestions else None
    )
    paths = [os.path.join(config.workdir, JSON_NAME)]
    try:
        checkpointing.write_json_atomic(paths[0], value)
    except OSError as e:
        raise checkpointing.WorkdirError(
            f"cannot write {paths[0]}: {e}", starting_over_helps=False, argument="workdir"
        ) from e
    png = os.path.join(config.workdir, PNG_NAME)
    try:
        paths.append(lr_finder.plot(result, png))
    except ImportError:
        logging.warning('matplotlib is not installed (pip install -e ".[plot]"), so %s was not drawn', PNG_NAME)
    except OSError as e:
        raise checkpointing.WorkdirError(
            f"cannot write {png}: {e}", starting_over_helps=False, argument="workdir"
        ) from e
    return result, paths


cli.define_training_flags(flags.FLAGS)
# The data and model flags are the training flags; the ramp's are this app's own.
flags.DEFINE_float("start_lr", RangeTestConfig.start_lr, "Rate of the first step.")
flags.DEFINE_float("end_lr", RangeTestConfig.end_lr, "Rate of the last step.")
flags.DEFINE_integer("num_steps", RangeTestConfig.num_steps, "Steps (batches) of the ramp.")
flags.DEFINE_enum("ramp", RangeTestConfig.ramp, lr_finder.RAMPS, "exp: equal steps in log rate; linear: equal steps.")


def config_from_flags():
    """Returns the RangeTestConfig the parsed flags describe; raises app.UsageError naming each bad flag.

    The data and model flags (`--batch_size`, `--seed`, `--momentum`, `--jit_compile`,
    `--dataset_dir`, `--tfds_data_dir`) are the training flags (`clr_loop.cli`), read and checked as
    a training run reads them, so a training flagfile works here too; `--workdir` defaults to
    runs/lr_range.
    """
    FLAGS = flags.FLAGS
    shared = cli.config_from_flags(FLAGS)
    unused = [
        f"--{name}={getattr(shared, name)}"
        for name in ("dataset", "model", "augment", "train_split", "eval_split")
        if getattr(shared, name) != getattr(config_lib.Config, name)
    ]
    if unused:
        # Not silently ignored: this app runs the tutorial's CNN on Fashion-MNIST.
        raise app.UsageError(
            f"the range test runs the tutorial's CNN on Fashion-MNIST; {' '.join(unused)} is not used here"
        )
    config = RangeTestConfig(
        start_lr=FLAGS.start_lr,
        end_lr=FLAGS.end_lr,
        num_steps=FLAGS.num_steps,
        ramp=FLAGS.ramp,
        batch_size=shared.batch_size,
        seed=shared.seed,
        momentum=shared.momentum,
        optimizer=shared.optimizer,
        jit_compile=shared.jit_compile,
        workdir=FLAGS.workdir or RangeTestConfig.workdir,
        tfds_data_dir=shared.tfds_data_dir,
        dataset_dir=shared.dataset_dir,
    )
    problems = validate(config)
    if problems:
        raise app.UsageError("\n".join(problems))
    return config


def main(argv):
    """The app: runs the range test per the flags, prints the report and the files written; returns the exit status."""
    console.show_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags()
    try:
        result, paths = run_range_test(config)
    except errors.Error as e:
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    print(report(result, config.momentum, config.optimizer))
    print("Wrote " + " and ".join(paths))
    if result.stop_reason == "interrupted":
        print(
            f"stopped: interrupted (SIGINT) after {len(result.lr)} of {config.num_steps} steps; the curve so far "
            f"is in {paths[0]}",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
    return 0


def run():
    """Console-script entry point: parses flags and runs `main`."""
    console.report_interrupts()
    app.run(process.app_main(main), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
