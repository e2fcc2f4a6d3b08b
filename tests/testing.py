"""The shared helpers of the tests: the one place test files import helpers from (never from each other).

pytest does not collect this file (it is not `*_test.py`); with tests/ on the path (pytest puts it
there, Bazel's `imports = ["tests"]` too) test files and the code strings they run in subprocesses
(`PYTHONPATH` of SUBPROCESS_ENV) `import testing`. A helper only one test file uses stays in that file.

clr_loop (and TensorFlow beyond what Keras loads) is imported inside the helpers that need it, so
importing this module defines no absl flag and loads none of the library's apps.

- Paths and environments: REPO, SUBPROCESS_ENV.
- Fake data: fake_data, make_config, weights, tiny_data, toy_data (with N, BATCH, STEPS_PER_EPOCH),
  npz_arrays, write_npz, and the IDX (Fashion-MNIST raw format) writer: idx_bytes, write_idx_files,
  write_tiny_idx_dir.
- Toy models for clr_loop.loop.fit: logits_model, logits_compile, compiled, twins, dict_model,
  assert_same_weights, SigtermAt, KILL_SCRIPT, start_script, sigkill_then_resume,
  history_without_timing, event_values.
- The apps: app_message_lines, assert_one_line_usage_error, run_main_in_process, assert_run_outputs.
- Localhost clusters: free_ports, start_worker, checkpoint_weights, Cluster, saved_step, fit_small_model.
- Schedule oracles: tfa_oracle, TRIANGULAR, roundtrip, assert_rel.
- Compiled XLA modules: balanced, HloModule (the parser of a module's HLO text), jit_cnn_run
  (with CNN_BATCH, CNN_IMAGE), gradients_only.
"""

import gzip
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

# Paths and environments -----------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
# For code strings run by a subprocess: the library and this module importable, TensorFlow's C++ logs quiet.
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([REPO, TESTS]))


# Fake data ------------------------------------------------------------------------------------


def fake_data(num_train=256, num_test=70, seed=0):
    """Returns a FashionMnist of random images whose label is learnable (the mean brightness band)."""
    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 40, (n, 28, 28, 1)) + (labels * 20)[:, None, None, None]
        return fashion_mnist.Split(images=images.astype(np.uint8), labels=labels)

    return fashion_mnist.FashionMnist(train=split(num_train), test=split(num_test), source="fake")


def tiny_data(num_train=40, num_test=25, seed=0):
    """Returns a FashionMnist of uniformly random images and labels (nothing to learn)."""
    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)

    def split(n):
        images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        return fashion_mnist.Split(images=images, labels=rng.integers(0, 10, n).astype(np.int32))

    return fashion_mnist.FashionMnist(train=split(num_train), test=split(num_test), source="tiny")


def make_config(tmp_path, **overrides):
    """Returns a small experiment Config (triangular2, 2 epochs of batches of 32, no XLA) writing to
    `tmp_path / "run"`, with `overrides`."""
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel

    values = dict(
        mode="triangular2",
        initial_lr=1e-3,
        max_lr=0.1,
        step_size_epochs=1.0,
        epochs=2,
        batch_size=32,
        eval_batch_size=32,
        steps_per_loop=4,
        log_every_steps=2,
        jit_compile="false",
        workdir=str(tmp_path / "run"),
    )
    values.update(overrides)
    return config_lib.Config(**values)


def weights(model):
    """Returns copies of a model's trainable weights as numpy arrays."""
    return [v.numpy().copy() for v in model.trainable_variables]


N, BATCH = 200, 32  # toy_data's default size and the batch the loop tests use: 7 batches, the last of 8
STEPS_PER_EPOCH = 7


