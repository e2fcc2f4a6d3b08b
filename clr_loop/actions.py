"""What runs between calls of the inner loop (orbit's "actions"): summaries, the NaN guard, signals,
the profiler, and Keras callbacks' hooks.

`clr_loop.loop`'s controller calls these after each compiled call of `clr_loop.inner_loop`:
TensorBoard scalars (`Summaries`), the divergence guard (`diverged`, `check_saved_weights`,
raising `TrainingDiverged`), SIGTERM/SIGINT handling (`StopSignals`, `stop_if_signalled`, raising
`Interrupted`), the profiler window (`Profiler`) and the callbacks (`CallbackList` and the hook
probes). Each works from what it is given; none knows the run's configuration.
"""

import contextlib
import os
import signal

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from clr_loop import checkpointing
from clr_loop import distribute
from clr_loop import errors

# What `tf.summary.scalar` tags a scalar with for TensorBoard's scalars plugin (an empty
# ScalarPluginData, version 0). `tf.summary.scalar` itself lives in TensorBoard's package, whose
# first use imports 250 modules (0.06 s of a run).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def write_scalar(name, value):
    """Writes a float scalar summary to the default writer at its default step, as `tf.summary.scalar`
    would (same tag, tensor and metadata, so TensorBoard shows it as a scalar).

    Args:
        name: the tag.
        value: a float.

    Returns:
        Whether it was written (False without a default writer), as `tf.summary.write` returns.

    Example:
        >>> with tf.summary.create_file_writer(logdir).as_default(step=10):
        ...     write_scalar("loss", 0.25)
    """
    return tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


class TrainingDiverged(errors.Error, RuntimeError):
    """Raised when a step's learning rate, loss or gradient, or the weights after it, are not finite;
    the message names the step and rate, and the last good checkpoint when there is one."""


