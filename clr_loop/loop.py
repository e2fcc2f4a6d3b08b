"""`fit`: the graph-compiled training loop for any compiled Keras model, a drop-in for `model.fit`.

Shape (after orbit): the inner loop runs `steps_per_loop` compiled steps (`clr_loop.steps`) in one
`tf.function`, fed from the input's iterator; between calls, in Python, the outer loop runs the
Keras callbacks, the progress bar, TensorBoard summaries, checkpoints, the profiler window, the
NaN/Inf guard and signal handling. Epochs, metrics and the returned `keras.callbacks.History` mean
what they mean in `model.fit`. With a `workdir` the run is resumable: calling the same code again
after a crash continues from the last checkpoint, bit-exactly.
"""

import contextlib
import json
import os
import re
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from clr_loop import augment as augment_lib
from clr_loop import bn_stats
from clr_loop import checkpointing
from clr_loop import distribute
from clr_loop import inputs
from clr_loop import runtime
from clr_loop import steps as steps_lib

# What `tf.summary.scalar` tags a scalar with for TensorBoard's scalars plugin (an empty
# ScalarPluginData, version 0). `tf.summary.scalar` itself lives in TensorBoard's package, whose
# first use imports 250 modules (0.06 s of a run).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()

# "auto" of `fit`'s input modes (see `resolve_input_mode`) places a training set on a GPU when it
# takes at most this share of the memory TensorFlow reports for the GPU (the rest is the model's,
# its activations' and the optimizer's), or of FALLBACK_DEVICE_BYTES when it reports none.
DEVICE_MEMORY_SHARE = 0.25
FALLBACK_DEVICE_BYTES = 4 * 2**30

# The file in a workdir that identifies the run a checkpoint belongs to (see `_run_identity`).
RUN_FILE = "run.json"

# Training batches a schedule-free run's BatchNormalization statistics are recomputed on at x
# before each evaluation and at the end of fit (see `clr_loop.bn_stats`).
BN_RECOMPUTE_BATCHES = 50


def write_scalar(name, value):
    """Writes a float scalar summary to the default writer at its default step, as `tf.summary.scalar`
    would (same tag, tensor and metadata, so TensorBoard shows it as a scalar)."""
    return tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


class TrainingDiverged(RuntimeError):
    """Raised when a step's learning rate, loss or gradient, or the weights after it, are not finite;
    the message names the step and rate."""