def toy_data(n=N, seed=0, features=8):
    """Returns (x float32 [n, features], y int32 [n]) with a learnable 3-class label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1).astype(np.int32)
    return x, y


def npz_arrays(n_train=30, n_test=10, shape=(6, 5), classes=4, seed=0):
    """Returns the four arrays of an npz dataset: random uint8 images, labels cycling through every class."""
    rng = np.random.default_rng(seed)
    labels = lambda n: np.arange(n) % classes  # noqa: E731  (every class occurs)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": labels(n_train),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": labels(n_test),
    }


def write_npz(path, **arrays):
    """Writes `arrays` to the npz file `path`; returns the path as a string."""
    np.savez(path, **arrays)
    return str(path)


# The IDX format (Fashion-MNIST's raw files), written straight from its description ----------------


def idx_bytes(array, *, magic=None, dims=None):
    """Uncompressed IDX: big-endian magic, one uint32 per dim, then the uint8 payload."""
    array = np.asarray(array, dtype=np.uint8)
    dims = array.shape if dims is None else dims
    if magic is None:
        magic = 0x0800 | len(dims)
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def write_idx_files(directory, arrays, compresslevel=9):
    """Writes each of `arrays` ({"train_images": uint8 [n, 28, 28], "train_labels": [n], "test_images",
    "test_labels"}) as the gzipped IDX file Fashion-MNIST names it into `directory`; returns `directory`."""
    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    os.makedirs(directory, exist_ok=True)
    for name, array in arrays.items():
        with open(os.path.join(directory, fashion_mnist.IDX_FILES[name]), "wb") as f:
            f.write(gzip.compress(idx_bytes(array), compresslevel=compresslevel, mtime=0))
    return directory


def write_tiny_idx_dir(directory, n_train=96, n_test=40, seed=0, source=None, learnable=False):
    """Writes the four Fashion-MNIST IDX .gz files (real format, tiny sizes) into `directory`; returns it.

    The examples are seeded random pixels and labels; with `learnable` the label shows in the
    image's brightness (labels * 20 + noise 0..39); with `source` (a folder of the real IDX files)
    the first `n_train` and `n_test` examples of the real splits.
    """
    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    real = fashion_mnist.load_idx_dir(source) if source else None
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        if real is not None:
            images = getattr(real, split).images[:n, :, :, 0]
            labels = getattr(real, split).labels[:n].astype(np.uint8)
        elif learnable:
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            images = (rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20).astype(np.uint8)
        else:
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return write_idx_files(directory, arrays)


# Toy models for clr_loop.loop.fit ---------------------------------------------------------------


def logits_model(*middle, seed=1):
    """Returns Input(8) -> Dense(16, relu) -> middle layers -> Dense(3) logits, initialised from `seed`."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), *middle, keras.layers.Dense(3)]
    )


def twins(build, compile_kwargs):
    """Returns two compiled models from `build()` with identical initial weights (ours, Keras's)."""
    ours, theirs = build(), build()
    theirs.set_weights(ours.get_weights())
    for m in (ours, theirs):
        m.compile(**compile_kwargs(), jit_compile=False)
    return ours, theirs


def logits_compile(lr=0.1, momentum=0.0):
    """Returns a function of no argument giving compile()'s arguments: SGD, cross-entropy of logits, accuracy."""
    return lambda: dict(
        optimizer=keras.optimizers.SGD(lr, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def compiled(build=logits_model, **compile_kwargs):
    """Returns `build()` compiled with logits_compile(**compile_kwargs)."""
    model = build()
    model.compile(**logits_compile(**compile_kwargs)())
    return model


def dict_model():
    """Returns a model of two named inputs, {"a": [4], "b": [3]}, giving 3 logits."""
    keras.utils.set_random_seed(2)
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(3)(h))


def assert_same_weights(a, b, atol=1e-5):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=atol)


