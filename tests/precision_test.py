"""Mixed precision: clr_loop.fit under a model's own Keras dtype policy, loss scaling, the trainer's
--precision and the resume rule.

Oracles: Keras's own `model.fit` on a twin model (weights, loss, the LossScaleOptimizer's scale and
iterations), the schedule's value at Keras's iterations, an uninterrupted run for every resume, and
the dtypes Keras's mixed-precision guide prescribes.
"""

import os

import keras
import numpy as np
import pytest

from clr_loop import actions
from clr_loop import checkpointing
from clr_loop import cli
from clr_loop.experiment import config as config_lib
from clr_loop import inputs
from clr_loop import loop
from clr_loop.experiment import models
from clr_loop import runtime
from clr_loop import schedules
from clr_loop.experiment import trial
from clr_loop import workdir as workdir_lib
from testing import BATCH, STEPS_PER_EPOCH, assert_same_weights, fake_data, make_config, toy_data, twins

MIXED = ("mixed_bfloat16", "mixed_float16")
EPOCHS = 3


def mixed_model(precision, seed=1):
    """Returns Input(8) -> Dense(16, relu) -> Dense(3) float32 logits, built under `precision`."""
    with runtime.precision(precision):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, dtype="float32")]
        )


def clr_compile(initial_scale=None):
    """compile() arguments: SGD with momentum on a triangular2 schedule, wrapped in a
    LossScaleOptimizer of `initial_scale` when given (else Keras wraps it for mixed_float16)."""

    def kwargs():
        schedule = schedules.Triangular2CyclicalLearningRate(1e-3, 0.1, step_size=4)
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
        if initial_scale is not None:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
        return dict(
            optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
        )

    return kwargs


def schedule_of(model):
    """The learning-rate schedule of `model`'s optimizer (inside a LossScaleOptimizer too)."""
    return getattr(model.optimizer, "inner_optimizer", model.optimizer)._learning_rate


def float_state_dtypes(model):
    """The dtypes of the optimizer's and the metrics' float variables."""
    variables = list(model.optimizer.variables) + list(model.metrics_variables)
    return {str(v.dtype) for v in variables if "int" not in str(v.dtype)}


