r"""Benchmarks clr_loop's training loop against the tutorial's Keras `model.fit`, on this machine.

  python -m benchmarks.bench                              # the table: (a) fit, (b) the loop, (c) variants
  python -m benchmarks.bench --steps=300 --repeats=3      # a quicker run
  python -m benchmarks.bench --batch_sizes=32,64,128,256,512 --whole_process=3 --profile --out=bench.json
  python -m benchmarks.bench --fit_epoch                  # one tutorial epoch as a whole process
  python -m benchmarks.bench --analyze_profile=runs/profile # per-step breakdown of a profiler trace

Run from the repository root: the benchmark is not part of the installed package.

`--profile` and `--analyze_profile` read the trace with xprof (`pip install -e ".[profile]"`).

Every configuration runs in its own subprocess (same model, data, batch size, schedule and step
count), so thread settings can differ between configurations and the peak RSS that the OS reports
for that process belongs to that configuration alone. Times are medians over the timed repeats,
taken after a warm-up that includes tracing and compilation; "compile" is the first call's time
minus its steps at the steady per-step rate.

This module is an absl app: `main` is the only reader of FLAGS; everything else takes arguments.
"""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import measure
from benchmarks import torch_peer
from clr_loop import process

# The start-up tuning of clr_loop's apps (see clr_loop.process): TensorFlow, which checkpointing
# imports, is imported with the collector paused and Keras's matplotlib.pyplot deferred.
with process.gc_paused(), process.deferred_imports():
    from absl import app
    from absl import flags

    from clr_loop import checkpointing

# TensorFlow and Keras are imported inside the functions that use them: the parent process only
# spawns workers and prints tables, and nothing at import time may start TensorFlow's runtime
# before a worker has set its thread pools.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = measure.RESULT_PREFIX
# The tutorial's values; the trainer's Config defaults are the same.
TUTORIAL_BATCH_SIZE = 64
SEED = 42
MATMUL_SIZE = 2048
# The PyTorch peer's kinds and their rows' names.
TORCH_KINDS = {"torch": "(p) PyTorch eager", "torch_compile": "(p) PyTorch torch.compile"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark configuration, run in its own process.

    `kind` is "fit" (Keras `model.fit`, the tutorial's way), "loop" (clr_loop's compiled loop),
    "eval_loop" (clr_loop's eval loop over the test split), "fit_eval" (Keras `model.evaluate`
    at the training batch size, what `fit` runs as validation) or "matmul" (the machine's
    float32 matmul rate). `jit` is a `--jit_compile` value ("auto", "true", "false"); `input` is
    the loop's `input_mode`: "pipeline" (tf.data, clr_loop.experiment.fashion_mnist.train_dataset's order) or "device"
    (the whole training set on the device, each batch gathered inside the compiled loop). `splits` is the
    trainer's `--batch_splits` (each batch computed as that many parts side by side; 0: the
    trainer's automatic choice, 1: no splitting). `inter_op` and `intra_op` are TensorFlow
    thread-pool sizes; 0 and 0 mean what the trainer's app sets (`runtime.configure_threads`: one
    inter-op thread per part and the cores shared among them when it splits, else TensorFlow's
    default of one per core); "fit" always runs on TensorFlow's defaults, as the tutorial
    does. `virtual_cpus` > 0 runs the trainer's
    `--strategy=mirrored --virtual_cpus=N` (one replica per virtual CPU). `examples` > 0 keeps
    only that many examples of each split (for quick checks and tests). `precision` is a Keras
    dtype policy ("float32", "mixed_bfloat16", "mixed_float16") set as the worker's global policy
    before the model is built (for "fit" and "loop": clr_loop's loop trains the model in the
    policy it was built with). Kinds "torch" and "torch_compile" are the PyTorch peer
    (`benchmarks.torch_peer`, eager and under torch.compile), run in a process without TensorFlow.
    """

    kind: str
    batch_size: int = TUTORIAL_BATCH_SIZE
    steps: int = 0
    repeats: int = 3
    steps_per_loop: int = 100
    jit: str = "auto"
    input: str = "pipeline"
    inter_op: int = 0
    intra_op: int = 0
    splits: int = 0
    virtual_cpus: int = 0
    eval_batch_size: int = 1000
    data: str = "auto"
    examples: int = 0
    precision: str = "float32"
    label: str = ""

    @property
    def name(self):
        """A short, unique, human-readable name (the table's first column)."""
        if self.label:
            return self.label
        precision = "" if self.precision == "float32" else f" {self.precision}"
        if self.kind in TORCH_KINDS:
            return TORCH_KINDS[self.kind] + precision
        if self.kind in ("fit", "fit_eval", "matmul"):
            return self.kind + ("" if self.jit == "auto" else f" jit={self.jit}") + precision
        parts = [self.kind, self.input, f"xla={self.jit}"] if self.kind == "loop" else [self.kind, f"xla={self.jit}"]
        if self.kind == "loop":
            parts.append(f"spl={self.steps_per_loop}")
        if self.splits and self.kind != "fit":
            parts.append(f"split={self.splits}")
        if self.virtual_cpus:
            parts.append(f"mirrored vcpus={self.virtual_cpus}")
        if self.inter_op or self.intra_op:
            parts.append(f"threads={self.inter_op}x{self.intra_op}")
        return " ".join(parts) + precision

    def to_json(self):
        """Returns the spec as a JSON string (how the parent hands it to a worker)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        """Returns the Spec that `to_json` wrote."""
        return cls(**json.loads(text))


# ---------------------------------------------------------------------------------------------
# Cost model


def layer_macs(model):
    """Returns [(layer name, forward multiply-adds per example)] for the Conv2D and Dense layers.

    A Conv2D costs `H_out * W_out * kh * kw * C_in * C_out` multiply-adds (valid padding, stride 1
    as in this model, read from the built layer's output shape) and a Dense `in * out`. Bias adds,
    activations, pooling, dropout, the loss and the optimizer are left out: they add well under
    1% to the arithmetic (they cost memory traffic, which the profile shows separately).
    """
    import keras  # pylint: disable=import-outside-toplevel

    costs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            costs.append((layer.name, int(h * w * kh * kw * cin * cout)))
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            costs.append((layer.name, int(cin * cout)))
    return costs


def step_flops(model, batch_size, training=True):
    """Returns the floating-point operations (FLOPs, 2 per multiply-add) of one step at `batch_size`.

    forward = sum of `layer_macs`; a training step adds the weight gradients (as many
    multiply-adds as the forward pass, layer for layer) and the input gradients (the same again,
    except for the first layer, whose input is the data and needs no gradient):
    `FLOPs = 2 * batch_size * (3 * forward - first_layer)`; for eval, `2 * batch_size * forward`.
    For the tutorial's CNN at batch 64: 2 * 64 * (3 * 1,054,976 - 230,400) = 375.6 MFLOP.
    """
    return measure.training_flops([macs for _, macs in layer_macs(model)], batch_size, training)


# ---------------------------------------------------------------------------------------------
# Worker side: one configuration, in this process


_cpu_seconds = measure.cpu_seconds


def _rss_mb():
    try:
        import psutil  # pylint: disable=import-outside-toplevel

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


_peak_rss_mb = measure.peak_rss_mb


IDX_PREFIX = "idx:"


def load_data(choice="auto", examples=0):
    """Returns (FashionMnist, description): the real data when `choice` is "auto" and it loads, else random.

    Random data has the real shapes and sizes (60000/10000 uint8 images, int32 labels 0..9) and is
    used for "random" or when no source works; the description says which one was used.
    `choice` "idx:DIR" reads the four Fashion-MNIST IDX files in DIR (any size; their errors
    propagate), as `--dataset_dir` does for the trainer. `examples` > 0 keeps only the first that
    many examples of each split.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    data = None
    if choice.startswith(IDX_PREFIX):
        data = fashion_mnist.load(dataset_dir=choice[len(IDX_PREFIX):])
        description = f"Fashion-MNIST IDX files in {choice[len(IDX_PREFIX):]} ({data.train.num_examples} train examples)"
    elif choice == "auto":
        try:
            data = fashion_mnist.load()
            description = f"real Fashion-MNIST ({data.source})"
        except fashion_mnist.DataError:
            data = None
    if data is None or choice == "random":
        rng = np.random.default_rng(SEED)

        def split(n):
            return fashion_mnist.Split(
                images=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), labels=rng.integers(0, 10, n).astype(np.int32)
            )

        why = "requested" if choice == "random" else "no Fashion-MNIST source worked"
        sizes = {k: min(v, examples) if examples else v for k, v in fashion_mnist.FULL_SIZE.items()}
        data = fashion_mnist.FashionMnist(train=split(sizes["train"]), test=split(sizes["test"]), source="random")
        description = f"random uint8 data ({why})"
    if examples:
        data = fashion_mnist.FashionMnist(
            train=fashion_mnist.Split(data.train.images[:examples], data.train.labels[:examples]),
            test=fashion_mnist.Split(data.test.images[:examples], data.test.labels[:examples]),
            source=data.source,
        )
        description += f", first {examples} examples of each split"
    return data, description


def _steps(spec, num_examples):
    """The timed steps per repeat: `spec.steps`, or one epoch of full batches when it is 0."""
    full = num_examples // spec.batch_size
    return min(spec.steps, full) if spec.steps > 0 else full


def _training_setup(spec, data):
    """Returns (model, optimizer, config) built as the trainer builds them for `spec` (for Keras fit)."""
    import keras  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import models  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    config = _config(spec)
    # The schedule's step size comes from the full training split, as in a real run.
    plan = _plan(config, data)
    keras.utils.set_random_seed(SEED)
    model = models.create_model(seed=SEED)
    optimizer = trial.make_optimizer(config, plan)
    return model, optimizer, config


def _config(spec):
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel

    extra = {"strategy": "mirrored", "virtual_cpus": spec.virtual_cpus} if spec.virtual_cpus else {}
    return config_lib.Config(
        batch_splits=spec.splits,
        batch_size=spec.batch_size, steps_per_loop=spec.steps_per_loop, jit_compile=spec.jit, seed=SEED,
        eval_batch_size=spec.eval_batch_size, input_mode=spec.input, precision=spec.precision, **extra,
    )


def _plan(config, data):
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel

    return config_lib.plan_steps(config, data.train.num_examples)


def make_trainer(spec, data):
    """Returns a `clr_loop.experiment.trial.Trainer` for `spec`, with the spec's variant swapped in.

    The trainer is built exactly as `python -m clr_loop.train` builds it (strategy, model,
    optimizer, and its `loop.Run`: compiled steps, train loop and eval, with the spec's
    `input_mode`). The trainer is not trained (nothing is written): callers run
    `trainer.run.run_steps(n)`.
    """
    from clr_loop import distribute  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    config = _config(spec)
    if config.virtual_cpus:
        distribute.configure_virtual_cpus(config.virtual_cpus)
    strategy = distribute.make_strategy(config.strategy, config.devices, config.cluster_timeout)
    return trial.Trainer(config, data, strategy=strategy)


def _summary(spec, seconds_per_repeat, cpu_per_repeat, steps, first_call_s, first_call_steps, flops):
    return measure.summary(spec.batch_size, seconds_per_repeat, cpu_per_repeat, steps, first_call_s, first_call_steps, flops)


def time_fit(spec, data):
    """Times the tutorial's `model.fit` (numpy arrays, verbose=0) and returns the result dict.

    The model is compiled exactly as in the tutorial (sparse categorical cross-entropy, SGD with
    the CLR schedule, accuracy metric, Keras's own `jit_compile` unless `spec.jit` says
    otherwise) and fit on the first `steps * batch_size` training examples, so every epoch is
    exactly `steps` full batches, for `1 + repeats` epochs. Epoch 1 traces and warms up; each
    later epoch (from `on_epoch_begin` to `on_epoch_end`, which includes fit's per-epoch
    shuffle and iterator set-up, as in a real run) is one timed repeat.
    """
    import keras  # pylint: disable=import-outside-toplevel

    model, optimizer, _ = _training_setup(spec, data)
    steps = _steps(spec, data.train.num_examples)
    n = steps * spec.batch_size
    x, y = data.train.images[:n], data.train.labels[:n]
    compile_args = {} if spec.jit == "auto" else {"jit_compile": spec.jit == "true"}
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"], **compile_args)
    wall, cpu = [], []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu = time.perf_counter(), _cpu_seconds()

        def on_epoch_end(self, epoch, logs=None):
            float(logs["loss"])  # waits for the device where the loss is still in flight
            wall.append(time.perf_counter() - self.start)
            cpu.append(_cpu_seconds() - self.cpu)

    model.fit(x, y, batch_size=spec.batch_size, epochs=1 + spec.repeats, verbose=0, callbacks=[EpochTimer()])
    result = _summary(spec, wall[1:], cpu[1:], steps, wall[0], steps, step_flops(model, spec.batch_size))
    result["jit_resolved"] = bool(model.jit_compile)
    result["compute_dtype"] = model.compute_dtype
    return result


def _run_loop(run_steps, steps, steps_per_loop):
    done, out = 0, None
    while done < steps:
        n = min(steps_per_loop, steps - done)
        out = run_steps(n)
        done += n
    float(out["loss_sum"])  # a device-to-host read: the steps have finished, also on a GPU
    return out


def make_loop(spec, data):
    """Returns (run_steps, model, optimizer) of `make_trainer(spec, data)`.

    `run_steps(num_steps)` is the trainer's own compiled loop (`loop.Run.run_steps`: up to that
    many steps in one call of `loop.make_train_loop`'s function, on the run's iterator).
    """
    trainer = make_trainer(spec, data)
    return trainer.run.run_steps, trainer.model, trainer.optimizer


def time_loop(spec, data):
    """Times clr_loop's training loop for a "loop" spec and returns the result dict.

    The first call (tracing, compilation and `steps_per_loop` steps) is timed on its own, then a
    warm-up of at least 20 steps runs untimed, then each repeat runs `steps` steps in calls of
    `steps_per_loop` and ends with a device-to-host read of the loss.
    """
    steps = _steps(spec, data.train.num_examples)
    trainer = make_trainer(spec, data)
    run_steps, model = trainer.run.run_steps, trainer.model
    first_steps = min(spec.steps_per_loop, steps)
    start = time.perf_counter()
    _run_loop(run_steps, first_steps, spec.steps_per_loop)
    first_call_s = time.perf_counter() - start
    _run_loop(run_steps, min(steps, max(spec.steps_per_loop, 20)), spec.steps_per_loop)
    wall, cpu = [], []
    for _ in range(spec.repeats):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        _run_loop(run_steps, steps, spec.steps_per_loop)
        wall.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - cpu_start)
    result = _summary(spec, wall, cpu, steps, first_call_s, first_steps, step_flops(model, spec.batch_size))
    result["jit_resolved"] = trainer.jit_compile
    result["weights_checksum"] = weights_checksum(model)
    result["splits_resolved"] = trainer.splits
    result["compute_dtype"] = model.compute_dtype
    from clr_loop import loop as loop_lib  # pylint: disable=import-outside-toplevel

    default_input = loop_lib.resolve_input_mode("auto", trainer.run.input, trainer.strategy)
    result["input_default"] = default_input
    result["is_trainer_default"] = is_trainer_default(spec, trainer.splits, _thread_pools(), default_input)
    return result


