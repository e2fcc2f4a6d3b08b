"""clr_loop.loop.fit as a drop-in for model.fit, on tiny models and data.

Oracles: Keras's own `model.fit` / `model.evaluate` on a twin model with the same initial weights,
numpy formulas, hand-computed schedule values, TensorBoard's event reader, the csv module, and an
uninterrupted run for every resume.
"""

import csv
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import actions
from clr_loop import checkpointing
from clr_loop import inputs
from clr_loop import loop
from clr_loop.experiment import models
from clr_loop import optimizers
from clr_loop import runtime
from clr_loop import schedules
from testing import (
    BATCH,
    N,
    REPO,
    STEPS_PER_EPOCH,
    SigtermAt,
    assert_same_weights,
    compiled,
    dict_model,
    event_values,
    history_without_timing,
    logits_compile,
    logits_model,
    sigkill_then_resume,
    toy_data,
    twins,
)


def assert_val_equals_evaluate(history, model, x_val, y_val, batch_size=BATCH):
    expected = model.evaluate(x_val, y_val, batch_size=batch_size, verbose=0, return_dict=True)
    assert history.history["val_accuracy"][-1] == pytest.approx(expected["accuracy"], abs=1e-4)
    assert history.history["val_loss"][-1] == pytest.approx(expected["loss"], rel=1e-5)


# 1. The tutorial ------------------------------------------------------------------------------


def test_tutorial_code_with_only_the_fit_line_changed(capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 192).astype(np.int32)
    images = (rng.integers(0, 40, (192, 28, 28, 1)) + (labels * 20)[:, None, None, None]).astype(np.uint8)
    x_train, y_train, x_test, y_test = images[:128], labels[:128], images[128:], labels[128:]
    batch_size, epochs, init_lr, max_lr = 64, 2, 1e-4, 1e-2
    steps_per_epoch = len(x_train) // batch_size

    def make_optimizer():
        clr = schedules.CyclicalLearningRate(
            initial_learning_rate=init_lr,
            maximal_learning_rate=max_lr,
            scale_fn=lambda x: 1 / (2.0 ** (x - 1)),
            step_size=2 * steps_per_epoch,
        )
        return keras.optimizers.SGD(clr)

    keras.utils.set_random_seed(42)
    model = models.create_model(seed=3)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    model.compile(loss="sparse_categorical_crossentropy", optimizer=make_optimizer(), metrics=["accuracy"])
    history = loop.fit(model, x_train, y_train, batch_size=batch_size, validation_data=(x_test, y_test), epochs=epochs)

    twin.compile(loss="sparse_categorical_crossentropy", optimizer=make_optimizer(), metrics=["accuracy"])
    keras_history = twin.fit(
        x_train, y_train, batch_size=batch_size, validation_data=(x_test, y_test), epochs=epochs, verbose=0
    )
    assert set(history.history) == set(keras_history.history) | {"lr"}
    assert model.history is history
    assert history.epoch == [0, 1]
    assert all(len(v) == epochs for v in history.history.values())
    # lr is the rate of each epoch's last step (1 and 3): triangular2, step_size 4, first cycle:
    # 1e-4 + (1e-2 - 1e-4) * (1 - |s/4 - 1|), by hand 0.002575 and 0.007525.
    assert history.history["lr"] == pytest.approx([0.002575, 0.007525], rel=1e-6)
    assert int(model.optimizer.iterations) == epochs * steps_per_epoch
    assert "Epoch 2/2" in capsys.readouterr().out  # verbose="auto": Keras's progress bar
    assert_val_equals_evaluate(history, model, x_test, y_test, batch_size=batch_size)


# 2. BatchNormalization ------------------------------------------------------------------------