class Interrupted(errors.Error, RuntimeError):
    """Raised after SIGTERM or SIGINT once the state is checkpointed.

    Args:
        message: what was received, at which step, and where the checkpoint is.
        signum: the signal number (also the `signum` attribute).
    """

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class Summaries:
    """TensorBoard scalars of a run in `<workdir>/train` and `<workdir>/eval` (no-op writers without
    a workdir, or on a worker that is not the chief).

    Train points average over the steps since the previous point: the loss from the loop windows'
    sums, each mean-type metric from the change of its Keras sums; `lr`, `momentum` and other
    metrics are their current values. The point in progress lives in `state` (checkpointed), so a
    run resumed between two points writes the values an uninterrupted run writes.

    Args:
        workdir: the run's folder, or None for no-op writers.
        state: the run's `clr_loop.inner_loop.EpochState` (its `window` and `metric_base`).

    Raises:
        checkpointing.WorkdirError: an event file cannot be written (from any method).
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
        self.state.metric_base.assign(
            np.array([v for pair in _metric_sums(metrics).values() for v in pair], np.float64)
        )

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
        """Flushes both writers."""
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


# The NaN/Inf guard -----------------------------------------------------------------------------


def diverged(window, step, non_finite_weights, summaries, last_checkpoint):
    """Raises TrainingDiverged for a loop window that was not finite, saving nothing from it.

    Args:
        window: the inner loop's window (`clr_loop.inner_loop.make_train_loop`) with `finite` False.
        step: the step the window began at.
        non_finite_weights: the paths of the trainable weights that are not finite now.
        summaries: the run's `Summaries`, flushed first (the points up to the divergence, to see it
            in TensorBoard).
        last_checkpoint: the path of the last checkpoint, or None.

    Raises:
        TrainingDiverged: always; the message names the window's last step, what was not finite
            (the learning rate, the loss, or the weights after the update) and the last checkpoint.
    """
    last_step = step + int(window["steps"]) - 1
    lr = float(window["lr"])
    if not np.isfinite(lr):
        what = f"non-finite learning rate {lr:.6g} at step {last_step}"
    elif not non_finite_weights:
        what = f"non-finite loss at step {last_step} (learning rate {lr:.6g})"
    else:  # the step checks the weights after its update: a non-finite gradient or update
        what = f"non-finite weights after step {last_step} (learning rate {lr:.6g})"
    summaries.flush()
    raise TrainingDiverged(
        f"{what}; stopped without saving it."
        + (f" The last good checkpoint is {last_checkpoint}" if last_checkpoint else "")
    )


def check_saved_weights(non_finite_weights, step, last_checkpoint):
    """Raises TrainingDiverged before a save when trainable weights are not finite (the loop checks
    them after every step; a callback may have set them since).

    Args:
        non_finite_weights: the paths of the trainable weights that are not finite (empty: none).
        step: the run's step.
        last_checkpoint: the path of the last checkpoint, or None.

    Raises:
        TrainingDiverged: `non_finite_weights` is not empty; the message names up to three of them.
    """
    bad = non_finite_weights
    if bad:
        raise TrainingDiverged(
            f"non-finite weights at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}), "
            "set outside the training step (by a callback?); stopped without saving them."
            + (f" The last good checkpoint is {last_checkpoint}" if last_checkpoint else "")
        )


# Signals ---------------------------------------------------------------------------------------


class StopSignals:
    """SIGTERM/SIGINT, caught inside `catching()` and acted on between loop calls.

    In a multi-worker run with `vote`, every worker asks at the same step and all learn whether any
    of them got a signal (`distribute.make_signal_vote`), so all checkpoint at that step and stop.

    Args:
        strategy: the model's `tf.distribute.Strategy`.
        vote: whether the workers vote (a run with a workdir, where signals are caught).

    Example:
        >>> signals = StopSignals(strategy, vote=True)
        >>> with signals.catching():
        ...     ...  # train; between calls: stop_if_signalled(signals, summaries, save, step)
    """

    def __init__(self, strategy, vote):
        self.strategy = strategy
        self.signum = None
        self._vote = distribute.make_signal_vote(strategy) if vote else None

    def on_signal(self, signum, frame):
        """The signal handler: records `signum`."""
        del frame
        self.signum = signum

    @contextlib.contextmanager
    def catching(self):
        """Routes SIGTERM/SIGINT to `on_signal` inside the block (main thread only), restoring after."""
        handlers = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                handlers[signum] = signal.signal(signum, self.on_signal)
        except ValueError:
            handlers = {}  # not the main thread: the caller owns signal handling
        try:
            yield
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def received(self):
        """Returns None unless a stop signal arrived (on any worker, when they vote); then
        `(signum, note)`, the note naming the workers it reached ("" without a vote)."""
        if self._vote is None:
            if self.signum is None:
                return None
            return self.signum, ""
        got = self._vote(self.signum)
        if not got:
            return None
        signum = next(s for s in distribute.STOP_SIGNALS if s in got.values())
        by = ", ".join(
            f"worker {w}" if s == signum else f"worker {w} ({signal.Signals(s).name})" for w, s in sorted(got.items())
        )
        return signum, f"; it reached {by}, and all {distribute.worker_count(self.strategy)} workers stop at this step"


def stop_if_signalled(signals, summaries, save, step):
    """Returns None unless a stop signal arrived; then flushes the summaries, saves a checkpoint and
    raises Interrupted.

    Args:
        signals: the run's `StopSignals`.
        summaries: the run's `Summaries`.
        save: `save() -> path or None`, the run's checkpoint save.
        step: `step() -> int`, the run's step (read only when a signal arrived).

    Raises:
        Interrupted: a signal arrived; the message names it, the step and the checkpoint.
    """
    got = signals.received()
    if got is None:
        return
    signum, note = got
    summaries.flush()
    path = save()
    name = signal.Signals(signum).name
    raise Interrupted(
        f"received {name} at step {step()}: checkpoint saved to {path}{note}; run the same code again "
        + ("on every worker " if note else "")
        + "to resume",
        signum,
    )


# The profiler ----------------------------------------------------------------------------------


class Profiler:
    """The TensorFlow profiler over a window of steps, its trace under `<logdir>/plugins/profile`.

    Args:
        logdir: the folder of the trace (the workdir), or None for the current folder.
        profile_steps: `(start, stop)`, the window (for the log line).
    """

    def __init__(self, logdir, profile_steps):
        self.logdir = logdir
        self.profile_steps = profile_steps
        self.running = False

    def start(self):
        """Starts the profiler (once)."""
        if not self.running:
            tf.profiler.experimental.start(self.logdir or ".")
            self.running = True

    def stop(self):
        """Stops the profiler when it runs, writing the trace."""
        if self.running:
            self.running = False
            tf.profiler.experimental.stop()
            logging.info("profiler trace of steps %s written under %s/plugins/profile", self.profile_steps, self.logdir)


# Callbacks -------------------------------------------------------------------------------------


def _implements(callback, hooks):
    """True when `callback` overrides one of the Callback methods named in `hooks` (Keras's own History
    and progress bar aside)."""
    if isinstance(callback, (keras.callbacks.History, keras.callbacks.ProgbarLogger)):
        return False
    base = keras.callbacks.Callback
    return any(getattr(type(callback), name) is not getattr(base, name) for name in hooks)


def has_batch_hooks(callback):
    """True when `callback` (a `keras.callbacks.Callback`) implements a train batch hook."""
    return _implements(callback, ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"))


# The log keys clr_loop adds to Keras's (the History has them); TensorBoard callbacks get Keras's only.
OWN_LOG_KEYS = ("lr", "momentum")


class CallbackList(keras.callbacks.CallbackList):
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


def has_test_batch_hooks(callback):
    """True when `callback` (a `keras.callbacks.Callback`) implements a test batch hook."""
    return _implements(callback, ("on_test_batch_begin", "on_test_batch_end"))


def last_logs(history):
    """Returns the last epoch's logs of a `keras.callbacks.History` ({} before its first epoch)."""
    return {k: v[-1] for k, v in history.history.items() if v}
