"""The worker side of the benchmark: one configuration (`variants.Spec`), built and timed in this process.

`run_spec` is what a `python -m benchmarks.bench --worker=<JSON Spec>` process runs: it sets the
thread pools (`apply_threads`) and the Keras dtype policy, loads the data (`load_data`), and
times the spec's kind: Keras `model.fit` (`time_fit`), clr_loop's loop as the trainer builds it
(`make_trainer`, `time_loop`), one eval pass (`time_eval`) or the matmul rate (`time_matmul`).

clr_loop is driven through its public API only: the experiment's `trial.Trainer` (its `model`,
`optimizer`, `strategy`, `jit_compile`, `splits` and the loop handle `run.run_steps(n)` /
`run.validate()`), `clr_loop.runtime`, `clr_loop.distribute` and the experiment's modules.
TensorFlow and Keras are imported inside the functions that use them: nothing at import time may
start TensorFlow's runtime before a worker has set its thread pools.
"""

import dataclasses
import os
import statistics
import time

from benchmarks import cost_model
from benchmarks import machine
from benchmarks import measure
from benchmarks import variants


def load_data(choice="auto", examples=0):
    """Returns (FashionMnist, description): the real data when `choice` is "auto" and it loads, else random.

    Random data has the real shapes and sizes (60000/10000 uint8 images, int32 labels 0..9) and is
    used for "random" or when no source works; the description says which one was used.
    `choice` "idx:DIR" reads the four Fashion-MNIST IDX files in DIR (any size; their errors
    propagate), as `--dataset_dir` does for the trainer. `examples` > 0 keeps only the first that
    many examples of each split.

    Args:
      choice: "auto", "random" or "idx:DIR".
      examples: keep only the first that many examples of each split (0: all).

    Returns:
      (a `clr_loop.experiment.fashion_mnist.FashionMnist`, a description of the data).
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

    data = None
    if choice.startswith(variants.IDX_PREFIX):
        data = fashion_mnist.load(dataset_dir=choice[len(variants.IDX_PREFIX) :])
        description = f"Fashion-MNIST IDX files in {choice[len(variants.IDX_PREFIX) :]} ({data.train.num_examples} train examples)"
    elif choice == "auto":
        try:
            data = fashion_mnist.load()
            description = f"real Fashion-MNIST ({data.source})"
        except fashion_mnist.DataError:
            data = None
    if data is None or choice == "random":
        rng = np.random.default_rng(variants.SEED)

        def split(n):
            return fashion_mnist.Split(
                images=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                labels=rng.integers(0, 10, n).astype(np.int32),
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
    keras.utils.set_random_seed(variants.SEED)
    model = models.create_model(seed=variants.SEED)
    optimizer = trial.make_optimizer(config, plan)
    return model, optimizer, config


def _config(spec):
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel

    extra = {"strategy": "mirrored", "virtual_cpus": spec.virtual_cpus} if spec.virtual_cpus else {}
    return config_lib.Config(
        batch_splits=spec.splits,
        batch_size=spec.batch_size,
        steps_per_loop=spec.steps_per_loop,
        jit_compile=spec.jit,
        seed=variants.SEED,
        eval_batch_size=spec.eval_batch_size,
        input_mode=spec.input,
        precision=spec.precision,
        **extra,
    )


def _plan(config, data):
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel

    return config_lib.plan_steps(config, data.train.num_examples)


def make_trainer(spec, data):
    """Returns a `clr_loop.experiment.trial.Trainer` for `spec`, with the spec's variant swapped in.

    The trainer is built exactly as `python -m clr_loop.train` builds it (strategy, model,
    optimizer, and its `runner.Run`: compiled steps, train loop and eval, with the spec's
    `input_mode`). The trainer is not trained (nothing is written): callers run
    `trainer.run.run_steps(n)`.

    Args:
      spec: a "loop" or "eval_loop" `variants.Spec`.
      data: the `FashionMnist` it trains on.

    Returns:
      The `trial.Trainer`, built, not trained.
    """
    from clr_loop import distribute  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    config = _config(spec)
    if config.virtual_cpus:
        distribute.configure_virtual_cpus(config.virtual_cpus)
    strategy = distribute.make_strategy(config.strategy, config.devices, config.cluster_timeout)
    return trial.Trainer(config, data, strategy=strategy)


def _summary(spec, seconds_per_repeat, cpu_per_repeat, steps, first_call_s, first_call_steps, flops):
    return measure.summary(
        spec.batch_size, seconds_per_repeat, cpu_per_repeat, steps, first_call_s, first_call_steps, flops
    )


def time_fit(spec, data):
    """Times the tutorial's `model.fit` (numpy arrays, verbose=0) and returns the result dict.

    The model is compiled exactly as in the tutorial (sparse categorical cross-entropy, SGD with
    the CLR schedule, accuracy metric, Keras's own `jit_compile` unless `spec.jit` says
    otherwise) and fit on the first `steps * batch_size` training examples, so every epoch is
    exactly `steps` full batches, for `1 + repeats` epochs. Epoch 1 traces and warms up; each
    later epoch (from `on_epoch_begin` to `on_epoch_end`, which includes fit's per-epoch
    shuffle and iterator set-up, as in a real run) is one timed repeat.

    Args:
      spec: a "fit" `variants.Spec`.
      data: the `FashionMnist` it trains on.

    Returns:
      `measure.summary`'s dict with "jit_resolved" and "compute_dtype".
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
            self.start, self.cpu = time.perf_counter(), measure.cpu_seconds()

        def on_epoch_end(self, epoch, logs=None):
            float(logs["loss"])  # waits for the device where the loss is still in flight
            wall.append(time.perf_counter() - self.start)
            cpu.append(measure.cpu_seconds() - self.cpu)

    model.fit(x, y, batch_size=spec.batch_size, epochs=1 + spec.repeats, verbose=0, callbacks=[EpochTimer()])
    result = _summary(spec, wall[1:], cpu[1:], steps, wall[0], steps, cost_model.step_flops(model, spec.batch_size))
    result["jit_resolved"] = bool(model.jit_compile)
    result["compute_dtype"] = model.compute_dtype
    return result


