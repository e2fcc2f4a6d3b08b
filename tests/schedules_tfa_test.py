"""clr_loop.schedules as a drop-in for tensorflow_addons' cyclical schedules.

The oracles are TFA itself: the cases and expected values of TFA's own test file
(`tensorflow_addons/optimizers/tests/cyclical_learning_rate_test.py`), TFA's formula transcribed in
float64 numpy (`tfa_formula`), the configs TFA's classes wrote (built here by hand as TFA's
`get_config` and Keras's serializers laid them out), and Keras's own saving and loading.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import schedules
from clr_loop.schedules import (
    CyclicalLearningRate,
    ExponentialCyclicalLearningRate,
    Triangular2CyclicalLearningRate,
    TriangularCyclicalLearningRate,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tfa_formula(step, initial, maximal, step_size, scale_fn, scale_mode="cycle"):
    """TFA's CyclicalLearningRate.__call__ in float64 numpy; `scale_fn` gets the cycle or the step."""
    step = np.asarray(step, dtype=np.float64)
    cycle = np.floor(1 + step / (2 * step_size))
    x = np.abs(step / step_size - 2 * cycle + 1)
    mode_step = cycle if scale_mode == "cycle" else step
    return initial + (maximal - initial) * np.maximum(0.0, 1 - x) * scale_fn(mode_step)


def tfa_round_trip(schedule, serialize):
    """What TFA's test does with `serialize=True`: `from_config(get_config())` in memory."""
    return schedule.from_config(schedule.get_config()) if serialize else schedule


def five_to_the(x):
    """The custom scale function of TFA's test: 1 / 5**(x / 10^4)."""
    return 1 / (5 ** (x * 0.0001))


def check_steps(schedule, steps, expected, rtol=1e-6, atol=0.0, every=97):
    """All `steps` at once (a numpy array), and every `every`-th one alone as a Python int, as TFA's test calls it."""
    np.testing.assert_allclose(np.asarray(schedule(np.asarray(steps)), np.float64), expected, rtol=rtol, atol=atol)
    for i in range(0, len(steps), every):
        np.testing.assert_allclose(float(schedule(int(steps[i]))), expected[i], rtol=rtol, atol=atol)


# TFA's own test cases (the same arguments, steps and tolerances).


@pytest.mark.parametrize("serialize", [True, False])
def test_tfa_case_triangular(serialize):
    schedule = tfa_round_trip(
        TriangularCyclicalLearningRate(initial_learning_rate=0.1, maximal_learning_rate=1, step_size=40), serialize
    )
    steps = np.arange(81)  # one cycle: 0.1 up to 1 at step 40, back to 0.1 at step 80
    expected = np.interp(steps, [0, 40, 80], [0.1, 1.0, 0.1])
    check_steps(schedule, steps, expected, every=1)


@pytest.mark.parametrize("serialize", [True, False])
def test_tfa_case_triangular2(serialize):
    schedule = tfa_round_trip(
        Triangular2CyclicalLearningRate(initial_learning_rate=0.1, maximal_learning_rate=1, step_size=30), serialize
    )
    steps = np.arange(121)  # two cycles; the second peaks halfway between the bounds
    expected = np.interp(steps, [0, 30, 60, 90, 120], [0.1, 1.0, 0.1, 0.55, 0.1])
    check_steps(schedule, steps, expected, every=1)


@pytest.mark.parametrize("serialize", [True, False])
def test_tfa_case_exponential(serialize):
    schedule = tfa_round_trip(
        ExponentialCyclicalLearningRate(
            initial_learning_rate=0.1, maximal_learning_rate=1, step_size=2000, gamma=0.996
        ),
        serialize,
    )
    steps = np.arange(8001)
    check_steps(schedule, steps, tfa_formula(steps, 0.1, 1.0, 2000, lambda s: 0.996**s, "iterations"))


@pytest.mark.parametrize("serialize", [True, False])
@pytest.mark.parametrize("scale_mode", ["cycle", "iterations"])
def test_tfa_case_custom_scale_fn(serialize, scale_mode):
    kwargs = {} if scale_mode == "cycle" else {"scale_mode": "iterations"}  # TFA's test gave it only for iterations
    schedule = tfa_round_trip(
        CyclicalLearningRate(
            initial_learning_rate=0.1, maximal_learning_rate=1, step_size=4000, scale_fn=five_to_the, **kwargs
        ),
        serialize,
    )
    steps = np.arange(1, 8001)
    expected = tfa_formula(steps, 0.1, 1.0, 4000, five_to_the, scale_mode)
    check_steps(schedule, steps, expected, rtol=1e-6, atol=1e-6)


