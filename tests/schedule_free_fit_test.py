"""clr_loop.fit with the schedule-free optimizers: training at y, validation and the final weights
at x, BatchNormalization statistics recomputed at x, kill -9 resumes and .keras round trips.

Oracles: Keras's own `model.evaluate` at the weights fit leaves (x), numpy batch statistics of
the last training batches at x, the optimizer's own swap back to y, an uninterrupted run for every
resume, and the model saved before loading.
"""

import os
import runpy
import signal
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from absl import flags

from clr_loop import cli
from clr_loop.experiment import config as config_lib
from clr_loop import loop
from clr_loop import optimizers
from clr_loop.experiment import trial
from testing import BATCH, REPO, STEPS_PER_EPOCH, fake_data, history_without_timing, make_config, start_script
from testing import toy_data


def sf_model(bn=False, seed=1):
    keras.utils.set_random_seed(seed)
    middle = [keras.layers.BatchNormalization(momentum=0.9)] if bn else []
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16), *middle, keras.layers.ReLU(), keras.layers.Dense(3)]
    )


def sf_compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.ScheduleFreeSGD(0.5, warmup_steps=4),
        lambda: optimizers.ScheduleFreeAdamW(0.02, warmup_steps=4, weight_decay=0.01),
    ],
    ids=["sgd", "adamw"],
)
def test_validation_and_the_weights_after_fit_are_at_x(make):
    x, y = toy_data()
    model = sf_compile(sf_model(), make())
    history = loop.fit(model, x, y, batch_size=BATCH, epochs=2, seed=3, verbose=0, validation_data=(x[:60], y[:60]))
    assert model.optimizer.at_x
    at_x = model.evaluate(x[:60], y[:60], batch_size=BATCH, verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(at_x["loss"], rel=1e-5)
    assert history.history["val_accuracy"][-1] == pytest.approx(at_x["accuracy"], abs=1e-6)
    x_weights = model.get_weights()
    model.optimizer.swap_to_y()
    at_y = model.evaluate(x[:60], y[:60], batch_size=BATCH, verbose=0, return_dict=True)
    assert at_y["loss"] != pytest.approx(at_x["loss"], rel=1e-3)
    assert not all(np.allclose(a, b) for a, b in zip(x_weights, model.get_weights()))


def test_the_warmed_up_rate_is_logged():
    x, y = toy_data()
    model = sf_compile(sf_model(), optimizers.ScheduleFreeSGD(0.7, warmup_steps=10))
    history = loop.fit(model, x, y, batch_size=BATCH, epochs=2, seed=3, verbose=0)
    # The rate of each epoch's last step (0-based steps 6 and 13): 0.7 * (6 + 1) / 10, then 0.7.
    assert history.history["lr"] == pytest.approx([0.49, 0.7], rel=1e-6)


@pytest.mark.parametrize("input_mode", ["pipeline", "device"])
def test_batch_norm_statistics_after_fit_are_the_average_of_the_last_batches_at_x(input_mode):
    x, y = toy_data()
    n = 3
    model = sf_compile(sf_model(bn=True), optimizers.ScheduleFreeSGD(0.3))
    loop.fit(
        model,
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        drop_remainder=True,
        bn_recompute_batches=n,
        input_mode=input_mode,
    )
    steps = 2 * 6  # 6 full batches an epoch without the partial one
    kernel, bias = model.layers[0].get_weights()  # x, where fit leaves them
    means, variances = [], []
    for step in range(steps - n, steps):
        start = (step % 6) * BATCH
        h = x[start : start + BATCH].astype(np.float64) @ kernel + bias
        means.append(h.mean(axis=0))
        variances.append(h.var(axis=0))
    bn = model.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-4, atol=1e-5)


