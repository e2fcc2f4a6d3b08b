"""Tests for clr_loop.schedules against independent float64 numpy oracles.

The oracles transcribe the published formulas directly (TFA's CyclicalLearningRate, PyTorch's
CyclicLR and OneCycleLR), in float64 and with none of the library's integer tricks.
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import schedules
from clr_loop.schedules import (
    CyclicalLearningRate,
    ExponentialCyclicalLearningRate,
    OneCycle,
    Triangular2CyclicalLearningRate,
    TriangularCyclicalLearningRate,
)
from testing import TRIANGULAR, assert_rel, roundtrip, tfa_oracle


def torch_cyclic_oracle(step, lo, hi, up, down, scale_fn, scale_mode):
    """PyTorch CyclicLR.get_lr in float64, one step at a time, as torch writes it."""
    total = float(up + down)
    ratio = up / total
    out = []
    for s in np.asarray(step, dtype=np.int64):
        cycle = math.floor(1 + s / total)
        x = 1.0 + s / total - cycle
        scale_factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        height = (hi - lo) * scale_factor
        out.append(lo + height * scale_fn(cycle if scale_mode == "cycle" else s))
    return np.array(out)


def torch_onecycle_oracle(step, max_lr, total, pct, strategy, div, final_div, three_phase):
    """PyTorch OneCycleLR.get_lr in float64 (steps beyond total-1 are not defined there)."""
    initial = max_lr / div
    lowest = initial / final_div
    if three_phase:
        phases = [
            (float(pct * total) - 1, initial, max_lr),
            (float(2 * pct * total) - 2, max_lr, initial),
            (total - 1, initial, lowest),
        ]
    else:
        phases = [(float(pct * total) - 1, initial, max_lr), (total - 1, max_lr, lowest)]

    def anneal(a, b, p):
        if strategy == "cos":
            return b + (a - b) / 2.0 * (math.cos(math.pi * p) + 1)
        return (b - a) * p + a

    out = []
    for s in np.asarray(step, dtype=np.int64):
        start = 0
        for i, (end, a, b) in enumerate(phases):
            if s <= end or i == len(phases) - 1:
                out.append(anneal(a, b, (s - start) / (end - start)))
                break
            start = end
    return np.array(out)


TRIANGULAR2 = lambda c: 0.5 ** (np.asarray(c, dtype=np.float64) - 1)  # noqa: E731


def exp_range(gamma):
    return lambda s: gamma ** np.asarray(s, dtype=np.float64)


CLR_CASES = [
    ("triangular", dict(mode="triangular"), TRIANGULAR, "cycle"),
    ("triangular2", dict(mode="triangular2"), TRIANGULAR2, "cycle"),
    ("exp_range", dict(mode="exp_range", gamma=0.999), exp_range(0.999), "iterations"),
    ("triangular_iterations", dict(mode="triangular", scale_mode="iterations"), TRIANGULAR, "iterations"),
]
CLASS_CASES = [
    ("TriangularCLR", lambda lo, hi, s: TriangularCyclicalLearningRate(lo, hi, s), TRIANGULAR, "cycle"),
    ("Triangular2CLR", lambda lo, hi, s: Triangular2CyclicalLearningRate(lo, hi, s), TRIANGULAR2, "cycle"),
    (
        "ExponentialCLR",
        lambda lo, hi, s: ExponentialCyclicalLearningRate(lo, hi, s, gamma=0.9995),
        exp_range(0.9995),
        "iterations",
    ),
]


@pytest.mark.parametrize("wrap", [lambda s: s, roundtrip], ids=["direct", "roundtrip"])
@pytest.mark.parametrize("step_size", [7, 100])
@pytest.mark.parametrize("name,kwargs,scale_fn,scale_mode", CLR_CASES, ids=[c[0] for c in CLR_CASES])
def test_modes_match_tfa_formula_over_three_cycles(wrap, step_size, name, kwargs, scale_fn, scale_mode):
    schedule = wrap(CyclicalLearningRate(1e-4, 1e-2, step_size, **kwargs))
    steps = np.arange(0, 3 * 2 * step_size + 1)
    expected = tfa_oracle(steps, 1e-4, 1e-2, step_size, scale_fn, scale_mode)
    assert_rel(schedule(steps), expected)
    # Explicit boundaries: every cycle starts at the initial rate, peaks at step_size.
    for cycle in range(3):
        start, peak = 2 * step_size * cycle, 2 * step_size * cycle + step_size
        assert float(schedule(start)) == pytest.approx(1e-4, rel=1e-6)
        amplitude = scale_fn(cycle + 1 if scale_mode == "cycle" else peak)
        assert float(schedule(peak)) == pytest.approx(1e-4 + (1e-2 - 1e-4) * float(amplitude), rel=1e-6)


@pytest.mark.parametrize("wrap", [lambda s: s, roundtrip], ids=["direct", "roundtrip"])
@pytest.mark.parametrize("name,make,scale_fn,scale_mode", CLASS_CASES, ids=[c[0] for c in CLASS_CASES])
def test_tfa_subclasses_match_formula(wrap, name, make, scale_fn, scale_mode):
    schedule = wrap(make(3e-4, 3e-3, 9))
    assert type(schedule).__name__ == type(make(3e-4, 3e-3, 9)).__name__
    steps = np.arange(0, 3 * 18 + 1)
    assert_rel(schedule(steps), tfa_oracle(steps, 3e-4, 3e-3, 9, scale_fn, scale_mode))


def test_triangular2_peaks_halve_each_cycle():
    schedule = CyclicalLearningRate(0.0, 1.0, 5, mode="triangular2")
    peaks = [float(schedule(5 + 10 * k)) for k in range(4)]
    assert peaks == [1.0, 0.5, 0.25, 0.125]
    assert [float(schedule(10 * k)) for k in range(4)] == [0.0] * 4


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
@pytest.mark.parametrize("step_size", [7, 1000])
def test_precision_float32_against_float64_up_to_1e5_steps(mode, step_size):
    gamma = 0.99999
    schedule = CyclicalLearningRate(1e-4, 1e-2, step_size, mode=mode, gamma=gamma)
    steps = np.arange(0, 100_001)
    scale = {"triangular": TRIANGULAR, "triangular2": TRIANGULAR2, "exp_range": exp_range(gamma)}[mode]
    expected = tfa_oracle(steps, 1e-4, 1e-2, step_size, scale, "iterations" if mode == "exp_range" else "cycle")
    assert_rel(schedule(steps), expected)
    assert_rel(schedule(tf.constant(steps, tf.int32)), expected)
    assert_rel(schedule(tf.constant(steps, tf.float32)), expected)


def test_precision_at_1e7_steps():
    steps = np.array([10**7 - 3, 10**7 - 1, 10**7, 10**7 + 2, 9_999_991])
    for mode, scale in (("triangular", TRIANGULAR), ("exp_range", exp_range(1 - 1e-7))):
        schedule = CyclicalLearningRate(1e-4, 1e-2, 7, mode=mode, gamma=1 - 1e-7)
        expected = tfa_oracle(steps, 1e-4, 1e-2, 7, scale, "iterations" if mode == "exp_range" else "cycle")
        assert_rel(schedule(steps), expected)
        assert_rel(schedule(tf.constant(steps, tf.int64)), expected)


def test_tfa_float32_formula_really_loses_precision():
    """Documents why integer arithmetic is needed: TFA's float32 formula is off by ~1e-3 relative."""
    step = np.float32(10_011)
    size = np.float32(7)
    cycle = np.floor(np.float32(1) + step / (np.float32(2) * size))
    x = np.abs(step / size - np.float32(2) * cycle + np.float32(1))
    tfa32 = 1e-4 + (1e-2 - 1e-4) * max(0.0, 1 - float(x))
    exact = tfa_oracle(10_011, 1e-4, 1e-2, 7, TRIANGULAR, "cycle")
    ours = float(CyclicalLearningRate(1e-4, 1e-2, 7)(10_011))
    assert abs(ours - exact) / exact < 1e-6
    assert abs(tfa32 - exact) / exact > 1e-5


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64, tf.float32])
@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_variable_steps_inside_jit_compile(dtype, mode):
    schedule = CyclicalLearningRate(1e-4, 1e-2, 7, mode=mode, gamma=0.99)
    step = tf.Variable(0, dtype=dtype)

    @tf.function(jit_compile=True)
    def lr_and_advance():
        lr = schedule(step)
        step.assign_add(tf.cast(1, dtype))
        return lr

    scale = {"triangular": TRIANGULAR, "triangular2": TRIANGULAR2, "exp_range": exp_range(0.99)}[mode]
    expected = tfa_oracle(np.arange(40), 1e-4, 1e-2, 7, scale, "iterations" if mode == "exp_range" else "cycle")
    assert_rel([float(lr_and_advance()) for _ in range(40)], expected)


