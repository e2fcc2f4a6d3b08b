r"""Figures of learning-rate schedules and training histories, as PNG files (headless).

  python -m clr_loop.plot schedule --mode=triangular2 --epochs=10 [--out=PATH]
  python -m clr_loop.plot schedule --flagfile=flags/triangular2.flags --epochs=100
  python -m clr_loop.plot history runs/no_clr runs/triangular2 [--out_dir=DIR]

An absl app around `clr_loop.experiment.figures`, which computes and draws the figures (matplotlib, the
`clr_loop[plot]` extra, is imported only when a figure is drawn, with no pyplot and no display).

The `schedule` command takes every training flag of `clr_loop.train` (so a flagfile works too) and
builds its Config through `clr_loop.cli.config_from_flags`, the same way a training run does.
"""

import os
import sys

from clr_loop import console
from clr_loop import process

if __name__ == "__main__":
    console.report_interrupts()  # a Ctrl-C during the imports: one line, no traceback

# An app's start-up tuning (see clr_loop.process) and console (clr_loop.console).
with console.native_start_up_hidden(sys.argv), process.gc_paused(), process.deferred_imports():
    from absl import app
    from absl import flags

    from clr_loop import cli
    from clr_loop import errors
    from clr_loop.experiment import fashion_mnist
    from clr_loop.experiment import figures

cli.define_training_flags(flags.FLAGS)
flags.DEFINE_string("out", None, "schedule: the PNG to write (default: runs/figures/schedule_<mode>_<epochs>ep.png).")
flags.DEFINE_string("out_dir", None, "history: the folder for the PNGs (default: figures/ in the runs' common folder).")
flags.DEFINE_integer(
    "num_train_examples", fashion_mnist.FULL_SIZE["train"], "schedule: training-set size that sets the steps per epoch."
)


def main(argv):
    """The app: `schedule [schedule flags]` or `history DIR...`; prints each PNG written; returns the exit status."""
    usage = "usage: python -m clr_loop.plot schedule [--mode=... --epochs=...] | history DIR..."
    if len(argv) < 2 or argv[1] not in ("schedule", "history"):
        raise app.UsageError(usage)
    command, rest = argv[1], argv[2:]
    FLAGS = flags.FLAGS
    try:
        if command == "schedule":
            if rest:
                raise app.UsageError(f"schedule takes flags only, got {' '.join(rest)}")
            if FLAGS.num_train_examples < 1:
                raise app.UsageError(f"--num_train_examples must be positive, got {FLAGS.num_train_examples}")
            config = cli.config_from_flags(FLAGS)
            if FLAGS.out is not None and (not FLAGS.out.lower().endswith(".png") or os.path.isdir(FLAGS.out)):
                raise app.UsageError(f"--out must name a .png file (not a folder), got {FLAGS.out!r}")
            out = FLAGS.out or os.path.join("runs", "figures", f"schedule_{config.mode}_{config.epochs}ep.png")
            figures.require_matplotlib()
            print(figures.plot_schedule(config, out, FLAGS.num_train_examples))
        else:
            if not rest:
                raise app.UsageError("history needs at least one run folder (a --workdir holding history.json)")
            if FLAGS.out:
                raise app.UsageError(f"--out={FLAGS.out} is for `schedule`; history writes its PNGs into --out_dir")
            if FLAGS.out_dir is not None and not FLAGS.out_dir.strip():
                raise app.UsageError("--out_dir must not be empty (leave it out for the default, figures/ by the runs)")
            for path in figures.plot_histories(rest, FLAGS.out_dir or figures.default_out_dir(rest)):
                print(path)
    except errors.Error as e:
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    return 0


def run():
    """Console-script entry point: parses flags and runs `main`."""
    console.report_interrupts()
    app.run(process.app_main(main), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