def test_precision_scope_builds_under_the_policy_and_restores_the_global_one():
    before = keras.config.dtype_policy().name
    with runtime.precision("mixed_bfloat16"):
        layer = keras.layers.Dense(2)
    assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == before
    with pytest.raises(RuntimeError), runtime.precision("mixed_float16"):
        raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == before
    with pytest.raises(ValueError, match="precision must be one of float32, mixed_bfloat16, mixed_float16"):
        with runtime.precision("float16"):
            pass


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("batch_splits", [1, 2])
def test_fit_under_a_mixed_policy_equals_keras_fit(precision, batch_splits):
    x, y = toy_data()
    ours, theirs = twins(lambda: mixed_model(precision), clr_compile())
    assert ours.dtype_policy.name == precision
    assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    history = loop.fit(
        ours,
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        jit_compile=False,
        batch_splits=batch_splits,
    )
    keras_history = theirs.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    # Whole batches compute what Keras computes; parts round in 16 bits differently.
    whole = batch_splits == 1
    assert_same_weights(ours, theirs, atol=1e-5 if whole else 2e-3)
    np.testing.assert_allclose(history.history["loss"], keras_history.history["loss"], rtol=1e-5 if whole else 1e-3)
    assert int(ours.optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH
    # The schedule, the metric sums and the optimizer state stay float32.
    assert float_state_dtypes(ours) == {"float32"}
    assert keras.backend.standardize_dtype(ours.optimizer.learning_rate.dtype) == "float32"
    last = schedule_of(ours)(EPOCHS * STEPS_PER_EPOCH - 1)
    assert history.history["lr"][-1] == pytest.approx(float(last), rel=1e-6)


def _overflowing_twins(initial_scale):
    return twins(lambda: mixed_model("mixed_float16"), clr_compile(initial_scale=initial_scale))


@pytest.mark.parametrize("jit_compile, input_mode", [(False, "pipeline"), (False, "device"), (True, "device")])
def test_overflow_skips_steps_as_keras_does_and_is_not_divergence(jit_compile, input_mode):
    # A scale of 2**24 overflows float16's gradients: the first steps are skipped (the scale halves
    # each time) until it is small enough, then training goes on. Keras's iterations (and so the
    # schedule) do not advance on a skipped step; the loop still runs every batch.
    x, y = toy_data()
    ours, theirs = _overflowing_twins(2.0**24)
    # jit_compile=True: the whole step, the LossScaleOptimizer's skip included, is one XLA function.
    # Both input modes move on to the next batch after a skipped step, as Keras does.
    history = loop.fit(
        ours,
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        jit_compile=jit_compile,
        input_mode=input_mode,
    )
    theirs.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    skipped = EPOCHS * STEPS_PER_EPOCH - int(theirs.optimizer.iterations)
    assert 3 <= skipped < EPOCHS * STEPS_PER_EPOCH  # some skipped, some taken
    assert int(ours.optimizer.iterations) == int(theirs.optimizer.iterations)
    assert float(ours.optimizer.dynamic_scale) == float(theirs.optimizer.dynamic_scale)
    assert int(ours.optimizer.step_counter) == int(theirs.optimizer.step_counter)
    assert_same_weights(ours, theirs)
    assert len(history.history["loss"]) == EPOCHS
    # The logged rate is the schedule at Keras's (lagging) iterations before the last update.
    assert history.history["lr"][-1] == pytest.approx(
        float(schedule_of(ours)(int(theirs.optimizer.iterations) - 1)), rel=1e-6
    )


def test_automatic_splitting_is_off_under_loss_scaling_and_explicit_parts_skip_through_the_optimizer():
    # Automatic: whole batches, as Keras (a part's gradients would overflow at another scale).
    model, _ = _overflowing_twins(2.0**24)
    assert runtime.resolve_batch_splits(0, model, 64)[0] == 1
    assert trial.planned_batch_splits(config_lib.Config(precision="mixed_float16")) == 1
    # Explicit parts: the summed gradient goes through the LossScaleOptimizer, which halves its
    # scale once per step it skips (no step grows it: 2000 steps between growths).
    x, y = toy_data()
    history = loop.fit(
        model, x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, jit_compile=False, batch_splits=2
    )
    skipped = EPOCHS * STEPS_PER_EPOCH - int(model.optimizer.iterations)
    assert 3 <= skipped < EPOCHS * STEPS_PER_EPOCH
    assert float(model.optimizer.dynamic_scale) == 2.0**24 / 2.0**skipped
    assert np.isfinite(history.history["loss"]).all()


def test_a_non_finite_loss_under_loss_scaling_is_still_divergence():
    x, y = toy_data()
    model = mixed_model("mixed_float16")
    model.compile(keras.optimizers.SGD(1e30), "mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    with pytest.raises(actions.TrainingDiverged, match="non-finite loss"):
        loop.fit(
            model,
            x,
            y.astype(np.float32)[:, None].repeat(3, axis=1),
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            jit_compile=False,
            batch_splits=1,
        )


def test_resume_with_skipped_steps_is_bit_identical_and_positioned_by_batches(tmp_path):
    x, y = toy_data()
    kwargs = dict(batch_size=BATCH, epochs=EPOCHS, verbose=0, seed=5, jit_compile=False, batch_splits=1)
    reference, _ = _overflowing_twins(2.0**24)
    loop.fit(reference, x, y, workdir=str(tmp_path / "whole"), **kwargs)
    workdir = str(tmp_path / "parts")
    first, _ = _overflowing_twins(2.0**24)
    loop.fit(first, x, y, workdir=workdir, max_steps=10, **kwargs)  # mid-epoch, after the skipped steps
    assert int(first.optimizer.iterations) < 10
    assert os.path.exists(os.path.join(workdir, "ckpt", "ckpt-10.index"))  # named by steps run
    resumed, _ = _overflowing_twins(2.0**24)
    history = loop.fit(resumed, x, y, workdir=workdir, **kwargs)
    assert len(history.history["loss"]) == EPOCHS
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert float(resumed.optimizer.dynamic_scale) == float(reference.optimizer.dynamic_scale)
    assert int(resumed.optimizer.iterations) == int(reference.optimizer.iterations)


@pytest.mark.parametrize(
    "saved,now",
    [
        ("float32", "mixed_bfloat16"),
        ("mixed_bfloat16", "float32"),
        ("float32", "mixed_float16"),
        ("mixed_float16", "mixed_bfloat16"),
    ],
)
def test_fit_refuses_to_resume_in_another_precision_naming_it(tmp_path, saved, now):
    x, y = toy_data()
    workdir = str(tmp_path / "run")
    kwargs = dict(batch_size=BATCH, verbose=0, jit_compile=False, workdir=workdir)
    first = mixed_model(saved)
    first.compile(**clr_compile()())
    loop.fit(first, x, y, max_steps=3, **kwargs)
    again = mixed_model(now)
    again.compile(**clr_compile()())
    with pytest.raises(checkpointing.WorkdirError, match=rf"the precision: '{saved}' \(saved\) vs '{now}' \(now\)"):
        loop.fit(again, x, y, **kwargs)


@pytest.mark.parametrize("name", ["tutorial_cnn", "resnet20"])
def test_the_named_models_output_float32_under_mixed_policies(name):
    images = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 1)).astype(np.uint8)
    with runtime.precision("mixed_bfloat16"):
        model = models.create(name, (16, 16, 1), 10, train_images=images).model
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert keras.backend.standardize_dtype(model(images).dtype) == "float32"
    assert {str(v.dtype) for v in model.variables if "seed" not in v.path} == {"float32"}


def test_the_trainer_builds_under_its_precision_leaves_the_global_policy_and_names_the_flag(tmp_path):
    before = keras.config.dtype_policy().name
    trainer = trial.Trainer(make_config(tmp_path, precision="mixed_float16", max_steps=3), fake_data())
    assert keras.config.dtype_policy().name == before
    assert trainer.model.dtype_policy.name == "mixed_float16"
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert [layer.compute_dtype for layer in trainer.model.layers if layer.weights][::3] == ["float16", "float32"]
    trainer.train(verbose=0)
    again = trial.Trainer(make_config(tmp_path, precision="mixed_bfloat16"), fake_data())
    with pytest.raises(checkpointing.WorkdirError) as refused:
        again.train(verbose=0)
    message = cli.error_message(refused.value)
    assert "precision: 'mixed_float16' (saved) vs 'mixed_bfloat16' (now)" in message
    assert "--precision" in message


def test_a_checkpoint_from_before_the_precision_was_recorded_is_float32s():
    x, y = toy_data()
    train_input = inputs.make_train_input(x, y, BATCH, shuffle=True, drop_remainder=False)
    old = workdir_lib.run_identity(mixed_model("float32"), train_input, seed=1)
    del old["precision"]
    assert (
        workdir_lib.identity_differences(old, workdir_lib.run_identity(mixed_model("float32"), train_input, seed=1))
        == []
    )
    assert workdir_lib.identity_differences(
        old, workdir_lib.run_identity(mixed_model("mixed_bfloat16"), train_input, seed=1)
    ) == ["the precision: 'float32' (saved) vs 'mixed_bfloat16' (now)"]
