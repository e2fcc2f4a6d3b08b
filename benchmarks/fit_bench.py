r"""Benchmarks `clr_loop.fit` against Keras's `model.fit` on two models, each contender in its own process.

  python -m benchmarks.fit_bench                                  # both models, 3 interleaved rounds
  python -m benchmarks.fit_bench --models=cnn --rounds=5 --out=fit_bench.json
  python -m benchmarks.fit_bench --breakdown=false                # without the bare-step stage

Run from the repository root: the benchmark is not part of the installed package.

The contenders are `clr_loop.fit(model, x, y, ...)` with its defaults (100 steps per compiled
call, `jit_compile="auto"`, automatic batch splitting) and `model.fit(x, y, ...)` with Keras's
defaults (`steps_per_execution=1`, `jit_compile="auto"`); both get the same compiled model, the
same initial weights (the same seed, checked by a checksum of the weights), the same numpy
arrays, batch size, epochs and validation data, and `verbose=0`. The models (`CASES`):

- "cnn": the tutorial's CNN (`clr_loop.experiment.models.create_model`) compiled as the tutorial compiles it
  (SGD with `CyclicalLearningRate(1e-4, 1e-2, 2*937, mode="triangular2")`, sparse categorical
  cross-entropy, accuracy) at batch 64 on the real Fashion-MNIST arrays;
- "resnet20": He et al.'s CIFAR ResNet-20 (`resnet20`: BatchNormalization, residual connections,
  L2 weight decay) at batch 128 on Fashion-MNIST padded to 32x32 and repeated over 3 channels,
  SGD with momentum 0.9 and a triangular2 CLR; its "epoch" is capped (`CASES`).

Every (model, contender) runs in a fresh `python -m benchmarks.fit_bench --worker=...` process,
so each can set its thread pools before TensorFlow starts and the OS's peak RSS of that process
belongs to it alone; with `--rounds=R` the pairs run R times, the contenders' order alternating
from round to round. A worker measures, in this order:

1. **epoch**: the wall time of one `fit(..., epochs=1, validation_data=...)` call on a fresh
   compiled model, tracing, compilation and validation included (what a user waits for);
2. **steady**: on another fresh model with the same weights, `fit(..., epochs=1 + repeats)` on the
   first `steady_steps * batch_size` examples without validation; epoch 1 (tracing) is not timed,
   each later epoch (`on_epoch_begin` to `on_epoch_end`) is one repeat; ms/step is their median
   divided by the steps.

clr_loop's process sets its thread pools as an app does, before TensorFlow starts:
`runtime.configure_threads(splits)` with `splits` the app's choice (`trainer.planned_batch_splits`
for the tutorial's CNN; 1 for the ResNet, whose BatchNormalization cannot be split, which the
worker checks against `runtime.resolve_batch_splits` for the built model). Keras's process keeps
TensorFlow's default pools, as the tutorial does.

`--breakdown` adds, per model, the bare compiled train step (`steps.Steps(model).train_step`
called once per step on one fixed in-memory batch: no input pipeline, no loop) on the thread pools
of each contender's process, and the machine's matmul rate: how much of a step is the step itself.

This module is an absl app: `main` is the only reader of FLAGS; everything else takes arguments.
"""

import dataclasses
import json
import os
import statistics
import sys
import time

from benchmarks import cost_model
from benchmarks import machine
from benchmarks import measure
from benchmarks import processes
from benchmarks import report as report_lib
from benchmarks import variants
from benchmarks import worker
from clr_loop import process

# The start-up tuning of clr_loop's apps (see clr_loop.process), as in benchmarks.bench:
# TensorFlow, which checkpointing imports, is imported with the collector paused and Keras's
# matplotlib.pyplot deferred.
with process.gc_paused(), process.deferred_imports():
    from absl import app
    from absl import flags

    from clr_loop import checkpointing

# TensorFlow is imported inside the functions that use it: a worker sets its thread pools first.