class SigtermAt(keras.callbacks.Callback):
    """Sends this process a SIGTERM after the compiled loop that ends at optimizer step `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


KILL_SCRIPT = '''
import os, signal, sys
import keras
import numpy as np
from clr_loop import loop

workdir, out, kill_at, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
input_mode = sys.argv[5] if len(sys.argv) > 5 else "auto"
rng = np.random.default_rng(0)
x = rng.normal(size=(200, 8)).astype(np.float32)
y = np.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1).astype(np.int32)
keras.utils.set_random_seed(1)
model = keras.Sequential([
    keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.3, seed=2),
    keras.layers.Dense(3),
])
model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


class KillOnce(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if 0 <= kill_at <= int(self.model.optimizer.iterations) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


loop.fit(model, x, y, batch_size=32, epochs=3, seed=7, verbose=0, workdir=workdir, steps_per_loop=2,
         checkpoint_every_steps=4, log_every_steps=3, validation_data=(x[:50], y[:50]), callbacks=[KillOnce()],
         input_mode=input_mode)
model.save_weights(out)
'''


def start_script(script, workdir, out, kill_at, marker, input_mode="auto"):
    """Starts `python script workdir out kill_at marker input_mode` (a KILL_SCRIPT) in the repo; returns the Popen."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, script, workdir, out, str(kill_at), marker, input_mode],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _h5_arrays(path):
    import h5py  # pylint: disable=import-outside-toplevel

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def history_without_timing(workdir):
    """Returns a workdir's history.json without its epoch_seconds (which no two runs share)."""
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    history.pop("epoch_seconds")
    return history


def sigkill_then_resume(tmp_path, monkeypatch, reference_mode="auto", killed_mode="auto"):
    """Runs KILL_SCRIPT killed at step 10 and again (input mode `killed_mode`) and uninterrupted
    (`reference_mode`); asserts the two end with the same bits and the same history."""
    import runpy  # pylint: disable=import-outside-toplevel

    script = str(tmp_path / "train.py")
    with open(script, "w") as f:
        f.write(KILL_SCRIPT)
    marker = str(tmp_path / "killed")
    ref_dir, run_dir = str(tmp_path / "reference"), str(tmp_path / "run")
    ref_out, run_out = str(tmp_path / "ref.weights.h5"), str(tmp_path / "run.weights.h5")
    # Killed at step 10: mid epoch 2, after the checkpoint at step 8, before the one at 12.
    killed = start_script(script, run_dir, run_out, 10, marker, killed_mode)
    # Meanwhile the uninterrupted reference, the same script in this process.
    monkeypatch.setattr(sys, "argv", [script, ref_dir, ref_out, "-1", marker, reference_mode])
    runpy.run_path(script, run_name="__main__")
    out, _ = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, out
    assert os.path.exists(marker) and not os.path.exists(run_out)
    resumed = start_script(script, run_dir, run_out, 10, marker, killed_mode)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert "Resuming from" in out and "ckpt-8" in out, out
    expected, actual = _h5_arrays(ref_out), _h5_arrays(run_out)
    assert expected and set(actual) == set(expected)
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), name
    assert history_without_timing(run_dir) == history_without_timing(ref_dir)


def event_values(logdir):
    """Returns {tag: {step: value}} of the scalar summaries in a TensorBoard log folder."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {
        tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)} for tag in acc.Tags()["tensors"]
    }


# The apps ---------------------------------------------------------------------------------------

HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"}
# Lines TensorFlow's and absl's loggers write to stderr on their own (not an app's message).
_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} \d\d:\d\d:\d\d)")


def app_message_lines(stderr):
    """Returns the lines of an app's stderr that are not log lines of TensorFlow or absl."""
    return [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]


def assert_one_line_usage_error(result, *parts):
    """Asserts an app exited 1 with `error: ...` or absl's flag error and the --helpshort hint only, naming `parts`."""
    lines = app_message_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert len(lines) == 2 and lines[1] == "Pass --helpshort or --helpfull to see help on flags.", result.stderr
    assert lines[0].startswith(("error: ", "FATAL Flags parsing error: ")), result.stderr
    for part in parts:
        assert part in lines[0]


def run_main_in_process(argv):
    """Parses `argv` as the train app would and runs `clr_loop.train.main`; returns its exit status."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel

    from clr_loop import train  # pylint: disable=import-outside-toplevel

    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.train", *argv])
        return train.main(rest)


def assert_run_outputs(workdir, epochs, extra_keys=()):
    """Asserts a train run's workdir holds its history (`epochs` of each key), config and events; returns the history."""
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert set(history) == HISTORY_KEYS | set(extra_keys)
    assert all(len(v) == epochs for v in history.values())
    assert json.load(open(os.path.join(workdir, "config.json")))["resolved"]["total_steps"] > 0
    for sub in ("train", "eval"):
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, sub)))
    return history


