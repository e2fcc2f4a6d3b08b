"""The compiled training and evaluation loops, checkpoints, history and TensorBoard summaries.

Shape (after orbit and flax): a pure compiled step `train_step(images, labels) -> metrics` evaluates
the optimizer's schedule on `optimizer.iterations` inside the step; an outer `tf.function` runs
`n` steps in a `tf.range` loop fed from the tf.data iterator; Python runs once per loop to log,
summarise, checkpoint and drive the profiler.
"""

import os
import signal
import sys
import time

import keras
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from clr_loop import checkpointing
from clr_loop import config as config_lib
from clr_loop import data as data_lib
from clr_loop import distribute
from clr_loop import model as model_lib
from clr_loop import optimizers as optimizers_lib

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds")

# What `tf.summary.scalar` tags a scalar with for TensorBoard's scalars plugin (an empty
# ScalarPluginData, version 0). `tf.summary.scalar` itself lives in TensorBoard's package, whose
# first use imports 250 modules (0.06 s of a run).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def write_scalar(name, value):
    """Writes a float scalar summary to the default writer at its default step, as `tf.summary.scalar`
    would (same tag, tensor and metadata, so TensorBoard shows it as a scalar)."""
    return tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


class TrainingDiverged(RuntimeError):
    """Raised when a step produced a non-finite loss or gradient; the message names the step and rate."""


def resolve_jit_compile(choice):
    """Returns True/False for a `--jit_compile` value; "auto" means XLA only where a GPU or TPU is present.

    On CPU, XLA's convolutions are slower than TensorFlow's oneDNN kernels for this model (see
    docs/performance.md), which is also why Keras's own `jit_compile="auto"` turns XLA off there.
    """
    if choice == "auto":
        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return choice == "true"


class WeightsError(ValueError):
    """Raised when an initial-weights file cannot be read or does not fit the model; names the file."""


def save_initial_weights(model, path):
    """Writes `model`'s weights to `path` (a Keras `.weights.h5` file) atomically; returns `path`."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save_weights(tmp)
    os.replace(tmp, path)
    logging.info("initial weights written to %s", path)
    return path


def load_initial_weights(model, path):
    """Loads `model`'s weights from a `.weights.h5` file; raises WeightsError naming the file on failure."""
    if not os.path.isfile(path):
        raise WeightsError(f"--init_weights file {path} does not exist")
    try:
        model.load_weights(path)
    except Exception as e:  # h5py, Keras shape checks and OS errors all mean "unusable file"
        raise WeightsError(f"--init_weights file {path} cannot be loaded into the model: {type(e).__name__}: {e}") from e
    logging.info("initial weights loaded from %s", path)


def make_optimizer(config, plan):
    """Returns the SGD optimizer whose learning rate is `config`'s schedule (in steps).

    With `config.uses_cycle_momentum` it is a `CyclicalMomentumSGD` whose momentum follows the same
    schedule, from `max_momentum` at the low rate to `base_momentum` at the peak; otherwise Keras
    SGD with the constant `config.momentum`.
    """
    schedule = config_lib.make_schedule(config, plan)
    if config.uses_cycle_momentum:
        momentum = optimizers_lib.CyclicalMomentum(schedule, config.base_momentum, config.max_momentum)
        return optimizers_lib.CyclicalMomentumSGD(learning_rate=schedule, momentum=momentum)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)