SEED = 42
CONTENDERS = ("clr_loop", "keras")
RESULT_PREFIX = measure.RESULT_PREFIX


@dataclasses.dataclass(frozen=True)
class Case:
    """One model's workload.

    `batch_size` is its usual batch; the epoch phase trains on the first `epoch_examples` training
    examples (0: all) and validates on the first `val_examples` test examples (0: all); the steady
    phase runs `steady_steps` steps per epoch for 1 + `steady_repeats` epochs. `data` is
    `worker.load_data`'s choice ("auto": the real Fashion-MNIST when it loads, else random images
    of its shape; "random"), and `examples` > 0 keeps that many examples of each split (tests).
    `step_size` is the CLR's half cycle in steps.
    """

    model: str
    batch_size: int
    epoch_examples: int = 0
    val_examples: int = 0
    steady_steps: int = 200
    steady_repeats: int = 3
    step_size: int = 2 * 937
    data: str = "auto"
    examples: int = 0

    def to_json(self):
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


CASES = {
    # The tutorial: a whole epoch (60,000 examples, 938 steps with the last partial batch) and
    # validation on the 10,000 test examples.
    "cnn": Case("cnn", batch_size=64, steady_steps=200, steady_repeats=3),
    # ResNet-20 at batch 128: an "epoch" capped at 30 steps (3,840 examples) and 1,000 validation
    # examples keeps a worker to about a minute on a 2-core CPU (a step takes about a second).
    "resnet20": Case(
        "resnet20",
        batch_size=128,
        epoch_examples=30 * 128,
        val_examples=1000,
        steady_steps=8,
        steady_repeats=3,
        step_size=2 * 468,
    ),
}


# ---------------------------------------------------------------------------------------------
# Models and data