def test_batch_norm_trains_its_statistics_is_never_split_and_validates_like_evaluate():
    x, y = toy_data()
    x_val, y_val = toy_data(70, seed=1)

    def build():
        return logits_model(keras.layers.BatchNormalization(name="bn"))

    ours, theirs = twins(build, logits_compile())
    splits, why = runtime.resolve_batch_splits(0, ours, 64)
    assert splits == 1 and "'bn'" in why and "BatchNormalization" in why
    with pytest.raises(ValueError, match="bn"):
        loop.fit(ours, x, y, batch_size=64, batch_splits=2, verbose=0)

    bn = ours.get_layer("bn")
    before = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()
    history = loop.fit(
        ours,
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        jit_compile=False,
        validation_data=(x_val, y_val),
    )
    assert not np.allclose(bn.moving_mean.numpy(), before[0])
    assert not np.allclose(bn.moving_variance.numpy(), before[1])
    assert_val_equals_evaluate(history, ours, x_val, y_val)
    # Training-mode batch statistics and the moving averages, as Keras's own fit computes them.
    theirs.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert_same_weights(ours, theirs)


# 3. Same weights and loss as model.fit ---------------------------------------------------------


def test_weights_and_loss_equal_keras_fit_without_shuffling():
    x, y = toy_data()
    ours, theirs = twins(logits_model, logits_compile(momentum=0.9))
    history = loop.fit(
        ours, x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, jit_compile=False, batch_splits=1
    )
    keras_history = theirs.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    assert_same_weights(ours, theirs)
    # Keras's epoch loss: the batch losses weighted by batch size, the last partial batch included.
    np.testing.assert_allclose(history.history["loss"], keras_history.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(history.history["accuracy"], keras_history.history["accuracy"], atol=1e-6)
    assert int(ours.optimizer.iterations) == 3 * STEPS_PER_EPOCH


def test_epoch_loss_weights_the_last_partial_batch_by_its_size():
    """With a zero learning rate every batch sees the same weights, so the epoch loss is the plain
    mean of the per-example losses over all 200 examples (numpy), not the mean of 7 batch means."""
    x, y = toy_data()
    model = compiled(lr=0.0)
    history = loop.fit(model, x, y, batch_size=BATCH, shuffle=False, verbose=0)
    logits = model.predict(x, verbose=0).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_example = -log_probs[np.arange(N), y]
    assert history.history["loss"][0] == pytest.approx(per_example.mean(), rel=1e-6)
    batch_means = [per_example[i : i + BATCH].mean() for i in range(0, N, BATCH)]
    assert abs(per_example.mean() - np.mean(batch_means)) > 1e-4  # the two weightings do differ here


# 4. Regularisation ----------------------------------------------------------------------------


def regularised_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.05)),
            keras.layers.Dense(3),
        ]
    )


