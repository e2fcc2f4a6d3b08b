"""`fit`: the graph-compiled training loop for any compiled Keras model, a drop-in for `model.fit`.

Shape (after orbit): `fit` checks its arguments and builds a `clr_loop.runner.Run`; the controller
here (`train`) runs the epochs, each as calls of the inner loop (`clr_loop.inner_loop`:
`steps_per_loop` compiled steps per call), and between calls, in Python, the actions
(`clr_loop.actions`: Keras callbacks, the progress bar, TensorBoard summaries, the profiler window,
the NaN/Inf guard and signal handling) and the checkpoints (`clr_loop.workdir`). Epochs, metrics
and the returned `keras.callbacks.History` mean what they mean in `model.fit`. With a `workdir` the
run is resumable: calling the same code again after a crash continues from the last checkpoint,
bit-exactly.
"""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from clr_loop import _keras
from clr_loop import actions
from clr_loop import distribute
from clr_loop import inner_loop
from clr_loop import inputs
from clr_loop import runner
from clr_loop import steps as steps_lib


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
    bn_recompute_batches=runner.BN_RECOMPUTE_BATCHES,
    input_mode="auto",
):
    """Trains a compiled Keras model as `model.fit` would, in clr_loop's compiled loop; returns its History.

    Inside the compiled loop fit runs the model's own `train_step` (and `test_step` for
    validation), as `model.fit` does, so the loss, `model.losses`, the metrics, a `compute_loss` or
    `train_step` override and the optimizer (its schedule evaluated on `optimizer.iterations`)
    behave as there; `compile(run_eagerly=True)` runs every step in Python
    (`tf.config.run_functions_eagerly` is on for the call). Each epoch of arrays is a stateless
    permutation of (`seed`, epoch). Without a workdir a call trains on from where the model is, as
    `model.fit` does. The model's own Keras dtype policy holds as in `model.fit`: under
    mixed_float16, `compile`'s LossScaleOptimizer scales the loss, and a step it skips on overflow
    is not divergence (it does not advance `optimizer.iterations`, as in Keras, but counts as a
    step). With a schedule-free optimizer (`clr_loop.optimizers.ScheduleFreeSGD`/`ScheduleFreeAdamW`,
    or any with `swap_to_x`/`swap_to_y`) training runs at y while validation and the weights fit
    returns with are at x, the average.

    Args:
        model: a compiled `keras.Model`.
        x: arrays (numpy or tensors, or dicts/tuples of them), a `tf.data.Dataset` of `x`, `(x,)`,
            `(x, y)` or `(x, y, sample_weight)` batches, a `keras.utils.PyDataset` or a generator
            (the last two not with a workdir).
        y: the targets of array `x` (None for a Dataset, or a model with no compiled loss).
        batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
            class_weight, sample_weight, initial_epoch, validation_steps, validation_batch_size,
            validation_freq: `model.fit`'s, in its order, meaning what they mean there. A callback
            with batch hooks gets them every `model.steps_per_execution` steps, as in Keras.
        steps_per_epoch: not supported (an epoch is one pass over the data): must be None.
        seed: the data-order (and augmentation) seed, in [0, 2**63); None draws one from numpy's
            global generator (recorded in the workdir, so a resume keeps it).
        workdir: a folder for checkpoints (at each epoch end, every `checkpoint_every_steps`, and on
            SIGTERM/SIGINT), `history.json`, TensorBoard events in `train/` (every
            `log_every_steps`) and `eval/`, and the profiler trace. Calling fit again with the same
            workdir resumes, bit-exactly.
        steps_per_loop: steps run per compiled call.
        jit_compile: "auto" (XLA only on GPU/TPU), True or False.
        batch_splits: parts each batch is computed in (0: automatic, see
            `clr_loop.runtime.resolve_batch_splits`).
        drop_remainder: drop each epoch's last partial batch of arrays.
        checkpoint_every_steps: also checkpoint every that many steps (0: epoch ends only).
        keep_checkpoints: how many checkpoints to keep.
        log_every_steps: a TensorBoard train point every that many steps.
        profile_steps: `(start, stop)`: a profiler trace of those steps, or None.
        max_steps: a cap on the total steps, or None.
        augment: None, "flip_crop" (pad by 4, random crop, random horizontal flip of [B, H, W, C]
            images, a pure function of (seed, step)) or your function `(x, step) -> x` (see
            `clr_loop.augment`), applied to each training batch inside the compiled step.
        bn_recompute_batches: with a schedule-free optimizer, the training batches the
            BatchNormalization statistics are recomputed on at x (forward passes only) before each
            validation and at the end.
        input_mode: how array batches reach the step: "device" places the whole training set on the
            device once and gathers each batch inside the compiled loop, "pipeline" feeds them
            through tf.data, "auto" picks (see `clr_loop.runner.resolve_input_mode`); both give the
            same batches in the same order.

    Returns:
        The `keras.callbacks.History` (also `model.history`): per epoch what `model.fit` logs (the
        loss, per-output losses, the compiled metrics and the model's trackers, `val_` of each with
        validation data), `lr` (the rate of the epoch's last step) and `momentum` when the
        optimizer's momentum is a schedule; `epoch_seconds` holds each epoch's wall time.

    Raises:
        ValueError: an uncompiled model; `inputs.InputError` (a ValueError) for bad input.
        actions.TrainingDiverged: at the first non-finite step (nothing of it is saved).
        actions.Interrupted: after SIGTERM/SIGINT with a workdir, once the state is checkpointed;
            under a multi-worker strategy a signal to any worker stops every worker at the same step.
        checkpointing.WorkdirError, checkpointing.CheckpointError: an unusable workdir.
        distribute.ClusterError: naming the lost workers when a multi-worker peer is gone.

    Example:
        >>> model.compile(optimizer=keras.optimizers.SGD(clr_loop.Triangular2CyclicalLearningRate(
        ...     initial_learning_rate=1e-4, maximal_learning_rate=1e-2, step_size=2000)),
        ...     loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> history = clr_loop.fit(model, x, y, batch_size=64, epochs=10,
        ...                        validation_data=(x_test, y_test), workdir="runs/clr")
    """
    steps_lib.check_compiled(model)
    _check_int("epochs", epochs, 1)
    _check_int("initial_epoch", initial_epoch, 0)
    if initial_epoch >= epochs:
        raise inputs.InputError(
            f"initial_epoch={initial_epoch} must be smaller than epochs={epochs}", argument="initial_epoch"
        )
    if initial_epoch and workdir:
        raise inputs.InputError(
            "initial_epoch must be 0 with a workdir: the workdir's checkpoint says where the run is",
            argument="initial_epoch",
        )
    for name, value in (("steps_per_loop", steps_per_loop), ("log_every_steps", log_every_steps)):
        _check_int(name, value, 1)
    _check_int("checkpoint_every_steps", checkpoint_every_steps, 0)
    _check_int("keep_checkpoints", keep_checkpoints, 1)
    _check_int("batch_splits", batch_splits, 0)
    _check_int("bn_recompute_batches", bn_recompute_batches, 0)
    for name, value in (
        ("max_steps", max_steps),
        ("steps_per_epoch", steps_per_epoch),
        ("validation_steps", validation_steps),
    ):
        if value is not None:
            _check_int(name, value, 1, "or None")
    if seed is not None:
        _check_int("seed", seed, 0)
        if seed >= 2**63:
            raise inputs.InputError(f"seed must be an integer in [0, 2**63), got {seed!r}", argument="seed")
    if workdir is not None and not isinstance(workdir, (str, os.PathLike)):
        raise inputs.InputError(
            f"workdir must be a path (str or os.PathLike) or None, got {type(workdir).__name__} {workdir!r}",
            argument="workdir",
        )
    if workdir is not None:
        workdir = os.fspath(workdir)
    if profile_steps is not None:
        if (
            not isinstance(profile_steps, (tuple, list))
            or len(profile_steps) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in profile_steps)
        ):
            raise inputs.InputError(
                f"profile_steps must be (start, stop), two integers, got {profile_steps!r}", argument="profile_steps"
            )
        start, stop = profile_steps
        if not 0 <= start < stop:
            raise inputs.InputError(
                f"profile_steps must be (start, stop) with 0 <= start < stop, got {profile_steps!r}",
                argument="profile_steps",
            )
    if jit_compile not in ("auto", True, False):
        raise inputs.InputError(
            f"jit_compile must be 'auto', True or False, got {jit_compile!r}", argument="jit_compile"
        )
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float, np.floating))
        or not 0 <= validation_split < 1
    ):
        raise inputs.InputError(
            f"validation_split must be a float in [0, 1), got {validation_split!r}", argument="validation_split"
        )
    if isinstance(validation_freq, bool) or not (
        (isinstance(validation_freq, (int, np.integer)) and validation_freq >= 1)
        or (
            isinstance(validation_freq, (list, tuple))
            and all(isinstance(v, (int, np.integer)) for v in validation_freq)
        )
    ):
        raise inputs.InputError(
            f"validation_freq must be a positive integer or a list of epochs, got {validation_freq!r}",
            argument="validation_freq",
        )
    if steps_per_epoch is not None:
        raise inputs.InputError(
            f"steps_per_epoch={steps_per_epoch}: clr_loop's epoch is one pass over the data; pass a Dataset "
            "of that many batches (dataset.take(n)) or use max_steps"
        )
    train_input, val = inputs.make_fit_inputs(
        model,
        x,
        y,
        batch_size,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        validation_split=validation_split,
        validation_data=validation_data,
        sample_weight=sample_weight,
        class_weight=class_weight,
        validation_batch_size=validation_batch_size,
        validation_steps=validation_steps,
        workdir=workdir,
    )
    val_batch = validation_batch_size or train_input.batch_size or 32
    run = runner.Run(
        model,
        train_input,
        val,
        seed=seed,
        epochs=epochs,
        steps_per_loop=steps_per_loop,
        jit_compile=jit_compile,
        batch_splits=batch_splits,
        workdir=workdir,
        checkpoint_every_steps=checkpoint_every_steps,
        keep_checkpoints=keep_checkpoints,
        log_every_steps=log_every_steps,
        profile_steps=profile_steps,
        max_steps=max_steps,
        validation_batch_size=val_batch,
        augment=augment,
        bn_recompute_batches=bn_recompute_batches,
        input_mode=input_mode,
        initial_epoch=initial_epoch,
        validation_freq=validation_freq,
    )
    return train(run, callbacks=callbacks, verbose=verbose)