# Localhost clusters -------------------------------------------------------------------------------


def free_ports(n):
    """Returns `n` localhost ports free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_worker(index, ports, workdir, idx_dir, *extra):
    """Starts worker `index` of a localhost cluster on `ports`: `clr_loop.train --strategy=multi_worker`."""
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    env = dict(SUBPROCESS_ENV, TF_CONFIG=json.dumps(tf_config))
    args = [
        sys.executable,
        "-m",
        "clr_loop.train",
        "--strategy=multi_worker",
        f"--dataset_dir={idx_dir}",
        f"--workdir={workdir}",
        "--batch_size=16",
        "--epochs=2",
        "--steps_per_loop=4",
        "--eval_batch_size=16",
        "--verbosity=1",
        *extra,  # verbosity 1: the "checkpoint saved at step N" lines (saved_step)
    ]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_weights(directory):
    """Returns {name: array} of the floating-point tensors of the latest checkpoint in `directory`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    return {k: reader.get_tensor(k) for k, d in reader.get_variable_to_dtype_map().items() if d.is_floating}


class Cluster:
    """Two (or more) `clr_loop.train` workers on localhost; a thread per worker collects its output,
    so a test can wait for a line (with a deadline, no sleeping) while the others keep running."""

    def __init__(self, ports, workdir, idx_dir, *extra):
        """`workdir`: the workers' shared workdir, or a list of one per worker."""
        workdirs = [workdir] * len(ports) if isinstance(workdir, str) else workdir
        self.workers = [start_worker(i, ports, workdirs[i], idx_dir, *extra) for i in range(len(ports))]
        self.lines = [[] for _ in self.workers]
        self.events = queue.Queue()
        self.threads = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(len(ports))]
        for thread in self.threads:
            thread.start()

    def _read(self, index):
        for line in self.workers[index].stdout:
            self.lines[index].append(line)
            self.events.put((index, line))
        self.events.put((index, None))

    def wait_for(self, index, predicate, timeout=240):
        """Returns the first new line of worker `index` for which `predicate` holds (fails at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                who, line = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no matching line from worker {index} within {timeout}s:\n" + self.output(index)[-3000:])
            if who == index and line is None:
                pytest.fail(f"worker {index} ended first:\n" + self.output(index)[-3000:])
            if who == index and predicate(line):
                return line

    def finish(self, timeout=240):
        """Waits for every worker to end; returns their exit statuses."""
        codes = [w.wait(timeout=timeout) for w in self.workers]
        for thread in self.threads:
            thread.join(timeout=timeout)
        return codes

    def output(self, index):
        return "".join(self.lines[index])


def saved_step(line):
    """The step of a "checkpoint saved at step N: path" log line, or -1 for any other line."""
    return int(line.split("checkpoint saved at step ")[1].split(":")[0]) if "checkpoint saved at step" in line else -1


def fit_small_model(strategy):
    """Trains a dropout-free 2-layer classifier with clr_loop.fit under `strategy` (global batch 32, a
    CLR schedule, momentum, 2 epochs of 256 shuffled examples, validation on 37 in batches of 10);
    returns its replicas, history and weights, and on one device Keras's own evaluate of the validation data."""
    from clr_loop import loop  # pylint: disable=import-outside-toplevel
    from clr_loop.schedules import CyclicalLearningRate  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1)
    x_val, y_val = x[:37] * 1.5, y[:37]
    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
        model.compile(
            optimizer=keras.optimizers.SGD(CyclicalLearningRate(0.01, 0.2, step_size=5), momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    history = loop.fit(
        model,
        x,
        y,
        batch_size=32,
        epochs=2,
        seed=11,
        drop_remainder=True,
        verbose=0,
        validation_data=(x_val, y_val),
        validation_batch_size=10,
        jit_compile=False,
        steps_per_loop=3,
    )
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "history": history.history,
        "weights": [w.tolist() for w in model.get_weights()],
    }
    if strategy.num_replicas_in_sync == 1:  # Keras's own evaluate does not run under MultiWorkerMirroredStrategy
        result["evaluate"] = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    return result


# Schedule oracles -------------------------------------------------------------------------------


def tfa_oracle(step, lo, hi, step_size, scale_fn, scale_mode):
    """TFA's formula in float64: cycle = floor(1 + s/2S), x = |s/S - 2 cycle + 1|."""
    step = np.asarray(step, dtype=np.float64)
    cycle = np.floor(1 + step / (2 * step_size))
    x = np.abs(step / step_size - 2 * cycle + 1)
    mode_step = cycle if scale_mode == "cycle" else step
    return lo + (hi - lo) * np.maximum(0.0, 1 - x) * scale_fn(mode_step)


TRIANGULAR = lambda c: np.ones_like(np.asarray(c, dtype=np.float64))  # noqa: E731


def roundtrip(schedule):
    """Serializes through JSON text and back, as a saved model would."""
    text = json.dumps(keras.saving.serialize_keras_object(schedule))
    return keras.saving.deserialize_keras_object(json.loads(text))


def assert_rel(actual, expected, rtol=1e-6):
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


# Compiled XLA modules ---------------------------------------------------------------------------


def balanced(text, start):
    """Returns the index just after the bracket group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced: {text[start : start + 80]}")


_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")


class HloModule:
    """Every computation of an HLO module's text (`experimental_get_compiler_ir(...)(stage=...)`) as
    one dataflow graph.

    `ops[name] = (opcode, operands, line, computation, shape)` for every instruction (names are
    unique in a module); `entry` is the ENTRY computation's name, `params[number]` its parameters,
    `outputs` the operands of its ROOT tuple, `aliases` the output -> parameter map of
    `input_output_alias`, `modules` the number of modules in the text. `ancestors` follows values
    across computations (a fused computation's parameter k is its caller's operand k).
    """

    def __init__(self, text):
        text = re.sub(r"/\*.*?\*/", "", text)
        self.modules = len(re.findall(r"^HloModule ", text, re.M))
        header = text.splitlines()[0]
        self.aliases = {int(o): int(p) for o, p in re.findall(r"\{(\d+)\}: \((\d+), \{\}", header)}
        self.ops, self.params, self.outputs = {}, {}, []
        self.roots, self.comp_params, self.callers = {}, {}, {}
        computation, entry = None, None
        for line in text.splitlines():
            head = re.match(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
            if head and not line.startswith(" "):
                computation = head.group(2)
                if head.group(1):
                    entry = computation
                continue
            m = re.match(r"\s*(ROOT\s+)?%(\S+)\s*=\s*", line)
            if not m or computation is None:
                continue
            rest = line[m.end() :]
            shape_end = balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
            shape, body = rest[:shape_end], rest[shape_end:].lstrip()
            opcode = re.match(r"[\w\-]+", body).group(0)
            args_end = balanced(body, len(opcode))
            operands = re.findall(r"%([\w.\-]+)", body[len(opcode) : args_end])
            name = m.group(2)
            self.ops[name] = (opcode, operands, line, computation, shape)
            if opcode == "parameter":
                number = int(re.search(r"parameter\((\d+)\)", body).group(1))
                self.comp_params.setdefault(computation, {})[number] = name
            if m.group(1):
                self.roots[computation] = name
            for _, callee in _CALLEE.findall(body[args_end:]):
                self.callers.setdefault(callee, []).append(name)
        self.entry = entry
        self.params = dict(self.comp_params.get(entry, {}))
        root = self.roots.get(entry)
        self.outputs = self.ops[root][1] if root and self.ops[root][0] == "tuple" else [root]

    def _callee(self, name, key="calls"):
        m = re.search(rf"\b{key}=%([\w.\-]+)", self.ops[name][2])
        return m.group(1) if m else None

    def _inputs(self, name):
        """The instructions whose values `name`'s value is computed from, across computations."""
        opcode, operands, line, computation, _ = self.ops[name]
        if opcode == "parameter" and computation != self.entry:
            number = int(re.search(r"parameter\((\d+)\)", line).group(1))
            found = []
            for caller in self.callers.get(computation, []):
                caller_op, caller_operands = self.ops[caller][0], self.ops[caller][1]
                if caller_op == "conditional":
                    found += caller_operands[1:]  # a branch reads its own operand; over-approximated
                elif caller_op == "while":
                    found += caller_operands + [self.roots[self._callee(caller, "body")]]
                elif number < len(caller_operands):
                    found.append(caller_operands[number])
            return found
        if opcode == "get-tuple-element":
            source = operands[0]
            callee = (
                self._callee(source)
                or self._callee(source, "body")
                or (self._callee(source, "to_apply") if self.ops[source][0] == "call" else None)
            )
            root = self.roots.get(callee)
            index = int(re.search(r"index=(\d+)", line).group(1))
            if root and self.ops[root][0] == "tuple" and index < len(self.ops[root][1]):
                return [self.ops[root][1][index]] + ([source] if self.ops[source][0] == "while" else [])
            return operands
        callee = (
            self._callee(name)
            or self._callee(name, "body")
            or (self._callee(name, "to_apply") if opcode == "call" else None)
        )
        if callee and opcode in ("fusion", "call", "while", "async-start"):
            return [self.roots[callee]] + (operands if opcode == "while" else [])
        if opcode == "conditional":
            branches = re.findall(
                r"%([\w.\-]+)", (re.search(r"branch_computations=\{([^}]*)\}", line) or [None, ""])[1]
            )
            branches += [
                self._callee(name, k) for k in ("true_computation", "false_computation") if self._callee(name, k)
            ]
            return operands + [self.roots[b] for b in branches if b in self.roots]
        return [o for o in operands if o in self.ops]

    def ancestors(self, name):
        """Every instruction `name`'s value is computed from, directly or not, in any computation."""
        seen, todo = set(), [name]
        while todo:
            for source in self._inputs(todo.pop()):
                if source in self.ops and source not in seen:
                    seen.add(source)
                    todo.append(source)
        return seen


CNN_IMAGE = (16, 16, 1)  # the smallest image the tutorial CNN's two 5x5 convolutions and pools take
CNN_BATCH = 8


def jit_cnn_run(scheduled=True, **fit_args):
    """Returns (Run, x, y): a jit-compiled runner.Run of the tutorial CNN under a triangular2 CLR on
    random uint8 images, and one batch of them; without `scheduled` the optimizer's rate is a
    plain variable (for code that would set it from the schedule in Python)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from clr_loop import inputs  # pylint: disable=import-outside-toplevel
    from clr_loop import runner  # pylint: disable=import-outside-toplevel
    from clr_loop import schedules  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import models  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    model = models.create_model(seed=1, input_shape=CNN_IMAGE)
    clr = schedules.Triangular2CyclicalLearningRate(1e-3, 1e-2, step_size=4)
    model.compile(
        keras.optimizers.SGD(clr if scheduled else 1e-3, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4 * CNN_BATCH,) + CNN_IMAGE, dtype=np.uint8)
    y = rng.integers(0, 10, size=(4 * CNN_BATCH,), dtype=np.int32)
    run = runner.Run(
        model,
        inputs.make_train_input(x, y, CNN_BATCH, drop_remainder=True),
        (None, None),
        seed=3,
        epochs=1,
        steps_per_loop=2,
        jit_compile=True,
        batch_splits=0,
        workdir=None,
        checkpoint_every_steps=0,
        keep_checkpoints=1,
        log_every_steps=100,
        profile_steps=None,
        max_steps=None,
        validation_batch_size=CNN_BATCH,
        **fit_args,
    )
    return run, tf.constant(x[:CNN_BATCH]), tf.constant(y[:CNN_BATCH])


def gradients_only(model):
    """The mutation of the fused step: a compiled function of the forward and backward pass only,
    with the schedule and the update left outside XLA."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def gradients(a, b):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(a, b, model(a, training=True))
        return tape.gradient(loss, model.trainable_variables)

    return tf.function(gradients, jit_compile=True, autograph=False)