def test_l2_regulariser_shrinks_weights_as_keras_fit_does():
    x, y = toy_data()
    ours, theirs = twins(regularised_model, logits_compile())
    history = loop.fit(
        ours,
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        jit_compile=False,
        batch_splits=1,
        validation_data=(x[:50], y[:50]),
    )
    keras_history = theirs.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x[:50], y[:50])
    )
    assert_same_weights(ours, theirs)
    np.testing.assert_allclose(history.history["loss"], keras_history.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"], keras_history.history["val_loss"], rtol=1e-5)


def test_reported_loss_includes_the_regularisation():
    """lr 0: the epoch loss is numpy's mean cross-entropy plus 0.05 * sum(kernel ** 2)."""
    x, y = toy_data()
    model = regularised_model()
    model.compile(**logits_compile(lr=0.0)())
    history = loop.fit(model, x, y, batch_size=BATCH, verbose=0, validation_data=(x, y))
    logits = model.predict(x, verbose=0).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    cross_entropy = -log_probs[np.arange(N), y].mean()
    penalty = 0.05 * np.sum(model.layers[0].kernel.numpy().astype(np.float64) ** 2)
    assert penalty > 0.1
    assert history.history["loss"][0] == pytest.approx(cross_entropy + penalty, rel=1e-5)
    assert history.history["val_loss"][0] == pytest.approx(cross_entropy + penalty, rel=1e-5)


# 5. Multi-input dict model --------------------------------------------------------------------


def test_multi_input_dict_model_trains_like_keras_and_validates_like_evaluate():
    x, y = toy_data(features=7)
    x_val, y_val = toy_data(60, seed=1, features=7)
    as_dict = lambda v: {"a": v[:, :4], "b": v[:, 4:]}  # noqa: E731
    ours, theirs = twins(dict_model, logits_compile())
    history = loop.fit(
        ours,
        as_dict(x),
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        jit_compile=False,
        validation_data=(as_dict(x_val), y_val),
    )
    theirs.fit(as_dict(x), y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert_same_weights(ours, theirs)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert_val_equals_evaluate(history, ours, as_dict(x_val), y_val)


# 6. Dataset input and resuming ----------------------------------------------------------------


@pytest.mark.parametrize("stop_at, epochs", [(10, 2), (STEPS_PER_EPOCH, 3)], ids=["mid_epoch", "epoch_end"])
def test_dataset_run_stopped_by_max_steps_then_resumed_is_bit_identical(tmp_path, stop_at, epochs):
    """Stopped mid-epoch, or at an epoch end (where the resumed epoch must get the next shuffle order
    of a reshuffling dataset, as the uninterrupted run's)."""
    x, y = toy_data()
    dataset = lambda: tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=3).batch(BATCH)  # noqa: E731
    kwargs = dict(epochs=epochs, verbose=0, validation_data=(x[:50], y[:50]), steps_per_loop=3)

    whole = compiled(momentum=0.9)
    expected = loop.fit(whole, dataset(), workdir=str(tmp_path / "whole"), **kwargs)
    assert len(expected.history["loss"]) == epochs

    workdir = str(tmp_path / "parts")
    first = compiled(momentum=0.9)
    partial = loop.fit(first, dataset(), workdir=workdir, max_steps=stop_at, **kwargs)
    assert int(first.optimizer.iterations) == stop_at
    # An epoch cut short gets its entry (validated, as the CLI's smoke runs expect); the resumed
    # call recomputes it at the real epoch end.
    assert len(partial.history["loss"]) == -(-stop_at // STEPS_PER_EPOCH)
    # A fresh model in the same process, as a notebook re-running its cell would make (its
    # variables get new automatic names).
    second = compiled(momentum=0.9)
    resumed = loop.fit(second, dataset(), workdir=workdir, **kwargs)
    assert int(second.optimizer.iterations) == epochs * STEPS_PER_EPOCH
    assert resumed.history == expected.history
    for a, b in zip(whole.get_weights(), second.get_weights()):
        assert np.array_equal(a, b)


def test_arrays_run_stopped_mid_epoch_by_max_steps_resumes_bit_identically(tmp_path):
    x, y = toy_data()
    kwargs = dict(batch_size=BATCH, epochs=2, seed=5, verbose=0, validation_data=(x[:50], y[:50]))
    whole = compiled(momentum=0.9)
    expected = loop.fit(whole, x, y, workdir=str(tmp_path / "whole"), **kwargs)
    workdir = str(tmp_path / "parts")
    loop.fit(compiled(momentum=0.9), x, y, workdir=workdir, max_steps=10, **kwargs)
    second = compiled(momentum=0.9)
    resumed = loop.fit(second, x, y, workdir=workdir, **kwargs)
    assert resumed.history == expected.history
    for a, b in zip(whole.get_weights(), second.get_weights()):
        assert np.array_equal(a, b)


# 7. Keras callbacks ---------------------------------------------------------------------------


def test_early_stopping_ends_the_run_and_csv_logger_writes_the_history(tmp_path):
    x, y = toy_data()
    path = str(tmp_path / "log.csv")
    # Epoch 1 sets the best loss; epoch 2 cannot improve it by 10, so with patience 1 the run ends there.
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)
    history = loop.fit(
        compiled(),
        x,
        y,
        batch_size=BATCH,
        epochs=5,
        verbose=0,
        validation_data=(x[:50], y[:50]),
        callbacks=[stop, keras.callbacks.CSVLogger(path)],
    )
    assert history.epoch == [0, 1]
    assert stop.stopped_epoch == 1
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert set(rows[0]) == {"epoch"} | set(history.history)
    for key, values in history.history.items():
        assert [float(r[key]) for r in rows] == pytest.approx(values, rel=1e-7), key


def test_a_run_early_stopping_ended_is_complete_when_called_again(tmp_path, capsys):
    """The same code again on a workdir whose run EarlyStopping ended (after epoch 2 of 5) trains
    nothing more, as the uninterrupted run did not: the same history, weights and step."""
    x, y = toy_data()
    workdir = str(tmp_path / "run")

    def run():
        stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)
        model = compiled()
        history = loop.fit(
            model,
            x,
            y,
            batch_size=BATCH,
            epochs=5,
            verbose=0,
            seed=0,
            workdir=workdir,
            validation_data=(x[:50], y[:50]),
            callbacks=[stop],
        )
        return model, history

    first, history = run()
    assert history.epoch == [0, 1] and int(first.optimizer.iterations) == 2 * STEPS_PER_EPOCH
    saved = history_without_timing(workdir)
    capsys.readouterr()
    again, history = run()
    assert "stopped by a callback at step 14" in capsys.readouterr().out
    assert int(again.optimizer.iterations) == 2 * STEPS_PER_EPOCH
    assert history.history == saved and history_without_timing(workdir) == saved
    for a, b in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_reduce_lr_on_plateau_lowers_the_rate_the_compiled_step_uses(tmp_path):
    """The callback assigns the optimizer's rate variable; the next epoch's steps use the new rate
    (the history's lr) and ModelCheckpoint writes a loadable file each epoch."""
    x, y = toy_data()
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    path = str(tmp_path / "epoch{epoch}.keras")
    model = compiled()
    history = loop.fit(
        model, x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[plateau, keras.callbacks.ModelCheckpoint(path)]
    )
    # Epoch 1 sets the best loss; epochs 2 and 3 do not beat it by min_delta=10, so with patience 0
    # the rate halves after each of them: epoch 3 trains at 0.05, and 0.025 is left for the next.
    assert history.history["lr"] == pytest.approx([0.1, 0.1, 0.05], rel=1e-6)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.025, rel=1e-6)
    restored = keras.models.load_model(str(tmp_path / "epoch3.keras"))
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_batch_hooks_run_every_steps_per_execution_steps_as_in_keras(steps_per_execution):
    """A callback with batch hooks gets them when model.fit calls them: every steps_per_execution
    steps (the epoch's end included), with Keras's batch index, whatever steps_per_loop is."""
    x, y = toy_data()

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append((batch, sorted(logs)))

    ours, theirs = twins(logits_model, logits_compile())
    for m in (ours, theirs):
        m.steps_per_execution = steps_per_execution
    mine, keras_record = Record(), Record()
    loop.fit(ours, x, y, batch_size=BATCH, epochs=1, verbose=0, steps_per_loop=100, callbacks=[mine])
    theirs.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[keras_record])
    ours_seen, keras_seen = [b for b, _ in mine.seen], [b for b, _ in keras_record.seen]
    # Keras names an epoch's last, shorter execution by begin + steps_per_execution - 1 (8 of 7
    # batches); clr_loop by the batch it really ended at (6).
    assert ours_seen[:-1] == keras_seen[:-1] and len(ours_seen) == len(keras_seen) and ours_seen[-1] == 6
    assert mine.seen[0][1] == ["accuracy", "loss", "lr"]