def test_validating_at_x_leaves_training_at_y_untouched():
    """The same run with and without validation data (which swaps to x, recomputes the statistics
    and restores y's) ends with the same bits."""
    x, y = toy_data()
    runs = []
    for validation in (None, (x[:60], y[:60])):
        model = sf_compile(sf_model(bn=True), optimizers.ScheduleFreeAdamW(0.01, warmup_steps=3))
        loop.fit(
            model,
            x,
            y,
            batch_size=BATCH,
            epochs=3,
            seed=4,
            verbose=0,
            validation_data=validation,
            bn_recompute_batches=4,
        )
        runs.append([v.numpy() for v in model.variables + model.optimizer.variables])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_a_saved_keras_file_holds_x_and_trains_on_from_y_like_the_original(tmp_path):
    x, y = toy_data()
    model = sf_compile(sf_model(bn=True), optimizers.ScheduleFreeAdamW(0.01, warmup_steps=3, weight_decay=0.01))
    loop.fit(model, x, y, batch_size=BATCH, epochs=2, seed=4, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is optimizers.ScheduleFreeAdamW
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.at_x
    for a, b in zip(model.variables + model.optimizer.variables, loaded.variables + loaded.optimizer.variables):
        assert np.array_equal(a.numpy(), b.numpy()), a.path
    for m in (model, loaded):
        m.compile(
            optimizer=m.optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=False,
        )
        loop.fit(m, x, y, batch_size=BATCH, epochs=1, seed=9, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_finished_workdir_called_again_leaves_the_model_at_x(tmp_path):
    x, y = toy_data()
    kwargs = dict(batch_size=BATCH, epochs=2, seed=4, verbose=0, workdir=str(tmp_path / "run"), bn_recompute_batches=2)
    first = sf_compile(sf_model(bn=True), optimizers.ScheduleFreeSGD(0.3))
    loop.fit(first, x, y, **kwargs)
    again = sf_compile(sf_model(bn=True), optimizers.ScheduleFreeSGD(0.3))
    loop.fit(again, x, y, **kwargs)
    assert again.optimizer.at_x
    for a, b in zip(first.variables, again.variables):
        assert np.array_equal(a.numpy(), b.numpy()), a.path


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_a_bad_bn_recompute_batches_is_refused_naming_it(value):
    x, y = toy_data()
    model = sf_compile(sf_model(bn=True), optimizers.ScheduleFreeSGD(0.3))
    with pytest.raises(ValueError, match="bn_recompute_batches must be an integer >= 0"):
        loop.fit(model, x, y, batch_size=BATCH, epochs=1, verbose=0, bn_recompute_batches=value)


@pytest.mark.parametrize("stop_at", [10, STEPS_PER_EPOCH], ids=["mid_epoch", "epoch_end"])
def test_a_reshuffling_dataset_run_stopped_and_resumed_is_bit_identical(tmp_path, stop_at):
    """The BatchNorm recompute reads the Dataset's first batches through an iterator of its own,
    which draws a shuffle too; the resumed run draws the same ones."""
    x, y = toy_data()
    dataset = lambda: tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=3).batch(BATCH)  # noqa: E731
    kwargs = dict(epochs=3, verbose=0, validation_data=(x[:50], y[:50]), steps_per_loop=3, bn_recompute_batches=2)
    make = lambda: sf_compile(sf_model(bn=True), optimizers.ScheduleFreeAdamW(0.01, warmup_steps=3))  # noqa: E731
    whole = make()
    expected = loop.fit(whole, dataset(), workdir=str(tmp_path / "whole"), **kwargs)
    workdir = str(tmp_path / "parts")
    loop.fit(make(), dataset(), workdir=workdir, max_steps=stop_at, **kwargs)
    second = make()
    resumed = loop.fit(second, dataset(), workdir=workdir, **kwargs)
    assert resumed.history == expected.history
    assert second.optimizer.at_x
    for a, b in zip(whole.variables + whole.optimizer.variables, second.variables + second.optimizer.variables):
        assert np.array_equal(a.numpy(), b.numpy()), a.path


KILL_SCRIPT = '''
import os, re, signal, sys
import keras
import numpy as np
from clr_loop import loop, optimizers

workdir, out, kill_at, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
x = rng.normal(size=(200, 8)).astype(np.float32)
y = np.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1).astype(np.int32)
keras.utils.set_random_seed(1)
model = keras.Sequential([
    keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(momentum=0.9),
    keras.layers.ReLU(), keras.layers.Dropout(0.3, seed=2), keras.layers.Dense(3),
])
model.compile(optimizers.ScheduleFreeAdamW(0.01, warmup_steps=5, weight_decay=0.01),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def kill():
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)


class KillOnce(keras.callbacks.Callback):
    # Mid-epoch: at the first batch end at or after kill_at; at an epoch end: when the epoch that
    # starts at kill_at begins (after the previous epoch's validation and checkpoint).
    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if 0 <= kill_at <= step and step % 7 and not os.path.exists(marker):
            kill()

    def on_epoch_begin(self, epoch, logs=None):
        if int(self.model.optimizer.iterations) == kill_at and not os.path.exists(marker):
            kill()


loop.fit(model, x, y, batch_size=32, epochs=3, seed=7, verbose=0, workdir=workdir, steps_per_loop=2,
         checkpoint_every_steps=4, log_every_steps=3, validation_data=(x[:50], y[:50]), callbacks=[KillOnce()],
         bn_recompute_batches=3)
# Named without Keras's automatic numbers (the reference run shares the test's process).
np.savez(out, **{f"{i}:" + re.sub(r"_[0-9]+", "", v.path): v.numpy()
                 for i, v in enumerate(model.variables + model.optimizer.variables)})
'''


@pytest.mark.parametrize(
    "kill_at,resumed_from", [(10, "ckpt-8"), (STEPS_PER_EPOCH, "ckpt-7")], ids=["mid_epoch", "epoch_end"]
)
def test_sigkill_then_the_same_call_again_is_bit_identical(tmp_path, monkeypatch, kill_at, resumed_from):
    script = str(tmp_path / "train.py")
    with open(script, "w") as f:
        f.write(KILL_SCRIPT)
    marker = str(tmp_path / "killed")
    ref_dir, run_dir = str(tmp_path / "reference"), str(tmp_path / "run")
    ref_out, run_out = str(tmp_path / "ref.npz"), str(tmp_path / "run.npz")
    killed = start_script(script, run_dir, run_out, kill_at, marker)
    monkeypatch.setattr(sys, "argv", [script, ref_dir, ref_out, "-1", marker])
    runpy.run_path(script, run_name="__main__")
    out, _ = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, out
    assert os.path.exists(marker) and not os.path.exists(run_out)
    resumed = start_script(script, run_dir, run_out, kill_at, marker)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert "Resuming from" in out and resumed_from in out, out
    expected, actual = np.load(ref_out), np.load(run_out)
    assert len(expected.files) > 10 and set(actual.files) == set(expected.files)
    assert any("_z" in name for name in expected.files) and any("weight_sum" in name for name in expected.files)
    for name in expected.files:
        assert np.array_equal(actual[name], expected[name]), name
    assert history_without_timing(run_dir) == history_without_timing(ref_dir)


# The CLI's --mode=schedule_free ------------------------------------------------------------------


def flagfile_config(name, *extra):
    flag_values = flags.FlagValues()
    cli.define_training_flags(flag_values)
    flag_values(["clr_loop.train", f"--flagfile={os.path.join(REPO, 'flags', name)}", *extra])
    return cli.config_from_flags(flag_values)


@pytest.mark.parametrize(
    "name,cls,beta",
    [
        ("schedule_free_sgd.flags", optimizers.ScheduleFreeSGD, 0.9),
        ("schedule_free_adamw.flags", optimizers.ScheduleFreeAdamW, 0.9),
    ],
)
def test_flagfiles_build_the_schedule_free_optimizers_at_max_lr_with_the_warmup_in_steps(name, cls, beta):
    with open(os.path.join(REPO, "flags", name)) as f:
        assert f.readline().strip() == f"# python -m clr_loop.train --flagfile=flags/{name}"
    config = flagfile_config(name)
    assert config.mode == "schedule_free" and config.epochs == 10 and not config.uses_cycle_momentum
    plan = config_lib.plan_steps(config, 60000)
    assert plan.warmup_steps == round(0.5 * 937) == 468
    opt = trial.make_optimizer(config, plan)
    assert type(opt) is cls
    assert opt.beta == beta and opt.warmup_steps == 468
    assert opt.get_config()["learning_rate"] == pytest.approx(config.max_lr)
    assert opt.weight_decay == (0.004 if cls is optimizers.ScheduleFreeAdamW else 0.0)


def test_schedule_free_sgd_takes_its_beta_from_momentum():
    config = flagfile_config("schedule_free_sgd.flags", "--momentum=0.75", "--weight_decay=0.01")
    opt = trial.make_optimizer(config, config_lib.plan_steps(config, 640))
    assert opt.beta == 0.75 and opt.weight_decay == 0.01 and opt.warmup_steps == 5


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--optimizer=adam"], "--mode=schedule_free needs --optimizer=sgd or --optimizer=adamw"),
        (["--cycle_momentum"], "--cycle_momentum cannot run with --mode=schedule_free"),
        (["--warmup_epochs=-1"], "--warmup_epochs must be a number of epochs >= 0"),
    ],
)
def test_bad_schedule_free_flags_are_named(extra, pattern):
    with pytest.raises(app.UsageError, match=pattern):
        flagfile_config("schedule_free_sgd.flags", *extra)


def test_trainer_runs_schedule_free_and_leaves_x(tmp_path):
    config = make_config(tmp_path, mode="schedule_free", optimizer="adamw", max_lr=0.002, warmup_epochs=0.25)
    trainer = trial.Trainer(config, fake_data())
    history = trainer.train()
    assert type(trainer.optimizer) is optimizers.ScheduleFreeAdamW and trainer.optimizer.warmup_steps == 2
    assert trainer.optimizer.at_x
    assert history["lr"] == pytest.approx([0.002, 0.002], rel=1e-6)
    assert all(np.isfinite(history["val_loss"]))