def make_train_step(model, optimizer, jit_compile, global_batch_size=None, fuse_update=True, splits=1):
    """Returns the step `(images, labels) -> metrics`, a pure function of state and batch.

    The metrics are sums over the batch's examples, not means: `loss_sum` (summed per-example
    cross-entropy), `correct`, `count`; `lr`, the rate this step used (the schedule at
    `optimizer.iterations` before the update); and `finite`, False when the loss or any gradient
    is NaN or Inf. With `fuse_update` the whole step (schedule, forward, gradients, SGD update)
    is one `tf.function` compiled with `jit_compile`. Under a multi-replica `tf.distribute`
    strategy pass `fuse_update=False`: the update all-reduces the gradients, which cannot
    happen inside a nested `tf.function`, so only the forward and backward pass are compiled
    and the update follows in the replica context. `global_batch_size` makes the loss
    `sum / global_batch_size`, so the all-reduced (summed) gradients equal the single-device
    mean's. With `splits` > 1 (one replica only) the batch is computed as that many equal parts,
    each with its own forward and backward pass, whose gradients add up to the batch's (to float
    rounding); with one thread per op (`configure_threads`) the parts run side by side, one core
    each, which on a small CPU is faster than splitting every op across the cores
    (docs/performance.md). Dropout then draws one mask per part.
    """

    def gradients(images, labels, denominator=None):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            if denominator is not None:
                loss = tf.reduce_sum(per_example) / denominator
            elif global_batch_size is None:
                loss = tf.reduce_mean(per_example)
            else:
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        finite = tf.math.is_finite(loss)
        for grad in grads:
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(grad)))
        metrics = {
            "loss_sum": tf.reduce_sum(per_example),
            "correct": _count_correct(probs, labels),
            "count": tf.cast(tf.shape(labels)[0], tf.float32),
            "finite": finite,
        }
        return grads, metrics

    def split_gradients(images, labels):
        # Each part's loss is its sum over the whole batch's size, so the parts' gradients add up
        # to the batch's. The parts are independent subgraphs, which the executor runs side by side.
        denominator = tf.cast(tf.shape(labels)[0], tf.float32)
        parts = [gradients(x, y, denominator) for x, y in zip(tf.split(images, splits), tf.split(labels, splits))]
        grads = [tf.add_n(list(part_grads)) for part_grads in zip(*(grads for grads, _ in parts))]
        metrics = {key: tf.add_n([m[key] for _, m in parts]) for key in ("loss_sum", "correct", "count")}
        metrics["finite"] = tf.reduce_all(tf.stack([m["finite"] for _, m in parts]))
        return grads, metrics

    def step(images, labels, compute):
        lr = optimizer.learning_rate
        grads, metrics = compute(images, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {**metrics, "lr": tf.cast(lr, tf.float32)}

    compute = split_gradients if splits > 1 else gradients
    if fuse_update:
        return tf.function(lambda images, labels: step(images, labels, compute), jit_compile=jit_compile, autograph=False)
    compiled_gradients = tf.function(compute, jit_compile=jit_compile, autograph=False)
    return lambda images, labels: step(images, labels, compiled_gradients)


def _count_correct(probs, labels):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels), tf.float32))