def test_a_metric_that_is_not_a_mean_keeps_its_keras_state_and_validates_like_evaluate():
    """AUC cannot be summed per example: it is accumulated in its own Keras state (thresholded
    counts) over the whole validation set, including the last partial batch, as evaluate does."""
    x, y = toy_data()
    y = (y == 0).astype(np.float32)[:, None]
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    history = loop.fit(model, x, y, batch_size=BATCH, epochs=2, verbose=0, validation_data=(x[:90], y[:90]))
    assert {"auc", "val_auc", "accuracy", "val_accuracy"} <= set(history.history)
    expected = model.evaluate(x[:90], y[:90], batch_size=BATCH, verbose=0, return_dict=True)
    assert history.history["val_auc"][-1] == pytest.approx(expected["auc"], abs=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert history.history["val_loss"][-1] == pytest.approx(expected["loss"], rel=1e-5)


# 8. SIGKILL and resume ------------------------------------------------------------------------


def test_sigkill_mid_epoch_then_the_same_call_again_is_bit_identical(tmp_path, monkeypatch):
    sigkill_then_resume(tmp_path, monkeypatch)


# 9. Errors ------------------------------------------------------------------------------------


def test_an_uncompiled_model_is_refused():
    x, y = toy_data()
    with pytest.raises(ValueError, match="compile"):
        loop.fit(logits_model(), x, y, verbose=0)


@pytest.mark.parametrize(
    "make_args, pattern",
    [
        (lambda x, y: dict(x=x, y=y[:150]), r"200.*150|150.*200"),
        (lambda x, y: dict(x=x[:0], y=y[:0]), "empty"),
        (lambda x, y: dict(x=x, y=y, batch_size=0), "batch_size"),
        (lambda x, y: dict(x=x, y=y, batch_size=-1), "batch_size"),
        (lambda x, y: dict(x=tf.data.Dataset.from_tensor_slices((x, y))), "not batched"),
        (lambda x, y: dict(x=tf.data.Dataset.from_tensor_slices((x, y, y, y)).batch(8)), "a tuple of 4"),
        (lambda x, y: dict(x=x, y=y, validation_data=(x[:, :5], y)), "validation_data"),
    ],
    ids=["lengths", "empty", "batch_size_0", "batch_size_-1", "unbatched_dataset", "four_tuples", "validation_shape"],
)
def test_bad_input_is_refused_naming_the_culprit_before_anything_is_written(tmp_path, make_args, pattern):
    x, y = toy_data()
    workdir = str(tmp_path / "run")
    with pytest.raises(inputs.InputError, match=pattern):
        loop.fit(compiled(), verbose=0, workdir=workdir, **make_args(x, y))
    assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(checkpoint_every_steps="5"), "checkpoint_every_steps"),
        (dict(profile_steps=(5,)), "profile_steps"),
        (dict(seed=2**64), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(workdir=123), "workdir"),
        (dict(max_steps=float("nan")), "max_steps"),
        (dict(keep_checkpoints=1.5), "keep_checkpoints"),
        (dict(batch_splits=-1), "batch_splits"),
        (dict(validation_split=1.0), "validation_split"),
        (dict(epochs=2, initial_epoch=2), "initial_epoch"),
        (dict(validation_freq=0), "validation_freq"),
        (dict(steps_per_epoch=3), "steps_per_epoch"),
        (dict(class_weight={0: 2.0}, sample_weight=np.ones(N)), "class_weight"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_a_bad_argument_is_refused_naming_it(kwargs, name):
    x, y = toy_data()
    with pytest.raises(ValueError, match=name):
        loop.fit(compiled(), x, y, verbose=0, **kwargs)


def test_a_dataset_of_sample_weighted_batches_trains_like_keras():
    x, y = toy_data()
    weights = np.linspace(0.0, 2.0, N).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(BATCH)
    ours, theirs = twins(logits_model, logits_compile())
    history = loop.fit(ours, dataset, epochs=2, verbose=0, jit_compile=False, validation_data=dataset)
    keras_history = theirs.fit(dataset, epochs=2, verbose=0, validation_data=dataset)
    assert_same_weights(ours, theirs)
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(history.history[key], keras_history.history[key], rtol=1e-5)


# 10. Cyclical momentum ------------------------------------------------------------------------


def test_history_momentum_is_the_schedule_at_each_epochs_last_step():
    x, y = toy_data()
    clr = schedules.CyclicalLearningRate(0.01, 0.1, step_size=4)
    momentum = optimizers.CyclicalMomentum(clr, base_momentum=0.85, max_momentum=0.95)
    model = logits_model()
    model.compile(
        optimizers.CyclicalMomentumSGD(learning_rate=clr, momentum=momentum),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = loop.fit(model, x, y, batch_size=BATCH, epochs=3, verbose=0)
    last_steps = [6, 13, 20]
    # Triangular, step_size 4: height = 1 - |s/4 - 2*cycle + 1| with cycle = floor(1 + s/8):
    # 0.5, 0.75, 1.0 at steps 6, 13, 20; momentum 0.95 - 0.1*height, rate 0.01 + 0.09*height.
    assert history.history["momentum"] == pytest.approx([0.9, 0.875, 0.85], rel=1e-6)
    assert history.history["momentum"] == pytest.approx([float(momentum(s)) for s in last_steps], rel=1e-7)
    assert history.history["lr"] == pytest.approx([0.055, 0.0775, 0.1], rel=1e-6)


def test_no_momentum_key_for_a_constant_momentum():
    x, y = toy_data()
    history = loop.fit(compiled(momentum=0.9), x, y, batch_size=BATCH, verbose=0)
    assert "momentum" not in history.history and "lr" in history.history


# 11. NaN guard --------------------------------------------------------------------------------


def test_a_huge_learning_rate_raises_training_diverged_naming_step_and_rate():
    x, y = toy_data()
    model = logits_model()
    model.compile(keras.optimizers.SGD(1e30), "mse")
    # Step 0 is finite; its update makes the weights ~1e30, so step 1's outputs (~1e60) overflow.
    with pytest.raises(actions.TrainingDiverged, match=r"(at|after) step 1 \(learning rate 1e\+30\)"):
        loop.fit(model, x, y.astype(np.float32)[:, None].repeat(3, axis=1), batch_size=BATCH, verbose=0)
    assert int(model.optimizer.iterations) == 2


class NanFrom(keras.optimizers.schedules.LearningRateSchedule):
    """0.1, then NaN from step `start` on."""

    def __init__(self, start):
        self.start = start

    def __call__(self, step):
        return tf.where(step < self.start, tf.constant(0.1, tf.float32), tf.constant(float("nan"), tf.float32))


def _checkpoint_floats(path):
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name) for name, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating
    }