def test_optimizer_iterations_int64_in_iterations_mode():
    """tensorflow/addons#2799: TFA crashed on int64 steps with scale_mode='iterations'."""
    optimizer = keras.optimizers.SGD(ExponentialCyclicalLearningRate(1e-4, 1e-2, 4, gamma=0.9))
    optimizer.iterations.assign(5)
    assert optimizer.iterations.dtype == "int64"
    expected = tfa_oracle(5, 1e-4, 1e-2, 4, exp_range(0.9), "iterations")
    assert float(optimizer.learning_rate) == pytest.approx(float(expected), rel=1e-6)


def test_tutorial_code_with_only_the_import_changed():
    from clr_loop import schedules as tfa_optimizers  # was: tfa.optimizers

    steps_per_epoch = 60000 // 64
    clr = tfa_optimizers.CyclicalLearningRate(
        initial_learning_rate=1e-4,
        maximal_learning_rate=1e-2,
        scale_fn=lambda x: 1 / (2.0 ** (x - 1)),
        step_size=2 * steps_per_epoch,
    )
    optimizer = keras.optimizers.SGD(clr)
    step = np.arange(0, 10 * steps_per_epoch)
    lr = clr(step)
    assert lr.shape == (10 * steps_per_epoch,)
    assert_rel(lr, tfa_oracle(step, 1e-4, 1e-2, 2 * steps_per_epoch, TRIANGULAR2, "cycle"))
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)
    # The custom callable is equivalent to the serializable mode.
    assert_rel(lr, CyclicalLearningRate(1e-4, 1e-2, 2 * steps_per_epoch, mode="triangular2")(step).numpy())


