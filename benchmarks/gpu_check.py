r"""The Python steps of `benchmarks/gpu_check.sh`: the machine's record, data, and the main job's time.

  python -m benchmarks.gpu_check env --out=DIR [--require_gpu]   # DIR/env.json and env.txt
  python -m benchmarks.gpu_check idx_data DIR --train=512 --test=128  # random Fashion-MNIST-shaped IDX files
  python -m benchmarks.gpu_check train_time WORKDIR --out=FILE   # the 10-epoch job's training time

Run from the repository root: the benchmark is not part of the installed package.

This module is an absl app: `main` is the only reader of FLAGS; everything else takes arguments.
"""

import gzip
import json
import os
import platform
import statistics
import struct
import sys

from absl import app
from absl import flags

# The main job's goal: 10 epochs of the tutorial in under this many seconds of training.
TARGET_TRAINING_S = 5.0


def write_idx_dir(directory, n_train, n_test, seed=0):
    """Writes the four Fashion-MNIST IDX .gz files (the real format) of seeded random 28x28 uint8
    images and labels 0..9 into `directory`, `n_train` and `n_test` examples; returns `directory`."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(os.path.join(directory, fashion_mnist.IDX_FILES[f"{split}_images"]), "wb", compresslevel=1) as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(os.path.join(directory, fashion_mnist.IDX_FILES[f"{split}_labels"]), "wb", compresslevel=1) as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return directory


def environment():
    """Returns what the results were measured on: {"python", "tensorflow", "keras", "numpy",
    "build" (TensorFlow's CUDA and cuDNN versions, from tf.sysconfig), "gpus" ([{"name",
    "compute_capability"}], what TensorFlow sees), "jit_compile_auto" (what clr_loop's
    `jit_compile="auto"` resolves to here), "cpu", "cpu_count", "platform"}."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from benchmarks import machine  # pylint: disable=import-outside-toplevel
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel

    build = {k: v for k, v in tf.sysconfig.get_build_info().items() if "cuda" in k or "cudnn" in k}
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(
            {
                "device": device.name,
                "name": details.get("device_name"),
                "compute_capability": list(details.get("compute_capability") or []),
            }
        )
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "build": build,
        "gpus": gpus,
        "jit_compile_auto": runtime.resolve_jit_compile("auto"),
        "cpu": machine.cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def format_environment(env):
    """Returns `environment()`'s record as a few lines of text."""
    gpus = (
        ", ".join(
            f"{g['name']} (compute capability {'.'.join(map(str, g['compute_capability']))})" for g in env["gpus"]
        )
        or "none seen by TensorFlow"
    )
    build = ", ".join(f"{k} {v}" for k, v in sorted(env["build"].items())) or "no CUDA build information"
    return "\n".join(
        [
            f"GPU: {gpus}",
            f"TensorFlow {env['tensorflow']} ({build}), Keras {env['keras']}, NumPy {env['numpy']}, Python {env['python']}",
            f"jit_compile=auto resolves to XLA {'on' if env['jit_compile_auto'] else 'off'}",
            f"CPU: {env['cpu']} ({env['cpu_count']} logical cores); {env['platform']}",
        ]
    )


def training_time(history, target_s=TARGET_TRAINING_S):
    """Returns the main job's training time from its history.json (`history`, a dict).

    {"epochs", "training_s" (the sum of the epochs' seconds: each epoch's steps and its validation,
    the first epoch's tracing and compilation included), "first_epoch_s", "later_epoch_s" (the
    median of the others; None with one epoch), "target_s", "met" (training_s < target_s),
    "val_accuracy" (the last epoch's; None without validation)}."""
    seconds = list(history["epoch_seconds"])
    total = sum(seconds)
    val = history.get("val_accuracy") or [None]
    return {
        "epochs": len(seconds),
        "training_s": total,
        "first_epoch_s": seconds[0] if seconds else None,
        "later_epoch_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "target_s": target_s,
        "met": total < target_s,
        "val_accuracy": val[-1],
    }


def format_training_time(t):
    later = "" if t["later_epoch_s"] is None else f", later epochs {t['later_epoch_s']:.2f} s each (median)"
    accuracy = "" if t["val_accuracy"] is None else f"; final val_accuracy {t['val_accuracy']:.4f}"
    return (
        f"training time: {t['training_s']:.2f} s for {t['epochs']} epochs (target: under {t['target_s']:g} s: "
        f"{'met' if t['met'] else 'missed'}); first epoch {t['first_epoch_s']:.2f} s{later}{accuracy}"
    )


def define_flags():
    """Defines the app's flags (only when this module runs as a program)."""
    flags.DEFINE_string("out", None, "env: the folder for env.json and env.txt; train_time: the JSON file to write.")
    flags.DEFINE_bool("require_gpu", False, "env: exit 1 when TensorFlow sees no GPU.")
    flags.DEFINE_integer("train", 512, "idx_data: training examples.")
    flags.DEFINE_integer("test", 128, "idx_data: test examples.")
    flags.DEFINE_float("target_s", TARGET_TRAINING_S, "train_time: the training-time goal in seconds.")


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 2 or argv[1] not in ("env", "idx_data", "train_time"):
        raise app.UsageError("usage: gpu_check env --out=DIR | idx_data DIR | train_time WORKDIR --out=FILE")
    command, rest = argv[1], argv[2:]
    if command == "env":
        if rest or not FLAGS.out:
            raise app.UsageError("env takes --out=DIR and no arguments")
        env = environment()
        os.makedirs(FLAGS.out, exist_ok=True)
        with open(os.path.join(FLAGS.out, "env.json"), "w") as f:
            json.dump(env, f, indent=1)
        text = format_environment(env)
        with open(os.path.join(FLAGS.out, "env.txt"), "w") as f:
            f.write(text + "\n")
        print(text)
        if FLAGS.require_gpu and not env["gpus"]:
            print(
                "error: TensorFlow sees no GPU (a CPU-only TensorFlow, or no CUDA libraries it can load)",
                file=sys.stderr,
            )
            return 1
        return 0
    if len(rest) != 1:
        raise app.UsageError(f"{command} takes one folder")
    if command == "idx_data":
        print(write_idx_dir(rest[0], FLAGS.train, FLAGS.test))
        return 0
    with open(os.path.join(rest[0], "history.json")) as f:
        result = training_time(json.load(f), FLAGS.target_s)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(result, f, indent=1)
    print(format_training_time(result))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