class NanWeightsAtEpochEnd(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        kernel = self.model.trainable_variables[0]
        kernel.assign(np.full(kernel.shape, np.nan, np.float32))


@pytest.mark.parametrize("case", ["nan_rate", "overflowing_update", "callback"])
def test_a_non_finite_rate_or_update_stops_the_run_before_any_non_finite_weight_is_saved(tmp_path, case, capsys):
    """A NaN rate from step 3 (loss and gradients finite at that step), a finite rate whose update
    overflows to inf at step 0, or a callback setting NaN weights at the epoch end (step 7): the guard
    names the step and saves nothing from it; every checkpoint left holds finite values only (read
    back with TensorFlow's checkpoint reader), and corrected code goes on from the last good one."""
    x, y = toy_data()
    workdir = str(tmp_path / "run")
    callbacks = []
    if case == "callback":
        model = compiled()
        callbacks = [NanWeightsAtEpochEnd()]
        pattern, last = (
            r"non-finite weights at step 7 \(sequential/dense/kernel\), set outside the training step",
            "ckpt-6",
        )
    elif case == "nan_rate":
        model = compiled()
        model.compile(keras.optimizers.SGD(NanFrom(3)), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pattern, last = r"non-finite learning rate nan at step 3", "ckpt-3"
    else:
        model = logits_model()
        model.compile(keras.optimizers.SGD(3e38), "mse")
        y = np.full((len(x), 3), 1e3, np.float32)  # a gradient of ~1e3 times a rate of 3e38: inf
        pattern, last = r"non-finite weights after step 0 \(learning rate 3e\+38\)", None
    with pytest.raises(actions.TrainingDiverged, match=pattern) as raised:
        loop.fit(
            model,
            x,
            y,
            batch_size=BATCH,
            verbose=0,
            seed=0,
            workdir=workdir,
            steps_per_loop=1,
            checkpoint_every_steps=1,
            callbacks=callbacks,
        )
    ckpt = os.path.join(workdir, "ckpt")
    saved = sorted(
        p[: -len(".index")] for p in (os.listdir(ckpt) if os.path.isdir(ckpt) else []) if p.endswith(".index")
    )
    assert (saved[-1] if saved else None) == last
    assert ("The last good checkpoint is" in str(raised.value)) == (last is not None)
    for name in saved:
        for key, value in _checkpoint_floats(os.path.join(workdir, "ckpt", name)).items():
            assert np.all(np.isfinite(value)), (name, key)
    if last is not None:
        capsys.readouterr()
        model = compiled()
        if case == "nan_rate":  # the schedule corrected
            model.compile(
                keras.optimizers.SGD(NanFrom(10**9)), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            )
        loop.fit(
            model,
            x,
            y,
            batch_size=BATCH,
            verbose=0,
            seed=0,
            workdir=workdir,
            steps_per_loop=1,
            checkpoint_every_steps=1,
        )
        assert f"{last} at step {last[5:]}" in capsys.readouterr().out
        assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# 12. TensorBoard events and history.json ------------------------------------------------------


def test_workdir_holds_tensorboard_scalars_and_the_history(tmp_path):
    x, y = toy_data()
    x_val, y_val = toy_data(50, seed=1)
    workdir = str(tmp_path / "run")
    model = compiled()
    history = loop.fit(
        model,
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        workdir=workdir,
        log_every_steps=STEPS_PER_EPOCH,
        validation_data=(x_val, y_val),
    )
    train = event_values(os.path.join(workdir, "train"))
    evals = event_values(os.path.join(workdir, "eval"))
    assert {"loss", "accuracy", "lr"} <= set(train)
    assert {"loss", "accuracy"} <= set(evals)
    epoch_ends = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    # One log window per epoch: the window's means are the epoch's.
    for tag, key in (("loss", "loss"), ("accuracy", "accuracy"), ("lr", "lr")):
        assert sorted(train[tag]) == epoch_ends
        assert [train[tag][s] for s in epoch_ends] == pytest.approx(history.history[key], rel=1e-6), tag
    for tag in ("loss", "accuracy"):
        assert sorted(evals[tag]) == epoch_ends
        assert [evals[tag][s] for s in epoch_ends] == pytest.approx(history.history["val_" + tag], rel=1e-6)
    expected = model.evaluate(x_val, y_val, batch_size=BATCH, verbose=0, return_dict=True)
    assert evals["loss"][epoch_ends[-1]] == pytest.approx(expected["loss"], rel=1e-5)
    assert history_without_timing(workdir) == history.history


def test_tensorboard_values_after_a_sigterm_and_resume_equal_the_uninterrupted_runs(tmp_path):
    """SIGTERM between two summary points (step 5, points every 3 steps): the point in progress is
    checkpointed, so the resumed run's point at step 6, and every later train and eval value, equal
    the uninterrupted run's, read back with TensorBoard's own reader."""
    x, y = toy_data()
    kwargs = dict(
        batch_size=BATCH,
        epochs=2,
        seed=7,
        verbose=0,
        log_every_steps=3,
        steps_per_loop=1,
        validation_data=(x[:50], y[:50]),
    )
    whole = str(tmp_path / "whole")
    loop.fit(compiled(momentum=0.9), x, y, workdir=whole, **kwargs)

    parts = str(tmp_path / "parts")
    with pytest.raises(actions.Interrupted, match="SIGTERM at step 5"):
        loop.fit(compiled(momentum=0.9), x, y, workdir=parts, callbacks=[SigtermAt(5)], **kwargs)
    loop.fit(compiled(momentum=0.9), x, y, workdir=parts, **kwargs)
    for sub in ("train", "eval"):
        expected, got = event_values(os.path.join(whole, sub)), event_values(os.path.join(parts, sub))
        assert set(got) == set(expected)
        for tag in expected:
            assert got[tag] == expected[tag], (sub, tag)  # the same steps, bit-identical values
    assert 6 in expected_steps(whole)


@pytest.mark.parametrize("signal_step", [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH])
def test_a_sigterm_at_an_epochs_last_step_resumes_into_its_validation_and_history(tmp_path, signal_step):
    """A SIGTERM handled at an epoch's last step (7, or 14: the run's last): the resume validates that
    epoch and writes its history entry, so history.json and TensorBoard equal an uninterrupted run's."""
    x, y = toy_data()
    kwargs = dict(
        batch_size=BATCH,
        epochs=2,
        seed=7,
        verbose=0,
        log_every_steps=3,
        steps_per_loop=1,
        validation_data=(x[:50], y[:50]),
    )
    whole = str(tmp_path / "whole")
    loop.fit(compiled(), x, y, workdir=whole, **kwargs)
    parts = str(tmp_path / "parts")
    with pytest.raises(actions.Interrupted, match=f"SIGTERM at step {signal_step}"):
        loop.fit(compiled(), x, y, workdir=parts, callbacks=[SigtermAt(signal_step)], **kwargs)
    history = loop.fit(compiled(), x, y, workdir=parts, **kwargs)
    expected = history_without_timing(whole)
    assert len(expected["loss"]) == 2
    assert history_without_timing(parts) == expected
    assert history.history == expected
    for sub in ("train", "eval"):
        assert event_values(os.path.join(parts, sub)) == event_values(os.path.join(whole, sub)), sub


def test_a_sigterm_after_the_last_batch_of_a_dataset_of_unknown_length_resumes_into_the_epoch_end(tmp_path):
    """A Dataset whose length is unknown (filtered): the signal after an epoch's last batch comes before
    the loop learns the epoch is over; the resume ends that epoch (validation, history) and trains on."""
    x, y = toy_data()

    def data():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).filter(lambda a, b: True)

    kwargs = dict(epochs=2, seed=7, verbose=0, log_every_steps=3, steps_per_loop=1, validation_data=(x[:50], y[:50]))
    whole = str(tmp_path / "whole")
    loop.fit(compiled(), data(), workdir=whole, **kwargs)
    parts = str(tmp_path / "parts")
    with pytest.raises(actions.Interrupted, match=f"SIGTERM at step {STEPS_PER_EPOCH}"):
        loop.fit(compiled(), data(), workdir=parts, callbacks=[SigtermAt(STEPS_PER_EPOCH)], **kwargs)
    loop.fit(compiled(), data(), workdir=parts, **kwargs)
    expected = history_without_timing(whole)
    assert len(expected["loss"]) == 2
    assert history_without_timing(parts) == expected


def expected_steps(workdir):
    return set(event_values(os.path.join(workdir, "train"))["loss"])


# 13. Resuming refused -------------------------------------------------------------------------


def test_the_same_workdir_with_another_batch_size_is_refused(tmp_path):
    x, y = toy_data()
    workdir = str(tmp_path / "run")
    loop.fit(compiled(), x, y, batch_size=BATCH, verbose=0, workdir=workdir, max_steps=3)
    with pytest.raises(checkpointing.WorkdirError, match=r"batch size: 32 \(saved\) vs 16 \(now\)"):
        loop.fit(compiled(), x, y, batch_size=16, verbose=0, workdir=workdir)


DATASET_KILL_SCRIPT = """
import json, os, signal, sys
import keras, numpy as np, tensorflow as tf
from clr_loop import loop

workdir, out, kill = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(0)
x = rng.normal(size=(200, 8)).astype(np.float32)
y = np.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1).astype(np.int32)
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dropout(0.2, seed=2), keras.layers.Dense(3)])
model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class Kill(keras.callbacks.Callback):
    # As epoch 1 begins, after epoch 0's checkpoint.
    def on_epoch_begin(self, epoch, logs=None):
        if kill == "epoch" and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)


ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(200, seed=3).batch(32)
history = loop.fit(model, ds, epochs=3, verbose=0, workdir=workdir, steps_per_loop=1, checkpoint_every_steps=1,
                   validation_data=(x[:50], y[:50]), callbacks=[Kill()])
np.savez(out, *model.get_weights(), history=json.dumps(history.history))
"""


def test_a_reshuffling_dataset_run_killed_at_an_epoch_boundary_resumes_bit_identically(tmp_path):
    """SIGKILL as epoch 1 begins (the epoch-end checkpoint is the latest): the same command again ends
    with the uninterrupted run's weights and history, bit for bit (the resumed epoch draws the next
    shuffle order, as the uninterrupted run does)."""
    kill = "epoch"
    script = tmp_path / "train.py"
    script.write_text(DATASET_KILL_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([REPO] + sys.path))

    def run(workdir, out, kill_at):
        args = [sys.executable, str(script), str(tmp_path / workdir), str(tmp_path / out), kill_at]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)

    assert run("parts", "parts.npz", kill).returncode == -signal.SIGKILL
    resumed, whole = run("parts", "parts.npz", "none"), run("whole", "whole.npz", "none")
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr[-2000:] + whole.stderr[-2000:]
    expected, actual = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "parts.npz")
    assert set(actual.files) == set(expected.files)
    for name in expected.files:
        assert np.array_equal(actual[name], expected[name]), name