def test_python_int_and_numpy_scalars():
    schedule = CyclicalLearningRate(1e-4, 1e-2, 4)
    assert float(schedule(2)) == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5, rel=1e-6)
    assert float(schedule(np.int64(4))) == pytest.approx(1e-2, rel=1e-6)
    assert schedule(3).dtype == tf.float32


def test_get_config_is_json_and_complete():
    config = CyclicalLearningRate(1e-4, 1e-2, 4, mode="exp_range", gamma=0.5, name="lr").get_config()
    assert json.loads(json.dumps(config)) == config
    assert config["mode"] == "exp_range" and config["gamma"] == 0.5 and config["name"] == "lr"
    assert config["scale_mode"] == "iterations"


def test_optimizer_config_round_trip():
    optimizer = keras.optimizers.SGD(CyclicalLearningRate(1e-4, 1e-2, 3, mode="triangular2"))
    restored = keras.optimizers.SGD.from_config(json.loads(json.dumps(optimizer.get_config())))
    assert isinstance(restored._learning_rate, CyclicalLearningRate)
    restored.iterations.assign(9)
    assert float(restored.learning_rate) == pytest.approx(
        float(tfa_oracle(9, 1e-4, 1e-2, 3, TRIANGULAR2, "cycle")), rel=1e-6
    )


def test_keras_model_file_round_trip_continues_training(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    schedule = CyclicalLearningRate(1e-3, 5e-2, 2, mode="triangular2")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 steps
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer._learning_rate, CyclicalLearningRate)
    assert loaded.optimizer._learning_rate.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 4
    before = [w.copy() for w in loaded.get_weights()]
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 8
    assert any(not np.array_equal(a, b) for a, b in zip(before, loaded.get_weights()))
    assert float(loaded.optimizer.learning_rate) == pytest.approx(
        float(tfa_oracle(8, 1e-3, 5e-2, 2, TRIANGULAR2, "cycle")), rel=1e-6
    )


