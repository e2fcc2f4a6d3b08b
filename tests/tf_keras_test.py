"""clr_loop.tf_keras: TFA's four schedules for Keras 2 (tf_keras) users; skipped without tf_keras.

Oracles: TFA's formula in float64 numpy, tf_keras's own optimizers, `model.fit`, saving and loading,
and configs laid out as TFA's classes wrote them under Keras 2.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")

from clr_loop import tf_keras as clr_tf_keras  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tfa_formula(step, initial, maximal, step_size, scale_fn, scale_mode="cycle"):
    """TFA's CyclicalLearningRate.__call__ in float64 numpy."""
    step = np.asarray(step, dtype=np.float64)
    cycle = np.floor(1 + step / (2 * step_size))
    x = np.abs(step / step_size - 2 * cycle + 1)
    return initial + (maximal - initial) * np.maximum(0.0, 1 - x) * scale_fn(cycle if scale_mode == "cycle" else step)


CASES = [
    ("TriangularCyclicalLearningRate", {}, lambda c: np.ones_like(c), "cycle"),
    ("Triangular2CyclicalLearningRate", {}, lambda c: 0.5 ** (c - 1), "cycle"),
    ("ExponentialCyclicalLearningRate", {"gamma": 0.99}, lambda s: 0.99**s, "iterations"),
    (
        "CyclicalLearningRate",
        {"scale_fn": lambda x: 1 / (5 ** (x * 0.0001))},
        lambda c: 1 / (5 ** (c * 0.0001)),
        "cycle",
    ),
]


@pytest.mark.parametrize("class_name,kwargs,scale,scale_mode", CASES, ids=[c[0] for c in CASES])
def test_four_schedules_are_tf_keras_schedules_with_tfa_values(class_name, kwargs, scale, scale_mode):
    schedule = getattr(clr_tf_keras, class_name)(0.1, 1.0, 7.5, **kwargs)
    assert isinstance(schedule, tf_keras.optimizers.schedules.LearningRateSchedule)
    steps = np.arange(0, 80)
    expected = tfa_formula(steps, 0.1, 1.0, 7.5, scale, scale_mode)
    np.testing.assert_allclose(schedule(steps), expected, rtol=1e-6)
    optimizer = tf_keras.optimizers.SGD(schedule)
    optimizer.iterations.assign(23)  # tf_keras's `learning_rate` is the last step's; ask the schedule as it does
    assert float(optimizer._learning_rate(optimizer.iterations)) == pytest.approx(float(expected[23]), rel=1e-6)
    restored = schedule.from_config(schedule.get_config())  # in memory, as TFA's test does
    np.testing.assert_allclose(restored(steps), expected, rtol=1e-6)


def _fit_and_checkpoint(schedule, path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(1)])
    model.compile(optimizer=tf_keras.optimizers.SGD(schedule), loss="mse")
    history = model.fit(
        x, y, batch_size=16, epochs=2, verbose=0, callbacks=[tf_keras.callbacks.ModelCheckpoint(str(path))]
    )
    assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_fit_checkpoint_and_load_named_and_tutorial_lambda(tmp_path, ext):
    steps = np.arange(0, 40)
    for name, schedule in [
        ("named", clr_tf_keras.Triangular2CyclicalLearningRate(1e-4, 1e-2, 3)),
        ("tutorial", clr_tf_keras.CyclicalLearningRate(1e-4, 1e-2, 3, scale_fn=lambda x: 1 / (2.0 ** (x - 1)))),  # noqa: E226,E225
    ]:
        path = tmp_path / f"{name}.{ext}"
        _fit_and_checkpoint(schedule, path)
        loaded = tf_keras.models.load_model(path)  # safe mode: a named mode needs no code
        assert type(loaded.optimizer._learning_rate) is type(schedule)
        assert int(loaded.optimizer.iterations) == 8
        np.testing.assert_allclose(
            loaded.optimizer._learning_rate(steps),
            tfa_formula(steps, 1e-4, 1e-2, 3, lambda c: 0.5 ** (c - 1)),
            rtol=1e-6,
        )