def is_trainer_default(spec, splits, threads, default_input):
    """Returns whether a "loop" spec ran what `python -m clr_loop.train` runs by default on this device.

    `splits` and `threads` ((inter-op, intra-op) pool sizes, 0 for TensorFlow's default) are what
    the worker resolved and set, and `default_input` the input mode that `input_mode="auto"`
    resolves to here (`loop.resolve_input_mode`); they are compared with what the trainer resolves
    and sets for `Config()`, as are the input mode, steps_per_loop, batch size and XLA choice.
    """
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    default = config_lib.Config()
    default_splits = trial.resolve_batch_splits(default)
    return (
        spec.kind == "loop"
        and spec.precision == "float32"
        and spec.input == default_input
        and spec.steps_per_loop == default.steps_per_loop
        and spec.batch_size == default.batch_size
        and runtime.resolve_jit_compile(spec.jit) == runtime.resolve_jit_compile(default.jit_compile)
        and not spec.virtual_cpus
        and splits == default_splits
        and tuple(threads) == runtime.thread_pool_sizes(default_splits)
    )


def weights_checksum(model):
    """Returns [sum, sum of squares] of all trainable weights in float64: a cheap fingerprint for
    comparing two runs' weights (for example two thread settings, in two processes)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    values = np.concatenate([np.ravel(v.numpy()).astype(np.float64) for v in model.trainable_variables])
    return [float(values.sum()), float(np.square(values).sum())]


def time_eval(spec, data):
    """Times one pass over the whole test split and returns the result dict (per pass, not per step).

    "eval_loop" is the trainer's compiled eval loop (`trainer.run.validate()`, what `fit` runs
    after each epoch, which builds the validation dataset each time) at `eval_batch_size`;
    "fit_eval" is Keras `model.evaluate` at the training batch size, which is what the
    tutorial's `fit(validation_data=...)` runs after every epoch.
    """
    test = data.test
    if spec.kind == "eval_loop":
        trainer = make_trainer(spec, data)
        model, jit = trainer.model, trainer.jit_compile

        def one_pass():
            return trainer.run.validate()[0]["loss"]

        batch, splits = spec.eval_batch_size, trainer.splits
    else:
        model, optimizer, _ = _training_setup(spec, data)
        model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
        jit = bool(model.jit_compile)

        def one_pass():
            return model.evaluate(test.images, test.labels, batch_size=spec.batch_size, verbose=0)[0]

        batch, splits = spec.batch_size, 1
    start = time.perf_counter()
    one_pass()
    first_call_s = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(spec.repeats):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        one_pass()
        wall.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - cpu_start)
    ms = statistics.median(wall) * 1000.0
    flops = step_flops(model, test.num_examples, training=False)
    return {
        "ms_per_pass": ms,
        "ms_per_pass_repeats": [1000.0 * w for w in wall],
        "cpu_ms_per_pass": statistics.median(cpu) * 1000.0,
        "examples_per_s": test.num_examples * 1000.0 / ms,
        "first_call_s": first_call_s,
        "compile_s": max(first_call_s - ms / 1000.0, 0.0),
        "eval_batch_size": batch,
        "splits_resolved": splits,
        "flops_per_pass": flops,
        "gflops": flops / ms / 1e6,
        "jit_resolved": jit,
    }


def time_matmul(spec, size=MATMUL_SIZE, per_repeat=10):
    """Returns the float32 `size`² x `size`² tf.matmul rate: {"gflops" (median), "gflops_best", ...}.

    Each repeat runs `per_repeat` eager matmuls (eager, so no graph optimisation merges the
    identical products) and reads one value back; a matmul is `2 * size**3` FLOPs. The best
    repeat is the least disturbed one on a shared machine.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])

    def run():
        for _ in range(per_repeat):
            c = tf.matmul(a, b)
        return float(c[0, 0])

    run()
    rates = []
    for _ in range(max(spec.repeats, 3)):
        start = time.perf_counter()
        run()
        rates.append(2.0 * size**3 * per_repeat / (time.perf_counter() - start) / 1e9)
    return {"gflops": statistics.median(rates), "gflops_best": max(rates), "gflops_repeats": rates, "size": size}