class Interrupted(RuntimeError):
    """Raised after SIGTERM or SIGINT once the state is checkpointed; `signum` is the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def seed_generator_states(model):
    """Returns the state variables of every Keras SeedGenerator in `model` (dropout's RNG).

    `tf.train.Checkpoint(model=...)` does not track them, and without them a resumed run would
    draw different dropout masks.
    """
    return [g.state for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", [])]  # pylint: disable=protected-access


def _sum_replicas(strategy, value):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)


class _EpochState:
    """tf.Variables holding the epoch's running train sums and position (checkpointed with the model).

    `loss_sum` and `count` are float64 sums over examples; `lr` and `momentum` are the latest
    step's; `epoch` is the epoch in progress and `epoch_start` the step it began at. `steps` counts
    the steps run (batches trained on): the run's position where a LossScaleOptimizer's skipped
    steps leave `optimizer.iterations` behind it.
    """

    def __init__(self):
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self.count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_count")
        self.lr = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="last_lr")
        self.momentum = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="last_momentum")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.epoch_start = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_start")
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_run")
        # The TensorBoard point in progress (see `_Summaries`): the loss and example count since the
        # last point, and each mean-type metric's (total, count) when it began. Checkpointed, so a
        # resumed run writes the points of an uninterrupted one.
        self.window = tf.Variable([0.0, 0.0], dtype=tf.float64, trainable=False, name="summary_window")
        self.metric_base = tf.Variable([], dtype=tf.float64, trainable=False, shape=tf.TensorShape(None),
                                       name="summary_metric_base")

    def trackables(self):
        return {
            "loss_sum": self.loss_sum, "count": self.count, "lr": self.lr, "momentum": self.momentum,
            "epoch": self.epoch, "epoch_start": self.epoch_start, "summary_window": self.window,
            "summary_metric_base": self.metric_base,
        }


def make_train_loop(train_step, state, strategy, until_exhausted=False):
    """Returns `train_loop(iterator, num_steps) -> window`, running up to that many steps in one tf.function.

    Every step's loss sum and count are added to `state` one step at a time, so the totals do not
    depend on how the steps were split into calls (a resumed run gets the same bits). Returns the
    call's own `loss_sum` and `count`, the last step's `lr` (and `momentum`), the `steps` run, and
    `finite`: a non-finite step (its loss, rate, momentum, or a weight after its update: see
    `clr_loop.steps`) ends the loop early with `finite` False. With `until_exhausted`
    the iterator may end (a finite Dataset): the loop then stops early, and `exhausted` says so.
    With a strategy, every step runs on all replicas and the sums are added across them.
    """

    def replica_step(*batch):
        # Per replica: the step's sums in float64 and `nonfinite` 0/1, ready to add up.
        out = train_step(*batch)
        sums = {k: tf.cast(out[k], tf.float64) for k in ("loss_sum", "count")}
        sums["nonfinite"] = tf.cast(tf.logical_not(out["finite"]), tf.float64)
        return {**sums, **{k: out[k] for k in ("lr", "momentum") if k in out}}

    def run_step(*batch):
        per_replica = strategy.run(replica_step, args=tuple(batch))
        loss = _sum_replicas(strategy, per_replica["loss_sum"])
        count = _sum_replicas(strategy, per_replica["count"])
        nonfinite = _sum_replicas(strategy, per_replica["nonfinite"])
        # Every replica evaluates the schedule at the same step; any copy is the rate.
        lr = strategy.experimental_local_results(per_replica["lr"])[0]
        momentum = strategy.experimental_local_results(per_replica["momentum"])[0] if "momentum" in per_replica else tf.constant(0.0)
        return loss, count, nonfinite, lr, momentum

    def body(iterator, steps, finite, exhausted, loss_sum, count, lr, momentum):
        del finite, exhausted  # the loop only continues while finite and not exhausted

        def advance(batch):
            step_loss, step_count, nonfinite, step_lr, step_momentum = run_step(*batch)
            state.loss_sum.assign_add(step_loss)
            state.count.assign_add(step_count)
            return (steps + 1, nonfinite == 0.0, tf.constant(False), loss_sum + step_loss, count + step_count,
                    step_lr, step_momentum)

        if not until_exhausted:
            return advance(next(iterator))
        optional = iterator.get_next_as_optional()
        return tf.cond(
            optional.has_value(),
            lambda: advance(optional.get_value()),
            lambda: (steps, tf.constant(True), tf.constant(True), loss_sum, count, lr, momentum),
        )

    # An explicit while loop, not autograph's `for _ in tf.range(...)`: the same graph, without
    # the source transformation at start-up.
    @tf.function(autograph=False)
    def train_loop(iterator, num_steps):
        zero = tf.constant(0.0, tf.float64)
        initial = (tf.constant(0, tf.int32), tf.constant(True), tf.constant(False), zero, zero,
                   tf.constant(0.0, tf.float32), tf.constant(0.0, tf.float32))
        steps, finite, exhausted, loss_sum, count, lr, momentum = tf.while_loop(
            lambda steps, finite, exhausted, *_: tf.logical_and(steps < num_steps, tf.logical_and(finite, tf.logical_not(exhausted))),
            lambda *loop_state: body(iterator, *loop_state),
            initial,
        )
        ran = steps > 0
        state.lr.assign(tf.where(ran, lr, state.lr))
        state.momentum.assign(tf.where(ran, momentum, state.momentum))
        state.steps.assign_add(tf.cast(steps, tf.int64))
        return {"loss_sum": loss_sum, "count": count, "lr": lr, "momentum": momentum, "steps": steps,
                "finite": finite, "exhausted": exhausted}

    return train_loop


def make_evaluate(eval_step, model, strategy):
    """Returns `evaluate(dataset) -> ({"loss", <metric names>...}, example count)` over every example of `dataset`.

    The loop runs the model's own `test_step` (`eval_step`, see `clr_loop.steps`) on every batch
    in one `tf.function`, after resetting the model's metrics, and reads the logs from their Keras
    state after, as `model.evaluate` does: the loss is Keras's loss tracker, a mean weighted by batch
    size. With a strategy the dataset is distributed, each replica evaluates its examples and the
    counts are added across replicas and workers. A multi-replica run's batches end with a padding
    mask (0 for a padding example: see `inputs.pad_batches`).
    """

    @tf.autograph.experimental.do_not_convert
    def add_batch(total, batch):
        count = strategy.run(lambda *args: tf.cast(eval_step(*args), tf.float64), args=tuple(batch))
        return total + _sum_replicas(strategy, count)

    @tf.function(autograph=False)
    def run(dataset):
        return dataset.reduce(tf.constant(0.0, tf.float64), add_batch)

    def chunk_body(iterator, steps, done, total):
        del done  # the loop only continues while the iterator has batches
        optional = iterator.get_next_as_optional()
        return tf.cond(
            optional.has_value(),
            lambda: (steps + 1, tf.constant(False), add_batch(total, optional.get_value())),
            lambda: (steps, tf.constant(True), total),
        )

    @tf.function(autograph=False)
    def run_chunk(iterator, num_steps):
        steps, _, total = tf.while_loop(
            lambda steps, done, _: tf.logical_and(steps < num_steps, tf.logical_not(done)),
            lambda *loop_state: chunk_body(iterator, *loop_state),
            (tf.constant(0, tf.int32), tf.constant(False), tf.constant(0.0, tf.float64)),
        )
        return steps, total

    def evaluate(dataset, callbacks=None, every=1, num_batches=None):
        """With `callbacks` (a CallbackList with test batch hooks), runs `every` batches per compiled
        call and calls `on_test_batch_begin`/`on_test_batch_end` around each call with Keras's
        indices (the first and last batch of the call, as `model.evaluate` numbers them) and logs."""
        model.reset_metrics()
        eager = tf.config.functions_run_eagerly()  # (a Dataset's reduce would trace the step all the same)
        if callbacks is None and not eager:
            count = float(run(dataset))
            return keras_logs(model), int(count)
        if callbacks is None:
            callbacks, every, num_batches = keras.callbacks.CallbackList(), 2**30, None
        model.stop_evaluating = False
        iterator, begin, count = iter(dataset), 0, 0.0
        while num_batches is None or begin < num_batches:
            callbacks.on_test_batch_begin(begin)
            ran, total = run_chunk(iterator, tf.constant(every, tf.int32))
            count += float(total)
            if int(ran) == 0:
                break
            callbacks.on_test_batch_end(begin + every - 1, keras_logs(model))
            # (A short call ends the data only for the next one: Keras calls on_test_batch_begin once
            # more when a Dataset's length is unknown, and a known length ends the loop above.)
            if getattr(model, "stop_evaluating", False):
                break
            begin += every
        return keras_logs(model), int(count)

    return evaluate


def keras_logs(model):
    """Returns {name: float} of the model's metrics as Keras's `fit` and `evaluate` log them
    (`model.get_metrics_result()`: the loss tracker, the compiled metrics, the per-output losses
    and the model's own trackers)."""
    return {name: float(np.asarray(value)) for name, value in model.get_metrics_result().items()
            if np.ndim(value) == 0}


def metric_results(metrics):
    """Returns {name: float} of a model's compiled metrics (`model._compile_metrics`), named as Keras
    names them. A mean-type metric (accuracy, MAE, ...) is its float64 `total / count`, from its own
    exact sums; any other metric is its `result()`."""
    if metrics is None or not metrics.built:
        return {}
    names = list(metrics.result().keys())
    out = {}
    for name, metric in zip(names, metrics.metrics):
        if isinstance(metric, keras.metrics.Mean) and hasattr(metric, "total") and hasattr(metric, "count"):
            count = float(np.asarray(metric.count))
            out[name] = float(np.asarray(metric.total)) / count if count else 0.0
        else:
            out[name] = float(np.asarray(metric.result()))
    return out


class _Summaries:
    """TensorBoard scalars of a run in `<workdir>/train` and `<workdir>/eval` (no-op writers without
    a workdir, or on a worker that is not the chief).

    Train points average over the steps since the previous point: the loss from the loop windows'
    sums, each mean-type metric from the change of its Keras sums; `lr`, `momentum` and other
    metrics are their current values. The point in progress lives in `state` (checkpointed), so a
    run resumed between two points writes the values an uninterrupted run writes.
    """

    def __init__(self, workdir, state):
        self.workdir = workdir
        with self._writing():
            if workdir:
                self.train = tf.summary.create_file_writer(os.path.join(workdir, "train"))
                self.eval = tf.summary.create_file_writer(os.path.join(workdir, "eval"))
            else:
                self.train = self.eval = tf.summary.create_noop_writer()
        self.state = state

    @contextlib.contextmanager
    def _writing(self):
        """Turns a failed event write (a full disk) into a WorkdirError naming the folders."""
        try:
            yield
        except (tf.errors.OpError, OSError) as e:
            raise checkpointing.WorkdirError(
                f"could not write TensorBoard events under {self.workdir}/train and /eval: "
                f"{checkpointing.first_line(e)}. The last checkpoint is intact: the same command resumes from it "
                "once the write can succeed",
                starting_over_helps=False,
            ) from e

    def start_window(self, metrics):
        """Starts the metric windows from the metrics' current sums (at an epoch's start)."""
        self.state.metric_base.assign(np.array([v for pair in _metric_sums(metrics).values() for v in pair], np.float64))

    def add(self, window):
        """Adds a loop window's loss sum and example count to the current point."""
        self.state.window.assign_add(tf.stack([window["loss_sum"], window["count"]]))

    def write_train(self, step, logs, metrics):
        """Writes the train point at `step` and starts the next one."""
        now = _metric_sums(metrics)
        loss_sum, count = (float(v) for v in self.state.window.numpy())
        base = self.state.metric_base.numpy().reshape(-1, 2)
        with self._writing(), self.train.as_default(step=step):
            write_scalar("loss", loss_sum / max(count, 1.0))
            for (name, (total, n)), (base_total, base_n) in zip(now.items(), base):
                if n > base_n:
                    write_scalar(name, (total - base_total) / (n - base_n))
            for name, value in logs.items():
                if name not in now and name != "loss":
                    write_scalar(name, value)
        self.state.window.assign([0.0, 0.0])
        self.state.metric_base.assign(np.array([v for pair in now.values() for v in pair], np.float64))

    def write_eval(self, step, val_logs):
        """Writes the validation metrics (without their `val_` prefix) at `step`."""
        with self._writing(), self.eval.as_default(step=step):
            for name, value in val_logs.items():
                write_scalar(name, value)

    def flush(self):
        with self._writing():
            self.train.flush()
            self.eval.flush()


def _metric_sums(metrics):
    """Returns {name: (total, count)} of the mean-type compiled metrics, for windowed summaries."""
    if metrics is None or not metrics.built:
        return {}
    names = list(metrics.result().keys())
    return {
        name: (float(np.asarray(m.total)), float(np.asarray(m.count)))
        for name, m in zip(names, metrics.metrics)
        if isinstance(m, keras.metrics.Mean) and hasattr(m, "total")
    }


def _run_identity(model, train_input, seed, run_config=None):
    """What a workdir's checkpoint must match to be resumed: batch size, data size, seed, variables,
    the precision (the model's Keras dtype policy: it defines the numbers a run computes, and
    mixed_float16 adds the loss-scale state), and the caller's `run_config` (a JSON-safe dict of
    settings, compared with `checkpointing.config_differences`) when given."""
    identity = {
        "batch_size": train_input.batch_size,
        "num_examples": train_input.num_examples,
        "steps_per_epoch": train_input.steps_per_epoch,
        "shuffle": train_input.shuffle,
        "drop_remainder": train_input.drop_remainder,
        "seed": seed,
        "variables": [[_unnumbered(v.path), list(v.shape), str(v.dtype)] for v in model.variables],
        "precision": runtime.model_precision(model),
    }
    if run_config is not None:
        identity["config"] = run_config
    return identity


def _unnumbered(path):
    """`path` without Keras's automatic name suffixes ("sequential_3/dense_7/kernel" ->
    "sequential/dense/kernel"): a model built again in the same process (a notebook re-running its
    cell) gets new numbers but restores the same checkpoint, which matches objects, not names."""
    return re.sub(r"_\d+(?=/|$)", "", path)


def _identity_differences(saved, current):
    names = {"batch_size": "the batch size", "num_examples": "the number of training examples",
             "steps_per_epoch": "the batches per epoch", "shuffle": "shuffle", "drop_remainder": "drop_remainder",
             "seed": "the seed", "variables": "the model's variables", "precision": "the precision"}
    # A run recorded before the precision was: float32.
    saved = {"precision": "float32", **saved}
    problems = []
    for key, label in names.items():
        if key == "seed" and current.get("seed") is None:
            continue
        if saved.get(key) != current.get(key):
            if key == "variables":
                saved_vars = {tuple(v[:1]): v for v in saved.get(key, [])}
                now_vars = {tuple(v[:1]): v for v in current.get(key, [])}
                diff = sorted(set(map(str, saved_vars.values())) ^ set(map(str, now_vars.values())))
                problems.append(f"{label} differ ({len(saved.get(key, []))} saved vs {len(current.get(key, []))} now; e.g. {diff[:2]})")
            else:
                problems.append(f"{label}: {saved.get(key)!r} (saved) vs {current.get(key)!r} (now)")
    if "config" in saved or "config" in current:
        saved_config, config = saved.get("config") or {}, current.get("config") or {}
        differing = checkpointing.config_differences(saved_config, config)
        if differing:
            problems.append("the configuration (" + checkpointing.describe_differences(saved_config, config, differing) + ")")
    return problems


class Run:
    """One training run of a compiled model on its input: the compiled steps and loops, the input
    iterator, and (with a workdir) its checkpoints. `fit` builds one and calls its `fit`; code that
    drives the loop itself calls `run_steps` and `validate` (the Fashion-MNIST trainer and the
    tests do)."""

    def __init__(self, model, train_input, val, *, seed, epochs, steps_per_loop, jit_compile, batch_splits,
                 workdir, checkpoint_every_steps, keep_checkpoints, log_every_steps, profile_steps, max_steps,
                 validation_batch_size, run_config=None, run_files=None, augment=None,
                 bn_recompute_batches=BN_RECOMPUTE_BATCHES, input_mode="auto", initial_epoch=0,
                 validation_freq=1):
        steps_lib.check_compiled(model)
        spec = (train_input.dataset.element_spec if train_input.dataset is not None
                else inputs.element_spec_of(train_input.arrays))
        inputs.check_fits_model(model, spec, "x")
        if isinstance(augment, str) and augment not in augment_lib.AUGMENTS:
            raise inputs.InputError(f"augment must be one of {', '.join(augment_lib.AUGMENTS)} or a function (x, step) -> x, got {augment!r}")
        if isinstance(augment, str) and augment != "none":
            _check_images(spec[0], augment)
        if val[0] is not None:
            inputs.check_fits_model(model, inputs.element_spec_of(val[0]), "validation_data")
        elif val[1] is not None:
            inputs.check_fits_model(model, val[1].element_spec, "validation_data")
        _build(model, spec)
        self.model = model
        self.input = train_input
        self.val_arrays, self.val_dataset = val
        self.epochs = epochs
        self.steps_per_loop = steps_per_loop
        self.workdir = workdir
        self.checkpoint_every_steps = checkpoint_every_steps
        self.keep_checkpoints = keep_checkpoints
        self.log_every_steps = log_every_steps
        self.profile_steps = profile_steps
        self.validation_batch_size = validation_batch_size
        self.strategy = model.distribute_strategy
        self.replicas = self.strategy.num_replicas_in_sync
        self.is_chief = distribute.is_chief(self.strategy)
        self.seed = _resolve_seed(seed, workdir)
        if self.replicas > 1 and not train_input.drop_remainder and distribute.worker_count(self.strategy) > 1:
            raise inputs.InputError(
                "a multi-worker run needs drop_remainder=True: each worker reads its own slices of every "
                "global batch, which an epoch's last partial batch does not divide into"
            )
        if train_input.batch_size is not None and train_input.batch_size % self.replicas:
            raise ValueError(
                f"batch_size={train_input.batch_size} (the global batch) must be divisible by the "
                f"{self.replicas} replicas of the model's strategy"
            )
        if self.replicas > 1 and train_input.arrays is not None and not train_input.drop_remainder:
            last = train_input.arrays.num_examples % train_input.batch_size
            if 0 < last < self.replicas:
                raise inputs.InputError(
                    f"batch_size={train_input.batch_size} leaves {last} example(s) for each epoch's last batch, "
                    f"fewer than the {self.replicas} replicas of the model's strategy: a replica would train on "
                    "an empty batch, which TensorFlow's kernels cannot run; choose a batch_size that divides the "
                    f"{train_input.arrays.num_examples} examples or leaves at least {self.replicas}"
                )
        self.input_mode = resolve_input_mode(input_mode, train_input, self.strategy)
        self.jit_compile = runtime.resolve_jit_compile(jit_compile)
        if self.jit_compile and not distribute.xla_allowed(self.strategy):
            logging.warning("XLA is off: TensorFlow's distribution cannot compile across %d CPU replicas", self.replicas)
            self.jit_compile = False
        self.splits, why = runtime.resolve_batch_splits(
            batch_splits, model, train_input.batch_size, self.replicas, self.jit_compile
        )
        if why:
            logging.info("batch splitting off: %s", why)
        self.total_steps = None
        if train_input.steps_per_epoch is not None:
            self.total_steps = epochs * train_input.steps_per_epoch
            if max_steps:
                self.total_steps = min(self.total_steps, max_steps)
        self.max_steps = max_steps
        if profile_steps is not None and self.total_steps is not None and profile_steps[0] >= self.total_steps:
            raise inputs.InputError(
                f"profile_steps={tuple(profile_steps)} starts at or after the run's last step ({self.total_steps}): "
                "no trace would be written"
            )
        self.run_config = run_config
        self.run_files = dict(run_files or {})
        # Saved in every checkpoint: what the run is (checked before a checkpoint is restored) and
        # its history up to the last epoch end (history.json is a copy of it).
        self.identity_record = checkpointing.TextRecord()
        self.history_record = checkpointing.TextRecord()
        # Set when a callback ended the run (model.stop_training): the run is complete, and calling
        # the same code again trains no further than the uninterrupted run did.
        self.stopped_record = checkpointing.TextRecord()
        self.optimizer = model.optimizer
        with self.strategy.scope():
            if not self.optimizer.built:  # a second build adds a second set of its variables
                self.optimizer.build(model.trainable_variables)
            self.state = _EpochState()
        # The run's position, in steps: the optimizer's iterations, except under loss scaling
        # (mixed_float16), whose skipped steps do not advance them but do consume a batch.
        self.loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self.step_counter = self.state.steps if self.loss_scaled else self.optimizer.iterations
        # Without a workdir a call trains on from where the model is, as model.fit does: its steps
        # count from `initial_epoch`'s first step, whatever `optimizer.iterations` says.
        self.step_offset = 0
        if not workdir:
            self.step_offset = int(self.step_counter.numpy()) - initial_epoch * (train_input.steps_per_epoch or 0)
            self.state.epoch.assign(initial_epoch)
        self.validation_freq = validation_freq
        self.batch_hook_every = None  # set by fit when a callback has batch hooks
        self.steps = steps_lib.Steps(
            model, jit_compile=self.jit_compile, splits=self.splits, fuse_update=distribute.is_default(self.strategy),
            augment=augment_lib.make(augment, self.seed), padded_eval=self.replicas > 1,
        )
        self.metrics = self.steps.metrics
        # The NaN guard's weights, checked again before every save (the step checks them after its update).
        self.guarded_weights = [v for v in model.trainable_variables if tf.as_dtype(v.dtype).is_floating]
        self.train_loop = make_train_loop(
            self.steps.train_step, self.state, self.strategy, until_exhausted=train_input.dataset is not None
        )
        self.evaluate = make_evaluate(self.steps.eval_step, model, self.strategy)
        self.data_holder = tf.Module()
        self.iterator = None
        # A schedule-free optimizer (one with swap_to_x/swap_to_y): training at y, eval and the end at x.
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        self.schedule_free = inner if callable(getattr(inner, "swap_to_x", None)) else None
        if isinstance(bn_recompute_batches, bool) or not isinstance(bn_recompute_batches, (int, np.integer)) \
                or bn_recompute_batches < 0:
            raise inputs.InputError(f"bn_recompute_batches must be an integer >= 0, got {bn_recompute_batches!r}")
        self.bn_recompute_batches = int(bn_recompute_batches)
        self._recompute_bn = bn_stats.Recompute(model, self.strategy, seed_generator_states(model))
        # A Dataset's batches for the recompute are drawn once, here, before any training iterator: an
        # iterator made later would draw one more shuffle of a reshuffling Dataset at a point a
        # resumed run does not repeat, changing the order of the epochs after it.
        self._bn_batches = None
        if (self.schedule_free is not None and self._recompute_bn.layers and self.bn_recompute_batches
                and train_input.dataset is not None):
            self._bn_batches = list(train_input.dataset.take(self.bn_recompute_batches))
        self.device_batches = None
        if self.input_mode == "device":
            self.device_batches = inputs.DeviceBatches(
                train_input.arrays, train_input.batch_size, self.seed,
                shuffle=train_input.shuffle, drop_remainder=train_input.drop_remainder,
            )
        self.checkpoints = None
        self.profiling = False
        self._signal = None
        # Multi-worker runs with a workdir (where signals are caught): at every chunk end all workers
        # vote on whether any of them got a signal.
        self._signal_vote = distribute.make_signal_vote(self.strategy) if workdir else None

    @property
    def step(self):
        """The number of steps run so far (int): the optimizer's iterations plus, under loss
        scaling, the steps it skipped."""
        return int(self.step_counter.numpy()) - self.step_offset

    def fit(self, callbacks=None, verbose="auto"):
        """Trains to the end (see `fit`), resuming from the workdir when it holds a checkpoint;
        returns the `keras.callbacks.History`."""
        eagerly = bool(getattr(self.model, "run_eagerly", False)) and not tf.config.functions_run_eagerly()
        if eagerly:  # compile(run_eagerly=True): every step in Python, as model.fit runs it
            tf.config.run_functions_eagerly(True)
        try:
            if not self.workdir:
                with distribute.lost_workers_named(self.strategy):
                    return _train(self, {}, callbacks, verbose)
            with self.locked(), _signals_saved(self), distribute.lost_workers_named(self.strategy):
                return _train(self, self.restore(), callbacks, verbose)
        finally:
            if eagerly:
                tf.config.run_functions_eagerly(False)
            self.stop_profiler()  # a run stopped inside the window (a signal, an error) keeps its trace

    def start_profiler(self):
        """Starts the TensorFlow profiler (once) for the `profile_steps` window."""
        if not self.profiling:
            tf.profiler.experimental.start(self.workdir or ".")
            self.profiling = True

    def stop_profiler(self):
        """Stops the profiler when it runs, writing the trace under `<workdir>/plugins/profile`."""
        if self.profiling:
            self.profiling = False
            tf.profiler.experimental.stop()
            logging.info("profiler trace of steps %s written under %s/plugins/profile", self.profile_steps, self.workdir)

    def locked(self):
        """A context holding the workdir's lock (`checkpointing.workdir_lock`; the chief's only,
        since all workers of a cluster share the workdir)."""
        if not self.is_chief:
            return contextlib.nullcontext()
        checkpointing.check_writable(self.workdir)
        return checkpointing.workdir_lock(self.workdir)

    def run_steps(self, num_steps):
        """Runs up to `num_steps` training steps in one compiled call from the current position;
        returns the loop's window (see `make_train_loop`)."""
        if self.iterator is None:
            self.iterator = self.iterator_at(self.step)
        return self.train_loop(self.iterator, tf.constant(num_steps, tf.int32))

    def validate(self, callbacks=None):
        """Evaluates the validation data; returns ({"loss", metric names...}, example count). With
        `callbacks` (a CallbackList) their test batch hooks are called every `model.steps_per_execution`
        batches, as in `model.fit`.

        The compiled metrics are shared with training (as in Keras); their training state is put
        back afterwards, so an epoch cut short by `max_steps` checkpoints its own train metrics.
        """
        variables = list(self.model.metrics_variables)
        saved = [v.numpy() for v in variables]
        try:
            with self.at_average():
                if callbacks is None:
                    return self.evaluate(self.val_dataset_distributed())
                every = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
                return self.evaluate(self.val_dataset_distributed(), callbacks, every, self.val_batches())
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)

    # Schedule-free optimizers ------------------------------------------------------------------

    @contextlib.contextmanager
    def at_average(self):
        """A context in which a schedule-free run's model holds x, with BatchNormalization statistics
        recomputed there (`recompute_bn`); y and y's statistics are back, bit for bit, after it. A
        no-op for other optimizers."""
        if self.schedule_free is None:
            yield
            return
        stats = bn_stats.moving_statistics(self.model)
        saved = [v.numpy() for v in stats]
        with self.schedule_free.at_average():
            try:
                self.recompute_bn()
                yield
            finally:
                for variable, value in zip(stats, saved):
                    variable.assign(value)

    def finish_at_average(self):
        """Leaves a schedule-free run's model at x with BatchNormalization statistics for x (what
        `fit` returns with, so model.save after fit saves x); a no-op for other optimizers."""
        if self.schedule_free is not None and not self.schedule_free.at_x:
            self.schedule_free.swap_to_x()
            self.recompute_bn()

    def recompute_bn(self):
        """Recomputes the BatchNormalization moving statistics for the weights the model holds now, on
        up to `bn_recompute_batches` training batches (the last ones trained on, for arrays; for a
        Dataset its first ones, drawn once when the Run was made); returns how many it used (0 without BatchNormalization layers)."""
        if not self._recompute_bn.layers or not self.bn_recompute_batches:
            return 0
        n = self.bn_recompute_batches
        if self.input.dataset is not None:
            batches = self._bn_batches
            if self.replicas > 1 and batches:
                ds = tf.data.Dataset.from_tensors(batches[0])
                for batch in batches[1:]:
                    ds = ds.concatenate(tf.data.Dataset.from_tensors(batch))
                batches = self.strategy.experimental_distribute_dataset(ds)
        else:
            n = min(n, self.step)
            # The batches themselves, also in device mode (whose gather would move the training position).
            iterator = self._pipeline_iterator_at(self.step - n)
            batches = (next(iterator) for _ in range(n))
        return self._recompute_bn(batches)

    # Input -------------------------------------------------------------------------------------

    def iterator_at(self, step):
        """Returns the train iterator positioned at `step` (arrays), or a fresh one (a Dataset: a
        checkpoint restore then positions it)."""
        if self.device_batches is not None:
            return self.device_batches.at(step)
        return self._pipeline_iterator_at(step)

    def _pipeline_iterator_at(self, step):
        """Returns a tf.data iterator of the training batches from `step` on (arrays), or a fresh one (a Dataset)."""
        if self.input.dataset is not None:
            iterator = iter(self.strategy.experimental_distribute_dataset(self.input.dataset)
                            if self.replicas > 1 else self.input.dataset)
            self.data_holder.iterator = iterator
            return iterator
        total = self.replicas
        arrays, batch, seed = self.input.arrays, self.input.batch_size, self.seed
        if total > 1 and not self.input.drop_remainder:
            # An epoch's last partial batch cannot be cut into equal slices: on one worker, TF's
            # distribution splits each global batch across the replicas (the last one unevenly).
            global_batches = inputs.array_train_dataset(
                arrays, batch, seed, shuffle=self.input.shuffle, drop_remainder=False, start_step=step
            )
            return iter(self.strategy.experimental_distribute_dataset(global_batches))

        def dataset_fn(context):
            local = total // context.num_input_pipelines
            return inputs.array_train_dataset(
                arrays, batch, seed, shuffle=self.input.shuffle, drop_remainder=self.input.drop_remainder,
                start_step=step, replicas=(context.input_pipeline_id * local, local, total),
            )

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def val_batches(self):
        """The number of validation batches, or None when a Dataset's length is unknown."""
        if self.val_dataset is None:
            return -(-self.val_arrays.num_examples // self.validation_batch_size)
        n = int(self.val_dataset.cardinality())
        return n if n >= 0 else None

    def val_dataset_distributed(self):
        """Returns the validation data as the eval loop consumes it (distributed over the replicas)."""
        if self.val_dataset is not None:
            ds = self.val_dataset
            if self.replicas == 1:
                return ds
            # Padded so that no replica is handed an empty part of a short last batch.
            return self.strategy.experimental_distribute_dataset(inputs.pad_batches(ds, self.replicas))
        per_replica = -(-self.validation_batch_size // self.replicas)
        arrays, total = self.val_arrays, self.replicas
        if total == 1:
            return self.strategy.distribute_datasets_from_function(lambda _: inputs.array_eval_dataset(arrays, per_replica))

        def dataset_fn(context):
            local = total // context.num_input_pipelines
            return inputs.array_eval_dataset(
                arrays, per_replica, replicas=(context.input_pipeline_id * local, local, total)
            )

        # Every replica gets its own examples and the same number of batches, so no worker
        # waits in a collective for a batch another one does not have.
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # Workdir -----------------------------------------------------------------------------------

    def trackables(self):
        items = {
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch_state": self.state.trackables(),
            "rng": seed_generator_states(self.model),
            "metrics": list(self.model.metrics_variables),
            "run_identity": self.identity_record,
            "run_history": self.history_record,
            "run_stopped": self.stopped_record,
        }
        if self.input.dataset is not None:
            items["data"] = self.data_holder
        if self.loss_scaled:
            items["steps_run"] = self.state.steps
        return items

    def restore(self):
        """Opens the workdir and restores its latest checkpoint; returns the saved history (or {}).

        Raises WorkdirError when the workdir holds another run (batch size, data size, seed or the
        model's variables differ; see `_run_identity`) or a history without checkpoints, and
        CheckpointError when checkpoints exist but none can be read.
        """
        workdir = self.workdir
        identity = _run_identity(self.model, self.input, self.seed, self.run_config)
        self.identity_record.text = json.dumps(identity, sort_keys=True)

        def verify(path, reader):
            saved = checkpointing.saved_text(reader, "run_identity")
            if saved is not None:
                self._refuse_another_run(json.loads(saved), identity, path)

        if not self.is_chief:
            # Every worker takes part in saving (the variables are mirrored); the workers other than
            # the chief save into a folder of their own and resume from it, so no filesystem needs
            # to be shared. One whose folder holds no checkpoint restores the chief's (a shared
            # filesystem, after a run with fewer workers).
            scratch = worker_folder(workdir, self.strategy)
            checkpointing.check_writable(scratch)
            own = checkpointing.has_checkpoint(scratch)
            self.checkpoints = checkpointing.RunCheckpoints(
                scratch, self.trackables(), self.step_counter, self.keep_checkpoints,
                restore_from=None if own else os.path.join(workdir, "ckpt"),
            )
            self._restore_agreed(verify)
            return {}
        checkpointing.check_writable(workdir)
        checkpointing.remove_stale_temporaries(workdir)
        run_path = os.path.join(workdir, RUN_FILE)
        history_path = os.path.join(workdir, "history.json")
        # run.json names the run whose checkpoints the workdir holds; without a checkpoint it is a
        # left-over of a run that failed before saving anything, and does not bind the next one. A
        # file there that clr_loop did not write is named, and never replaced.
        if os.path.lexists(run_path):
            saved = checkpointing.read_json(run_path, "run identity")
            why = checkpointing.run_identity_problem(saved)
            if why is not None:
                advice = (f"the checkpoints in {os.path.join(workdir, 'ckpt')} carry their own identity: remove it to "
                          "resume from them" if checkpointing.has_checkpoint(workdir) else
                          "refusing to replace it: move it away, or use another workdir")
                raise checkpointing.WorkdirError(f"run identity {run_path} is not one clr_loop wrote ({why}); {advice}",
                                                 starting_over_helps=False)
            if checkpointing.has_checkpoint(workdir):
                self._refuse_another_run(saved, identity, workdir)
        self.checkpoints = checkpointing.RunCheckpoints(
            workdir, self.trackables(), self.step_counter, self.keep_checkpoints
        )
        # The iterator must exist before a restore can fill in its state.
        if self.input.dataset is not None:
            self.iterator = self.iterator_at(0)

        restored = self._restore_agreed(verify)
        if restored is None and os.path.exists(history_path):
            raise checkpointing.WorkdirError(
                f"{history_path} exists but {self.checkpoints.directory} holds no checkpoint to resume "
                "from; refusing to restart from scratch over it. Remove the workdir's outputs to start over."
            )
        checkpointing.save_json(run_path, identity, "the run identity")
        for name, value in self.run_files.items():
            checkpointing.save_json(os.path.join(workdir, name), value, name)
        if restored is None:
            # Points of a run that saved no checkpoint (killed before its first, or diverged): this
            # run starts at step 0 and writes its own, so they are cut as a resume cuts those after
            # its checkpoint.
            dropped = sum(checkpointing.truncate_events(os.path.join(workdir, sub), 0) for sub in ("train", "eval"))
            if dropped:
                print(f"note: dropped {dropped} TensorBoard points of an earlier run in {workdir} that saved no "
                      "checkpoint; starting at step 0", flush=True)
            return {}
        done = int(self.state.epoch.numpy())  # epochs completed (an epoch end counts its own)
        history = self._saved_history(history_path, restored)
        history = {k: list(v)[:done] for k, v in history.items()}
        for sub in ("train", "eval"):
            checkpointing.truncate_events(os.path.join(workdir, sub), self.step)
        logging.info("resuming from %s at step %d (epoch %d)", restored, self.step, done + 1)
        print(f"Resuming from {restored} at step {self.step}", flush=True)
        return history

    def _restore_agreed(self, verify=None):
        """Restores the newest checkpoint (`RunCheckpoints.restore_latest`); in a multi-worker run, the
        newest step every worker holds, agreed before any of them restores or trains. Returns the
        path restored, or None when there is none (on every worker).

        The workers exchange the step of their newest readable checkpoint (one small all-reduce;
        restoring nothing yet, since a restore runs collectives that every worker must run alike).
        When those differ, the lowest is taken if every worker holds a readable checkpoint of that
        step (a worker's newest was lost or torn); otherwise raises ClusterError naming each worker
        and the step it would resume from (0 without a checkpoint). Every worker gets the same
        answer, so all stop at once, before any training collective.
        """
        # A checkpoint with non-finite weights (an earlier version's guard saved them) is passed over.
        check = self._restored_weights_problem
        if distribute.worker_count(self.strategy) == 1:
            return self.checkpoints.restore_latest(verify=verify, check_restored=check)
        newest = self.checkpoints.newest_readable_step(verify)
        steps = distribute.gather_from_workers(self.strategy, [-1 if newest is None else newest])[:, 0].astype(int)
        target = int(steps.min())
        if len(set(steps)) > 1:
            held = target >= 0 and self.checkpoints.newest_readable_step(verify, step=target) is not None
            if not distribute.gather_from_workers(self.strategy, [float(held)])[:, 0].all():
                raise distribute.ClusterError(
                    "the workers would resume from different steps ("
                    + ", ".join(f"worker {w} from step {s}" if s >= 0 else f"worker {w} from step 0 (no checkpoint)"
                                for w, s in enumerate(steps))
                    + f"; this is worker {distribute.worker_id(self.strategy)}, whose checkpoints are in "
                    f"{self.checkpoints.restore_directory}), and they can only resume together: give each worker "
                    "its own workdir's checkpoints back, or start all of them over in new workdirs"
                )
            if self.is_chief:
                print(f"note: the workers' newest checkpoints are of steps {', '.join(map(str, steps))}; "
                      f"all resume from step {target}, the newest they all hold", flush=True)
        if target < 0:
            return None
        return self.checkpoints.restore_latest(verify=verify, step=target, check_restored=check)

    @staticmethod
    def _refuse_another_run(saved, identity, where):
        problems = _identity_differences(saved, identity)
        if problems:
            raise checkpointing.WorkdirError(
                f"{where} holds a checkpoint of another run, which cannot be resumed: "
                + "; ".join(problems) + ". Use another workdir, or remove that one to start over."
            )

    def _saved_history(self, history_path, restored):
        """The history of the restored checkpoint: its own record (history.json is a copy, rewritten
        when missing), or history.json for a checkpoint written before histories were recorded."""
        on_disk = None
        if os.path.exists(history_path):
            try:
                on_disk = checkpointing.read_history(history_path)
            except checkpointing.WorkdirError as e:
                hint = (" The checkpoint holds its own copy of the history: remove the file to resume with it."
                        if self.history_record.text else "")
                raise checkpointing.WorkdirError(f"{e}.{hint}") from e
        if not self.history_record.text:
            return on_disk or {}
        history = checkpointing.check_history(json.loads(self.history_record.text), restored)
        if on_disk is None and history:
            print(f"warning: {history_path} is missing; rewriting it from the checkpoint {restored}", flush=True)
            checkpointing.save_json(history_path, history, "the history", restored)
        return history

    def save(self):
        """Checkpoints the state at the current step (`RunCheckpoints.save`); returns the path, or None
        without a workdir. Raises TrainingDiverged, saving nothing, when a trainable weight is not
        finite (the loop checks them after every call; a callback may have set them since)."""
        if self.checkpoints is None:
            return None
        bad = self.non_finite_weights()
        if bad:
            last = self.checkpoints.manager.latest_checkpoint
            raise TrainingDiverged(
                f"non-finite weights at step {self.step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}), "
                "set outside the training step (by a callback?); stopped without saving them."
                + (f" The last good checkpoint is {last}" if last else "")
            )
        return self.checkpoints.save()

    def non_finite_weights(self):
        """Returns the paths of the trainable weights that hold a NaN or an Inf (an empty list when none do)."""
        return [_unnumbered(v.path) for v in self.guarded_weights if not np.all(np.isfinite(np.asarray(v)))]

    def _restored_weights_problem(self):
        """For `RunCheckpoints.restore_latest`: None, or why the weights just restored cannot be resumed
        (a checkpoint that an earlier version saved after its rate or update went non-finite)."""
        bad = self.non_finite_weights()
        return f"holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else None

    def on_signal(self, signum, frame):
        del frame
        self._signal = signum

    def stop_if_signalled(self, summaries):
        """Returns None unless a stop signal arrived; then flushes the summaries, saves a checkpoint
        and raises Interrupted naming the signal.

        In a multi-worker run every worker calls this at the same step and all learn whether any of
        them got a signal (`distribute.make_signal_vote`), so all checkpoint at that step and stop.
        """
        if self._signal_vote is None:
            if self._signal is None:
                return
            signum, note = self._signal, ""
        else:
            got = self._signal_vote(self._signal)
            if not got:
                return
            signum = next(s for s in distribute.STOP_SIGNALS if s in got.values())
            by = ", ".join(f"worker {w}" if s == signum else f"worker {w} ({signal.Signals(s).name})"
                           for w, s in sorted(got.items()))
            note = f"; it reached {by}, and all {distribute.worker_count(self.strategy)} workers stop at this step"
        summaries.flush()
        path = self.save()
        name = signal.Signals(signum).name
        raise Interrupted(
            f"received {name} at step {self.step}: checkpoint saved to {path}{note}; run the same code again "
            + ("on every worker " if note else "") + "to resume",
            signum,
        )

    def chunk_end(self, step, epoch_end):
        """Returns the next step at which Python must regain control."""
        ends = [step + min(self.steps_per_loop, self.batch_hook_every or self.steps_per_loop)]
        if epoch_end is not None:
            ends.append(epoch_end)
        if self.max_steps:
            ends.append(self.max_steps)
        if self.log_every_steps:
            ends.append((step // self.log_every_steps + 1) * self.log_every_steps)
        if self.profile_steps is not None:
            start, stop = self.profile_steps
            if step < start:
                ends.append(start)
            elif step < stop:
                ends.append(step + 1)
        if self.checkpoint_every_steps > 0 and self.workdir:
            ends.append((step // self.checkpoint_every_steps + 1) * self.checkpoint_every_steps)
        return min(e for e in ends if e > step)


def worker_folder(workdir, strategy):
    """Returns the folder under `workdir` where a non-chief worker of a multi-worker `strategy` keeps
    its checkpoints (`<workdir>/.worker-N`, N its worker index)."""
    return os.path.join(workdir, f".worker-{distribute.worker_id(strategy)}")


@contextlib.contextmanager
def _signals_saved(run):
    """Routes SIGTERM/SIGINT to `run.on_signal` inside the block (main thread only), restoring after."""
    handlers = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            handlers[signum] = signal.signal(signum, run.on_signal)
    except ValueError:
        handlers = {}  # not the main thread: the caller owns signal handling
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def fit(
    model,
    x=None,
    y=None,
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    validation_split=0.0,
    validation_data=None,
    shuffle=True,
    class_weight=None,
    sample_weight=None,
    initial_epoch=0,
    steps_per_epoch=None,
    validation_steps=None,
    validation_batch_size=None,
    validation_freq=1,
    *,
    seed=None,
    workdir=None,
    steps_per_loop=100,
    jit_compile="auto",
    batch_splits=0,
    drop_remainder=False,
    checkpoint_every_steps=0,
    keep_checkpoints=3,
    log_every_steps=100,
    profile_steps=None,
    max_steps=None,
    augment=None,
    bn_recompute_batches=BN_RECOMPUTE_BATCHES,
    input_mode="auto",
):
    """Trains a compiled Keras model as `model.fit` would, in clr_loop's compiled loop; returns its History.

    `model` must be compiled. Inside the compiled loop fit runs the model's own `train_step` (and
    `test_step` for validation), as `model.fit` does, so the loss, `model.losses`, the metrics, a
    `compute_loss` or `train_step` override and the optimizer (its schedule evaluated on
    `optimizer.iterations`) behave as there; `compile(run_eagerly=True)` runs every step in Python
    (`tf.config.run_functions_eagerly` is on for the call). The arguments up to `validation_freq` are
    `model.fit`'s, in its order, and mean what they mean there, except `steps_per_epoch` (not
    supported: an epoch is one pass over the data). `x` is arrays (numpy or tensors, or
    dicts/tuples of them) with targets `y` (or without, for a model with no compiled loss), a
    `tf.data.Dataset` of `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)` batches, a
    `keras.utils.PyDataset` or a generator (the last two not with a workdir). Each epoch of arrays
    is a stateless permutation of (`seed`, epoch); `seed=None` draws one from numpy's global
    generator (recorded in the workdir, so a resume keeps it). Without a workdir a call trains on
    from where the model is, as `model.fit` does. The model's own Keras dtype policy holds as in
    `model.fit`: under mixed_float16, `compile`'s LossScaleOptimizer scales the loss, and a step it
    skips on overflow is not divergence (it does not advance `optimizer.iterations`, as in Keras,
    but counts as a step).

    Returns the `keras.callbacks.History` (also `model.history`): per epoch what `model.fit` logs
    (the loss, per-output losses, the compiled metrics and the model's trackers, `val_` of each with
    validation data), `lr` (the rate of the epoch's last step) and `momentum` when the optimizer's
    momentum is a schedule.

    clr_loop's own arguments (keywords only): `steps_per_loop` steps run per compiled call (a
    callback with batch hooks gets them every `model.steps_per_execution` steps, as in Keras); `jit_compile` "auto" (XLA only on GPU/TPU),
    True or False; `batch_splits` (0: automatic, see `clr_loop.runtime.resolve_batch_splits`);
    `drop_remainder` drops each epoch's last partial batch of arrays; `max_steps` caps the total
    steps; `augment` augments each training batch inside the compiled step: "flip_crop" (pad by 4,
    random crop, random horizontal flip of [B, H, W, C] images, a pure function of (seed, step)) or
    your function `(x, step) -> x` (see `clr_loop.augment`); `input_mode` is how array batches
    reach the step: "device" places the whole training set on the device once and gathers each
    batch inside the compiled loop, "pipeline" feeds them through tf.data, "auto" picks (see
    `resolve_input_mode`); both give the same batches in the same order. With a schedule-free optimizer
    (`clr_loop.optimizers.ScheduleFreeSGD`/`ScheduleFreeAdamW`, or any with `swap_to_x`/`swap_to_y`)
    training runs at y while validation and the weights fit returns with are at x, the average; the
    BatchNormalization statistics are recomputed at x on `bn_recompute_batches` training batches
    (forward passes only) before each validation and at the end. With `workdir`: checkpoints at each
    epoch end, every `checkpoint_every_steps`, and on
    SIGTERM/SIGINT (then `Interrupted` is raised; under a multi-worker strategy a signal to any worker
    stops every worker at the same step); `history.json`; TensorBoard events in `train/`
    (every `log_every_steps`) and `eval/`; a profiler trace of `profile_steps=(start, stop)`. Calling
    fit again with the same workdir resumes. Raises ValueError (InputError) for bad input,
    TrainingDiverged at the first non-finite step, WorkdirError/CheckpointError for an unusable
    workdir, and `distribute.ClusterError` naming the lost workers when a multi-worker peer is gone.
    """
    steps_lib.check_compiled(model)
    _check_int("epochs", epochs, 1)
    _check_int("initial_epoch", initial_epoch, 0)
    if initial_epoch >= epochs:
        raise inputs.InputError(f"initial_epoch={initial_epoch} must be smaller than epochs={epochs}")
    if initial_epoch and workdir:
        raise inputs.InputError("initial_epoch must be 0 with a workdir: the workdir's checkpoint says where the run is")
    for name, value in (("steps_per_loop", steps_per_loop), ("log_every_steps", log_every_steps)):
        _check_int(name, value, 1)
    _check_int("checkpoint_every_steps", checkpoint_every_steps, 0)
    _check_int("keep_checkpoints", keep_checkpoints, 1)
    _check_int("batch_splits", batch_splits, 0)
    _check_int("bn_recompute_batches", bn_recompute_batches, 0)
    for name, value in (("max_steps", max_steps), ("steps_per_epoch", steps_per_epoch),
                        ("validation_steps", validation_steps)):
        if value is not None:
            _check_int(name, value, 1, "or None")
    if seed is not None:
        _check_int("seed", seed, 0)
        if seed >= 2**63:
            raise inputs.InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if workdir is not None and not isinstance(workdir, (str, os.PathLike)):
        raise inputs.InputError(f"workdir must be a path (str or os.PathLike) or None, got {type(workdir).__name__} {workdir!r}")
    if workdir is not None:
        workdir = os.fspath(workdir)
    if profile_steps is not None:
        if not isinstance(profile_steps, (tuple, list)) or len(profile_steps) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in profile_steps):
            raise inputs.InputError(f"profile_steps must be (start, stop), two integers, got {profile_steps!r}")
        start, stop = profile_steps
        if not 0 <= start < stop:
            raise inputs.InputError(f"profile_steps must be (start, stop) with 0 <= start < stop, got {profile_steps!r}")
    if jit_compile not in ("auto", True, False):
        raise inputs.InputError(f"jit_compile must be 'auto', True or False, got {jit_compile!r}")
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float, np.floating)) \
            or not 0 <= validation_split < 1:
        raise inputs.InputError(f"validation_split must be a float in [0, 1), got {validation_split!r}")
    if isinstance(validation_freq, bool) or not (
            (isinstance(validation_freq, (int, np.integer)) and validation_freq >= 1)
            or (isinstance(validation_freq, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in validation_freq))):
        raise inputs.InputError(f"validation_freq must be a positive integer or a list of epochs, got {validation_freq!r}")
    if steps_per_epoch is not None:
        raise inputs.InputError(
            f"steps_per_epoch={steps_per_epoch}: clr_loop's epoch is one pass over the data; pass a Dataset "
            "of that many batches (dataset.take(n)) or use max_steps"
        )
    train_input, val = inputs.make_fit_inputs(
        model, x, y, batch_size, shuffle=shuffle, drop_remainder=drop_remainder, validation_split=validation_split,
        validation_data=validation_data, sample_weight=sample_weight, class_weight=class_weight,
        validation_batch_size=validation_batch_size, validation_steps=validation_steps, workdir=workdir,
    )
    val_batch = validation_batch_size or train_input.batch_size or 32
    run = Run(
        model, train_input, val, seed=seed, epochs=epochs, steps_per_loop=steps_per_loop, jit_compile=jit_compile,
        batch_splits=batch_splits, workdir=workdir, checkpoint_every_steps=checkpoint_every_steps,
        keep_checkpoints=keep_checkpoints, log_every_steps=log_every_steps, profile_steps=profile_steps,
        max_steps=max_steps, validation_batch_size=val_batch, augment=augment, bn_recompute_batches=bn_recompute_batches,
        input_mode=input_mode, initial_epoch=initial_epoch, validation_freq=validation_freq,
    )
    return run.fit(callbacks=callbacks, verbose=verbose)


def _check_int(name, value, minimum, extra=""):
    """Raises InputError naming `name` unless `value` is an integer >= `minimum` (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise inputs.InputError(f"{name} must be {what}{' ' + extra if extra else ''}, got {value!r}")


def resolve_input_mode(input_mode, train_input, strategy):
    """Returns "device" or "pipeline": how the training batches of `train_input` reach the step.

    "device" (`inputs.DeviceBatches`) needs in-memory arrays and the default strategy (one
    replica); asked for otherwise it raises InputError naming why. "auto" picks "device" for
    arrays under the default strategy when the set fits: on a GPU when it takes at most
    `DEVICE_MEMORY_SHARE` of the memory TensorFlow reports for it (`runtime.accelerator_memory_bytes`;
    `FALLBACK_DEVICE_BYTES` when it reports none), on a CPU always (the arrays are in host memory
    already, and there the in-loop gather measured no slower than tf.data: docs/performance.md).
    Anything else picks "pipeline"
    (tf.data): a Dataset (a streamed one too) is used as given.
    """
    if input_mode not in inputs.INPUT_MODES:
        raise inputs.InputError(f"input_mode must be one of {', '.join(map(repr, inputs.INPUT_MODES))}, got {input_mode!r}")
    if input_mode == "pipeline":
        return "pipeline"
    why_not = None
    if train_input.arrays is None:
        why_not = "the training input is a tf.data.Dataset, which is used as given (pass arrays)"
    elif not distribute.is_default(strategy):
        why_not = (f"it runs under the default strategy only (one replica), and the model's is "
                   f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)")
    if why_not:
        if input_mode == "device":
            raise inputs.InputError(f"input_mode='device' needs in-memory arrays on one device: {why_not}")
        return "pipeline"
    if input_mode == "device" or not runtime.accelerator_present():
        return "device"
    size = inputs.array_bytes(train_input.arrays)
    limit = DEVICE_MEMORY_SHARE * (runtime.accelerator_memory_bytes() or FALLBACK_DEVICE_BYTES)
    if size > limit:
        logging.info("input_mode auto: the %.0f MiB training set is more than %.0f MiB of the device's memory: "
                     "feeding it through tf.data", size / 2**20, limit / 2**20)
        return "pipeline"
    return "device"


def _check_images(spec, augment):
    """Raises InputError unless `spec` (the training inputs' element spec) is one batch of [B, H, W, C] images."""
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank != 4:
        raise inputs.InputError(f"augment={augment!r} needs x to be one array of images [N, H, W, C], got {spec}")


def _resolve_seed(seed, workdir):
    """Returns the data-order seed: `seed`, else the one a workdir's run recorded, else one drawn from numpy's
    global generator (which `keras.utils.set_random_seed` seeds)."""
    if seed is not None:
        return int(seed)
    if workdir:
        path = os.path.join(workdir, RUN_FILE)
        if os.path.exists(path):
            saved = checkpointing.read_json(path, "run identity")
            # Not a run identity (someone else's file): `Run.restore` names it.
            if checkpointing.run_identity_problem(saved) is None and isinstance(saved["seed"], int) \
                    and not isinstance(saved["seed"], bool):
                return saved["seed"]
    # numpy's global generator, so keras.utils.set_random_seed makes a shuffled run reproducible.
    return int(np.random.randint(0, 2**62))


def _build(model, spec):
    """Builds the model, its compiled loss and metrics symbolically from a batch spec (as Keras fit
    does before its first step), under the model's strategy."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=spec)  # pylint: disable=protected-access


def _train(run, saved_history, callbacks, verbose):
    model = run.model
    if verbose == "auto":
        verbose = 1 if run.replicas == 1 else 2
    history_cb = keras.callbacks.History()
    callback_list = _CallbackList(
        list(callbacks or []) + [history_cb], add_history=False, add_progbar=bool(verbose) and run.is_chief,
        model=model, verbose=verbose, epochs=run.epochs, steps=run.input.steps_per_epoch,
    )
    # A callback with batch hooks gets them every model.steps_per_execution steps, as in model.fit.
    if any(_has_batch_hooks(cb) for cb in callbacks or []):
        run.batch_hook_every = max(1, int(getattr(model, "steps_per_execution", 1) or 1))
    # A callback with test batch hooks gets them during validation, per `steps_per_execution` batches.
    test_hooks = callback_list if any(_has_test_batch_hooks(cb) for cb in callbacks or []) else None
    model.stop_training = False
    if run.schedule_free is not None:
        run.schedule_free.swap_to_y()  # a model left at x by an earlier fit trains on from y
    workdir = run.workdir
    summaries = _Summaries(workdir if run.is_chief else None, run.state)
    steps_per_epoch = run.input.steps_per_epoch
    step = run.step
    epoch = int(run.state.epoch.numpy())
    if steps_per_epoch is not None and run.input.dataset is None:
        epoch = step // steps_per_epoch
    callback_list.on_train_begin()
    restored_epoch = getattr(model, "_initial_epoch", None)  # set by BackupAndRestore, read as model.fit reads it
    if restored_epoch and not workdir and steps_per_epoch is not None and run.input.dataset is None:
        # The callback restored the weights and optimizer of that epoch's end: train on from there.
        run.step_offset = int(run.step_counter.numpy()) - restored_epoch * steps_per_epoch
        step, epoch = run.step, restored_epoch
        run.state.epoch.assign(epoch)
        run.state.epoch_start.assign(step)
    history_cb.history = {k: list(v) for k, v in saved_history.items() if k != "epoch_seconds"}
    history_cb.epoch = list(range(len(next(iter(history_cb.history.values()), []))))
    model.history = history_cb
    epoch_seconds = list(saved_history.get("epoch_seconds", []))
    logging.info(
        "fit: %s steps (%s per epoch), jit_compile=%s, batch_splits=%d, input_mode=%s, workdir %s",
        run.total_steps, steps_per_epoch, run.jit_compile, run.splits, run.input_mode, workdir,
    )
    stopped = bool(workdir and run.stopped_record.text)
    if stopped or (run.total_steps is not None and step >= run.total_steps):
        if stopped:
            print(f"{workdir}: the run was stopped by a callback at step {step} (model.stop_training after epoch "
                  f"{epoch}) and is complete; nothing to do", flush=True)
        else:
            print(f"{workdir}: the run is already complete at step {step}; nothing to do", flush=True)
        run.finish_at_average()
        callback_list.on_train_end(_last_logs(history_cb))
        history_cb.epoch_seconds = epoch_seconds
        return history_cb
    if run.profile_steps is not None and step >= run.profile_steps[1]:
        print(f"warning: profile_steps={tuple(run.profile_steps)} lies before the resumed step {step}: "
              "no trace is written", flush=True)
    logs = {}
    # Mid-epoch resume of an array run: the iterator is rebuilt at the restored step.
    resuming_mid_epoch = step > 0 and (
        (steps_per_epoch is not None and step % steps_per_epoch != 0 and run.input.dataset is None)
        or (run.input.dataset is not None and step != int(run.state.epoch_start.numpy()))
    )
    # A Dataset's iterator: the restored one mid-epoch; at an epoch boundary the epoch below makes the
    # next one. Each iterator made draws the next shuffle seed of a `reshuffle_each_iteration`
    # dataset (the restore puts that seed generator back), so making one too many here would give
    # the resumed epoch another order than an uninterrupted run's.
    if run.input.dataset is None:
        run.iterator = run.iterator_at(step)
    elif run.iterator is None or step == 0:
        run.iterator = run.iterator_at(step)
    while epoch < run.epochs:
        if run.total_steps is not None and step >= run.total_steps:
            break
        if run.max_steps and step >= run.max_steps:
            break
        epoch_start = step - (step % steps_per_epoch) if (steps_per_epoch and run.input.dataset is None) else (
            int(run.state.epoch_start.numpy()) if resuming_mid_epoch else step)
        epoch_end = None
        if steps_per_epoch is not None:
            epoch_end = epoch_start + steps_per_epoch
            if run.total_steps is not None:
                epoch_end = min(epoch_end, run.total_steps)
        if not resuming_mid_epoch:
            run.state.loss_sum.assign(0.0)
            run.state.count.assign(0.0)
            run.state.epoch.assign(epoch)
            run.state.epoch_start.assign(step)
            model.reset_metrics()
            if run.input.dataset is not None and step > 0:
                run.iterator = run.iterator_at(step)
            summaries.start_window(run.metrics)
        resuming_mid_epoch = False
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        exhausted = False
        # (max_steps also bounds an epoch of unknown length, whose epoch_end is None.)
        while not exhausted and (epoch_end is None or step < epoch_end) and not (run.max_steps and step >= run.max_steps):
            end = run.chunk_end(step, epoch_end)
            if run.profile_steps is not None and run.profile_steps[0] <= step < run.profile_steps[1]:
                run.start_profiler()
            callback_list.on_train_batch_begin(step - epoch_start)
            with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                window = run.run_steps(end - step)
            ran = int(window["steps"])
            if not bool(window["finite"]):
                _diverged(run, summaries, window, step)
            exhausted = bool(window["exhausted"])
            step += ran
            if run.profile_steps is not None and step >= run.profile_steps[1]:
                run.stop_profiler()
            if ran == 0:
                break
            summaries.add(window)
            logs = _train_logs(run)
            if step % run.log_every_steps == 0 or step == epoch_end or exhausted:
                summaries.write_train(step, logs, run.metrics)
            callback_list.on_train_batch_end(step - epoch_start - 1, logs)
            if run.checkpoint_every_steps > 0 and step % run.checkpoint_every_steps == 0 and step != epoch_end:
                summaries.flush()
                run.save()
            if model.stop_training:
                break
            # A signal at the epoch's last step is handled after the epoch end below (validation, the
            # history entry, then the checkpoint): saved here, the checkpoint would sit at the epoch's
            # end without counting the epoch, and the resume would skip its validation and history.
            if not (exhausted or step == epoch_end):
                run.stop_if_signalled(summaries)
        # Stopped by max_steps inside the epoch: the epoch still ends here (validation, callbacks,
        # a history entry, as the tutorial's smoke runs expect), but its counter does not move on,
        # so a later call with a larger cap resumes mid-epoch and recomputes this entry.
        cut_short = bool(run.max_steps and step >= run.max_steps and not exhausted and not model.stop_training
                         and (steps_per_epoch is None or step < epoch_start + steps_per_epoch))
        if step == epoch_start:
            break  # a Dataset with nothing for this epoch
        # (A resume whose Dataset had nothing left ends the epoch it resumed into: a signal after the
        # last batch of a Dataset of unknown length came before the loop learnt the epoch was over.)
        if steps_per_epoch is None and not model.stop_training and not cut_short:
            steps_per_epoch = step - epoch_start  # a Dataset of unknown length: now it is known
            callback_list.set_params({**callback_list.params, "steps": steps_per_epoch})
        epoch_logs = _train_logs(run)
        if (run.val_arrays is not None or run.val_dataset is not None) and model._should_eval(epoch, run.validation_freq):  # pylint: disable=protected-access
            logging.debug("evaluating at step %d (epoch %d)", step, epoch + 1)  # shown from absl verbosity 1
            callback_list.on_test_begin()
            val_logs, _ = run.validate(test_hooks)
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            summaries.write_eval(step, val_logs)
        seconds = time.perf_counter() - started
        callback_list.on_epoch_end(epoch, epoch_logs)
        epoch_seconds.append(seconds)
        logs = epoch_logs
        if not cut_short:
            epoch += 1
            run.state.epoch.assign(epoch)
            run.state.epoch_start.assign(step)
        # The events first, then the checkpoint (which carries the history), then history.json,
        # its copy: a write that fails leaves a checkpoint whose resume rewrites all that follows.
        summaries.flush()
        record = {**history_cb.history, "epoch_seconds": epoch_seconds}
        run.history_record.text = json.dumps(record)
        if model.stop_training and workdir:
            run.stopped_record.text = json.dumps({"step": step, "epoch": epoch})
        saved = run.save()
        if workdir and run.is_chief:
            checkpointing.save_json(os.path.join(workdir, "history.json"), record, "the history", saved)
        run.stop_if_signalled(summaries)
        if model.stop_training or cut_short:
            break
    summaries.flush()
    run.finish_at_average()
    callback_list.on_train_end(logs)
    history_cb.epoch_seconds = epoch_seconds
    return history_cb


def _diverged(run, summaries, window, step):
    """Raises TrainingDiverged for the loop window that began at `step` and was not finite, naming its
    last step, what was non-finite and the last checkpoint (none was saved from the window)."""
    last_step = step + int(window["steps"]) - 1
    lr = float(window["lr"])
    if not np.isfinite(lr):
        what = f"non-finite learning rate {lr:.6g} at step {last_step}"
    elif not run.non_finite_weights():
        what = f"non-finite loss at step {last_step} (learning rate {lr:.6g})"
    else:  # the step checks the weights after its update: a non-finite gradient or update
        what = f"non-finite weights after step {last_step} (learning rate {lr:.6g})"
    summaries.flush()  # the points up to the divergence, to see it in TensorBoard
    last = run.checkpoints.manager.latest_checkpoint if run.checkpoints is not None else None
    raise TrainingDiverged(f"{what}; stopped without saving it." + (f" The last good checkpoint is {last}" if last else ""))


def _train_logs(run):
    """The train logs so far in the epoch: `loss`, the compiled metrics, `lr` (and `momentum`)."""
    logs = keras_logs(run.model)
    logs["lr"] = float(run.state.lr.numpy())
    if run.steps.momentum_schedule is not None:
        logs["momentum"] = float(run.state.momentum.numpy())
    return logs


def _implements(callback, hooks):
    """True when `callback` overrides one of the Callback methods named in `hooks` (Keras's own History
    and progress bar aside)."""
    if isinstance(callback, (keras.callbacks.History, keras.callbacks.ProgbarLogger)):
        return False
    base = keras.callbacks.Callback
    return any(getattr(type(callback), name) is not getattr(base, name) for name in hooks)


def _has_batch_hooks(callback):
    """True when `callback` implements a train batch hook."""
    return _implements(callback, ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"))


# The log keys clr_loop adds to Keras's (the History has them); TensorBoard callbacks get Keras's only.
OWN_LOG_KEYS = ("lr", "momentum")


class _CallbackList(keras.callbacks.CallbackList):
    """Keras's CallbackList, except that a `keras.callbacks.TensorBoard` gets the logs `model.fit`
    gives it, without clr_loop's `OWN_LOG_KEYS`, so its folders hold what they hold under
    `model.fit` (clr_loop writes its own scalars only under fit's workdir). The loop calls the batch
    hooks synchronously; the logs are floats already."""

    @staticmethod
    def _logs_for(callback, logs):
        if logs and isinstance(callback, keras.callbacks.TensorBoard):
            return {k: v for k, v in logs.items() if k not in OWN_LOG_KEYS}
        return logs

    def on_train_batch_end(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs=self._logs_for(callback, logs))

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, self._logs_for(callback, logs))


def _has_test_batch_hooks(callback):
    """True when `callback` implements a test batch hook."""
    return _implements(callback, ("on_test_batch_begin", "on_test_batch_end"))


def _last_logs(history):
    return {k: v[-1] for k, v in history.history.items() if v}