# A custom scale_fn: in memory, in configs, in files.


def test_custom_scale_fn_round_trips_in_memory_as_the_same_function():
    schedule = CyclicalLearningRate(0.1, 1.0, 40, scale_fn=five_to_the, scale_mode="iterations")
    restored = schedule.from_config(schedule.get_config())
    assert restored.scale_fn is five_to_the and restored.scale_mode == "iterations"
    restored = CyclicalLearningRate.from_config(schedule.get_config())
    np.testing.assert_array_equal(restored(np.arange(200)), schedule(np.arange(200)))


@pytest.mark.parametrize(
    "scale_fn,mode,gamma",
    [
        (lambda x: 1 / (2.0 ** (x - 1)), "triangular2", 1.0),  # the tutorial's, written as in the tutorial below
        (lambda x: 1 / (2.0 ** (x - 1)), "triangular2", 1.0),  # noqa: E226,E225 (the tutorial's spelling)
        (lambda x: 0.5 ** (x - 1), "triangular2", 1.0),
        (lambda x: 1.0, "triangular", 1.0),
        ((lambda gamma: lambda x: gamma**x)(0.99), "exp_range", 0.99),  # TFA's ExponentialCLR's own lambda
    ],
)
def test_named_mode_written_as_a_lambda_saves_as_that_mode(scale_fn, mode, gamma):
    schedule = CyclicalLearningRate(1e-4, 1e-2, 5, scale_fn=scale_fn)
    config = schedule.get_config()
    assert config["mode"] == mode and config["gamma"] == pytest.approx(gamma) and "scale_fn" not in config
    assert json.loads(json.dumps(config)) == config  # JSON only
    assert schedule.scale_fn is scale_fn  # the attribute is still the user's function, as in TFA
    steps = np.arange(0, 60)
    check_steps(schedule, steps, tfa_formula(steps, 1e-4, 1e-2, 5, np.vectorize(scale_fn), "cycle"))
    # TFA's base class counted cycles for any scale_fn unless told otherwise, exp_range's lambda too.
    assert schedule.scale_mode == "cycle"


def test_functions_that_only_agree_on_some_steps_are_not_taken_for_a_mode():
    agree_up_to_1000 = lambda x: tf.where(x < 1000, 1 / (2.0 ** (x - 1)), 1.0)  # noqa: E731
    schedule = CyclicalLearningRate(1e-4, 1e-2, 5, scale_fn=agree_up_to_1000)
    assert schedule.mode is None
    assert float(schedule(5 + 10 * 1500)) == pytest.approx(1e-2, rel=1e-6)  # cycle 1501: the function's 1.0
    config = keras.saving.serialize_keras_object(schedule)["config"]
    assert config["scale_fn"]["config"]["kind"] == "code"


def test_optimizer_config_with_custom_scale_fn_is_json():
    # A function importable by module and name is saved by name, and loads in safe mode.
    optimizer = keras.optimizers.SGD(CyclicalLearningRate(1e-4, 1e-2, 5, scale_fn=five_to_the))
    config = json.loads(json.dumps(optimizer.get_config()))
    assert keras.optimizers.SGD.from_config(config)._learning_rate.scale_fn is five_to_the
    # A lambda is saved as bytecode, which needs safe_mode=False, as a Lambda layer's does.
    optimizer = keras.optimizers.SGD(CyclicalLearningRate(1e-4, 1e-2, 5, scale_fn=lambda c: five_to_the(c)))
    config = json.loads(json.dumps(optimizer.get_config()))
    with pytest.raises(ValueError, match=r"scale_fn.*safe_mode=False"):
        keras.optimizers.SGD.from_config(config)