def run_loop(run_steps, steps, steps_per_loop):
    """Runs `steps` steps of the trainer's loop in calls of at most `steps_per_loop`, then reads the loss back.

    Args:
      run_steps: `trainer.run.run_steps`.
      steps: the steps to run.
      steps_per_loop: the most steps per call.

    Returns:
      The last call's outputs (a dict of tensors with "loss_sum").
    """
    done, out = 0, None
    while done < steps:
        n = min(steps_per_loop, steps - done)
        out = run_steps(n)
        done += n
    float(out["loss_sum"])  # a device-to-host read: the steps have finished, also on a GPU
    return out


def make_loop(spec, data):
    """Returns (run_steps, model, optimizer) of `make_trainer(spec, data)`.

    `run_steps(num_steps)` is the trainer's own compiled loop (`trainer.run.run_steps`: up to that
    many steps in one compiled call, on the run's iterator).

    Args:
      spec: a "loop" `variants.Spec`.
      data: the `FashionMnist` it trains on.

    Returns:
      (run_steps, model, optimizer).
    """
    trainer = make_trainer(spec, data)
    return trainer.run.run_steps, trainer.model, trainer.optimizer


def time_loop(spec, data):
    """Times clr_loop's training loop for a "loop" spec and returns the result dict.

    The first call (tracing, compilation and `steps_per_loop` steps) is timed on its own, then a
    warm-up of at least 20 steps runs untimed, then each repeat runs `steps` steps in calls of
    `steps_per_loop` and ends with a device-to-host read of the loss.

    Args:
      spec: a "loop" `variants.Spec`.
      data: the `FashionMnist` it trains on.

    Returns:
      `measure.summary`'s dict with "jit_resolved", "weights_checksum", "splits_resolved",
      "compute_dtype", "input_default" and "is_trainer_default".
    """
    steps = _steps(spec, data.train.num_examples)
    trainer = make_trainer(spec, data)
    run_steps, model = trainer.run.run_steps, trainer.model
    first_steps = min(spec.steps_per_loop, steps)
    start = time.perf_counter()
    run_loop(run_steps, first_steps, spec.steps_per_loop)
    first_call_s = time.perf_counter() - start
    run_loop(run_steps, min(steps, max(spec.steps_per_loop, 20)), spec.steps_per_loop)
    wall, cpu = [], []
    for _ in range(spec.repeats):
        start, cpu_start = time.perf_counter(), measure.cpu_seconds()
        run_loop(run_steps, steps, spec.steps_per_loop)
        wall.append(time.perf_counter() - start)
        cpu.append(measure.cpu_seconds() - cpu_start)
    result = _summary(spec, wall, cpu, steps, first_call_s, first_steps, cost_model.step_flops(model, spec.batch_size))
    result["jit_resolved"] = trainer.jit_compile
    result["weights_checksum"] = cost_model.weights_checksum([v.numpy() for v in model.trainable_variables])
    result["splits_resolved"] = trainer.splits
    result["compute_dtype"] = model.compute_dtype
    # Outside the public API the benchmark keeps to (clr_loop.runner's function and the run's
    # `input`): what `input_mode="auto"` resolves to for this trainer's input and strategy, which
    # no public function of runtime, inputs or the experiment gives.
    from clr_loop import runner  # pylint: disable=import-outside-toplevel

    default_input = runner.resolve_input_mode("auto", trainer.run.input, trainer.strategy)
    result["input_default"] = default_input
    result["is_trainer_default"] = is_trainer_default(spec, trainer.splits, machine.thread_pools(), default_input)
    return result


