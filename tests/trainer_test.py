"""Tests for clr_loop.experiment.trial on small in-memory data (explicit step counts everywhere)."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import actions
from clr_loop import checkpointing
from clr_loop import errors
from clr_loop.experiment import config as config_lib
from clr_loop import inner_loop
from clr_loop import inputs
from clr_loop import runtime
from clr_loop import steps as steps_lib
from clr_loop.experiment import trial
from testing import fake_data, make_config, weights


def test_a_config_built_in_code_with_invalid_values_is_refused_naming_the_field(tmp_path):
    config = make_config(tmp_path, batch_size=0)
    with pytest.raises(config_lib.ConfigError) as refused:
        trial.Trainer(config, fake_data())
    assert isinstance(refused.value, errors.Error) and isinstance(refused.value, ValueError)
    assert refused.value.argument == "batch_size"
    assert str(refused.value) == "batch_size must be a positive integer, got 0"
    assert not os.path.exists(config.workdir)  # refused before anything is built or written
    with pytest.raises(config_lib.ConfigError, match="^batch_size must be a positive integer, got 0$"):
        trial.train_and_evaluate(config)  # before the data is loaded: none is given here
    # Every problem, one per line; the first one's field is the argument.
    several = make_config(tmp_path, momentum=1.5, input_mode="device", strategy="mirrored")
    with pytest.raises(config_lib.ConfigError) as refused:
        trial.Trainer(several, fake_data())
    assert refused.value.argument == "momentum"
    assert str(refused.value).splitlines() == [
        "momentum must be in [0, 1), got 1.5",
        "input_mode=device needs strategy=default (one replica); input_mode=auto feeds the other strategies "
        "through tf.data",
    ]
    assert [p.field for p in refused.value.problems] == ["momentum", "input_mode"]


def test_one_step_changes_weights_and_reports_the_rate_it_used(tmp_path):
    trainer = trial.Trainer(make_config(tmp_path), fake_data())
    trainer.optimizer.iterations.assign(3)
    schedule = trainer.optimizer._learning_rate
    before = weights(trainer.model)
    window = trainer.run.run_steps(1)
    assert int(trainer.optimizer.iterations) == 4
    assert float(window["lr"]) == pytest.approx(float(schedule(3)), rel=1e-6)
    assert float(window["lr"]) != pytest.approx(float(schedule(4)), rel=1e-3)
    assert all(not np.array_equal(a, b) for a, b in zip(before, weights(trainer.model)))
    assert float(window["count"]) == 32


def test_sgd_update_matches_an_independent_gradient_step(tmp_path):
    """w' = w - lr * grad, with grad computed by a separate tape on the same batch."""
    data = fake_data()
    trainer = trial.Trainer(make_config(tmp_path, mode="none", lr=0.05), data)
    trainer.model.layers[5].rate = 0.0  # no dropout, so a second forward pass sees the same net
    images, labels = next(iter(inputs.array_train_dataset(data.train.arrays, 32, 42)))
    before = weights(trainer.model)
    with tf.GradientTape() as tape:
        probs = trainer.model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
    grads = [g.numpy() for g in tape.gradient(loss, trainer.model.trainable_variables)]
    trainer.run.steps.train_step(images, labels)
    for w0, g, w1 in zip(before, grads, weights(trainer.model)):
        np.testing.assert_allclose(w1, w0 - 0.05 * g, rtol=1e-5, atol=1e-7)