def _model(schedule):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    # An object, not "mse": Keras 3.15's .h5 loader cannot read back the string form.
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=keras.losses.MeanSquaredError())
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_tutorial_lambda_with_model_checkpoint_trains_to_the_end_and_loads(tmp_path, ext):
    schedule = CyclicalLearningRate(
        initial_learning_rate=1e-4,
        maximal_learning_rate=1e-2,
        scale_fn=lambda x: 1 / (2.0 ** (x - 1)),
        step_size=3,  # noqa: E226,E225
    )
    model = _model(schedule)
    path = tmp_path / f"model.{ext}"
    x, y = _data()
    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(str(path))]
    )
    assert len(history.history["loss"]) == 3  # every epoch, each ending in a full-model save
    loaded = keras.models.load_model(path)  # safe mode: a named mode needs no code
    assert int(loaded.optimizer.iterations) == 12
    steps = np.arange(40)
    np.testing.assert_allclose(
        loaded.optimizer._learning_rate(steps), tfa_formula(steps, 1e-4, 1e-2, 3, lambda c: 0.5 ** (c - 1)), rtol=1e-6
    )


def test_custom_scale_fn_files_save_and_load_only_with_safe_mode_false(tmp_path):
    """Saved in this process; loaded in a fresh one, where only the file knows the functions."""
    x, y = _data()
    cases = {
        "local.keras": lambda c: 1 / (5 ** (c * 0.0001)),
        "local.h5": lambda c: 1 / (5 ** (c * 0.0001)),
        "tfglobal.keras": lambda c: tf.exp(-0.1 * c),  # reads the module `tf`
    }
    expected = {}
    steps = np.arange(0, 50)
    for name, fn in cases.items():
        model = _model(CyclicalLearningRate(1e-4, 1e-2, 4, scale_fn=fn))
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        model.save(tmp_path / name)  # does not raise
        with pytest.raises(ValueError, match=r"scale_fn.*safe_mode=False"):
            keras.models.load_model(tmp_path / name)
        expected[name] = tfa_formula(steps, 1e-4, 1e-2, 4, lambda c: np.asarray(fn(tf.constant(c, tf.float32))))
    script = textwrap.dedent(
        f"""
        import json, sys
        import keras, numpy as np
        import clr_loop.schedules
        out = {{}}
        for name in {sorted(cases)!r}:
            if name.endswith(".h5"):
                keras.config.enable_unsafe_deserialization()  # Keras compiles a .h5's optimizer outside safe_mode
            model = keras.models.load_model({str(tmp_path)!r} + "/" + name, safe_mode=False)
            lr = model.optimizer._learning_rate
            out[name] = [int(model.optimizer.iterations), type(lr).__name__, np.asarray(lr(np.arange(50))).tolist()]
        print("RESULT" + json.dumps(out))
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name in cases:
        iterations, cls, values = result[name]
        assert iterations == 4 and cls == "CyclicalLearningRate"
        np.testing.assert_allclose(values, expected[name], rtol=1e-6)


def test_callable_object_saves_with_a_warning_and_loading_says_why_not(tmp_path):
    scale = functools.partial(pow, 0.5)  # 0.5 ** x: a callable, not a function
    model = _model(CyclicalLearningRate(1e-4, 1e-2, 4, scale_fn=scale, scale_mode="iterations"))
    with pytest.warns(UserWarning, match="scale_fn"):
        model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"scale_fn.*cannot be saved"):
        keras.models.load_model(tmp_path / "m.keras", safe_mode=False)


def _halving(c):
    """A module-level helper that a test's nested functions call through a closure or a global."""
    return 0.5 ** (c - 1)


def test_functions_with_closures_helpers_and_recursion_save_and_load():
    helper = lambda c: _halving(c) * 0.9  # noqa: E731 (a non-importable function in a closure)

    def recursive(c, depth=3):
        return 1.0 if depth == 0 else recursive(c, depth - 1) * 1.0

    cases = [
        (lambda c: helper(c) + 0.0 * c, lambda c: 0.9 * 0.5 ** (c - 1)),
        (lambda c: recursive(c) * _halving(c), lambda c: 0.5 ** (c - 1)),
    ]
    steps = np.arange(0, 60)
    for fn, scale in cases:
        schedule = CyclicalLearningRate(1e-4, 1e-2, 5, scale_fn=fn)
        text = json.dumps(keras.saving.serialize_keras_object(schedule))
        loaded = keras.saving.deserialize_keras_object(json.loads(text), safe_mode=False)
        assert loaded.scale_fn is not fn
        np.testing.assert_allclose(loaded(steps), tfa_formula(steps, 1e-4, 1e-2, 5, scale), rtol=1e-6)


def test_a_closure_keras_cannot_write_saves_with_a_warning():
    import threading

    lock = threading.Lock()
    schedule = CyclicalLearningRate(1e-4, 1e-2, 5, scale_fn=lambda c: 1.0 if lock else 0.0)
    with pytest.warns(UserWarning, match="scale_fn"):
        text = json.dumps(keras.saving.serialize_keras_object(schedule))
    with pytest.raises(ValueError, match=r"scale_fn.*cannot be saved"):
        keras.saving.deserialize_keras_object(json.loads(text), safe_mode=False)


def test_importable_function_is_saved_by_name_and_loads_in_safe_mode(tmp_path):
    import math

    schedule = CyclicalLearningRate(1e-4, 1e-2, 4, scale_fn=math.exp, scale_mode="iterations")
    model = _model(schedule)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer._learning_rate.scale_fn is math.exp


# TFA's argument types and values.


@pytest.mark.parametrize(
    "step_size",
    [
        3.75,
        0.5,
        tf.constant(7.5),
        tf.constant(10, tf.int64),
        np.float32(2.5),
        tf.data.experimental.cardinality(tf.data.Dataset.range(12).batch(4)),
    ],
    ids=["3.75", "0.5", "tensor7.5", "int64tensor", "np2.5", "cardinality"],
)
@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_fractional_and_tensor_step_size_give_tfa_values(step_size, mode):
    size = float(np.asarray(step_size))
    schedule = CyclicalLearningRate(1e-4, 1e-2, step_size, mode=mode, gamma=0.99)
    scale = {
        "triangular": lambda c: np.ones_like(c),
        "triangular2": lambda c: 0.5 ** (c - 1),
        "exp_range": lambda s: 0.99**s,
    }[mode]
    steps = np.arange(0, 200)
    expected = tfa_formula(steps, 1e-4, 1e-2, size, scale, "iterations" if mode == "exp_range" else "cycle")
    check_steps(schedule, steps, expected, atol=1e-9)
    np.testing.assert_allclose(schedule(tf.constant(steps, tf.int64)), expected, rtol=1e-6, atol=1e-9)
    config = json.loads(json.dumps(schedule.get_config()))
    assert config["step_size"] == size
    np.testing.assert_allclose(CyclicalLearningRate.from_config(config)(steps), expected, rtol=1e-6, atol=1e-9)


def test_tensor_bounds_and_variable_bounds_as_tfa():
    steps = np.arange(0, 50)
    schedule = TriangularCyclicalLearningRate(tf.constant(1e-3), tf.constant(1e-2), 5)
    np.testing.assert_allclose(schedule(steps), tfa_formula(steps, 1e-3, 1e-2, 5, np.ones_like), rtol=1e-6)
    peak = tf.Variable(1e-2)  # TFA read a variable bound at every call
    schedule = TriangularCyclicalLearningRate(1e-3, peak, 5)
    peak.assign(2e-2)
    np.testing.assert_allclose(schedule(steps), tfa_formula(steps, 1e-3, 2e-2, 5, np.ones_like), rtol=1e-6)
    assert schedule.get_config()["maximal_learning_rate"] == pytest.approx(2e-2)


@pytest.mark.parametrize(
    "kwargs,scale,scale_mode,warning",
    [
        (dict(initial_learning_rate=1e-2, maximal_learning_rate=1e-3), lambda c: 0.5 ** (c - 1), "cycle", "maximal"),
        (dict(mode="exp_range", gamma=0.0), lambda s: 0.0**s, "iterations", "gamma"),
        (dict(mode="exp_range", gamma=-0.5), lambda s: (-0.5) ** s, "iterations", "gamma"),
        (dict(mode="exp_range", gamma=1.01), lambda s: 1.01**s, "iterations", "gamma"),
        (dict(initial_learning_rate=-1e-3), lambda c: 0.5 ** (c - 1), "cycle", "initial_learning_rate"),
        (dict(scale_mode="iteration"), lambda s: 0.5 ** (s - 1), "iterations", "scale_mode"),
        (dict(scale_mode="step"), lambda s: 0.5 ** (s - 1), "iterations", "scale_mode"),
    ],
)
def test_odd_but_computable_arguments_warn_and_give_tfa_values(kwargs, scale, scale_mode, warning):
    args = dict(initial_learning_rate=1e-3, maximal_learning_rate=1e-2, step_size=4, mode="triangular2")
    args.update(kwargs)
    with pytest.warns(UserWarning, match=warning):
        schedule = CyclicalLearningRate(**args)
    steps = np.arange(0, 40)
    expected = tfa_formula(steps, args["initial_learning_rate"], args["maximal_learning_rate"], 4, scale, scale_mode)
    np.testing.assert_allclose(schedule(steps), expected, rtol=1e-6, atol=1e-12)


def test_ordinary_arguments_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ExponentialCyclicalLearningRate(1e-4, 1e-2, 3.5, gamma=0.99)
        CyclicalLearningRate(0.0, 1e-2, 4, scale_fn=five_to_the, scale_mode="iterations")


@pytest.mark.parametrize(
    "kwargs,culprit",
    [
        (dict(step_size=0), "step_size"),
        (dict(step_size=-2.5), "step_size"),
        (dict(step_size=float("inf")), "step_size"),
        (dict(step_size=tf.Variable(4.0)), "step_size"),
        (dict(step_size=tf.constant([4, 4])), "step_size"),
        (dict(initial_learning_rate=float("nan")), "initial_learning_rate"),
        (dict(maximal_learning_rate=tf.constant(float("inf"))), "maximal_learning_rate"),
        (dict(maximal_learning_rate="1e-2"), "maximal_learning_rate"),
        (dict(mode="exp_range", gamma=float("inf")), "gamma"),
    ],
)
def test_what_tfa_could_not_compute_is_refused_naming_the_argument(kwargs, culprit):
    args = dict(initial_learning_rate=1e-3, maximal_learning_rate=1e-2, step_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=culprit):
        CyclicalLearningRate(**args)


# TFA's attributes.


def test_dtype_follows_initial_learning_rate():
    steps = np.arange(0, 30)
    for initial, dtype in [
        (1e-3, tf.float32),
        (np.float64(1e-3), tf.float64),
        (tf.constant(1e-3, tf.float64), tf.float64),
        (tf.constant(1e-3, tf.float16), tf.float16),
        (0, tf.float32),
    ]:
        schedule = Triangular2CyclicalLearningRate(initial, 1e-2, 4)
        assert schedule(5).dtype == dtype
        rtol = {tf.float64: 1e-12, tf.float32: 1e-6, tf.float16: 1e-3}[dtype]
        expected = tfa_formula(steps, float(np.asarray(initial)), 1e-2, 4, lambda c: 0.5 ** (c - 1))
        np.testing.assert_allclose(np.asarray(schedule(steps), np.float64), expected, rtol=rtol)
        assert (
            Triangular2CyclicalLearningRate.from_config(json.loads(json.dumps(schedule.get_config())))(5).dtype == dtype
        )


def test_subclasses_scale_fn_is_callable_as_in_tfa():
    assert Triangular2CyclicalLearningRate(0.1, 1, 30).scale_fn(3) == 0.25
    assert TriangularCyclicalLearningRate(0.1, 1, 30).scale_fn(3) == 1.0
    assert ExponentialCyclicalLearningRate(0.1, 1, 30, gamma=0.5).scale_fn(3) == 0.125
    scale = Triangular2CyclicalLearningRate(0.1, 1, 30).scale_fn
    np.testing.assert_allclose(scale(tf.constant([1.0, 2.0, 4.0])), [1.0, 0.5, 0.125])
    # Handing one to the base class gives that mode back (and saves as it).
    again = CyclicalLearningRate(0.1, 1, 30, scale_fn=scale)
    assert again.mode == "triangular2" and "scale_fn" not in again.get_config()


def test_what_scale_fn_receives_matches_tfa():
    seen = []

    def spy(x):
        seen.append(x)
        return 1.0 if not tf.is_tensor(x) else tf.ones_like(tf.cast(x, tf.float32))

    CyclicalLearningRate(0.1, 1.0, 4, scale_fn=spy)(9)  # cycle mode: the cycle, a float tensor
    assert seen[-1].dtype == tf.float32 and float(seen[-1]) == 2.0
    CyclicalLearningRate(tf.constant(0.1, tf.float64), 1.0, 4, scale_fn=spy)(9)
    assert seen[-1].dtype == tf.float64
    schedule = CyclicalLearningRate(0.1, 1.0, 4, scale_fn=spy, scale_mode="iterations")
    schedule(9)  # iterations mode: the step exactly as passed in
    assert seen[-1] == 9 and type(seen[-1]) is int
    steps = np.arange(5)
    schedule(steps)
    assert seen[-1] is steps
    optimizer = keras.optimizers.SGD(schedule)
    optimizer.learning_rate  # noqa: B018 (calls the schedule with the optimizer's iterations)
    assert seen[-1] is optimizer.iterations


def test_int64_step_tensor_reaches_a_float_only_scale_fn_as_a_float():
    """TFA raised here ("Cannot convert 0.0001 to EagerTensor of dtype int64"); Keras 2 passed a float step."""
    schedule = CyclicalLearningRate(0.1, 1.0, 4000, scale_fn=five_to_the, scale_mode="iterations")
    steps = np.arange(1, 8001, 13)
    expected = tfa_formula(steps, 0.1, 1.0, 4000, five_to_the, "iterations")
    np.testing.assert_allclose(schedule(tf.constant(steps, tf.int64)), expected, rtol=1e-6, atol=1e-6)


# TFA's registered names: configs as TFA's classes wrote them.

TFA_CONFIGS = [
    (
        "TriangularCyclicalLearningRate",
        {"initial_learning_rate": 0.1, "maximal_learning_rate": 1.0, "step_size": 40, "scale_mode": "cycle"},
        lambda c: np.ones_like(c),
        "cycle",
    ),
    (
        "Triangular2CyclicalLearningRate",
        {"initial_learning_rate": 0.1, "maximal_learning_rate": 1.0, "step_size": 30, "scale_mode": "cycle"},
        lambda c: 0.5 ** (c - 1),
        "cycle",
    ),
    (
        "ExponentialCyclicalLearningRate",
        {
            "initial_learning_rate": 0.1,
            "maximal_learning_rate": 1.0,
            "step_size": 20,
            "scale_mode": "iterations",
            "gamma": 0.99,
        },
        lambda s: 0.99**s,
        "iterations",
    ),
]


def keras3_form(class_name, config):
    """`keras.saving.serialize_keras_object` of a TFA schedule (Keras 2.13+ `.keras` files, Keras 3)."""
    return {
        "module": "tensorflow_addons.optimizers.cyclical_learning_rate",
        "class_name": class_name,
        "config": config,
        "registered_name": f"Addons>{class_name}",
    }


def legacy_form(class_name, config):
    """The legacy form of `.h5` files and Keras 2's `get_config`: the registered name as class_name."""
    return {"class_name": f"Addons>{class_name}", "config": config}


@pytest.mark.parametrize("form", [keras3_form, legacy_form], ids=["keras3", "legacy"])
@pytest.mark.parametrize("class_name,config,scale,scale_mode", TFA_CONFIGS, ids=[c[0] for c in TFA_CONFIGS])
def test_tfa_registered_names_load(form, class_name, config, scale, scale_mode):
    serialized = json.loads(json.dumps(form(class_name, config)))
    schedule = keras.saving.deserialize_keras_object(serialized)
    assert type(schedule) is getattr(schedules, class_name)
    steps = np.arange(0, 100)
    expected = tfa_formula(steps, 0.1, 1.0, config["step_size"], scale, scale_mode)
    np.testing.assert_allclose(schedule(steps), expected, rtol=1e-6)
    # Inside an optimizer's config, as a saved model holds it.
    sgd = {"name": "SGD", "learning_rate": serialized, "momentum": 0.0, "nesterov": False}
    optimizer = keras.optimizers.SGD.from_config(sgd)
    optimizer.iterations.assign(17)
    assert float(optimizer.learning_rate) == pytest.approx(float(expected[17]), rel=1e-6)


def test_tfa_base_class_config_with_keras2_lambda(tmp_path):
    """TFA's CyclicalLearningRate in a `.keras` file: Keras 2 wrote its scale_fn as `__lambda__` bytecode."""
    import base64
    import marshal

    fn = lambda x: 1 / (5 ** (x * 0.0001))  # noqa: E731
    code = base64.encodebytes(marshal.dumps(fn.__code__)).decode("ascii")
    config = {
        "initial_learning_rate": 0.1,
        "maximal_learning_rate": 1.0,
        "step_size": 20,
        "scale_mode": "cycle",
        "scale_fn": {"class_name": "__lambda__", "config": {"value": [code, None, None]}},
    }
    serialized = keras3_form("CyclicalLearningRate", config)
    with pytest.raises(ValueError, match=r"scale_fn.*safe_mode=False"):
        keras.saving.deserialize_keras_object(serialized)
    schedule = keras.saving.deserialize_keras_object(serialized, safe_mode=False)
    steps = np.arange(0, 100)
    np.testing.assert_allclose(schedule(steps), tfa_formula(steps, 0.1, 1.0, 20, fn), rtol=1e-6)
    # A .h5 from TFA kept only the function's name: say so, and take it from custom_objects.
    named = legacy_form("CyclicalLearningRate", dict(config, scale_fn="five_to_the"))
    with pytest.raises(ValueError, match=r"scale_fn.*'five_to_the'.*custom_objects"):
        keras.saving.deserialize_keras_object(named)
    with keras.saving.custom_object_scope({"five_to_the": five_to_the}):
        schedule = keras.saving.deserialize_keras_object(named)
    assert schedule.scale_fn is five_to_the


def test_tfa_user_model_file_loads(tmp_path):
    """A `.keras` file whose optimizer config is what TFA wrote (Addons> names, TFA's config keys)."""
    model = _model(Triangular2CyclicalLearningRate(0.1, 1.0, 30))
    model.save(tmp_path / "ours.keras")
    with zipfile.ZipFile(tmp_path / "ours.keras") as src, zipfile.ZipFile(tmp_path / "tfa.keras", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                optimizer = config["compile_config"]["optimizer"]["config"]
                optimizer["learning_rate"] = keras3_form(
                    "Triangular2CyclicalLearningRate",
                    {
                        "initial_learning_rate": 0.1,
                        "maximal_learning_rate": 1.0,
                        "step_size": 30,
                        "scale_mode": "cycle",
                    },
                )
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.models.load_model(tmp_path / "tfa.keras")
    assert type(loaded.optimizer._learning_rate) is Triangular2CyclicalLearningRate
    assert float(loaded.optimizer._learning_rate(75)) == pytest.approx(0.325, rel=1e-6)


# The one intended difference: float32 exactness at large steps.


def tfa_float32(step, initial, maximal, step_size):
    """TFA's __call__ as TFA ran it, in float32 (triangular)."""
    step, size = np.float32(step), np.float32(step_size)
    cycle = np.floor(np.float32(1) + step / (np.float32(2) * size))
    x = np.abs(step / size - np.float32(2) * cycle + np.float32(1))
    return np.float32(initial) + (np.float32(maximal) - np.float32(initial)) * np.maximum(
        np.float32(0), np.float32(1) - x
    )


@pytest.mark.parametrize(
    "step,step_size,tfa_error_above",
    [(10_011, 7, 2e-4), (1_000_003, 2000, 3e-4), (1_000_003, 7, 1e-2), (10_000_001, 7, 0.1)],
)
def test_precision_is_the_intended_difference(step, step_size, tfa_error_above):
    """docs/schedules.md's precision table: TFA's float32 relative error at these steps; clr_loop stays within 1e-6."""
    exact = float(tfa_formula(step, 1e-4, 1e-2, step_size, np.ones_like))
    tfa = float(tfa_float32(step, 1e-4, 1e-2, step_size))
    ours = float(TriangularCyclicalLearningRate(1e-4, 1e-2, step_size)(step))
    print(
        f"| {step:,} | {step_size} | {exact:.6e} | {tfa:.6e} | {abs(tfa - exact) / exact:.1e} | "
        f"{abs(ours - exact) / exact:.1e} |"
    )
    assert abs(ours - exact) / exact < 1e-6
    assert abs(tfa - exact) / exact > tfa_error_above