def test_custom_lambda_saves_and_loads_as_tf_keras_lambda_layers_do(tmp_path):
    fn = lambda x: 1 / (5 ** (x * 0.0001))  # noqa: E731
    steps = np.arange(0, 40)
    expected = tfa_formula(steps, 1e-4, 1e-2, 3, fn)
    for ext in ("keras", "h5"):
        _fit_and_checkpoint(clr_tf_keras.CyclicalLearningRate(1e-4, 1e-2, 3, scale_fn=fn), tmp_path / f"m.{ext}")
    with pytest.raises(ValueError, match=r"scale_fn.*safe_mode=False"):
        tf_keras.models.load_model(tmp_path / "m.keras")
    for path, kwargs in ((tmp_path / "m.keras", {"safe_mode": False}), (tmp_path / "m.h5", {})):
        loaded = tf_keras.models.load_model(path, **kwargs)  # tf_keras's .h5 loader sets no safe mode
        assert loaded.optimizer._learning_rate.scale_fn is not fn
        np.testing.assert_allclose(loaded.optimizer._learning_rate(steps), expected, rtol=1e-6)


@pytest.mark.parametrize("legacy", [False, True], ids=["keras_form", "legacy_form"])
def test_tfa_registered_names_resolve_in_tf_keras(legacy):
    config = {"initial_learning_rate": 0.1, "maximal_learning_rate": 1.0, "step_size": 30, "scale_mode": "cycle"}
    if legacy:
        serialized = {"class_name": "Addons>Triangular2CyclicalLearningRate", "config": config}
        schedule = tf_keras.optimizers.schedules.deserialize(serialized, use_legacy_format=True)
    else:
        serialized = {
            "module": "tensorflow_addons.optimizers.cyclical_learning_rate",
            "class_name": "Triangular2CyclicalLearningRate",
            "config": config,
            "registered_name": "Addons>Triangular2CyclicalLearningRate",
        }
        schedule = tf_keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(schedule) is clr_tf_keras.Triangular2CyclicalLearningRate
    assert float(schedule(75)) == pytest.approx(0.325, rel=1e-6)
    optimizer = tf_keras.optimizers.SGD.from_config({"name": "SGD", "learning_rate": serialized})
    optimizer.iterations.assign(75)
    assert float(optimizer._learning_rate(optimizer.iterations)) == pytest.approx(0.325, rel=1e-6)


def test_tutorial_with_tf_use_legacy_keras(tmp_path):
    """The tutorial's program under TF_USE_LEGACY_KERAS=1 (tf.keras is tf_keras), one import changed."""
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        from clr_loop.tf_keras import CyclicalLearningRate  # was: tfa.optimizers.CyclicalLearningRate
        assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
        clr = CyclicalLearningRate(initial_learning_rate=1e-4, maximal_learning_rate=1e-2,
                                   scale_fn=lambda x: 1/(2.**(x-1)), step_size=3)
        model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])
        model.compile(optimizer=tf.keras.optimizers.SGD(clr), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")
        y = np.arange(48) % 3
        path = {str(tmp_path / "tutorial.h5")!r}
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[tf.keras.callbacks.ModelCheckpoint(path)])
        loaded = tf.keras.models.load_model(path)
        print("RESULT", int(loaded.optimizer.iterations), [float(loaded.optimizer._learning_rate(s)) for s in range(12)])
        """
    )
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    iterations, values = proc.stdout.split("RESULT", 1)[1].split(" ", 2)[1:]
    assert int(iterations) == 6
    np.testing.assert_allclose(
        json.loads(values), tfa_formula(np.arange(12), 1e-4, 1e-2, 3, lambda c: 0.5 ** (c - 1)), rtol=1e-6
    )