def _apply_threads(spec):
    """Sets this worker's thread pools for `spec` (before TensorFlow runs an op); returns `_thread_pools()`.

    Explicit `inter_op`/`intra_op` win; otherwise a "loop" or "eval_loop" spec gets what the
    trainer sets for its configuration (`runtime.configure_threads`), and the other kinds keep
    TensorFlow's defaults.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from clr_loop import runtime  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    if spec.inter_op or spec.intra_op:
        if spec.inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(spec.inter_op)
        if spec.intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(spec.intra_op)
    elif spec.kind in ("loop", "eval_loop"):
        runtime.configure_threads(trial.resolve_batch_splits(_config(spec)))
    return _thread_pools()


def _thread_pools():
    """Returns TensorFlow's (inter-op, intra-op) pool sizes as set; 0 means its default (one per core)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return (
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    )


def device_description():
    """Returns a one-line description of where TensorFlow runs: GPU names, else the CPU model and cores."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return "GPU: " + ", ".join(names)
    return f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)"


def cpu_model():
    """Returns the CPU model name from /proc/cpuinfo (or `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The /proc/cpuinfo flags that say whether bf16 arithmetic has its own units (AVX-512 BF16's dot
# products, AMX's bf16 tiles), and AVX-VNNI (int8 dot products on AVX2 registers), reported beside them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16")


def cpu_features(cpuinfo_text=None):
    """Returns {"flags": {flag: present} for REPORTED_FLAGS, "bf16_units": bool, "line": text}.

    Read from the first "flags" line of `cpuinfo_text` (default: /proc/cpuinfo; empty when it
    cannot be read). `bf16_units` is whether any of BF16_FLAGS is there; "line" is one sentence
    for the report.
    """
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ""
    present = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            present = set(value.split())
            break
    flags_ = {flag: flag in present for flag in REPORTED_FLAGS}
    bf16 = any(flags_[flag] for flag in BF16_FLAGS)
    have = [flag for flag, on in flags_.items() if on]
    lacking = [flag for flag in ("avx512_bf16", "amx_bf16", "avx_vnni") if not flags_[flag]]
    line = (f"CPU features: {', '.join(have) or 'none of ' + ', '.join(REPORTED_FLAGS)}"
            + (f"; no {', '.join(lacking)}" if lacking else "")
            + ("; bf16 units: yes" if bf16 else f"; bf16 units: no (neither {' nor '.join(BF16_FLAGS)})"))
    return {"flags": flags_, "bf16_units": bf16, "line": line}


def onednn_kernels(verbose_text):
    """Returns {"<primitive kind> <implementation> <source dtype>": executions} from ONEDNN_VERBOSE output.

    Counts the primitive executions oneDNN prints with ONEDNN_VERBOSE=1 (lines such as
    `onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx_bf16,
    forward_training,src_bf16::blocked:acdb::f0 wei_bf16:...,...`; oneDNN 2's `dnnl_verbose,exec,
    cpu,...` too), most frequent first. The implementation names the ISA it was built for
    (`jit:avx2`, `brg:avx512_core_amx`, ...); "-" where oneDNN prints none (gemm_api calls).
    """
    counts = {}
    for line in verbose_text.splitlines():
        fields = line.strip().split(",")
        if not fields[0].endswith("_verbose") or "exec" not in fields:
            continue
        i = fields.index("exec")
        if fields[i - 1] not in ("primitive", fields[0]) or len(fields) < i + 6:
            continue  # graph-API partitions and other non-primitive lines
        kind, impl, descriptors = fields[i + 2], fields[i + 3], fields[i + 5]
        dtype = "?"
        for descriptor in descriptors.split():
            if descriptor.startswith("src_"):
                dtype = descriptor[4:].split(":", 1)[0]
                break
        key = f"{kind} {impl or '-'} {dtype}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def kernel_specs(precisions, data="auto"):
    """Returns the short runs whose oneDNN kernels are listed: Keras fit and clr_loop's default loop
    (XLA off) per precision, 5 steps of batch 64 on 640 examples."""
    common = dict(steps=5, repeats=1, data=data, examples=640)
    specs = []
    for precision in precisions:
        specs.append(Spec("fit", precision=precision, **common))
        specs.append(Spec("loop", jit="false", steps_per_loop=5, precision=precision, **common))
    return specs


def run_kernel_specs(specs, log=print):
    """Runs each spec once with ONEDNN_VERBOSE=1; returns [{"name", "precision", "kernels": onednn_kernels}]."""
    out = []
    for spec in specs:
        log(f"oneDNN kernels of {spec.name} ...")
        result = run_spec_in_subprocess(spec, env={"ONEDNN_VERBOSE": "1"})
        out.append({"name": spec.name, "precision": spec.precision, "kernels": onednn_kernels(result.pop("stdout"))})
    return out


def format_kernels(runs, top=6):
    """Returns the kernel lists as text: per run the `top` most executed oneDNN primitives."""
    lines = []
    for run in runs:
        kernels = list(run["kernels"].items())
        listed = ", ".join(f"{k} x{n}" for k, n in kernels[:top]) or "no oneDNN primitive ran (TensorFlow's Eigen kernels)"
        more = f", and {len(kernels) - top} more" if len(kernels) > top else ""
        lines.append(f"  {run['name']}: {listed}{more}")
    return "\n".join(lines)


def precision_rows(results):
    """Returns [{"name", "precision", "ms_per_step", "float32_ms_per_step", "speedup"}] for every result
    whose precision is not float32 and whose float32 twin (the same spec otherwise) is in `results`;
    speedup is the float32 ms over this one's (above 1: faster)."""
    by_spec = {}
    for r in results:
        if "ms_per_step" in r and r["spec"].get("precision", "float32") == "float32":
            key = {**r["spec"], "label": ""}
            by_spec[json.dumps(key, sort_keys=True)] = r
    rows = []
    for r in results:
        if r["spec"].get("precision", "float32") == "float32" or "ms_per_step" not in r:
            continue
        key = {**r["spec"], "precision": "float32", "label": ""}
        twin = by_spec.get(json.dumps(key, sort_keys=True))
        if twin is not None:
            rows.append({"name": r["name"], "precision": r["spec"]["precision"], "ms_per_step": r["ms_per_step"],
                         "float32_ms_per_step": twin["ms_per_step"], "speedup": twin["ms_per_step"] / r["ms_per_step"]})
    return rows


def format_precision_table(rows):
    """Returns `precision_rows` as a fixed-width text table."""
    return _table(("config", "precision", "ms/step", "float32 ms/step", "x float32"), [
        (r["name"], r["precision"], f"{r['ms_per_step']:.2f}", f"{r['float32_ms_per_step']:.2f}", f"{r['speedup']:.2f}") for r in rows])


def side_by_side(training, whole=None):
    """Returns the four contenders' rows: clr_loop's default, Keras fit, PyTorch eager, torch.compile.

    Each {"contender", "name", "ms_per_step", "x_fit_step", "whole_s", "x_fit_whole", "peak_rss_mb",
    "note"}: per step from the training results (the trainer's default row, "(a) fit", the "torch"
    and "torch_compile" rows; None where a row is missing or failed, with the reason in "note"),
    whole process from `whole_process`'s medians ("train", "fit", "torch", "torch_compile"), peak
    RSS that of the whole-process run. x_*: fit's time over the row's (above 1: faster than fit).
    """
    def pick(predicate):
        return next((r for r in training if predicate(r)), None)

    per_step = {
        "clr_loop": pick(lambda r: r.get("is_trainer_default")),
        "Keras fit": pick(lambda r: r["name"] == "(a) fit"),
        "PyTorch eager": pick(lambda r: r["spec"]["kind"] == "torch"),
        "torch.compile": pick(lambda r: r["spec"]["kind"] == "torch_compile"),
    }
    processes = {"clr_loop": "train", "Keras fit": "fit", "PyTorch eager": "torch", "torch.compile": "torch_compile"}
    medians = (whole or {}).get("medians", {})
    errors = (whole or {}).get("errors", {})
    fit_step = (per_step["Keras fit"] or {}).get("ms_per_step")
    fit_whole = medians.get("fit", {}).get("wall_s")
    rows = []
    for contender, r in per_step.items():
        ms = (r or {}).get("ms_per_step")
        process = medians.get(processes[contender], {})
        whole_s = process.get("wall_s")
        notes = [n for n in ((r or {}).get("error"), errors.get(processes[contender])) if n]
        rows.append({
            "contender": contender, "name": (r or {}).get("name"), "ms_per_step": ms,
            "x_fit_step": fit_step / ms if ms and fit_step else None,
            "whole_s": whole_s, "x_fit_whole": fit_whole / whole_s if whole_s and fit_whole else None,
            "peak_rss_mb": process.get("peak_rss_mb"), "note": "; ".join(notes),
        })
    return rows


def format_side_by_side(rows):
    """Returns `side_by_side`'s rows as a fixed-width text table ("-": not measured)."""
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    return _table(("contender", "ms/step", "x fit", "whole process s", "x fit", "peak RSS MB", "note"), [
        (r["contender"], num(r["ms_per_step"], ".2f"), num(r["x_fit_step"], ".2f"), num(r["whole_s"], ".2f"),
         num(r["x_fit_whole"], ".2f"), num(r["peak_rss_mb"], ".0f"), r["note"][:80]) for r in rows])


def run_spec(spec, data=None, data_description=None):
    """Runs one benchmark configuration in this process and returns its result dict.

    The dict holds the spec, its name, the measurements of `time_fit` / `time_loop` /
    `time_eval` / `time_matmul`, the data used, the device, the load average before and after,
    and `rss_before_mb` (resident memory after imports and data loading) and `peak_rss_mb` (this
    process's peak so far), and `threads`, the (inter-op, intra-op) pool sizes it ran with (0:
    TensorFlow's default). Thread settings only take effect in a fresh process.
    """
    threads = _apply_threads(spec)
    _apply_precision(spec)
    if data is None and spec.kind != "matmul":
        data, data_description = load_data(spec.data, spec.examples)
    load_before = os.getloadavg()
    rss_before = _rss_mb()
    if spec.kind == "fit":
        result = time_fit(spec, data)
    elif spec.kind == "loop":
        result = time_loop(spec, data)
    elif spec.kind in ("eval_loop", "fit_eval"):
        result = time_eval(spec, data)
    elif spec.kind == "matmul":
        result = time_matmul(spec)
    else:
        raise ValueError(f"unknown benchmark kind {spec.kind!r}")
    result.update(
        name=spec.name,
        spec=dataclasses.asdict(spec),
        threads=list(threads),
        data=data_description,
        device=device_description(),
        loadavg_before=load_before[0],
        loadavg_after=os.getloadavg()[0],
        rss_before_mb=rss_before,
        peak_rss_mb=_peak_rss_mb(),
        precision=spec.precision,
    )
    return result


def _apply_precision(spec):
    """Sets Keras's global dtype policy to `spec.precision` (before any model is built), unless float32."""
    if spec.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {spec.precision!r}; choose from {', '.join(PRECISIONS)}")
    if spec.precision != "float32":
        import keras  # pylint: disable=import-outside-toplevel

        keras.config.set_dtype_policy(spec.precision)


# ---------------------------------------------------------------------------------------------
# Parent side: subprocesses, tables, JSON


def _child_env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_process(argv, timeout=1800, env=None):
    """Runs `argv` as a child process; returns {"rc", "wall_s", "cpu_s", "peak_rss_mb", "stdout", "stderr"}.

    Wall time is measured around the whole process (interpreter start to exit); CPU time and peak
    RSS come from the OS's accounting of that one child (`os.wait4`), so they belong to it alone.
    `env` adds variables to the child's environment.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**_child_env(), **(env or {})}, cwd=REPO_ROOT)
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        scale = 1 if sys.platform == "darwin" else 1024
        return {
            "rc": proc.returncode,
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss * scale / 2**20,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def _wait4(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        waited, status, usage = os.wait4(pid, os.WNOHANG)
        if waited == pid:
            return waited, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} ran longer than {timeout} s")
        time.sleep(0.05)


def worker_argv(spec):
    """Returns the command line of `spec`'s worker: `python -m benchmarks.bench --worker=<spec>`, or
    for the PyTorch kinds `python -m benchmarks.torch_peer --worker=<spec>` (no TensorFlow in it)."""
    module = "benchmarks.torch_peer" if spec.kind in TORCH_KINDS else "benchmarks.bench"
    return [sys.executable, "-m", module, f"--worker={spec.to_json()}"]


def run_spec_in_subprocess(spec, env=None):
    """Runs `spec` in a fresh worker process (`worker_argv`); returns its result dict.

    The worker's own measurements are kept; `name`, `spec`, `process_peak_rss_mb` and
    `process_wall_s` (the OS's view of the whole worker process) are added, and `stdout` when
    `env` is given (extra environment, for ONEDNN_VERBOSE; a "torch_compile" worker also gets an
    empty TORCHINDUCTOR_CACHE_DIR). A failed worker raises RuntimeError
    with its stderr's tail; a PyTorch worker whose torch.compile failed returns its "error".
    """
    if spec.kind == "torch_compile":  # an empty Inductor cache: the compile is timed as on a first run
        env = {**(env or {}), "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="clr_bench_inductor_")}
    proc = run_process(worker_argv(spec), env=env)
    lines = [line for line in proc["stdout"].splitlines() if line.startswith(RESULT_PREFIX)]
    if proc["rc"] != 0 or not lines:
        raise RuntimeError(f"benchmark worker for {spec.name} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result.setdefault("name", spec.name)
    result.setdefault("spec", dataclasses.asdict(spec))
    result["process_peak_rss_mb"] = proc["peak_rss_mb"]
    result["process_wall_s"] = proc["wall_s"]
    if env and "ONEDNN_VERBOSE" in env:
        result["stdout"] = proc["stdout"]
    return result


def merge_rounds(results):
    """Merges results of the same spec from several rounds into one (median of all their repeats).

    `results` is a list of result dicts of one spec; the merged dict is the first, with the
    per-step (or per-pass) figures recomputed over the pooled repeats and the peak RSS the max.
    """
    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    for key in ("ms_per_step", "ms_per_pass"):
        if key in merged:
            pooled = [v for r in results for v in r[key + "_repeats"]]
            merged[key + "_repeats"] = pooled
            merged[key] = statistics.median(pooled)
            batch = merged["spec"]["batch_size"] if key == "ms_per_step" else None
            if batch:
                merged["examples_per_s"] = batch * 1000.0 / merged[key]
                merged["gflops"] = merged["flops_per_step"] / merged[key] / 1e6
            else:
                merged["gflops"] = merged["flops_per_pass"] / merged[key] / 1e6
    for key in ("compile_s", "first_call_s", "cpu_ms_per_step", "cpu_ms_per_pass"):
        if key in merged:
            merged[key] = statistics.median(r[key] for r in results)
    for key in ("peak_rss_mb", "process_peak_rss_mb"):
        merged[key] = max(r[key] for r in results)
    merged["rounds"] = len(results)
    return merged


def training_specs(batch_size, steps, repeats, steps_per_loop_list, data, precisions=("float32",), torch=False):
    """Returns the training configurations of one table: (a) fit, (b) the loop, (c) the variants, (p) PyTorch.

    (b) is clr_loop's loop as the trainer builds it by default (automatic batch splitting and the
    thread pools that go with it) fed by tf.data, with XLA off and on, for each steps_per_loop.
    (c) is the same loop without splitting on TensorFlow's default threads (the plain loop) and
    with one inter-op thread (ops one at a time, each using every core), the trainer's own data
    parallelism (`--strategy=mirrored --virtual_cpus=N`) on the split threads, and the loop with
    its training set on the device (`input_mode="device"`) instead of tf.data. Each of `precisions` other than float32 adds fit and the
    default loop (XLA off) under that Keras dtype policy; `torch` adds the PyTorch peer, eager and
    under torch.compile.
    """
    common = dict(batch_size=batch_size, steps=steps, repeats=repeats, data=data)
    specs = [Spec("fit", label="(a) fit", **common), Spec("fit", jit="true", label="(a) fit jit=true", **common)]
    for jit in ("false", "true"):
        for spl in steps_per_loop_list:
            specs.append(Spec("loop", steps_per_loop=spl, jit=jit, **common))
    specs.append(Spec("loop", steps_per_loop=100, jit="false", splits=1, **common))
    specs.append(Spec("loop", steps_per_loop=100, jit="false", splits=1, inter_op=1, **common))
    split = split_threads(batch_size)
    if split:
        mirrored = dict(virtual_cpus=split["splits"], inter_op=split["inter_op"], intra_op=split["intra_op"])
        specs.append(Spec("loop", steps_per_loop=100, jit="false", **mirrored, **common))
    for spl in sorted({100, max(steps_per_loop_list)}):
        specs.append(Spec("loop", steps_per_loop=spl, jit="false", input="device", **common))
    specs.append(Spec("loop", steps_per_loop=100, jit="false", input="device", splits=1, **common))
    for precision in precisions:
        if precision != "float32":
            specs.append(Spec("fit", label=f"(a) fit {precision}", precision=precision, **common))
            specs.append(Spec("loop", steps_per_loop=100, jit="false", precision=precision, **common))
    if torch:
        specs += [Spec(kind, **common) for kind in TORCH_KINDS]
    return specs


GRID_CONTENDERS = (("fit", "pipeline", "(a) fit"), ("loop", "pipeline", "loop tf.data"), ("loop", "device", "loop device"))


def grid_specs(batch_sizes, precisions, steps, repeats, data, examples=0):
    """Returns the `--grid` configurations: for each precision, then each batch size, Keras's `fit`
    (its own `jit_compile="auto"`), and clr_loop's loop as the trainer builds it by default (XLA
    by `jit_compile="auto"`, 100 steps per loop, automatic batch splitting) fed by tf.data and by
    device-resident data (`input_mode="device"`). The first precision and batch size come first, so
    a run cut short keeps the rows that matter most."""
    specs = []
    for precision in precisions:
        for batch in batch_sizes:
            common = dict(batch_size=batch, steps=steps, repeats=repeats, data=data, examples=examples, precision=precision)
            for kind, input_mode, label in GRID_CONTENDERS:
                specs.append(Spec(kind, input=input_mode, label=f"{label} b={batch} {precision}", **common))
    return specs


def run_grid(specs, rounds=1, log=print, save=None):
    """Runs every spec of `grid_specs` in its own worker, `rounds` times interleaved; returns the
    merged results in order, each with `speedup_vs_fit` (its group's fit ms over its own) where
    both were measured. A failed worker becomes {"name", "spec", "error"} instead of stopping the
    grid; `save(results)` is called after every worker with the results so far."""
    runs = {spec: [] for spec in specs}
    errors = {}
    for round_index in range(rounds):
        for spec in specs:
            if spec in errors:
                continue
            log(f"[round {round_index + 1}/{rounds}] {spec.name} ...")
            try:
                runs[spec].append(run_spec_in_subprocess(spec))
            except (RuntimeError, TimeoutError) as e:
                errors[spec] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
                log(f"  failed: {errors[spec]}")
            if save:
                save(_grid_results(specs, runs, errors))
    return _grid_results(specs, runs, errors)


def _grid_results(specs, runs, errors):
    results = []
    for spec in specs:
        if spec in errors or not runs[spec]:
            results.append({"name": spec.name, "spec": dataclasses.asdict(spec), "error": errors.get(spec, "not run")})
        else:
            results.append(merge_rounds(runs[spec]))
    per_group = len(GRID_CONTENDERS)
    for index in range(0, len(results), per_group):
        group = results[index:index + per_group]
        fit = group[0].get("ms_per_step")
        for r in group:
            if fit and r.get("ms_per_step"):
                r["speedup_vs_fit"] = fit / r["ms_per_step"]
    return results


def format_grid_table(results):
    """Returns the `--grid` results as a fixed-width text table; failed rows say why."""
    header = ("config", "batch", "precision", "XLA", "input", "ms/step", "range", "x fit", "ex/s", "compile s", "peak RSS MB")
    rows, failed = [], []
    for r in results:
        spec = r["spec"]
        if "error" in r:
            failed.append(f"  {r['name']}: not measured: {r['error']}")
            continue
        reps = r["ms_per_step_repeats"]
        speedup = r.get("speedup_vs_fit")
        rows.append((
            r["name"], str(spec["batch_size"]), spec["precision"], "on" if r.get("jit_resolved") else "off",
            "-" if spec["kind"] == "fit" else spec["input"], f"{r['ms_per_step']:.3f}", f"{min(reps):.3f}-{max(reps):.3f}",
            "-" if speedup is None else f"{speedup:.2f}", f"{r['examples_per_s']:.0f}", f"{r['compile_s']:.2f}",
            f"{r['process_peak_rss_mb']:.0f}",
        ))
    return "\n".join([_table(header, rows), *failed])


def split_threads(batch_size, cores=None):
    """Returns {"splits", "inter_op", "intra_op"} as the trainer resolves them on a CPU, or {} for no splitting.

    The trainer's automatic choice (`runtime.auto_batch_splits`: one part per core, at least 32
    examples each, dividing the batch) and the pools `runtime.thread_pool_sizes` gives it.
    """
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel

    cores = cores or runtime.cpu_cores()
    splits = runtime.auto_batch_splits(batch_size, cores)
    if splits < 2:
        return {}
    inter_op, intra_op = runtime.thread_pool_sizes(splits, cores)
    return {"splits": splits, "inter_op": inter_op, "intra_op": intra_op}


def eval_specs(batch_size, repeats, data):
    """Returns the eval configurations: clr_loop's eval loop (as the trainer runs it; XLA on; unsplit) and Keras `evaluate`."""
    common = dict(batch_size=batch_size, repeats=repeats, data=data)
    return [
        Spec("eval_loop", jit="false", **common),
        Spec("eval_loop", jit="true", **common),
        Spec("eval_loop", jit="false", splits=1, **common),
        Spec("fit_eval", **common),
    ]


def run_specs(specs, rounds=1, log=print, matmul=None):
    """Runs every spec in its own subprocess, `rounds` times interleaved; returns merged results in order.

    Interleaving (all specs, then all again) spreads slow drifts of a shared machine's load over
    every configuration instead of charging them to whichever ran at that moment. With a list as
    `matmul`, a "matmul" spec runs at the start of every round and its results are appended there.
    """
    by_spec = {spec: [] for spec in specs}
    for round_index in range(rounds):
        if matmul is not None:
            matmul.append(run_spec_in_subprocess(Spec("matmul", repeats=3)))
        for spec in specs:
            log(f"[round {round_index + 1}/{rounds}] {spec.name} ...")
            by_spec[spec].append(run_spec_in_subprocess(spec))
    return [merge_rounds(by_spec[spec]) for spec in specs]


def add_ratios(results, baseline, matmul_gflops):
    """Adds `speedup_vs_fit` (baseline ms / this ms: above 1 is faster) and `pct_of_matmul_peak` to each result."""
    key = "ms_per_step" if "ms_per_step" in baseline else "ms_per_pass"
    for result in results:
        if key not in result:  # a row that failed (a PyTorch row whose torch.compile broke)
            continue
        result["speedup_vs_fit"] = baseline[key] / result[key]
        result["pct_of_matmul_peak"] = 100.0 * result["gflops"] / matmul_gflops if matmul_gflops else None
    return results


def format_training_table(results):
    """Returns the training results as a fixed-width text table (one row per configuration).

    "*" marks the trainer's default configuration; "range" is the fastest and slowest repeat. A row
    that failed (its "error") is listed under the table with the reason.
    """
    header = ("config", "parts/threads", "ms/step", "range", "cpu ms", "ex/s", "compile s", "peak RSS MB", "x(a)", "GFLOP/s", "%peak")
    rows = []
    failed = [f"  {r['name']}: not measured: {r['error']}" for r in results if "error" in r]
    for r in results:
        if "error" in r:
            continue
        reps = r["ms_per_step_repeats"]
        rows.append((
            r["name"] + (" *" if r.get("is_trainer_default") else ""), _parallelism(r), f"{r['ms_per_step']:.2f}", f"{min(reps):.2f}-{max(reps):.2f}", f"{r['cpu_ms_per_step']:.2f}",
            f"{r['examples_per_s']:.0f}", f"{r['compile_s']:.2f}", f"{r['process_peak_rss_mb']:.0f}",
            f"{r['speedup_vs_fit']:.2f}", f"{r['gflops']:.1f}", f"{r['pct_of_matmul_peak']:.1f}",
        ))
    return "\n".join([_table(header, rows), *failed])


def _parallelism(result):
    """"parts/threads" of a result: batch parts per step and the inter-op x intra-op pools (0: TF's default)."""
    inter, intra = result.get("threads", (0, 0))
    return f"{result.get('splits_resolved', 1)}/{inter}x{intra}"


def format_eval_table(results):
    """Returns the eval results (one pass over the test split) as a fixed-width text table."""
    header = ("config", "parts/threads", "batch", "ms/pass", "cpu ms", "ex/s", "compile s", "peak RSS MB", "x(fit_eval)", "GFLOP/s")
    rows = [
        (
            r["name"], _parallelism(r), str(r["eval_batch_size"]), f"{r['ms_per_pass']:.1f}", f"{r['cpu_ms_per_pass']:.1f}",
            f"{r['examples_per_s']:.0f}", f"{r['compile_s']:.2f}", f"{r['process_peak_rss_mb']:.0f}",
            f"{r['speedup_vs_fit']:.2f}", f"{r['gflops']:.1f}",
        )
        for r in results
    ]
    return _table(header, rows)


def _table(header, rows):
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Whole-process epoch: clr_loop.train against the tutorial's fit


def fit_epoch(epochs=1, batch_size=TUTORIAL_BATCH_SIZE, data=None):
    """Runs the tutorial end to end in this process and returns {"fit_s", "setup_s", "history"} (seconds).

    Loads the same data as `clr_loop.train` (`data.load()`, unless `data` is given), builds the
    same model and CLR schedule, compiles as the tutorial does and runs `fit(x_train, y_train,
    batch_size, epochs, validation_data=(x_test, y_test))` with one line per epoch (verbose=2).
    """
    import keras  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import models  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    data = data if data is not None else fashion_mnist.load()
    config = config_lib.Config(epochs=epochs, batch_size=batch_size, seed=SEED)
    keras.utils.set_random_seed(SEED)
    model = models.create_model(seed=SEED)
    optimizer = trial.make_optimizer(config, config_lib.plan_steps(config, data.train.num_examples))
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    setup = time.perf_counter() - start
    history = model.fit(
        data.train.images, data.train.labels, batch_size=batch_size, epochs=epochs,
        validation_data=(data.test.images, data.test.labels), verbose=2,
    )
    return {"fit_s": time.perf_counter() - start - setup, "setup_s": setup, "history": history.history}


# The tutorial as a script: TensorFlow and Keras imported first, plainly (this module's own
# imports would pause the garbage collector for them), then the fit epoch of `--fit_epoch`.
TUTORIAL_SCRIPT = (
    "import tensorflow as tf\n"
    "from tensorflow import keras\n"
    "import runpy\n"
    "runpy.run_module('benchmarks.bench', run_name='__main__', alter_sys=True)\n"
)


def whole_process_commands(epochs=1, torch=False, dataset_dir=None):
    """Returns {name: (argv, description)} of the processes `whole_process` times.

    "train" is `python -m clr_loop.train --mode=triangular2 --epochs=N` (a fresh --workdir is
    added per run). "fit" is the tutorial's epoch as the tutorial's script would run it
    (`TUTORIAL_SCRIPT`, then `fit_epoch`). "fit_gc_tuned" is the same epoch with the start-up
    and exit tuning clr_loop's apps use (`clr_loop.process`), to separate what the training
    loop gains from what the process tuning gains. With `torch`, "torch" and "torch_compile" are
    the PyTorch peer's epoch with validation (`python -m benchmarks.torch_peer --epoch`, eager and
    with `--compile`), in processes without TensorFlow. With `dataset_dir` (a folder of the four
    Fashion-MNIST IDX files), the trainer and the tutorial's epoch read their data from there.
    """
    data = [f"--dataset_dir={dataset_dir}"] if dataset_dir else []
    fit = ["--fit_epoch", f"--fit_epochs={epochs}", *data]
    commands = {
        "train": (
            [sys.executable, "-m", "clr_loop.train", "--mode=triangular2", f"--epochs={epochs}", *data],
            f"python -m clr_loop.train --mode=triangular2 --epochs={epochs}",
        ),
        "fit": (
            [sys.executable, "-c", TUTORIAL_SCRIPT, *fit],
            f"tutorial script: fit {epochs} epoch(s) with validation",
        ),
        "fit_gc_tuned": (
            [sys.executable, "-m", "benchmarks.bench", *fit, "--fit_gc_tuned"],
            "the same, with clr_loop's start-up/exit tuning (clr_loop.process)",
        ),
    }
    if torch:
        peer = [sys.executable, "-m", "benchmarks.torch_peer", "--epoch", f"--epochs={epochs}"]
        commands["torch"] = (peer, f"PyTorch eager: {epochs} epoch(s) with validation")
        commands["torch_compile"] = (peer + ["--compile"], f"PyTorch torch.compile: {epochs} epoch(s) with validation")
    return commands


def whole_process(runs, workdir, epochs=1, log=print, torch=False, dataset_dir=None, names=None):
    """Times the `whole_process_commands` as processes, `runs` times each, alternating.

    Each train run gets a fresh folder under `workdir`. Returns {"commands": {name: description},
    name: [per-run {"wall_s", "cpu_s", "peak_rss_mb"}], "medians": {name: {...}, "speedup_wall":
    fit / train, "speedup_wall_vs_tuned_fit": fit_gc_tuned / train, and with `torch`
    "speedup_wall_vs_torch" (torch / train) and "speedup_wall_vs_torch_compile"}, "errors": {name:
    why}}} with the OS's wall time, CPU time and peak RSS of every process (`run_process`). A
    PyTorch process that fails is left out of the medians with its reason in "errors" (after its
    first failure it is not run again); any other failure raises RuntimeError. `dataset_dir` is
    `whole_process_commands`'s; `names` keeps only those commands besides "train" and "fit" (and
    the speed-ups of those measured).
    """
    commands = whole_process_commands(epochs, torch=torch, dataset_dir=dataset_dir)
    if names:  # only these (the trainer and the tutorial's script are always among them)
        commands = {name: command for name, command in commands.items() if name in {"train", "fit", *names}}
    measured = {name: [] for name in commands}
    errors = {}
    for index in range(runs):
        for name, (argv, description) in commands.items():
            if name in errors:
                continue
            log(f"[whole process {index + 1}/{runs}] {description}")
            # A fresh workdir per run: the trainer would otherwise resume from the previous run.
            extra = [f"--workdir={os.path.join(workdir, f'{name}{index}')}"] if name == "train" else []
            # PyTorch's processes each get an empty Inductor cache: torch.compile compiles as on a first run.
            env = {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="clr_bench_inductor_")} if name.startswith("torch") else None
            proc = run_process(argv + extra, env=env)
            if proc["rc"] != 0:
                why = f"{description} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}"
                if not name.startswith("torch"):
                    raise RuntimeError(why)
                errors[name] = (proc["stderr"].strip().splitlines() or [f"exit {proc['rc']}"])[-1][:300]
                continue
            measured[name].append({k: proc[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")})
    medians = {
        name: {k: statistics.median(run[k] for run in runs_) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        for name, runs_ in measured.items() if runs_
    }
    train_s = medians["train"]["wall_s"]
    medians["speedup_wall"] = medians["fit"]["wall_s"] / train_s
    if "fit_gc_tuned" in medians:
        medians["speedup_wall_vs_tuned_fit"] = medians["fit_gc_tuned"]["wall_s"] / train_s
    for name in ("torch", "torch_compile"):
        if name in medians:
            medians[f"speedup_wall_vs_{name}"] = medians[name]["wall_s"] / train_s
    return {"commands": {k: description for k, (_, description) in commands.items()}, **measured, "medians": medians,
            "errors": errors}


# ---------------------------------------------------------------------------------------------
# Profile: where a step's time goes

CATEGORIES = ("conv forward", "conv backward", "other forward", "other backward", "optimizer", "input", "loss, metrics, loop")


def classify_op(long_name, op_type):
    """Returns the CATEGORIES entry for one TensorFlow op, from its full node name and type.

    Convolutions by type (backprop kernels are the backward pass); the optimizer's ops (its
    update and the schedule) live under the `sgd/` scope; input is tf.data and the in-graph
    batch gather; the remaining model ops are forward, or backward under `gradient_tape/`.
    """
    lowered = long_name.lower()
    if "Conv2DBackprop" in op_type or "Conv2DBackprop" in long_name:
        return "conv backward"
    if "Conv2D" in op_type:
        return "conv forward"
    if "/sgd/" in lowered or lowered.startswith("sgd/"):
        return "optimizer"
    if long_name.startswith("Iterator::") or "IteratorGetNext" in op_type or "device_batches" in long_name:
        return "input"
    if "gradient_tape/" in long_name:
        return "other backward"
    if "clr_cnn" in long_name:
        return "other forward"
    return "loss, metrics, loop"


def _union_length(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def profile_breakdown(trace_events, num_steps, wall_ms_per_step):
    """Returns where `num_steps` steps' time went, from Chrome-trace events of a TF profiler trace.

    Op events (complete events "X" with `args.long_name`, and tf.data `Iterator::` events, of which
    only the outermost on each thread counts) are classified with `classify_op`. Returns
    {"ms_per_step": {category: op time per step}, "busy_ms_per_step": time per step during which at
    least one op ran (the union over threads), "overhead_ms_per_step": `wall_ms_per_step` minus
    busy (Python, dispatch, executor scheduling, idle threads), "ops_per_step", "wall_ms_per_step",
    "parallelism": summed op time / busy time}. Times are in ms per step.
    """
    per_category = dict.fromkeys(CATEGORIES, 0.0)
    intervals = []
    iterator_by_thread = {}
    ops = 0
    for event in trace_events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = event.get("name", "")
        args = event.get("args") or {}
        if name.startswith("Iterator::"):
            iterator_by_thread.setdefault((event.get("pid"), event.get("tid")), []).append((event["ts"], event["ts"] + event["dur"]))
            continue
        if "long_name" not in args:
            continue
        long_name = args["long_name"].split(":", 1)[0]
        per_category[classify_op(long_name, name)] += event["dur"]
        intervals.append((event["ts"], event["ts"] + event["dur"]))
        ops += 1
    for thread_intervals in iterator_by_thread.values():
        per_category["input"] += _union_length(thread_intervals)
        intervals.extend(thread_intervals)
    busy = _union_length(intervals) / 1000.0 / num_steps
    summed = sum(per_category.values()) / 1000.0 / num_steps
    return {
        "ms_per_step": {k: v / 1000.0 / num_steps for k, v in per_category.items()},
        "busy_ms_per_step": busy,
        "overhead_ms_per_step": max(wall_ms_per_step - busy, 0.0),
        "wall_ms_per_step": wall_ms_per_step,
        "ops_per_step": ops / num_steps,
        "parallelism": summed / busy if busy else 0.0,
    }


PROFILE_INSTALL = 'python -m pip install -e ".[profile]"'


def trace_converter():
    """Returns xprof's `raw_to_tool_data` module, which turns a profiler trace into trace-viewer events.

    xprof is TensorBoard's profile plugin (the `profile` extra; older releases were called
    tensorboard-plugin-profile, which is tried too). Raises ImportError saying how to install it.
    """
    try:
        from xprof.convert import raw_to_tool_data  # pylint: disable=import-outside-toplevel
    except ImportError:
        try:
            from tensorboard_plugin_profile.convert import raw_to_tool_data  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ImportError(f"reading a profiler trace needs xprof (TensorBoard's profile plugin): {PROFILE_INSTALL}") from None
    return raw_to_tool_data


def trace_events_from_logdir(logdir):
    """Returns the Chrome-trace events of the newest TF profiler run under `logdir` (needs xprof).

    `logdir` is a profiler log dir (the trace lies in `plugins/profile/<run>/*.xplane.pb`) or that
    run folder itself; the events come from xprof's trace-viewer converter.
    """
    import glob  # pylint: disable=import-outside-toplevel

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    paths = paths or sorted(glob.glob(os.path.join(logdir, "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir} (or its plugins/profile/*/)")
    newest = os.path.dirname(paths[-1])
    paths = [p for p in paths if os.path.dirname(p) == newest]
    data, _ = trace_converter().xspace_to_tool_data(paths, "trace_viewer", {})
    if data is None:
        raise RuntimeError(f"xprof could not convert {paths}")
    return json.loads(data)["traceEvents"]


