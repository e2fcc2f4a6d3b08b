r"""Trains the tutorial's CNN on Fashion-MNIST with a cyclical learning rate.

  python -m clr_loop.train --mode=triangular2
  python -m clr_loop.train --flagfile=flags/triangular2.flags --epochs=3

This module is the only reader of absl FLAGS: it turns them into a `Config`, checks it, and hands
it to `clr_loop.trainer`.
"""

import dataclasses
import sys

from absl import app
from absl import flags

from clr_loop import checkpointing
from clr_loop import config as config_lib
from clr_loop import data as data_lib
from clr_loop import distribute
from clr_loop import process
from clr_loop import trainer as trainer_lib

_D = config_lib.Config()

flags.DEFINE_enum("mode", _D.mode, config_lib.MODES, "Learning-rate schedule; `none` is plain SGD at --lr.")
flags.DEFINE_float("lr", _D.lr, "Constant learning rate for --mode=none (Keras SGD's default).")
flags.DEFINE_float("initial_lr", _D.initial_lr, "Lower bound of the cyclical rate.")
flags.DEFINE_float("max_lr", _D.max_lr, "Upper bound of the cyclical rate; one_cycle's peak rate.")
flags.DEFINE_float("step_size_epochs", _D.step_size_epochs, "Half-cycle (rising part) in epochs; step_size = round(this * steps per epoch).")
flags.DEFINE_float("step_size_down_epochs", None, "Falling part of each cycle in epochs (default: same as --step_size_epochs).")
flags.DEFINE_float("gamma", _D.gamma, "exp_range decay: the amplitude is multiplied by gamma**step.")
flags.DEFINE_float("pct_start", _D.pct_start, "one_cycle: fraction of the steps spent warming up.")
flags.DEFINE_enum("anneal_strategy", _D.anneal_strategy, ["cos", "linear"], "one_cycle: anneal shape.")
flags.DEFINE_float("div_factor", _D.div_factor, "one_cycle: initial rate = max_lr / div_factor.")
flags.DEFINE_float("final_div_factor", _D.final_div_factor, "one_cycle: final rate = initial rate / final_div_factor.")
flags.DEFINE_bool("three_phase", _D.three_phase, "one_cycle: return to the initial rate before the final anneal.")
flags.DEFINE_float("momentum", _D.momentum, "SGD momentum when it is not cycled.")
flags.DEFINE_bool("cycle_momentum", None, "Cycle momentum opposite to the rate (default: on for one_cycle only).")
flags.DEFINE_float("base_momentum", _D.base_momentum, "Cyclical momentum at the rate's peak.")
flags.DEFINE_float("max_momentum", _D.max_momentum, "Cyclical momentum at the rate's low point.")
flags.DEFINE_integer("epochs", _D.epochs, "Number of epochs.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Evaluation batch size (does not change the metrics).")
flags.DEFINE_integer("seed", _D.seed, "Seed for weights, data order and dropout.")
flags.DEFINE_integer("steps_per_loop", _D.steps_per_loop, "Training steps per compiled loop call (Python runs once per loop).")
flags.DEFINE_integer("log_every_steps", _D.log_every_steps, "Write train summaries about this often (in steps).")
flags.DEFINE_integer("max_steps", _D.max_steps, "Stop after this many steps in all (0: no cap); the eval still runs.")
flags.DEFINE_enum("jit_compile", _D.jit_compile, config_lib.JIT_CHOICES, "XLA for the steps: auto = on where a GPU/TPU is present.")
flags.DEFINE_string("workdir", None, "Output folder (default: runs/<mode>).")
flags.DEFINE_list("profile_steps", None, "START,STOP: capture a TF profiler trace of these steps.")
flags.DEFINE_string("tfds_data_dir", None, "Use TFDS fashion_mnist from this data_dir (downloads when online).")
flags.DEFINE_string("dataset_dir", None, "Use the raw Fashion-MNIST IDX .gz files in this folder.")

flags.DEFINE_integer("checkpoint_every_steps", _D.checkpoint_every_steps, "Also checkpoint every this many steps (0: only at each epoch end and on SIGTERM/SIGINT).")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "How many recent checkpoints to keep.")
flags.DEFINE_bool("deterministic", False, "Bit-reproducible runs: op determinism on (see README for the cost).")
flags.DEFINE_bool("overwrite", False, "Start over in a workdir that holds another run (removes its outputs).")
flags.DEFINE_enum("strategy", _D.strategy, config_lib.STRATEGIES, "default: one device; mirrored: local GPUs (or --devices); multi_worker: the TF_CONFIG cluster.")
flags.DEFINE_list("devices", None, "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1 (default: all GPUs, else all CPUs).")
flags.DEFINE_integer("virtual_cpus", _D.virtual_cpus, "Split the host CPU into this many logical devices (for trying distribution on a CPU).")
flags.DEFINE_integer("batch_splits", _D.batch_splits, "Compute each batch as this many parts side by side, one thread per op (0: automatic, one per CPU core of at least 32 examples on a CPU-only run, else 1).")
flags.DEFINE_float("cluster_timeout", _D.cluster_timeout, "multi_worker: seconds to wait for peers and for any collective op.")
flags.DEFINE_string("save_init", None, "Write the model's initial weights to this .weights.h5 file, then train.")
flags.DEFINE_string("init_weights", None, "Start from the weights in this .weights.h5 file (from --save_init).")

FLAGS = flags.FLAGS


def _profile_steps(values):
    if values is None:
        return None
    try:
        start, stop = (int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--profile_steps must be START,STOP (two integers), got {','.join(values)!r}")
    return (start, stop)


def config_from_flags():
    """Returns the Config that the parsed flags describe; raises app.UsageError naming each bad flag."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.Config) if f.name in FLAGS}
    values["profile_steps"] = _profile_steps(FLAGS.profile_steps)
    values["devices"] = tuple(FLAGS.devices) if FLAGS.devices else None
    values["workdir"] = FLAGS.workdir or f"runs/{FLAGS.mode}"
    config = config_lib.Config(**values)
    problems = config_lib.validate(config)
    if problems:
        raise app.UsageError("\n".join(problems))
    return config


def main(argv):
    """The app: builds the Config from the flags and trains; returns the exit status (0, 1, or 128+signal)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags()
    try:
        trainer_lib.train_and_evaluate(config)
    except trainer_lib.Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 128 + e.signum
    except (
        distribute.ClusterError,
        data_lib.DataError,
        trainer_lib.TrainingDiverged,
        trainer_lib.WeightsError,
        checkpointing.WorkdirError,
        checkpointing.CheckpointError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run():
    """Console-script entry point: parses flags and runs `main`."""
    app.run(process.app_main(main))


if __name__ == "__main__":
    run()