def is_trainer_default(spec, splits, threads, default_input):
    """Returns whether a "loop" spec ran what `python -m clr_loop.train` runs by default on this device.

    `splits` and `threads` ((inter-op, intra-op) pool sizes, 0 for TensorFlow's default) are what
    the worker resolved and set, and `default_input` the input mode that `input_mode="auto"`
    resolves to here (`runner.resolve_input_mode`); they are compared with what the trainer resolves
    and sets for `Config()`, as are the input mode, steps_per_loop, batch size and XLA choice.

    Args:
      spec: the `variants.Spec` that ran.
      splits: the batch parts the worker resolved.
      threads: the (inter-op, intra-op) pool sizes it set.
      default_input: what `input_mode="auto"` resolves to on this device.

    Returns:
      A bool.
    """
    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    default = config_lib.Config()
    default_splits = trial.planned_batch_splits(default)
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


def time_eval(spec, data):
    """Times one pass over the whole test split and returns the result dict (per pass, not per step).

    "eval_loop" is the trainer's compiled eval loop (`trainer.run.validate()`, what `fit` runs
    after each epoch, which builds the validation dataset each time) at `eval_batch_size`;
    "fit_eval" is Keras `model.evaluate` at the training batch size, which is what the
    tutorial's `fit(validation_data=...)` runs after every epoch.

    Args:
      spec: an "eval_loop" or "fit_eval" `variants.Spec`.
      data: the `FashionMnist` whose test split is evaluated.

    Returns:
      {"ms_per_pass", "ms_per_pass_repeats", "cpu_ms_per_pass", "examples_per_s", "first_call_s",
      "compile_s", "eval_batch_size", "splits_resolved", "flops_per_pass", "gflops", "jit_resolved"}.
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
        start, cpu_start = time.perf_counter(), measure.cpu_seconds()
        one_pass()
        wall.append(time.perf_counter() - start)
        cpu.append(measure.cpu_seconds() - cpu_start)
    ms = statistics.median(wall) * 1000.0
    flops = cost_model.step_flops(model, test.num_examples, training=False)
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


def time_matmul(spec, size=variants.MATMUL_SIZE, per_repeat=10):
    """Returns the float32 `size`² x `size`² tf.matmul rate: {"gflops" (median), "gflops_best", ...}.

    Each repeat runs `per_repeat` eager matmuls (eager, so no graph optimisation merges the
    identical products) and reads one value back; a matmul is `2 * size**3` FLOPs. The best
    repeat is the least disturbed one on a shared machine.

    Args:
      spec: the "matmul" `variants.Spec` (its `repeats`, at least 3).
      size: the matrices' side.
      per_repeat: matmuls per timed repeat.

    Returns:
      {"gflops", "gflops_best", "gflops_repeats", "size"}.
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


def apply_threads(spec):
    """Sets this worker's thread pools for `spec` (before TensorFlow runs an op); returns `machine.thread_pools()`.

    Explicit `inter_op`/`intra_op` win; otherwise a "loop" or "eval_loop" spec gets what the
    trainer sets for its configuration (`runtime.configure_threads`), and the other kinds keep
    TensorFlow's defaults.

    Args:
      spec: the `variants.Spec` this worker runs.

    Returns:
      (inter-op, intra-op) pool sizes as set (0: TensorFlow's default).
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
        runtime.configure_threads(trial.planned_batch_splits(_config(spec)))
    return machine.thread_pools()


def _apply_precision(spec):
    """Sets Keras's global dtype policy to `spec.precision` (before any model is built), unless float32."""
    if spec.precision not in variants.PRECISIONS:
        raise ValueError(f"unknown precision {spec.precision!r}; choose from {', '.join(variants.PRECISIONS)}")
    if spec.precision != "float32":
        import keras  # pylint: disable=import-outside-toplevel

        keras.config.set_dtype_policy(spec.precision)


def run_spec(spec, data=None, data_description=None):
    """Runs one benchmark configuration in this process and returns its result dict.

    The dict holds the spec, its name, the measurements of `time_fit` / `time_loop` /
    `time_eval` / `time_matmul`, the data used, the device, the load average before and after,
    and `rss_before_mb` (resident memory after imports and data loading) and `peak_rss_mb` (this
    process's peak so far), and `threads`, the (inter-op, intra-op) pool sizes it ran with (0:
    TensorFlow's default). Thread settings only take effect in a fresh process.

    Args:
      spec: the `variants.Spec` to run.
      data: its `FashionMnist` (None: `load_data(spec.data, spec.examples)`).
      data_description: what `data` is, for the result.

    Returns:
      The result dict (see above).
    """
    threads = apply_threads(spec)
    _apply_precision(spec)
    if data is None and spec.kind != "matmul":
        data, data_description = load_data(spec.data, spec.examples)
    load_before = os.getloadavg()
    rss_before = machine.rss_mb()
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
        device=machine.device_description(),
        loadavg_before=load_before[0],
        loadavg_after=os.getloadavg()[0],
        rss_before_mb=rss_before,
        peak_rss_mb=measure.peak_rss_mb(),
        precision=spec.precision,
    )
    return result
