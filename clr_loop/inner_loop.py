"""The inner loop: `steps_per_loop` compiled training steps per call, and the compiled evaluation.

As orbit's loop functions (`orbit.utils.create_tf_while_loop_fn`) and Keras's trainers'
`make_train_function`: one `tf.function` runs many of `clr_loop.steps`' train steps in a
`tf.while_loop`, fed from the input's iterator, and adds every step's sums to `EpochState`'s
variables; Python regains control only between calls (`clr_loop.actions` runs there). The eval loop
runs the model's `test_step` over a dataset in one call, or a few batches per call when callbacks
have test batch hooks. Nothing here reads flags, prints, writes files or knows about epochs' ends.
"""

import keras
import numpy as np
import tensorflow as tf


def _sum_replicas(strategy, value):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)


class EpochState:
    """tf.Variables holding the epoch's running train sums and position (checkpointed with the model).

    Attributes:
        loss_sum: float64 sum of the epoch's per-example losses.
        count: float64 number of examples the epoch trained on.
        lr: the latest step's learning rate (float32).
        momentum: the latest step's momentum (float32; 0 without a momentum schedule).
        epoch: the epoch in progress (int64, 0-based).
        epoch_start: the step the epoch in progress began at.
        steps: the steps run (batches trained on): the run's position where a LossScaleOptimizer's
            skipped steps leave `optimizer.iterations` behind it.
        window: the TensorBoard point in progress, [loss sum, example count] since the last point.
        metric_base: each mean-type metric's (total, count) when that point began, flattened.

    Example:
        >>> state = EpochState()
        >>> checkpoint = tf.train.Checkpoint(epoch_state=state.trackables())
    """

    def __init__(self):
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self.count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_count")
        self.lr = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="last_lr")
        self.momentum = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="last_momentum")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.epoch_start = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_start")
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_run")
        # The TensorBoard point in progress (see `actions.Summaries`): the loss and example count since the
        # last point, and each mean-type metric's (total, count) when it began. Checkpointed, so a
        # resumed run writes the points of an uninterrupted one.
        self.window = tf.Variable([0.0, 0.0], dtype=tf.float64, trainable=False, name="summary_window")
        self.metric_base = tf.Variable(
            [], dtype=tf.float64, trainable=False, shape=tf.TensorShape(None), name="summary_metric_base"
        )

    def trackables(self):
        """Returns the variables a checkpoint holds, by key (all but `steps`, which a run adds under
        loss scaling only)."""
        return {
            "loss_sum": self.loss_sum,
            "count": self.count,
            "lr": self.lr,
            "momentum": self.momentum,
            "epoch": self.epoch,
            "epoch_start": self.epoch_start,
            "summary_window": self.window,
            "summary_metric_base": self.metric_base,
        }


