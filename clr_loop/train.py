r"""Trains a model (the tutorial's CNN on Fashion-MNIST by default) with a cyclical learning rate.

  python -m clr_loop.train --mode=triangular2
  python -m clr_loop.train --flagfile=flags/triangular2.flags --epochs=3
  python -m clr_loop.train --dataset=npz:fm.npz --model=resnet20 --optimizer=adamw --mode=one_cycle --augment=flip_crop

An absl app: the flags (`clr_loop.cli`) become a checked `Config`, which `clr_loop.experiment.trial` trains.
"""

import sys

from clr_loop import console
from clr_loop import process

if __name__ == "__main__":
    console.report_interrupts()  # a Ctrl-C during the imports: one line, no traceback

# An app's start-up tuning (see clr_loop.process): TensorFlow and Keras are imported with the
# garbage collector paused and Keras's matplotlib.pyplot import deferred to its first use; and its
# console (see clr_loop.console): TensorFlow's C++ start-up lines only with --verbosity=1.
with console.native_start_up_hidden(sys.argv), process.gc_paused(), process.deferred_imports():
    from absl import app
    from absl import flags

    from clr_loop import cli
    from clr_loop import loop
    from clr_loop.experiment import trial

cli.define_training_flags(flags.FLAGS)
# `--help` lists the training flags as this app's own.
flags.adopt_module_key_flags(cli)

FLAGS = flags.FLAGS


def main(argv):
    """The app: builds the Config from the flags and trains; returns the exit status (0, 1, or 128+signal)."""
    console.show_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.config_from_flags(FLAGS)
    try:
        trial.train_and_evaluate(config, strategy=cli.set_up_process(config))
    except loop.Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 128 + e.signum
    except cli.training_errors() as e:
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    return 0


def run():
    """Console-script entry point: parses flags and runs `main`."""
    console.report_interrupts()
    app.run(process.app_main(main), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