def resnet20_projection(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4):
    """Returns He et al.'s CIFAR ResNet-20 (arXiv:1512.03385, section 4.2) as a functional Keras model.

    Rescaling(1/255) of uint8 pixels, a 3x3 conv of 16 filters, then 3 stages of 3 basic blocks
    (two 3x3 conv + BatchNormalization, ReLU, identity shortcut) with 16, 32, 64 filters, the
    first block of stages 2 and 3 striding by 2 with a 1x1 conv + BatchNormalization projection
    shortcut (He et al.'s option B), global average pooling and a 10-way softmax: 20 weight
    layers, 0.27 M parameters. Kernels are He-normal with L2 `weight_decay`, as in Keras's CIFAR-10
    ResNet example.
    """
    import keras  # pylint: disable=import-outside-toplevel

    def conv(filters, kernel=3, strides=1):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=keras.regularizers.L2(weight_decay),
        )

    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(16)(x)))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(filters, strides=strides)(x)))
            y = keras.layers.BatchNormalization()(conv(filters)(y))
            if strides != 1 or x.shape[-1] != filters:
                x = keras.layers.BatchNormalization()(conv(filters, kernel=1, strides=strides)(x))
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def pad_to_cifar(images):
    """Returns uint8 Fashion-MNIST images [N, 28, 28, 1] as [N, 32, 32, 3]: zero-padded by 2 pixels
    on each side and the grey channel repeated three times."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return np.repeat(padded, 3, axis=-1)


def load_case_data(case, data=None):
    """Returns (train_x, train_y, test_x, test_y, description) of `case`'s model: numpy arrays.

    `data` is a `clr_loop.experiment.fashion_mnist.FashionMnist` (default: `worker.load_data(case.data, case.examples)`,
    whose description says whether the arrays are the real ones); the ResNet's images are
    `pad_to_cifar`'d.
    """
    if data is None:
        data, description = worker.load_data(case.data, case.examples)
    else:
        description = f"given arrays ({data.source})"
    train_x, train_y = data.train.images, data.train.labels
    test_x, test_y = data.test.images, data.test.labels
    if case.model == "resnet20":
        train_x, test_x = pad_to_cifar(train_x), pad_to_cifar(test_x)
        description += ", padded to 32x32x3"
    return train_x, train_y, test_x, test_y, description


def build_model(case):
    """Returns `case`'s model, built with Keras's global seed set to SEED (the same initial weights in every process)."""
    import keras  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import models  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(SEED)
    if case.model == "cnn":
        return models.create_model(seed=SEED)
    if case.model == "resnet20":
        return resnet20_projection()
    raise ValueError(f"unknown model {case.model!r}")


def compile_model(model, case):
    """Compiles `model` as its case trains: the tutorial's compile for the CNN (plain SGD), SGD with
    momentum 0.9 for the ResNet; both with a triangular2 CLR from 1e-4 to 1e-2 (the ResNet's
    peak 0.1) of half cycle `case.step_size`, sparse categorical cross-entropy and accuracy."""
    import keras  # pylint: disable=import-outside-toplevel

    from clr_loop import schedules  # pylint: disable=import-outside-toplevel

    if case.model == "cnn":
        schedule = schedules.CyclicalLearningRate(1e-4, 1e-2, case.step_size, mode="triangular2")
        optimizer = keras.optimizers.SGD(learning_rate=schedule)
    else:
        schedule = schedules.CyclicalLearningRate(1e-3, 1e-1, case.step_size, mode="triangular2")
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def app_splits(case, cores=None):
    """Returns the batch parts clr_loop's app would size its thread pools for, before TensorFlow starts.

    For the tutorial's CNN what its app computes (`trainer.planned_batch_splits` of a Config at
    the case's batch size); for the ResNet 1: BatchNormalization needs the whole batch
    (`steps.can_split`), so `runtime.resolve_batch_splits` gives 1 for it.
    """
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    if case.model != "cnn":
        return 1
    if cores is not None:
        return runtime.auto_batch_splits(case.batch_size, cores)
    return trial.planned_batch_splits(config_lib.Config(batch_size=case.batch_size))


# ---------------------------------------------------------------------------------------------
# Worker side


def _fit(contender, model, x, y, batch_size, epochs, validation_data=None, callbacks=None):
    import clr_loop  # pylint: disable=import-outside-toplevel

    kwargs = dict(batch_size=batch_size, epochs=epochs, validation_data=validation_data, verbose=0, callbacks=callbacks)
    if contender == "clr_loop":
        return clr_loop.fit(model, x, y, seed=SEED, **kwargs)
    if contender == "keras":
        return model.fit(x, y, **kwargs)
    raise ValueError(f"unknown contender {contender!r}")


def time_contender(case, contender, data=None):
    """Runs the epoch and steady phases of `contender` on `case` in this process; returns a dict.

    Keys: `epoch_s` (one fit epoch with validation, tracing included), `epoch_steps`,
    `epoch_logs` (its last logs), `steady_ms_per_step` (median) and `steady_ms_repeats`,
    `steady_cpu_ms_per_step` (the process's CPU time per step, all threads: less disturbed by
    other load than wall time),
    `steady_steps`, `init_checksum` (of the initial weights), `splits_resolved` (the parts
    clr_loop's automatic choice gives the built model; 1 for Keras), `peak_rss_epoch_mb` (this
    process's peak after the epoch phase), `threads`, `loadavg_before`/`after` and the data used.
    """
    import keras  # pylint: disable=import-outside-toplevel

    from clr_loop import runtime  # pylint: disable=import-outside-toplevel

    load_before = os.getloadavg()[0]
    train_x, train_y, test_x, test_y, description = load_case_data(case, data)
    model = build_model(case)
    initial = model.get_weights()
    splits = 1
    if contender == "clr_loop":
        splits, _ = runtime.resolve_batch_splits(0, model, case.batch_size)
    n_epoch = case.epoch_examples or None
    n_val = case.val_examples or None
    x, y = train_x[:n_epoch], train_y[:n_epoch]
    compile_model(model, case)
    start = time.perf_counter()
    history = _fit(contender, model, x, y, case.batch_size, 1, validation_data=(test_x[:n_val], test_y[:n_val]))
    epoch_s = time.perf_counter() - start
    epoch_logs = {k: float(v[-1]) for k, v in history.history.items()}
    peak_epoch = measure.peak_rss_mb()

    steady_model = build_model(case)
    steady_model.set_weights(initial)
    compile_model(steady_model, case)
    n = min(case.steady_steps * case.batch_size, len(train_x))
    steps = -(-n // case.batch_size)
    seconds, cpu_seconds = [], []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu = time.perf_counter(), measure.cpu_seconds()

        def on_epoch_end(self, epoch, logs=None):
            float(logs["loss"])
            seconds.append(time.perf_counter() - self.start)
            cpu_seconds.append(measure.cpu_seconds() - self.cpu)

    _fit(
        contender,
        steady_model,
        train_x[:n],
        train_y[:n],
        case.batch_size,
        1 + case.steady_repeats,
        callbacks=[EpochTimer()],
    )
    timed = [1000.0 * s / steps for s in seconds[1:]]
    return {
        "model": case.model,
        "contender": contender,
        "batch_size": case.batch_size,
        "epoch_s": epoch_s,
        "epoch_steps": -(-len(x) // case.batch_size),
        "epoch_examples": len(x),
        "val_examples": len(test_x[:n_val]),
        "epoch_logs": epoch_logs,
        "steady_ms_per_step": statistics.median(timed),
        "steady_ms_repeats": timed,
        "steady_cpu_ms_per_step": statistics.median(1000.0 * c / steps for c in cpu_seconds[1:]),
        "steady_steps": steps,
        "init_checksum": cost_model.weights_checksum(initial),
        "splits_resolved": splits,
        "threads": list(machine.thread_pools()),
        "peak_rss_epoch_mb": peak_epoch,
        "data": description,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
    }


def time_bare_step(case, splits, calls=30, data=None):
    """Returns {"step_ms", "step_ms_repeats", "splits", "flops_per_step", "gflops"} of the bare train step.

    `steps.Steps(model, splits=splits).train_step(x, y)` on one fixed batch of `case.batch_size`
    training examples already in memory as tensors, called once per step from Python: no input
    pipeline, no loop. After 5 warm-up calls (tracing), 3 repeats of `calls` calls; the median.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    # Outside the public API the benchmark keeps to: the loop's compiled step itself (clr_loop.steps),
    # which no public entry point runs without the loop around it; this stage times exactly that.
    from clr_loop import steps as steps_lib  # pylint: disable=import-outside-toplevel

    train_x, train_y, _, _, _ = load_case_data(case, data)
    model = compile_model(build_model(case), case)
    x = tf.constant(train_x[: case.batch_size])
    y = tf.constant(train_y[: case.batch_size])
    model.optimizer.build(model.trainable_variables)
    step = steps_lib.Steps(model, splits=splits).train_step
    for _ in range(5):
        out = step(x, y)
    float(out["loss_sum"])
    repeats = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            out = step(x, y)
        float(out["loss_sum"])
        repeats.append(1000.0 * (time.perf_counter() - start) / calls)
    ms = statistics.median(repeats)
    flops = cost_model.step_flops(model, case.batch_size)
    return {
        "step_ms": ms,
        "step_ms_repeats": repeats,
        "splits": splits,
        "flops_per_step": flops,
        "gflops": flops / ms / 1e6,
    }


def _set_threads(threads):
    """Sets this worker's pools before TensorFlow starts: "app" as clr_loop's app does for the
    case (`runtime.configure_threads`), "default" leaves TensorFlow's own."""
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel

    if threads[0] == "app":
        runtime.configure_threads(threads[1])


def run_worker(job):
    """Runs one worker job (a dict from `worker_job`) in this process; returns its result dict."""
    case = Case.from_json(json.dumps(job["case"]))
    if job["kind"] == "fit":
        splits = app_splits(case)
        _set_threads(("app", splits) if job["contender"] == "clr_loop" else ("default",))
        result = time_contender(case, job["contender"])
        result["app_splits"] = splits
    elif job["kind"] == "step":
        threads = job["threads"]
        _set_threads(tuple(threads))
        splits = threads[1] if threads[0] == "app" else 1
        result = time_bare_step(case, splits)
        result.update(model=case.model, threads_setting=threads[0], threads=list(machine.thread_pools()))
        result["matmul"] = worker.time_matmul(variants.Spec("matmul", repeats=3), per_repeat=5)
    else:
        raise ValueError(f"unknown worker kind {job['kind']!r}")
    result["peak_rss_mb"] = measure.peak_rss_mb()
    return result


# ---------------------------------------------------------------------------------------------
# Parent side


def run_job_in_subprocess(job, timeout=1800):
    """Runs `job` in a fresh `python -m benchmarks.fit_bench --worker=...` process; returns its
    result with the OS's `process_peak_rss_mb`, `process_wall_s` and `process_cpu_s` added."""
    proc = processes.run_process([sys.executable, "-m", "benchmarks.fit_bench", f"--worker={json.dumps(job)}"], timeout)
    lines = [line for line in proc["stdout"].splitlines() if line.startswith(RESULT_PREFIX)]
    if proc["rc"] != 0 or not lines:
        raise RuntimeError(
            f"fit_bench worker {job['kind']} {job['case']['model']} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}"
        )
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result.update(process_peak_rss_mb=proc["peak_rss_mb"], process_wall_s=proc["wall_s"], process_cpu_s=proc["cpu_s"])
    return result


def fit_jobs(cases, rounds):
    """Returns the fit workers in run order: per round, per case, both contenders, clr_loop first in
    even rounds and Keras first in odd ones."""
    jobs = []
    for round_index in range(rounds):
        order = CONTENDERS if round_index % 2 == 0 else CONTENDERS[::-1]
        for case in cases:
            for contender in order:
                jobs.append(
                    {"kind": "fit", "case": dataclasses.asdict(case), "contender": contender, "round": round_index}
                )
    return jobs


def step_jobs(cases):
    """Returns the bare-step workers: each case on TensorFlow's default pools unsplit, and on
    clr_loop's app pools with its split when the app splits the case."""
    jobs = []
    for case in cases:
        jobs.append({"kind": "step", "case": dataclasses.asdict(case), "threads": ["default"]})
        splits = app_splits(case)
        if splits > 1:
            jobs.append({"kind": "step", "case": dataclasses.asdict(case), "threads": ["app", splits]})
    return jobs


def summarize(results):
    """Returns {model: summary} of fit results: per contender the medians over rounds of
    `epoch_s`, steady ms/step (over all pooled repeats) and process peak RSS, the ranges, and the
    ratios Keras / clr_loop (above 1: clr_loop faster, smaller). Raises ValueError when the
    contenders of a model did not start from the same initial weights."""
    summary = {}
    for model in dict.fromkeys(r["model"] for r in results):
        rows = {c: [r for r in results if r["model"] == model and r["contender"] == c] for c in CONTENDERS}
        checks = {json.dumps(r["init_checksum"]) for c in CONTENDERS for r in rows[c]}
        if len(checks) != 1:
            raise ValueError(f"{model}: the contenders started from different initial weights: {sorted(checks)}")
        per = {}
        for contender, runs in rows.items():
            steady = [v for r in runs for v in r["steady_ms_repeats"]]
            per[contender] = {
                "epoch_s": statistics.median(r["epoch_s"] for r in runs),
                "epoch_s_runs": [r["epoch_s"] for r in runs],
                "steady_ms_per_step": statistics.median(steady),
                "steady_ms_range": [min(steady), max(steady)],
                "steady_cpu_ms_per_step": statistics.median(
                    r.get("steady_cpu_ms_per_step", float("nan")) for r in runs
                ),
                "peak_rss_mb": statistics.median(r["process_peak_rss_mb"] for r in runs),
                "peak_rss_epoch_mb": statistics.median(r["peak_rss_epoch_mb"] for r in runs),
                "val_accuracy": statistics.median(r["epoch_logs"].get("val_accuracy", float("nan")) for r in runs),
                "threads": runs[0]["threads"],
                "splits": runs[0]["splits_resolved"],
                "loadavg": [min(r["loadavg_before"] for r in runs), max(r["loadavg_after"] for r in runs)],
                "runs": len(runs),
            }
        first = rows["clr_loop"][0]
        summary[model] = {
            **per,
            "batch_size": first["batch_size"],
            "epoch_steps": first["epoch_steps"],
            "epoch_examples": first["epoch_examples"],
            "val_examples": first["val_examples"],
            "steady_steps": first["steady_steps"],
            "data": first["data"],
            "speedup_steady": per["keras"]["steady_ms_per_step"] / per["clr_loop"]["steady_ms_per_step"],
            "speedup_epoch": per["keras"]["epoch_s"] / per["clr_loop"]["epoch_s"],
            "rss_ratio": per["keras"]["peak_rss_mb"] / per["clr_loop"]["peak_rss_mb"],
            # The same ratios round by round (each round's pair ran back to back).
            "speedup_epoch_by_round": [k["epoch_s"] / c["epoch_s"] for c, k in zip(rows["clr_loop"], rows["keras"])],
            "speedup_steady_by_round": [
                k["steady_ms_per_step"] / c["steady_ms_per_step"] for c, k in zip(rows["clr_loop"], rows["keras"])
            ],
        }
    return summary


def format_summary(summary):
    """Returns the summary as a fixed-width text table, one row per (model, contender)."""
    header = (
        "model",
        "contender",
        "threads",
        "parts",
        "steady ms/step",
        "range",
        "cpu ms/step",
        "epoch s",
        "peak RSS MB",
        "x steady",
        "x epoch",
    )
    rows = []
    for model, s in summary.items():
        for contender in CONTENDERS:
            c = s[contender]
            mine = contender == "clr_loop"
            rows.append(
                (
                    model,
                    contender,
                    "x".join(map(str, c["threads"])),
                    str(c["splits"]),
                    f"{c['steady_ms_per_step']:.2f}",
                    f"{c['steady_ms_range'][0]:.2f}-{c['steady_ms_range'][1]:.2f}",
                    f"{c['steady_cpu_ms_per_step']:.2f}",
                    f"{c['epoch_s']:.2f}",
                    f"{c['peak_rss_mb']:.0f}",
                    f"{s['speedup_steady']:.2f}" if mine else "1.00",
                    f"{s['speedup_epoch']:.2f}" if mine else "1.00",
                )
            )
    return report_lib.table(header, rows)


def format_steps(step_results, summary):
    """Returns the bare-step results next to the contenders' steady ms/step, as text lines."""
    lines = []
    # The best matmul of all workers: one on clr_loop's split pools has one intra-op thread.
    peak = max([r["matmul"]["gflops_best"] for r in step_results] + [1e-9])
    for r in step_results:
        s = summary.get(r["model"], {})
        lines.append(
            f"  {r['model']:<9} bare step, {r['threads_setting']} pools {'x'.join(map(str, r['threads']))}, "
            f"{r['splits']} part(s): {r['step_ms']:.2f} ms ({r['gflops']:.1f} GFLOP/s, {100 * r['gflops'] / peak:.0f}% of "
            f"a {peak:.0f} GFLOP/s matmul)"
            + (
                f"; fit steady: clr_loop {s['clr_loop']['steady_ms_per_step']:.2f}, keras {s['keras']['steady_ms_per_step']:.2f}"
                if s
                else ""
            )
        )
    return "\n".join(lines)


def define_flags():
    """Defines the app's flags (only when this module runs as a program)."""
    flags.DEFINE_list("models", list(CASES), f"Models to run, of {', '.join(CASES)}.")
    flags.DEFINE_integer("rounds", 3, "Rounds: each runs every model's two contenders, their order alternating.")
    flags.DEFINE_bool("breakdown", True, "Also time the bare compiled step and the matmul rate.")
    flags.DEFINE_string("out", None, "Write all results as JSON to this file (after every stage).")
    flags.DEFINE_integer("examples", 0, "Keep only this many examples of each split (quick checks and tests).")
    flags.DEFINE_enum("data", "auto", ["auto", "random"], "auto: real Fashion-MNIST when it loads, else random data.")
    flags.DEFINE_integer("steady_steps", 0, "Override the cases' steps per steady epoch (0: the case's).")
    flags.DEFINE_string("worker", None, "Internal: run this JSON job in this process and print its result.")


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker:
        print(RESULT_PREFIX + json.dumps(run_worker(json.loads(FLAGS.worker))), flush=True)
        return 0
    unknown = [m for m in FLAGS.models if m not in CASES]
    if unknown or not FLAGS.models:
        raise app.UsageError(f"--models: unknown {unknown}; choose from {', '.join(CASES)}")
    if FLAGS.rounds < 1 or FLAGS.examples < 0 or FLAGS.steady_steps < 0:
        raise app.UsageError("--rounds must be positive, --examples and --steady_steps >= 0")
    if FLAGS.out:
        out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
        if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
            raise app.UsageError(f"--out={FLAGS.out}: {out_dir} is not a writable directory")
    cases = []
    for name in FLAGS.models:
        changes = {"examples": FLAGS.examples, "data": FLAGS.data}
        if FLAGS.steady_steps:
            changes["steady_steps"] = FLAGS.steady_steps
        cases.append(dataclasses.replace(CASES[name], **changes))
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    report = {
        "command": " ".join(["python -m benchmarks.fit_bench", *sys.argv[1:]]),
        "cpu_model": machine.cpu_model(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cases": [dataclasses.asdict(c) for c in cases],
    }

    def save(complete=False):
        if FLAGS.out:
            report["complete"] = complete
            checkpointing.write_json_atomic(FLAGS.out, report)

    results = []
    jobs = fit_jobs(cases, FLAGS.rounds)
    for index, job in enumerate(jobs):
        log(
            f"[{index + 1}/{len(jobs)}] round {job['round'] + 1}: {job['case']['model']} {job['contender']} (load {os.getloadavg()[0]:.2f}) ..."
        )
        results.append(run_job_in_subprocess(job))
        report["fit"] = results
        save()
    report["summary"] = summarize(results)
    print(f"\n{machine.cpu_model()} ({os.cpu_count()} logical cores); {report['date']}")
    for model, s in report["summary"].items():
        print(
            f"{model}: batch {s['batch_size']}, epoch {s['epoch_steps']} steps ({s['epoch_examples']} examples) + "
            f"validation on {s['val_examples']}; steady {s['steady_steps']} steps x {cases[0].steady_repeats} repeats; {s['data']}"
        )
    print(format_summary(report["summary"]))
    print(
        "x: Keras's time divided by clr_loop's (above 1: clr_loop faster); threads: inter-op x intra-op pools (0: TensorFlow's default)"
    )
    save()
    if FLAGS.breakdown:
        report["steps"] = []
        for job in step_jobs(cases):
            log(f"bare step: {job['case']['model']} on {job['threads'][0]} pools ...")
            report["steps"].append(run_job_in_subprocess(job))
            save()
        print("\n" + format_steps(report["steps"], report["summary"]))
    if FLAGS.out:
        save(complete=True)
        print(f"\nwrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