def make_train_loop(train_step, state, strategy, until_exhausted=False):
    """Returns `train_loop(iterator, num_steps) -> window`, running up to that many steps in one tf.function.

    Every step's loss sum and count are added to `state` one step at a time, so the totals do not
    depend on how the steps were split into calls (a resumed run gets the same bits). A non-finite
    step (its loss, rate, momentum, or a weight after its update: see `clr_loop.steps`) ends the
    loop early. With a strategy, every step runs on all replicas and the sums are added across them.

    Args:
        train_step: `train_step(*batch) -> {"loss_sum", "count", "finite", "lr"[, "momentum"]}`, one
            replica's step (`clr_loop.steps.Steps.train_step`).
        state: the run's `EpochState`; the loop adds to its sums and sets `lr`, `momentum`, `steps`.
        strategy: the model's `tf.distribute.Strategy`.
        until_exhausted: whether the iterator may end (a finite Dataset): the loop then stops early.

    Returns:
        `train_loop(iterator, num_steps)`, a tf.function returning the call's window, a dict of
        tensors: its own `loss_sum` and `count`, the last step's `lr` and `momentum`, the `steps`
        run, `finite` (False when a step was not finite) and `exhausted` (the iterator ended).

    Example:
        >>> train_loop = make_train_loop(steps.train_step, EpochState(), tf.distribute.get_strategy())
        >>> window = train_loop(iterator, tf.constant(100, tf.int32))
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
        momentum = (
            strategy.experimental_local_results(per_replica["momentum"])[0]
            if "momentum" in per_replica
            else tf.constant(0.0)
        )
        return loss, count, nonfinite, lr, momentum

    def body(iterator, steps, finite, exhausted, loss_sum, count, lr, momentum):
        del finite, exhausted  # the loop only continues while finite and not exhausted

        def advance(batch):
            step_loss, step_count, nonfinite, step_lr, step_momentum = run_step(*batch)
            state.loss_sum.assign_add(step_loss)
            state.count.assign_add(step_count)
            return (
                steps + 1,
                nonfinite == 0.0,
                tf.constant(False),
                loss_sum + step_loss,
                count + step_count,
                step_lr,
                step_momentum,
            )

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
        initial = (
            tf.constant(0, tf.int32),
            tf.constant(True),
            tf.constant(False),
            zero,
            zero,
            tf.constant(0.0, tf.float32),
            tf.constant(0.0, tf.float32),
        )
        steps, finite, exhausted, loss_sum, count, lr, momentum = tf.while_loop(
            lambda steps, finite, exhausted, *_: tf.logical_and(
                steps < num_steps, tf.logical_and(finite, tf.logical_not(exhausted))
            ),
            lambda *loop_state: body(iterator, *loop_state),
            initial,
        )
        ran = steps > 0
        state.lr.assign(tf.where(ran, lr, state.lr))
        state.momentum.assign(tf.where(ran, momentum, state.momentum))
        state.steps.assign_add(tf.cast(steps, tf.int64))
        return {
            "loss_sum": loss_sum,
            "count": count,
            "lr": lr,
            "momentum": momentum,
            "steps": steps,
            "finite": finite,
            "exhausted": exhausted,
        }

    return train_loop


def make_evaluate(eval_step, model, strategy):
    """Returns `evaluate(dataset) -> ({"loss", <metric names>...}, example count)` over every example of `dataset`.

    The loop runs the model's own `test_step` (`eval_step`, see `clr_loop.steps`) on every batch
    in one `tf.function`, after resetting the model's metrics, and reads the logs from their Keras
    state after, as `model.evaluate` does: the loss is Keras's loss tracker, a mean weighted by batch
    size. With a strategy the dataset is distributed, each replica evaluates its examples and the
    counts are added across replicas and workers. A multi-replica run's batches end with a padding
    mask (0 for a padding example: see `inputs.pad_batches`).

    Args:
        eval_step: `eval_step(*batch) -> example count`, one replica's step
            (`clr_loop.steps.Steps.eval_step`).
        model: the compiled Keras model whose metrics the step updates.
        strategy: the model's `tf.distribute.Strategy`.

    Returns:
        `evaluate(dataset, callbacks=None, every=1, num_batches=None)`: with `callbacks` (a
        CallbackList with test batch hooks) it runs `every` batches per compiled call and calls the
        hooks around each call, up to `num_batches` batches (None: until the data ends).

    Example:
        >>> evaluate = make_evaluate(steps.eval_step, model, tf.distribute.get_strategy())
        >>> logs, count = evaluate(val_dataset)
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
    """Returns the model's metrics as Keras's `fit` and `evaluate` log them.

    Args:
        model: a compiled Keras model.

    Returns:
        {name: float} of `model.get_metrics_result()`'s scalars: the loss tracker, the compiled
        metrics, the per-output losses and the model's own trackers.
    """
    return {name: float(np.asarray(value)) for name, value in model.get_metrics_result().items() if np.ndim(value) == 0}


def metric_results(metrics):
    """Returns the values of a model's compiled metrics, named as Keras names them.

    Args:
        metrics: the model's compiled metrics container (`clr_loop.steps.Steps.metrics`), or None.

    Returns:
        {name: float}: a mean-type metric (accuracy, MAE, ...) is its float64 `total / count`, from
        its own exact sums; any other metric is its `result()`. {} before the metrics are built.
    """
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