def test_steps_per_loop_gives_the_same_weights_as_single_steps(tmp_path):
    data = fake_data()
    looped = trial.Trainer(make_config(tmp_path), data)
    looped.run.run_steps(6)
    single = trial.Trainer(make_config(tmp_path), data)
    for _ in range(6):
        single.run.run_steps(1)
    assert int(looped.optimizer.iterations) == int(single.optimizer.iterations) == 6
    for a, b in zip(weights(looped.model), weights(single.model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(looped.run.state.count.numpy()) == float(single.run.state.count.numpy()) == 6 * 32


def test_xla_step_agrees_with_plain_step(tmp_path):
    data = fake_data()
    plain = trial.Trainer(make_config(tmp_path, jit_compile="false"), data)
    xla = trial.Trainer(make_config(tmp_path, jit_compile="true"), data)
    assert xla.jit_compile and not plain.jit_compile
    # XLA and TF kernels draw different stateless dropout masks; compare the arithmetic alone.
    for trainer in (plain, xla):
        trainer.model.layers[5].rate = 0.0
    a = plain.run.run_steps(5)
    b = xla.run.run_steps(5)
    assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
    assert float(a["loss_sum"]) == pytest.approx(float(b["loss_sum"]), rel=1e-4)
    for x, y in zip(weights(plain.model), weights(xla.model)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_eval_counts_every_example_once_and_matches_numpy(tmp_path):
    data = fake_data(num_test=103)
    trainer = trial.Trainer(make_config(tmp_path, eval_batch_size=10), data)
    result, count = trainer.run.validate()
    assert count == 103
    probs = trainer.model.predict(data.test.images, batch_size=103, verbose=0).astype(np.float64)
    eps = 1e-7  # Keras clips probabilities to [eps, 1 - eps] before the log
    expected_loss = np.mean(-np.log(np.clip(probs[np.arange(103), data.test.labels], eps, 1 - eps)))
    expected_acc = np.mean(np.argmax(probs, axis=1) == data.test.labels)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(expected_acc)


def test_train_writes_history_config_and_events(tmp_path):
    config = make_config(tmp_path, epochs=2)
    history = trial.Trainer(config, fake_data()).train()
    workdir = tmp_path / "run"
    saved = json.loads((workdir / "history.json").read_text())
    assert saved == history
    assert set(saved) == set(trial.HISTORY_KEYS)
    assert all(len(v) == 2 for v in saved.values())
    resolved = json.loads((workdir / "config.json").read_text())
    assert resolved["mode"] == "triangular2" and resolved["resolved"]["steps_per_epoch"] == 8
    assert glob.glob(str(workdir / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(workdir / "eval" / "events.out.tfevents.*"))
    # lr at the end of epoch 1 is the rate of its last step (step 7), peak of the first cycle.
    assert saved["lr"][0] == pytest.approx(
        config_lib.make_schedule(config, config_lib.plan_steps(config, 256))(7).numpy(), rel=1e-6
    )


def test_train_summaries_hold_loss_accuracy_lr(tmp_path):
    trial.Trainer(make_config(tmp_path, epochs=1), fake_data()).train()
    tags = {}
    for step, value in _summary_values(str(tmp_path / "run" / "train")):
        tags.setdefault(value.tag, []).append(step)
    assert set(tags) >= {"loss", "accuracy", "lr"}
    assert tags["lr"] == [2, 4, 6, 8]


def _summary_values(logdir):
    values = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            values += [(event.step, value) for value in event.summary.value]
    return values


def test_write_scalar_writes_what_tf_summary_scalar_writes(tmp_path):
    for name, write in (("ours", actions.write_scalar), ("tensorboard", tf.summary.scalar)):
        writer = tf.summary.create_file_writer(str(tmp_path / name))
        with writer.as_default(step=7):
            assert write("loss", 0.25)
            write("lr", np.float64(1e-3))  # a numpy float from a metrics dict
        writer.close()
    ours, theirs = _summary_values(str(tmp_path / "ours")), _summary_values(str(tmp_path / "tensorboard"))
    assert [(step, value.tag) for step, value in ours] == [(7, "loss"), (7, "lr")]
    assert ours == theirs  # same tags, float32 tensors and scalars-plugin metadata
    assert tf.make_ndarray(ours[0][1].tensor) == np.float32(0.25)


def test_max_steps_stops_early_and_still_evaluates(tmp_path):
    history = trial.Trainer(make_config(tmp_path, epochs=3, max_steps=5), fake_data()).train()
    assert len(history["val_loss"]) == 1 and np.isfinite(history["val_loss"][0])


def test_profiler_window_writes_a_trace(tmp_path):
    config = make_config(tmp_path, epochs=1, profile_steps=(2, 4))
    trial.Trainer(config, fake_data()).train()
    traces = glob.glob(str(tmp_path / "run" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert traces and os.path.getsize(traces[0]) > 0


def test_non_finite_loss_raises_with_step_and_rate(tmp_path):
    trainer = trial.Trainer(make_config(tmp_path, mode="none", lr=1e4, epochs=1), fake_data())
    with pytest.raises(actions.TrainingDiverged, match=r"step \d+ \(learning rate 10000\)"):
        trainer.train()


def test_save_init_then_init_weights_starts_from_identical_weights(tmp_path):
    path = str(tmp_path / "init.weights.h5")
    first = trial.Trainer(make_config(tmp_path, seed=1, save_init=path, max_steps=2), fake_data())
    initial = weights(first.model)
    assert not os.path.exists(path)  # written by train(), once the workdir is checked
    first.train()
    second = trial.Trainer(make_config(tmp_path, seed=2, init_weights=path, workdir=str(tmp_path / "b")), fake_data())
    other = trial.Trainer(make_config(tmp_path, seed=2), fake_data())
    for a, b, c in zip(initial, weights(second.model), weights(other.model)):
        assert np.array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(initial, weights(other.model)))


def test_a_refused_run_writes_no_save_init_file(tmp_path):
    trial.Trainer(make_config(tmp_path, max_steps=1), fake_data()).train()
    path = tmp_path / "init.weights.h5"
    refused = trial.Trainer(make_config(tmp_path, max_steps=1, max_lr=0.2, save_init=str(path)), fake_data())
    with pytest.raises(checkpointing.WorkdirError, match="max_lr"):
        refused.train()
    assert not path.exists()


def test_unwritable_save_init_is_named_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "a_file").write_text("in the way")
    in_the_way = str(tmp_path / "a_file" / "init.weights.h5")
    with pytest.raises(trial.WeightsError, match=f"cannot write initial weights to {in_the_way}") as e:
        trial.Trainer(make_config(tmp_path, save_init=in_the_way, max_steps=1), fake_data()).train()
    assert e.value.argument == "save_init"
    # The temporary file is written, but the rename onto a folder fails: it is removed.
    folder = tmp_path / "out" / "x.weights.h5"
    folder.mkdir(parents=True)
    model = trial.Trainer(make_config(tmp_path, workdir=str(tmp_path / "run2")), fake_data()).model
    with pytest.raises(trial.WeightsError, match="x.weights.h5"):
        trial.save_initial_weights(model, str(folder))
    assert os.listdir(tmp_path / "out") == ["x.weights.h5"] and folder.is_dir()


def test_bad_init_weights_file_is_named(tmp_path):
    missing = str(tmp_path / "missing.weights.h5")
    with pytest.raises(trial.WeightsError, match="missing.weights.h5 does not exist"):
        trial.Trainer(make_config(tmp_path, init_weights=missing), fake_data())
    # A folder is not "missing": it is named as a folder.
    folder = tmp_path / "folder.weights.h5"
    folder.mkdir()
    with pytest.raises(trial.WeightsError, match=f"initial weights file {folder} is a directory, not a regular file"):
        trial.load_initial_weights(None, str(folder))
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not an h5 file")
    with pytest.raises(trial.WeightsError, match="broken.weights.h5 cannot be loaded"):
        trial.Trainer(make_config(tmp_path, init_weights=str(broken)), fake_data())


# --------------------------------------------------------------------- batch splitting


@pytest.mark.parametrize("splits", [2, 4])
def test_split_step_trains_like_the_whole_batch_without_dropout(tmp_path, splits):
    """Per-part gradients of sum/batch add up to the whole batch's mean-loss gradient (float
    rounding aside); dropout is off because each part draws its own mask."""
    data = fake_data()
    runs = []
    for batch_splits in (1, splits):
        trainer = trial.Trainer(make_config(tmp_path, batch_splits=batch_splits), data)
        assert trainer.splits == batch_splits
        trainer.model.layers[5].rate = 0.0
        window = trainer.run.run_steps(7)
        sums = {k: float(window[k]) for k in ("loss_sum", "count", "lr")}
        runs.append(
            (weights(trainer.model), {**sums, "accuracy": inner_loop.metric_results(trainer.run.metrics)["accuracy"]})
        )
    (whole_weights, whole), (split_weights, split) = runs
    assert split["count"] == whole["count"] == 7 * 32
    assert split["accuracy"] == whole["accuracy"] and split["lr"] == whole["lr"]
    assert split["loss_sum"] == pytest.approx(whole["loss_sum"], rel=1e-5)
    for a, b in zip(whole_weights, split_weights):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_split_step_with_dropout_is_reproducible_and_finite(tmp_path):
    """With dropout each part draws its own mask from the model's seed generator: a second
    trainer with the same seed trains to the same weights, and the loss stays a real number."""
    data = fake_data()
    results = []
    for _ in range(2):
        trainer = trial.Trainer(make_config(tmp_path, batch_splits=2, deterministic=True), data)
        window = trainer.run.run_steps(6)
        results.append((weights(trainer.model), float(window["loss_sum"])))
    assert np.isfinite(results[0][1]) and results[0][1] == results[1][1]
    for a, b in zip(*(r[0] for r in results)):
        np.testing.assert_array_equal(a, b)


def _evaluate(model, split, batch_size):
    """Evaluates `model` on `split` in batches of `batch_size` with the compiled eval loop."""
    steps = steps_lib.Steps(model)
    evaluate = inner_loop.make_evaluate(steps.eval_step, model, tf.distribute.get_strategy())
    return evaluate(inputs.array_eval_dataset(split.arrays, batch_size))


@pytest.mark.parametrize("num_test, batch_size", [(23, 10), (9, 4)])
def test_eval_loop_equals_model_evaluate(tmp_path, num_test, batch_size):
    """Batches of 10, 10 and 3, and of 4, 4 and 1: the eval loop runs the model's test_step on whole
    batches (it is never split), so its numbers are model.evaluate's."""
    data = fake_data(num_test=num_test)
    model = trial.Trainer(make_config(tmp_path), data).model
    logs, count = _evaluate(model, data.test, batch_size)
    expected = model.evaluate(data.test.images, data.test.labels, batch_size=batch_size, verbose=0, return_dict=True)
    assert count == num_test
    assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert logs["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-7)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(batch_splits=3, batch_size=48), 3),  # explicit wins
        (dict(jit_compile="true"), 1),  # one XLA cluster runs the parts one after the other
        (dict(strategy="mirrored"), 1),
        (dict(virtual_cpus=2), 1),
    ],
)
def test_resolve_batch_splits(tmp_path, overrides, expected):
    assert trial.planned_batch_splits(make_config(tmp_path, **overrides)) == expected


def test_automatic_batch_splits_follow_the_cores_on_a_cpu(tmp_path):
    config = make_config(tmp_path, batch_size=64)
    expected = 1 if tf.config.list_physical_devices("GPU") else runtime.auto_batch_splits(64, runtime.cpu_cores())
    assert trial.planned_batch_splits(config) == expected
    assert trial.planned_batch_splits(config, replicas=2) == 1