@pytest.mark.parametrize(
    "kwargs,culprit",
    [
        (dict(step_size=0), "step_size"),
        (dict(step_size=-3), "step_size"),
        (dict(step_size_down=0), "step_size_down"),
        (dict(maximal_learning_rate=float("inf")), "maximal_learning_rate"),
        (dict(initial_learning_rate=float("nan")), "initial_learning_rate"),
        (dict(mode="cosine"), "mode"),
        (dict(mode="exp_range", gamma=float("nan")), "gamma"),
        (dict(step_size=float("nan")), "step_size"),
        (dict(initial_learning_rate="0.1"), "initial_learning_rate"),
        (dict(maximal_learning_rate=lambda: 0.1), "maximal_learning_rate"),
        (dict(scale_mode=1), "scale_mode"),
        (dict(scale_fn=0.5), "scale_fn"),
        (dict(mode="triangular", scale_fn=lambda x: 1.0), "scale_fn"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, culprit):
    args = dict(initial_learning_rate=1e-4, maximal_learning_rate=1e-2, step_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=culprit):
        CyclicalLearningRate(**args)


# Asymmetric cycles and one-cycle (PyTorch's CyclicLR / OneCycleLR formulas).


@pytest.mark.parametrize("wrap", [lambda s: s, roundtrip], ids=["direct", "roundtrip"])
@pytest.mark.parametrize("up,down", [(3, 7), (10, 4), (5, 5), (1, 1)])
@pytest.mark.parametrize(
    "mode,scale_fn,scale_mode",
    [
        ("triangular", TRIANGULAR, "cycle"),
        ("triangular2", TRIANGULAR2, "cycle"),
        ("exp_range", exp_range(0.98), "iterations"),
    ],
)
def test_asymmetric_cycles_match_pytorch_cycliclr(wrap, up, down, mode, scale_fn, scale_mode):
    schedule = wrap(CyclicalLearningRate(1e-3, 6e-3, up, mode=mode, gamma=0.98, step_size_down=down))
    steps = np.arange(0, 4 * (up + down) + 1)
    expected = torch_cyclic_oracle(steps, 1e-3, 6e-3, up, down, scale_fn, scale_mode)
    assert_rel(schedule(steps), expected)
    assert float(schedule(up)) == pytest.approx(float(expected[up]), rel=1e-6)


@pytest.mark.parametrize("wrap", [lambda s: s, roundtrip], ids=["direct", "roundtrip"])
@pytest.mark.parametrize(
    "total,pct,strategy,three_phase",
    [(100, 0.3, "cos", False), (100, 0.3, "linear", False), (937, 0.25, "cos", True), (50, 0.4, "linear", True)],
)
def test_one_cycle_matches_pytorch(wrap, total, pct, strategy, three_phase):
    schedule = wrap(OneCycle(0.1, total, pct_start=pct, anneal_strategy=strategy, three_phase=three_phase))
    steps = np.arange(total)
    expected = torch_onecycle_oracle(steps, 0.1, total, pct, strategy, 25.0, 1e4, three_phase)
    np.testing.assert_allclose(np.asarray(schedule(steps), np.float64), expected, rtol=2e-6, atol=1e-12)
    assert float(schedule(0)) == pytest.approx(0.1 / 25, rel=1e-6)
    assert float(schedule(total - 1)) == pytest.approx(0.1 / 25 / 1e4, rel=1e-5)
    # Documented: steps past the end hold the final value.
    past = np.asarray(schedule(np.array([total, total + 1, 10 * total])))
    np.testing.assert_allclose(past, float(schedule(total - 1)), rtol=1e-6)


def test_one_cycle_bad_arguments():
    for kwargs, culprit in [
        (dict(total_steps=0), "total_steps"),
        (dict(pct_start=1.0), "pct_start"),
        (dict(anneal_strategy="exp"), "anneal_strategy"),
        (dict(div_factor=0.0), "div_factor"),
        (dict(maximal_learning_rate=-1.0), "maximal_learning_rate"),
        (dict(total_steps=2, pct_start=0.1), "phase"),
    ]:
        args = dict(maximal_learning_rate=0.1, total_steps=100)
        args.update(kwargs)
        with pytest.raises(ValueError, match=culprit):
            OneCycle(**args)


def test_momentum_moves_opposite_to_rate():
    clr = CyclicalLearningRate(1e-3, 1e-2, 4, mode="triangular2")
    steps = np.arange(24)
    height = tfa_oracle(steps, 0.0, 1.0, 4, TRIANGULAR2, "cycle")
    assert_rel(clr.momentum(steps, 0.85, 0.95), 0.95 - 0.1 * height)
    one = OneCycle(0.1, 100)
    m = np.asarray(one.momentum(np.arange(100), 0.85, 0.95), np.float64)
    assert m[0] == pytest.approx(0.95) and m[29] == pytest.approx(0.85) and m[99] == pytest.approx(0.95)
    assert np.argmin(m) == np.argmax(np.asarray(one(np.arange(100))))


def test_modes_constant_lists_all_modes():
    assert schedules.MODES == ("triangular", "triangular2", "exp_range")