def make_eval_step(model, jit_compile, splits=1):
    """Returns the compiled eval step `(images, labels) -> (loss_sum, correct, count)`, sums over the batch.

    With `splits` > 1 the batch is computed as that many parts side by side (as in
    `make_train_step`; the first parts are one example larger when `splits` does not divide it,
    and a batch of fewer than `splits` examples is computed whole).
    """

    def sums(images, labels):
        probs = model(images, training=False)
        loss_sum = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, probs))
        return loss_sum, _count_correct(probs, labels)

    def split_sums(images, labels, count):
        sizes = [(count + splits - 1 - i) // splits for i in range(splits)]
        parts = [sums(x, y) for x, y in zip(tf.split(images, sizes), tf.split(labels, sizes))]
        return tuple(tf.add_n(list(values)) for values in zip(*parts))

    @tf.function(jit_compile=jit_compile, autograph=False)
    def eval_step(images, labels):
        count = tf.shape(labels)[0]
        if splits == 1:
            loss_sum, correct = sums(images, labels)
        else:
            # A last batch smaller than `splits` would leave a part empty, which the
            # convolutions reject: it is computed whole.
            loss_sum, correct = tf.cond(
                count >= splits, lambda: split_sums(images, labels, count), lambda: sums(images, labels)
            )
        return loss_sum, correct, tf.cast(count, tf.float32)

    return eval_step


def resolve_batch_splits(config, replicas=1):
    """Returns how many parts each training and eval batch is computed in (see `make_train_step`).

    `config.batch_splits` when positive. For 0 (automatic): `config_lib.auto_batch_splits` for
    the CPU's cores on a one-replica run without a GPU or TPU and without XLA (an XLA cluster
    runs the parts one after the other, so splitting only shrinks its ops); else 1. Reads only
    the physical devices, so it can run before TensorFlow starts.
    """
    if config.batch_splits:
        return config.batch_splits
    if replicas > 1 or config.strategy != "default" or config.virtual_cpus:
        return 1
    if config.jit_compile == "true":
        return 1
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return 1
    return config_lib.auto_batch_splits(config.batch_size)


def thread_pool_sizes(splits, cores=None):
    """Returns the (inter-op, intra-op) pool sizes for `splits` batch parts side by side: `splits`
    inter-op threads and the cores shared among them; (0, 0), TensorFlow's defaults, for one part."""
    if splits < 2:
        return (0, 0)
    return (splits, max(1, (cores or config_lib.cpu_cores()) // splits))


def configure_threads(splits):
    """Sets TensorFlow's thread pools to `thread_pool_sizes(splits)`. Returns True when set; False
    (changing nothing) for one part, or when TensorFlow has already run an op and its pools are fixed."""
    if splits < 2:
        return False
    inter_op, intra_op = thread_pool_sizes(splits)
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    except RuntimeError:
        logging.warning("TensorFlow has started: its thread pools stay as they are, so the %d batch parts share them", splits)
        return False
    return True


def make_evaluate(eval_step, strategy=None):
    """Returns `evaluate(dataset) -> {"val_loss", "val_accuracy", "count"}` over every example of `dataset`.

    The loop runs in one `tf.function`; loss and accuracy are per-example sums divided by the
    example count, so a last partial batch weighs exactly as much as its examples. With a
    strategy, `dataset` is distributed, each replica evaluates its examples and the sums are
    added across replicas and workers.
    """
    strategy = strategy or tf.distribute.get_strategy()

    # No autograph anywhere here (nor in the train loop): its source transformations cost a
    # third of a second of start-up, and `reduce` is the loop it would have written.
    @tf.autograph.experimental.do_not_convert
    def add_batch(totals, batch):
        images, labels = batch
        sums = strategy.run(lambda x, y: tuple(tf.cast(v, tf.float64) for v in eval_step(x, y)), args=(images, labels))
        return tuple(t + _sum_replicas(strategy, s) for t, s in zip(totals, sums))

    @tf.function(autograph=False)
    def run(dataset):
        totals = (tf.constant(0.0, tf.float64), tf.constant(0.0, tf.float64), tf.constant(0.0, tf.float64))
        return dataset.reduce(totals, add_batch)

    def evaluate(dataset):
        loss_sum, correct, count = (float(v) for v in run(dataset))
        return {"val_loss": loss_sum / count, "val_accuracy": correct / count, "count": int(count)}

    return evaluate


class EpochSums:
    """tf.Variables holding the current epoch's running train sums (checkpointed with the model).

    `loss_sum` and `correct` are sums over examples (float64), `count` the number of examples, and
    `lr` the rate the latest step used.
    """

    def __init__(self):
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self.correct = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_correct")
        self.count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_count")
        self.lr = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="last_lr")

    def reset(self):
        """Zeroes the sums at the start of an epoch."""
        for var in (self.loss_sum, self.correct, self.count):
            var.assign(0.0)

    def trackables(self):
        """Returns a dict of the variables, for `tf.train.Checkpoint`."""
        return {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count, "lr": self.lr}

    def means(self):
        """Returns {"loss", "accuracy"} per example over the epoch so far, and the latest "lr"."""
        count = max(float(self.count.numpy()), 1.0)
        return {
            "loss": float(self.loss_sum.numpy()) / count,
            "accuracy": float(self.correct.numpy()) / count,
            "lr": float(self.lr.numpy()),
        }


def _sum_replicas(strategy, value):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)


def _as_sums(metrics):
    """Per replica: the step's metrics as float64 sums (and `nonfinite` 0/1), ready to add up."""
    sums = {k: tf.cast(metrics[k], tf.float64) for k in ("loss_sum", "correct", "count")}
    sums["nonfinite"] = tf.cast(tf.logical_not(metrics["finite"]), tf.float64)
    sums["lr"] = metrics["lr"]
    return sums


def make_train_loop(train_step, sums, strategy=None):
    """Returns `train_loop(iterator, num_steps) -> window metrics`, running that many steps in one tf.function.

    Batches come from `next(iterator)` inside the graph, so Python runs once per call, not once
    per step. Every step's sums are added to the epoch's `EpochSums` one step at a time, so the
    totals do not depend on how the steps were split into calls (a resumed run gets the same
    bits). Returns this call's own sums (`loss_sum`, `correct`, `count`), the rate of its last
    step (`lr`), the `steps` actually run, and `finite`: a non-finite step ends the loop early
    with `finite` False and `lr` that step's rate. With a strategy, every step runs on all
    replicas (`strategy.run`) and the sums are added across them; the schedule still advances
    once per global step, since the optimizer updates once per all-reduced step.
    """
    strategy = strategy or tf.distribute.get_strategy()

    def body(iterator, steps, finite, loss_sum, correct, count, lr):
        del finite  # the loop only continues while it is True
        images, labels = next(iterator)
        per_replica = strategy.run(lambda x, y: _as_sums(train_step(x, y)), args=(images, labels))
        step_loss = _sum_replicas(strategy, per_replica["loss_sum"])
        step_correct = _sum_replicas(strategy, per_replica["correct"])
        step_count = _sum_replicas(strategy, per_replica["count"])
        sums.loss_sum.assign_add(step_loss)
        sums.correct.assign_add(step_correct)
        sums.count.assign_add(step_count)
        # Every replica evaluates the schedule at the same step; any copy is the rate.
        lr = strategy.experimental_local_results(per_replica["lr"])[0]
        finite = _sum_replicas(strategy, per_replica["nonfinite"]) == 0.0
        return (steps + 1, finite, loss_sum + step_loss, correct + step_correct, count + step_count, lr)

    # An explicit while loop, not autograph's `for _ in tf.range(...)`: the same graph, without
    # the source transformation at start-up (see make_evaluate). It stops after `num_steps` or
    # after the first non-finite step, whichever comes first.
    @tf.function(autograph=False)
    def train_loop(iterator, num_steps):
        zero = tf.constant(0.0, tf.float64)
        initial = (tf.constant(0, tf.int32), tf.constant(True), zero, zero, zero, tf.constant(0.0, tf.float32))
        steps, finite, loss_sum, correct, count, lr = tf.while_loop(
            lambda steps, finite, *_: tf.logical_and(steps < num_steps, finite),
            lambda *state: body(iterator, *state),
            initial,
        )
        sums.lr.assign(lr)
        return {"loss_sum": loss_sum, "correct": correct, "count": count, "lr": lr, "steps": steps, "finite": finite}

    return train_loop


def _chunk_ends(step, config, plan, epoch_end):
    """Returns the next step at which Python must regain control (loop length boundary)."""
    ends = [step + config.steps_per_loop, epoch_end, plan.total_steps]
    ends.append((step // config.log_every_steps + 1) * config.log_every_steps)
    if config.profile_steps is not None:
        start, stop = config.profile_steps
        if step < start:
            ends.append(start)
        elif step < stop:
            ends.append(step + 1)
    if config.checkpoint_every_steps > 0:
        ends.append((step // config.checkpoint_every_steps + 1) * config.checkpoint_every_steps)
    return min(e for e in ends if e > step)


class _Progress:
    """Keras-style progress: a bar during the epoch (on a terminal), then one epoch line."""

    def __init__(self, epoch, epochs, steps_per_epoch):
        self.epoch, self.epochs, self.target = epoch, epochs, steps_per_epoch
        self.bar = keras.utils.Progbar(steps_per_epoch) if sys.stdout.isatty() else None
        self.start = time.perf_counter()

    def update(self, done, metrics):
        if self.bar is not None and done < self.target:
            self.bar.update(done, values=[(k, v) for k, v in metrics.items()])

    def finish(self, done, steps, metrics):
        elapsed = time.perf_counter() - self.start
        if self.bar is not None:
            sys.stdout.write("\n")
        per_step = 1000.0 * elapsed / max(steps, 1)
        parts = " - ".join(f"{k}: {metrics[k]:.4g}" if k == "lr" else f"{k}: {metrics[k]:.4f}" for k in metrics)
        print(
            f"Epoch {self.epoch + 1}/{self.epochs} {done}/{self.target} - {elapsed:.0f}s {per_step:.0f}ms/step - {parts}",
            flush=True,
        )
        return elapsed


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
    return [g.state for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", [])]


class Trainer:
    """Owns one run's model, optimizer, input, compiled loops and outputs in `config.workdir`.

    Build it with a Config and loaded data (`clr_loop.data.FashionMnist`), then call `train()`,
    which resumes from the workdir's last checkpoint when there is one and returns the history
    dict (per-epoch lists under `HISTORY_KEYS`).
    """

    def __init__(self, config, data, *, model=None, strategy=None):
        self.config = config
        self.data = data
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise ValueError(
                f"--batch_size={config.batch_size} (the global batch) must be divisible by the "
                f"{self.replicas} replicas"
            )
        self.is_chief = distribute.is_chief(self.strategy)
        self.plan = config_lib.plan_steps(config, data.train.num_examples)
        self.jit_compile = resolve_jit_compile(config.jit_compile)
        if self.jit_compile and not distribute.xla_allowed(self.strategy):
            logging.warning(
                "XLA is off: TensorFlow's distribution cannot compile across %d CPU replicas", self.replicas
            )
            self.jit_compile = False
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = model if model is not None else model_lib.create_model(seed=config.seed)
            if config.init_weights:
                load_initial_weights(self.model, config.init_weights)
            if config.save_init and self.is_chief:
                save_initial_weights(self.model, config.save_init)
            self.optimizer = make_optimizer(config, self.plan)
            self.optimizer.build(self.model.trainable_variables)
            self.sums = EpochSums()
        self.eval_ds = self.strategy.distribute_datasets_from_function(self._eval_dataset_fn)
        self.iterator = self._iterator_at(0)
        self.splits = resolve_batch_splits(config, self.replicas)
        self.train_step = make_train_step(
            self.model, self.optimizer, self.jit_compile, global_batch_size=config.batch_size,
            fuse_update=self.replicas == 1, splits=self.splits,
        )
        self.train_loop = make_train_loop(self.train_step, self.sums, self.strategy)
        self.evaluate = make_evaluate(make_eval_step(self.model, self.jit_compile, self.splits), self.strategy)
        self.history = {key: [] for key in HISTORY_KEYS}
        self.checkpoints = None  # made by train(), once the workdir is checked
        self._signal = None

    def _iterator_at(self, step):
        """Returns a train iterator positioned at `step` (the data order is a function of the step).

        Each input pipeline (one per worker) yields its local replicas' slices of every global
        batch, so all replicas together train on exactly the single-device batches.
        """
        total = self.replicas

        def dataset_fn(context):
            local = total // context.num_input_pipelines
            return data_lib.train_dataset(
                self.data.train, self.config.batch_size, self.config.seed, start_step=step,
                replicas=(context.input_pipeline_id * local, local, total),
            )

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _eval_dataset_fn(self, context):
        per_replica = -(-self.config.eval_batch_size // self.replicas)
        return data_lib.eval_dataset(
            self.data.test, per_replica, shard=(context.input_pipeline_id, context.num_input_pipelines)
        )

    @property
    def step(self):
        """The number of optimizer steps taken so far (int)."""
        return int(self.optimizer.iterations.numpy())

    def run_steps(self, num_steps):
        """Runs `num_steps` training steps in one compiled call; returns the loop's window metrics."""
        return self.train_loop(self.iterator, tf.constant(num_steps, tf.int32))

    def _paths(self):
        workdir = self.config.workdir
        return {
            "history": os.path.join(workdir, "history.json"),
            "config": os.path.join(workdir, "config.json"),
            "train_logs": os.path.join(workdir, "train"),
            "eval_logs": os.path.join(workdir, "eval"),
            "profile": workdir,
        }

    def _prepare_workdir(self):
        """Checks the workdir and resumes from it; returns True when the run is already complete.

        Raises WorkdirError for an unwritable workdir or one holding an incompatible run, and
        CheckpointError when a run's checkpoints exist but none can be restored.
        """
        config, paths = self.config, self._paths()
        trackables = {
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch_sums": self.sums.trackables(),
            "rng": seed_generator_states(self.model),
        }
        if not self.is_chief:
            # Every worker takes part in saving (the variables are mirrored), but only the chief's
            # files are kept; the others restore from the chief's and save into a scratch folder.
            scratch = os.path.join(config.workdir, f".worker-{distribute.worker_id(self.strategy)}")
            checkpointing.check_writable(scratch)
            self.checkpoints = checkpointing.RunCheckpoints(
                scratch, trackables, self.optimizer.iterations, 1,
                restore_from=os.path.join(config.workdir, "ckpt"),
            )
            self.checkpoints.restore_latest()
            if self.step:
                self.iterator = self._iterator_at(self.step)
            return self.step >= self.plan.total_steps
        checkpointing.check_writable(config.workdir)
        if config.overwrite:
            checkpointing.clear_run_outputs(config.workdir)
        self.checkpoints = checkpointing.RunCheckpoints(
            config.workdir, trackables, self.optimizer.iterations, config.keep_checkpoints
        )
        current = config.to_json_dict()
        if os.path.exists(paths["config"]):
            saved = checkpointing.read_json(paths["config"], "run configuration")
            differing = checkpointing.config_differences(saved, current)
            if differing:
                raise checkpointing.WorkdirError(
                    f"{config.workdir} holds a run with a different configuration ("
                    + checkpointing.describe_differences(saved, current, differing)
                    + "). Use another --workdir, or --overwrite to start over."
                )
        restored = self.checkpoints.restore_latest()
        if restored is None and os.path.exists(paths["history"]):
            raise checkpointing.WorkdirError(
                f"{paths['history']} exists but {self.checkpoints.directory} holds no checkpoint to resume "
                "from; refusing to restart from scratch over it. Use --overwrite to start over."
            )
        checkpointing.write_json_atomic(paths["config"], {**current, "resolved": _plan_dict(self.plan, self.jit_compile, self.splits)})
        if restored is None:
            return False
        step = self.step
        history = checkpointing.read_json(paths["history"], "history") if os.path.exists(paths["history"]) else {}
        if step >= self.plan.total_steps and history:
            self.history = history
            return True
        # Keep the epochs completed before the checkpoint; later ones are recomputed.
        done = step // self.plan.steps_per_epoch
        self.history = {key: list(history.get(key, []))[:done] for key in HISTORY_KEYS}
        for sub in ("train_logs", "eval_logs"):
            checkpointing.truncate_events(paths[sub], step)
        self.iterator = self._iterator_at(step)
        logging.info("resuming from %s at step %d (epoch %d)", restored, step, done + 1)
        print(f"Resuming from {restored} at step {step}", flush=True)
        return False

    def _on_signal(self, signum, frame):
        del frame
        self._signal = signum

    def train(self):
        """Trains to `plan.total_steps`, resuming from the workdir's checkpoint; returns the history dict.

        Checkpoints every `checkpoint_every_steps` steps (0: at each epoch end) and at the end.
        Raises TrainingDiverged when a step is non-finite (the last good checkpoint is kept),
        Interrupted after SIGTERM/SIGINT (once the state is saved), and WorkdirError or
        CheckpointError for an unusable workdir.
        """
        if self._prepare_workdir():
            print(f"{self.config.workdir}: the run is already complete at step {self.step}; nothing to do", flush=True)
            return self.history
        handlers = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                handlers[signum] = signal.signal(signum, self._on_signal)
        except ValueError:
            handlers = {}  # not the main thread: the caller owns signal handling
        try:
            return self._train()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _train(self):
        config, plan = self.config, self.plan
        paths = self._paths()
        if self.is_chief:
            train_writer = tf.summary.create_file_writer(paths["train_logs"])
            eval_writer = tf.summary.create_file_writer(paths["eval_logs"])
        else:
            train_writer = eval_writer = tf.summary.create_noop_writer()
        logging.info(
            "training %d steps (%d per epoch, step_size %s), jit_compile=%s, batch_splits=%d, workdir %s",
            plan.total_steps, plan.steps_per_epoch, plan.step_size, self.jit_compile, self.splits, config.workdir,
        )
        epochs = -(-plan.total_steps // plan.steps_per_epoch)
        step = self.step
        profiling = False
        # Train summaries average over every step since the previous summary, not just the last loop.
        log_sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        while step < plan.total_steps:
            epoch = step // plan.steps_per_epoch
            epoch_start = epoch * plan.steps_per_epoch
            epoch_end = min(epoch_start + plan.steps_per_epoch, plan.total_steps)
            progress = _Progress(epoch, epochs, plan.steps_per_epoch)
            if step == epoch_start:
                self.sums.reset()
            resumed_at = step
            while step < epoch_end:
                end = _chunk_ends(step, config, plan, epoch_end)
                if config.profile_steps is not None and step == config.profile_steps[0]:
                    tf.profiler.experimental.start(paths["profile"])
                    profiling = True
                with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                    window = self.run_steps(end - step)
                ran = int(window["steps"])
                if not bool(window["finite"]):
                    if profiling:
                        tf.profiler.experimental.stop()
                    raise TrainingDiverged(
                        f"non-finite loss or gradient at step {step + ran - 1} (learning rate "
                        f"{float(window['lr']):.6g}); stopped without saving it. The last good checkpoint "
                        f"is {self.checkpoints.manager.latest_checkpoint}"
                    )
                step += ran
                if profiling and step >= config.profile_steps[1]:
                    tf.profiler.experimental.stop()
                    profiling = False
                    logging.info("profiler trace of steps %s written under %s/plugins/profile", config.profile_steps, paths["profile"])
                for key in log_sums:
                    log_sums[key] += float(window[key])
                if step % config.log_every_steps == 0 or step == epoch_end:
                    count = max(log_sums["count"], 1.0)
                    with train_writer.as_default(step=step):
                        write_scalar("loss", log_sums["loss_sum"] / count)
                        write_scalar("accuracy", log_sums["correct"] / count)
                        write_scalar("lr", float(window["lr"]))
                    log_sums = dict.fromkeys(log_sums, 0.0)
                progress.update(step - epoch_start, self.sums.means())
                if config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0 and step < epoch_end:
                    train_writer.flush()
                    self.checkpoints.save()
                if self._signal is not None:
                    self._stop_for_signal(train_writer, eval_writer)
            train_metrics = self.sums.means()
            val = self.evaluate(self.eval_ds)
            metrics = {
                "loss": train_metrics["loss"],
                "accuracy": train_metrics["accuracy"],
                "val_loss": val["val_loss"],
                "val_accuracy": val["val_accuracy"],
                "lr": train_metrics["lr"],
            }
            seconds = progress.finish(step - epoch_start, step - resumed_at, metrics)
            with eval_writer.as_default(step=step):
                write_scalar("loss", metrics["val_loss"])
                write_scalar("accuracy", metrics["val_accuracy"])
            for key, value in metrics.items():
                self.history[key].append(value)
            self.history["epoch_seconds"].append(seconds)
            train_writer.flush()
            eval_writer.flush()
            if self.is_chief:
                checkpointing.write_json_atomic(paths["history"], self.history)
            self.checkpoints.save()
            if self._signal is not None:
                self._stop_for_signal(train_writer, eval_writer)
        train_writer.flush()
        eval_writer.flush()
        return self.history

    def _stop_for_signal(self, *writers):
        for writer in writers:
            writer.flush()
        path = self.checkpoints.save()
        name = signal.Signals(self._signal).name
        raise Interrupted(
            f"received {name} at step {self.step}: checkpoint saved to {path}; re-run the same command to resume",
            self._signal,
        )


def _plan_dict(plan, jit_compile, batch_splits):
    return {
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "step_size": plan.step_size,
        "step_size_down": plan.step_size_down,
        "jit_compile": jit_compile,
        "batch_splits": batch_splits,
    }


def train_and_evaluate(config, data=None, strategy=None):
    """Sets up the distribution, loads the data (unless given), trains and evaluates; returns the history.

    Without a `strategy`, `config.virtual_cpus` and `config.strategy` make one first: a
    multi-worker strategy must exist before TensorFlow runs any op.
    """
    if strategy is None:
        configure_threads(resolve_batch_splits(config))
        if config.virtual_cpus:
            distribute.configure_virtual_cpus(config.virtual_cpus)
        strategy = distribute.make_strategy(config.strategy, config.devices, config.cluster_timeout)
    if data is None:
        data = data_lib.load(tfds_data_dir=config.tfds_data_dir, dataset_dir=config.dataset_dir)
    return Trainer(config, data, strategy=strategy).train()