def _check_int(name, value, minimum, extra=""):
    """Raises InputError naming `name` unless `value` is an integer >= `minimum` (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise inputs.InputError(f"{name} must be {what}{' ' + extra if extra else ''}, got {value!r}", argument=name)


def train(run, callbacks=None, verbose="auto"):
    """Trains `run` to its end (see `fit`), resuming from its workdir when that holds a checkpoint.

    The controller (orbit's `Controller.train`): with a workdir it holds the workdir's lock and
    catches SIGTERM/SIGINT for the whole run; `compile(run_eagerly=True)` turns on
    `tf.config.run_functions_eagerly` for the call; a profiler window cut short is still written.

    Args:
        run: a `clr_loop.runner.Run`.
        callbacks: Keras callbacks, or None.
        verbose: `model.fit`'s verbose ("auto", 0, 1 or 2).

    Returns:
        The `keras.callbacks.History` (also `run.model.history`), with `epoch_seconds`.

    Raises:
        TrainingDiverged, Interrupted, checkpointing.WorkdirError, checkpointing.CheckpointError,
        distribute.ClusterError: as `fit`.

    Example:
        >>> history = train(runner.Run(model, train_input, (None, None), ...), verbose=0)
    """
    eagerly = bool(getattr(run.model, "run_eagerly", False)) and not tf.config.functions_run_eagerly()
    if eagerly:  # compile(run_eagerly=True): every step in Python, as model.fit runs it
        tf.config.run_functions_eagerly(True)
    try:
        if not run.workdir:
            with distribute.lost_workers_named(run.strategy):
                return _train(run, {}, callbacks, verbose)
        with run.locked(), run.signals.catching(), distribute.lost_workers_named(run.strategy):
            return _train(run, run.restore(), callbacks, verbose)
    finally:
        if eagerly:
            tf.config.run_functions_eagerly(False)
        run.profiler.stop()  # a run stopped inside the window (a signal, an error) keeps its trace


def _train(run, saved_history, callbacks, verbose):
    model = run.model
    if verbose == "auto":
        verbose = 1 if run.replicas == 1 else 2
    history_cb = keras.callbacks.History()
    callback_list = actions.CallbackList(
        list(callbacks or []) + [history_cb],
        add_history=False,
        add_progbar=bool(verbose) and run.is_chief,
        model=model,
        verbose=verbose,
        epochs=run.epochs,
        steps=run.input.steps_per_epoch,
    )
    # A callback with batch hooks gets them every model.steps_per_execution steps, as in model.fit.
    if any(actions.has_batch_hooks(cb) for cb in callbacks or []):
        run.batch_hook_every = max(1, int(getattr(model, "steps_per_execution", 1) or 1))
    # A callback with test batch hooks gets them during validation, per `steps_per_execution` batches.
    test_hooks = callback_list if any(actions.has_test_batch_hooks(cb) for cb in callbacks or []) else None
    model.stop_training = False
    if run.schedule_free is not None:
        run.schedule_free.swap_to_y()  # a model left at x by an earlier fit trains on from y
    workdir = run.workdir
    summaries = actions.Summaries(workdir if run.is_chief else None, run.state)
    steps_per_epoch = run.input.steps_per_epoch
    step = run.step
    epoch = int(run.state.epoch.numpy())
    if steps_per_epoch is not None and run.input.dataset is None:
        epoch = step // steps_per_epoch
    callback_list.on_train_begin()
    restored_epoch = _keras.restored_epoch(model)  # set by BackupAndRestore, read as model.fit reads it
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
        run.total_steps,
        steps_per_epoch,
        run.jit_compile,
        run.splits,
        run.input_mode,
        workdir,
    )
    stopped = bool(workdir and run.store.stopped())
    if stopped or (run.total_steps is not None and step >= run.total_steps):
        if stopped:
            print(
                f"{workdir}: the run was stopped by a callback at step {step} (model.stop_training after epoch "
                f"{epoch}) and is complete; nothing to do",
                flush=True,
            )
        else:
            print(f"{workdir}: the run is already complete at step {step}; nothing to do", flush=True)
        run.finish_at_average()
        callback_list.on_train_end(actions.last_logs(history_cb))
        history_cb.epoch_seconds = epoch_seconds
        return history_cb
    if run.profile_steps is not None and step >= run.profile_steps[1]:
        print(
            f"warning: profile_steps={tuple(run.profile_steps)} lies before the resumed step {step}: "
            "no trace is written",
            flush=True,
        )
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
        epoch_start = (
            step - (step % steps_per_epoch)
            if (steps_per_epoch and run.input.dataset is None)
            else (int(run.state.epoch_start.numpy()) if resuming_mid_epoch else step)
        )
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
        while (
            not exhausted and (epoch_end is None or step < epoch_end) and not (run.max_steps and step >= run.max_steps)
        ):
            end = _chunk_end(run, step, epoch_end)
            if run.profile_steps is not None and run.profile_steps[0] <= step < run.profile_steps[1]:
                run.profiler.start()
            callback_list.on_train_batch_begin(step - epoch_start)
            with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                window = run.run_steps(end - step)
            ran = int(window["steps"])
            if not bool(window["finite"]):
                actions.diverged(
                    window,
                    step,
                    run.non_finite_weights(),
                    summaries,
                    run.store.last_checkpoint if run.store is not None else None,
                )
            exhausted = bool(window["exhausted"])
            step += ran
            if run.profile_steps is not None and step >= run.profile_steps[1]:
                run.profiler.stop()
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
                actions.stop_if_signalled(run.signals, summaries, run.save, lambda: run.step)
        # Stopped by max_steps inside the epoch: the epoch still ends here (validation, callbacks,
        # a history entry, as the tutorial's smoke runs expect), but its counter does not move on,
        # so a later call with a larger cap resumes mid-epoch and recomputes this entry.
        cut_short = bool(
            run.max_steps
            and step >= run.max_steps
            and not exhausted
            and not model.stop_training
            and (steps_per_epoch is None or step < epoch_start + steps_per_epoch)
        )
        if step == epoch_start:
            break  # a Dataset with nothing for this epoch
        # (A resume whose Dataset had nothing left ends the epoch it resumed into: a signal after the
        # last batch of a Dataset of unknown length came before the loop learnt the epoch was over.)
        if steps_per_epoch is None and not model.stop_training and not cut_short:
            steps_per_epoch = step - epoch_start  # a Dataset of unknown length: now it is known
            callback_list.set_params({**callback_list.params, "steps": steps_per_epoch})
        epoch_logs = _train_logs(run)
        if (run.val_arrays is not None or run.val_dataset is not None) and _keras.should_eval(
            model, epoch, run.validation_freq
        ):
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
        history_text = json.dumps(record)
        if workdir:
            run.store.record_epoch(history_text, {"step": step, "epoch": epoch} if model.stop_training else None)
        saved = run.save()
        if workdir:
            run.store.write_history(record, saved)
        actions.stop_if_signalled(run.signals, summaries, run.save, lambda: run.step)
        if model.stop_training or cut_short:
            break
    summaries.flush()
    run.finish_at_average()
    callback_list.on_train_end(logs)
    history_cb.epoch_seconds = epoch_seconds
    return history_cb


def _chunk_end(run, step, epoch_end):
    """Returns the next step at which Python must regain control: the next action's step (a log
    point, a checkpoint, the profiler window, an epoch end, max_steps) or `steps_per_loop` on."""
    ends = [step + min(run.steps_per_loop, run.batch_hook_every or run.steps_per_loop)]
    if epoch_end is not None:
        ends.append(epoch_end)
    if run.max_steps:
        ends.append(run.max_steps)
    if run.log_every_steps:
        ends.append((step // run.log_every_steps + 1) * run.log_every_steps)
    if run.profile_steps is not None:
        start, stop = run.profile_steps
        if step < start:
            ends.append(start)
        elif step < stop:
            ends.append(step + 1)
    if run.checkpoint_every_steps > 0 and run.workdir:
        ends.append((step // run.checkpoint_every_steps + 1) * run.checkpoint_every_steps)
    return min(e for e in ends if e > step)


def _train_logs(run):
    """The train logs so far in the epoch: `loss`, the compiled metrics, `lr` (and `momentum`)."""
    logs = inner_loop.keras_logs(run.model)
    logs["lr"] = float(run.state.lr.numpy())
    if run.steps.momentum_schedule is not None:
        logs["momentum"] = float(run.state.momentum.numpy())
    return logs