def profile_spec(spec, logdir, data=None):
    """Profiles `spec` (a "loop" spec) in this process and returns `profile_breakdown`'s dict.

    After compilation and a warm-up, one call of `steps_per_loop` steps (the configuration's own
    loop length) runs under the TF profiler with every op traced (host tracer level 3, which adds
    about a microsecond per op); the trace is written under `logdir`.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    _apply_threads(spec)
    if data is None:
        data, _ = load_data(spec.data)
    run_steps, _, _ = make_loop(spec, data)
    steps = spec.steps_per_loop
    _run_loop(run_steps, 2 * steps, steps)
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3, python_tracer_level=0, device_tracer_level=1)
    tf.profiler.experimental.start(logdir, options=options)
    start = time.perf_counter()
    _run_loop(run_steps, steps, steps)
    wall_ms = (time.perf_counter() - start) * 1000.0 / steps
    tf.profiler.experimental.stop()
    # Unprofiled rate right after, to show what tracing every op costs.
    start = time.perf_counter()
    _run_loop(run_steps, steps, steps)
    plain_ms = (time.perf_counter() - start) * 1000.0 / steps
    breakdown = profile_breakdown(trace_events_from_logdir(logdir), steps, wall_ms)
    breakdown.update(name=spec.name, logdir=logdir, unprofiled_ms_per_step=plain_ms)
    return breakdown


def format_profile(breakdown):
    """Returns a profile breakdown as text: op time per step by category, its share of all op time,
    how many ops ran at once on average, and the time per step with no op running."""
    wall = breakdown["wall_ms_per_step"]
    total = sum(breakdown["ms_per_step"].values()) or 1.0
    unprofiled = breakdown.get("unprofiled_ms_per_step")
    lines = [
        f"profile of {breakdown.get('name', '?')}: {wall:.2f} ms/step under the profiler"
        + (f" ({unprofiled:.2f} without)" if unprofiled else "")
        + f", {breakdown['ops_per_step']:.0f} traced ops/step",
        f"  {'category':<22} {'op ms/step':>10}  {'share of op time':>16}",
    ]
    for category, ms in breakdown["ms_per_step"].items():
        lines.append(f"  {category:<22} {ms:10.3f}  {100 * ms / total:15.1f}%")
    lines.append(f"  {'all ops':<22} {total:10.3f}  (x{breakdown['parallelism']:.2f} ops running at once on average)")
    lines.append(f"  {'some op running':<22} {breakdown['busy_ms_per_step']:10.3f}")
    lines.append(f"  {'no op running':<22} {breakdown['overhead_ms_per_step']:10.3f}  (Python, dispatch, executor scheduling)")
    return "\n".join(lines)


def step_wall_ms(trace_events):
    """Returns the median duration in ms of the trainer's per-step "train" trace events (those
    `--profile_steps` wraps each profiled step in), or None when the trace has none."""
    durations = sorted(e["dur"] for e in trace_events if e.get("ph") == "X" and e.get("name") == "train" and "dur" in e)
    return durations[len(durations) // 2] / 1000.0 if durations else None


# ---------------------------------------------------------------------------------------------
# The app

def define_flags():
    """Defines the app's flags. Called only when this module runs as a program: `clr_loop.train`
    defines flags of the same names (`--batch_size`, ...), and both modules are imported together
    by tools and tests."""
    flags.DEFINE_integer("steps", 0, "Timed training steps per repeat (0: one epoch of full batches).")
    flags.DEFINE_integer("batch_size", TUTORIAL_BATCH_SIZE, "Training batch size of the main table.")
    flags.DEFINE_integer("repeats", 3, "Timed repeats per configuration and process (the median is reported).")
    flags.DEFINE_integer("rounds", 1, "Processes per configuration, run interleaved; repeats of all rounds are pooled.")
    flags.DEFINE_list("steps_per_loop", ["1", "10", "100", "937"], "steps_per_loop values for (b).")
    flags.DEFINE_list("batch_sizes", [], "Batch-size sweep (e.g. 32,64,128,256,512) of fit, the default loop and the variants.")
    flags.DEFINE_integer("sweep_examples", 0, "Examples per timed repeat in the batch-size sweep (0: one epoch; at least 10 steps).")
    flags.DEFINE_list("configs", [], "Only run training configurations whose name contains one of these strings.")
    flags.DEFINE_bool("eval", True, "Also time the eval loop against Keras evaluate.")
    flags.DEFINE_bool("torch", True, "Add the PyTorch peer's rows (eager, torch.compile) when PyTorch is installed (the bench extra).")
    flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], f"Keras dtype policies of fit and the default loop, of {', '.join(PRECISIONS)}.")
    flags.DEFINE_bool("kernels", True, "Also list the oneDNN kernels (ONEDNN_VERBOSE=1) of a short fit and loop run per precision.")
    flags.DEFINE_integer("whole_process", 0, "Also time this many whole-process runs of clr_loop.train vs --fit_epoch.")
    flags.DEFINE_bool("profile", False, "Also profile the default configuration and the fastest variant.")
    flags.DEFINE_enum("data", "auto", ["auto", "random"], "auto: real Fashion-MNIST when it loads, else random data.")
    flags.DEFINE_string("out", None, "Write all results as JSON to this file.")
    flags.DEFINE_bool("grid", False, "Instead of the main table: Keras fit, the loop on tf.data and the loop on device-resident data, with the trainer's defaults (XLA by jit_compile=auto), for every --batch_sizes (default 64) x --precisions; with --whole_process, the process times too.")
    flags.DEFINE_integer("examples", 0, "--grid: keep only this many examples of each split (quick checks).")
    flags.DEFINE_string("dataset_dir", None, "Read Fashion-MNIST from the four IDX files in this folder (workers, --fit_epoch and the whole-process runs) instead of --data.")
    flags.DEFINE_bool("fit_epoch", False, "Run the tutorial's fit (with validation) for --fit_epochs epochs and exit.")
    flags.DEFINE_integer("fit_epochs", 1, "Epochs for --fit_epoch.")
    flags.DEFINE_bool("fit_gc_tuned", False, "--fit_epoch with clr_loop's start-up and exit tuning (clr_loop.process: the garbage collector, the deferred pyplot).")
    flags.DEFINE_string("analyze_profile", None, "Print the per-step breakdown of the profiler trace under this dir and exit.")
    flags.DEFINE_integer("analyze_steps", 10, "Steps in the trace given to --analyze_profile.")
    flags.DEFINE_float("analyze_wall_ms", 0.0, "Wall ms per step of that trace (0: the median `train` step event, else busy time).")
    flags.DEFINE_string("worker", None, "Internal: run this JSON Spec in this process and print its result.")
    flags.DEFINE_string("profile_worker", None, "Internal: profile this JSON Spec into --profile_logdir.")
    flags.DEFINE_string("profile_logdir", None, "Internal: where --profile_worker writes its trace.")


FLAGS = flags.FLAGS


def _versions():
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def _profile_in_subprocess(spec, logdir):
    proc = run_process([sys.executable, "-m", "benchmarks.bench", f"--profile_worker={spec.to_json()}", f"--profile_logdir={logdir}"])
    lines = [line for line in proc["stdout"].splitlines() if line.startswith(RESULT_PREFIX)]
    if proc["rc"] != 0 or not lines:
        raise RuntimeError(f"profile of {spec.name} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def grid_main(specs, rounds, whole_runs, out, dataset_dir):
    """The `--grid` app: runs `specs` (`run_grid`), then `whole_runs` whole-process runs of the trainer
    and the tutorial's script (`whole_process`, one epoch with validation each); prints the tables
    and writes the JSON to `out` after every worker. The whole-process runs are the trainer's
    default and the tutorial's script only (not the start-up-tuned script: the grid is for a
    machine where time is short). Returns 0, or 1 when any worker or process failed
    (what was measured is kept)."""
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    report = {"command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]), "versions": _versions(),
              "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "grid": [], "complete": False}

    def save(results=None, complete=False):
        if results is not None:
            report["grid"] = results
        report["complete"] = complete
        if out:
            checkpointing.write_json_atomic(out, report)

    results = run_grid(specs, rounds, log, save=save)
    measured = [r for r in results if "error" not in r]
    report["device"] = measured[0]["device"] if measured else device_description()
    report["data"] = measured[0]["data"] if measured else None
    save(results)
    print(f"\n{report['device']}; TensorFlow {report['versions']['tensorflow']}, Keras {report['versions']['keras']}")
    print(f"data: {report['data']}; {rounds} round(s)\n")
    print(format_grid_table(results))
    print("\nx fit: the same batch size and precision's fit ms/step over this row's (above 1: faster); "
          "XLA: what jit_compile=auto resolved to; compile s: the first call's time beyond its steps")
    failed = len(results) - len(measured)
    if whole_runs:
        try:
            report["whole_process"] = whole_process(whole_runs, tempfile.mkdtemp(prefix="clr_bench_train_"), log=log,
                                                    dataset_dir=dataset_dir, names=("train", "fit"))
        except (RuntimeError, TimeoutError) as e:
            report["whole_process"] = {"error": str(e)[-3000:]}
            print(f"\nwhole process: failed: {str(e).strip().splitlines()[0] if str(e).strip() else repr(e)}")
            failed += 1
        else:
            med = report["whole_process"]["medians"]
            print(f"\nwhole process, 1 epoch incl. start-up, data loading and validation (median of {whole_runs}):")
            for name, description in report["whole_process"]["commands"].items():
                print(f"  {description:<62} {med[name]['wall_s']:6.2f} s wall {med[name]['cpu_s']:6.2f} s CPU"
                      f" {med[name]['peak_rss_mb']:6.0f} MB peak RSS")
            print(f"  speed-up of clr_loop.train: x{med['speedup_wall']:.2f} against the tutorial script")
    save(complete=failed == 0)
    if out:
        print(f"\nwrote {out}")
    return 1 if failed else 0


def _print_result(value):
    print(RESULT_PREFIX + json.dumps(value), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker:
        _print_result(run_spec(Spec.from_json(FLAGS.worker)))
        return 0
    if FLAGS.profile_worker:
        _print_result(profile_spec(Spec.from_json(FLAGS.profile_worker), FLAGS.profile_logdir))
        return 0
    if FLAGS.fit_epoch:
        epochs = FLAGS.fit_epochs

        def run_fit(argv):
            del argv
            from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

            data = fashion_mnist.load(dataset_dir=FLAGS.dataset_dir) if FLAGS.dataset_dir else None
            result = fit_epoch(epochs, data=data)
            print(f"fit: {result['fit_s']:.1f} s for {epochs} epoch(s) incl. validation; set-up {result['setup_s']:.1f} s")
            return 0

        # The tuned variant runs as clr_loop's apps run their main (clr_loop.process.app_main).
        return (process.app_main(run_fit) if FLAGS.fit_gc_tuned else run_fit)(argv)
    if FLAGS.profile or FLAGS.analyze_profile:
        try:  # before anything runs, not after half an hour of benchmarks
            trace_converter()
        except ImportError as e:
            raise app.UsageError(f"--{'profile' if FLAGS.profile else 'analyze_profile'}: {e}")
    if FLAGS.analyze_profile:
        events = trace_events_from_logdir(FLAGS.analyze_profile)
        wall = FLAGS.analyze_wall_ms or step_wall_ms(events)
        breakdown = profile_breakdown(events, FLAGS.analyze_steps, wall or 0.0)
        if not wall:
            breakdown["wall_ms_per_step"] = breakdown["busy_ms_per_step"]
        breakdown["name"] = FLAGS.analyze_profile
        print(format_profile(breakdown))
        return 0

    try:
        steps_per_loop = [int(v) for v in FLAGS.steps_per_loop]
        batch_sizes = [int(v) for v in FLAGS.batch_sizes]
    except ValueError as e:
        raise app.UsageError(f"--steps_per_loop and --batch_sizes take integers: {e}")
    if min(steps_per_loop + batch_sizes + [FLAGS.repeats, FLAGS.rounds, FLAGS.batch_size]) < 1 or FLAGS.steps < 0:
        raise app.UsageError("--steps_per_loop, --batch_sizes, --repeats, --rounds, --batch_size must be positive; --steps >= 0")

    unknown = [p for p in FLAGS.precisions if p not in PRECISIONS]
    if unknown or not FLAGS.precisions:
        raise app.UsageError(f"--precisions: unknown {unknown}; choose from {', '.join(PRECISIONS)}")

    if FLAGS.out:
        out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
        if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
            raise app.UsageError(f"--out={FLAGS.out}: {out_dir} is not a writable directory")
    if FLAGS.examples < 0:
        raise app.UsageError(f"--examples must be >= 0, got {FLAGS.examples}")
    if FLAGS.dataset_dir and not os.path.isdir(FLAGS.dataset_dir):
        raise app.UsageError(f"--dataset_dir={FLAGS.dataset_dir} is not a folder")
    dataset_dir = os.path.abspath(FLAGS.dataset_dir) if FLAGS.dataset_dir else None
    data_choice = IDX_PREFIX + dataset_dir if dataset_dir else FLAGS.data
    if FLAGS.grid:
        specs = grid_specs(batch_sizes or [FLAGS.batch_size], FLAGS.precisions, FLAGS.steps, FLAGS.repeats, data_choice,
                           FLAGS.examples)
        return grid_main(specs, FLAGS.rounds, FLAGS.whole_process, FLAGS.out, dataset_dir)

    torch_ok, torch_why = torch_peer.torch_status() if FLAGS.torch else (False, "--torch=false")
    features = cpu_features()
    report = {"command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]), "versions": _versions(),
              "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu_features": features,
              "torch": {"available": torch_ok, "skipped_because": torch_why or None}, "flags": {
        k: FLAGS[k].value for k in ("steps", "batch_size", "repeats", "rounds", "steps_per_loop", "batch_sizes", "data", "precisions")}}
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    torch_line = ("PyTorch rows: eager and torch.compile (benchmarks.torch_peer; torch intra-op threads = the process's cores)"
                  if torch_ok else f"PyTorch rows skipped: {torch_why}")
    log(features["line"])
    log(torch_line)

    def save(complete=False):
        # After every stage, so that a later stage's failure keeps what was measured.
        if FLAGS.out:
            report["complete"] = complete
            checkpointing.write_json_atomic(FLAGS.out, report)

    matmul = []
    specs = training_specs(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats, steps_per_loop, data_choice,
                           precisions=FLAGS.precisions, torch=torch_ok)
    if FLAGS.configs:
        # fit (every precision) and the PyTorch peer stay: the rows the others are compared with.
        chosen = [s for s in specs if s.kind == "fit" and s.jit == "auto" or s.kind in TORCH_KINDS
                  or any(c in s.name for c in FLAGS.configs)]
        if not any(s.kind == "loop" for s in chosen):
            names = "\n  ".join(s.name for s in specs)
            raise app.UsageError(f"--configs={','.join(FLAGS.configs)} matches no loop configuration; the names are:\n  {names}")
        specs = chosen
    training = run_specs(specs, FLAGS.rounds, log, matmul=matmul)
    evals = run_specs(eval_specs(FLAGS.batch_size, FLAGS.repeats, data_choice), FLAGS.rounds, log) if FLAGS.eval else []
    matmul.append(run_spec_in_subprocess(Spec("matmul", repeats=3)))
    peak = max(m["gflops_best"] for m in matmul)
    report.update(device=matmul[0]["device"], data=training[0]["data"], matmul=matmul, matmul_peak_gflops=peak)
    report["training"] = add_ratios(training, training[0], peak)
    print(f"\n{report['device']}; TensorFlow {report['versions']['tensorflow']}, Keras {report['versions']['keras']}")
    print(f"data: {report['data']}; batch {FLAGS.batch_size}, {training[0]['steps']} steps per repeat, "
          f"{FLAGS.repeats} repeats x {FLAGS.rounds} round(s); {training[0]['flops_per_step'] / 1e6:.1f} MFLOP per training step")
    print(f"matmul {MATMUL_SIZE}^2 float32: best {peak:.1f} GFLOP/s (medians {', '.join(format(m['gflops'], '.1f') for m in matmul)})")
    print(features["line"])
    print(torch_line + "\n")
    print(format_training_table(report["training"]))
    print("\n* the trainer's default configuration; x(a): (a)'s ms/step divided by this one's (above 1: faster);"
          " cpu ms: process CPU time per step (all threads); %peak: GFLOP/s over the best matmul rate;"
          " parts/threads: batch parts per step / inter-op x intra-op pool sizes (0: TensorFlow's default)")
    report["precision"] = precision_rows(report["training"])
    if report["precision"]:
        print("\nprecision (Keras dtype policy set in the worker before the model is built)\n")
        print(format_precision_table(report["precision"]))
    save()
    if FLAGS.kernels:
        report["kernels"] = run_kernel_specs(kernel_specs(FLAGS.precisions, data_choice), log)
        print("\nwhich kernels ran: oneDNN primitive executions (kind, implementation:ISA, source dtype) in a 5-step run, ONEDNN_VERBOSE=1\n")
        print(format_kernels(report["kernels"]))
    if evals:
        report["eval"] = add_ratios(evals, evals[-1], peak)
        print("\neval: one pass over the 10,000 test examples\n")
        print(format_eval_table(report["eval"]))
    save()

    if batch_sizes:
        fastest = min((r for r in report["training"] if r["spec"]["kind"] == "loop" and r["spec"]["precision"] == "float32"), key=lambda r: r["ms_per_step"])
        sweep_specs = []
        for batch in batch_sizes:
            steps = max(10, FLAGS.sweep_examples // batch) if FLAGS.sweep_examples else 0
            common = dict(batch_size=batch, steps=steps, repeats=FLAGS.repeats, data=data_choice)
            sweep_specs.append(Spec("fit", label=f"(a) fit b={batch}", **common))
            sweep_specs.append(Spec("loop", label=f"default loop b={batch}", **common))
            fast = Spec(**{**fastest["spec"], **common, "label": f"fastest: {fastest['name']} b={batch}"})
            sweep_specs.append(fast)
        sweep = run_specs(sweep_specs, FLAGS.rounds, log)
        for index in range(0, len(sweep), 3):
            add_ratios(sweep[index:index + 3], sweep[index], peak)
        report["sweep"] = sweep
        print("\nbatch-size sweep\n")
        print(format_training_table(sweep))
        save()

    if FLAGS.profile:
        fastest = min((r for r in report["training"] if r["spec"]["kind"] == "loop" and r["spec"]["precision"] == "float32"), key=lambda r: r["ms_per_step"])
        default = next((r for r in report["training"] if r.get("is_trainer_default")), fastest)
        report["profile"] = []
        # Both at 100 steps per loop: when the fastest differs from the default only in its loop
        # length, it is the same configuration and is profiled once.
        specs = [Spec(**{**result["spec"], "steps_per_loop": 100}) for result in (default, fastest)]
        for spec in {spec.name: spec for spec in specs}.values():
            logdir = tempfile.mkdtemp(prefix="clr_bench_profile_")
            log(f"profiling {spec.name} into {logdir} ...")
            breakdown = _profile_in_subprocess(spec, logdir)
            report["profile"].append(breakdown)
            print("\n" + format_profile(breakdown))
            save()

    if FLAGS.whole_process:
        workdir = tempfile.mkdtemp(prefix="clr_bench_train_")
        report["whole_process"] = whole_process(FLAGS.whole_process, workdir, log=log, torch=torch_ok, dataset_dir=dataset_dir)
        med = report["whole_process"]["medians"]
        print(f"\nwhole process, 1 epoch incl. start-up, data loading and validation (median of {FLAGS.whole_process}):")
        for name, description in report["whole_process"]["commands"].items():
            if name not in med:
                print(f"  {description:<62} failed: {report['whole_process']['errors'].get(name)}")
                continue
            print(f"  {description:<62} {med[name]['wall_s']:6.2f} s wall"
                  f" {med[name]['cpu_s']:6.2f} s CPU {med[name]['peak_rss_mb']:6.0f} MB peak RSS")
        print(f"  speed-up of clr_loop.train: x{med['speedup_wall']:.2f} against the tutorial script,"
              f" x{med['speedup_wall_vs_tuned_fit']:.2f} against its start-up-tuned process"
              + "".join(f", x{med[f'speedup_wall_vs_{n}']:.2f} against {n}" for n in ("torch", "torch_compile")
                        if f"speedup_wall_vs_{n}" in med))
    report["side_by_side"] = side_by_side(report["training"], report.get("whole_process"))
    save()
    print("\nside by side: per step (batch 64) and whole process (one epoch with validation); peak RSS of the"
          " whole-process run (ru_maxrss of the child)\n")
    print(format_side_by_side(report["side_by_side"]))
    if not torch_ok:
        print(torch_line)

    if FLAGS.out:
        save(complete=True)
        print(f"\nwrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
