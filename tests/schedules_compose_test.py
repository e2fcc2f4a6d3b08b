"""Tests for clr_loop.schedules' Warmup, Sequence and WarmupStableDecay against hand/numpy formulas.

The oracles write the documented formulas in float64 numpy, step by step; Keras's own schedules
(CosineDecay, PolynomialDecay) stand in for "any schedule" and are evaluated by Keras itself.
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop.schedules import CyclicalLearningRate, OneCycle, Sequence, Warmup, WarmupStableDecay
from testing import TRIANGULAR, assert_rel, roundtrip, tfa_oracle


def wsd_oracle(t, peak, total, warmup, decay_steps, final, decay):
    """MiniCPM's WSD in float64, one step at a time, as the docstring states it."""
    out = []
    for s in np.asarray(t, dtype=np.int64):
        if s < warmup:
            out.append(peak * s / warmup)
        elif s < total - decay_steps:
            out.append(peak)
        elif s < total:
            p = (s - (total - decay_steps)) / decay_steps
            f = {"linear": 1 - p, "cos": (1 + math.cos(math.pi * p)) / 2, "sqrt": 1 - math.sqrt(p)}[decay]
            out.append(final + (peak - final) * f)
        else:
            out.append(final)
    return np.array(out)


def keras_values(schedule, steps):
    """Keras's own values of one of its schedules, one step at a time (float64 array)."""
    return np.array([float(schedule(int(s))) for s in steps])


@pytest.mark.parametrize("decay", ["linear", "cos", "sqrt"])
@pytest.mark.parametrize("wrap", [lambda s: s, roundtrip], ids=["direct", "roundtrip"])
def test_wsd_matches_its_formula_at_every_step(decay, wrap):
    schedule = wrap(WarmupStableDecay(0.3, total_steps=50, warmup_steps=7, decay_steps=11, final_lr=0.01, decay=decay))
    steps = np.arange(0, 60)
    assert_rel(schedule(steps), wsd_oracle(steps, 0.3, 50, 7, 11, 0.01, decay))
    assert schedule(steps).dtype == tf.float32


def test_wsd_hand_values():
    lr = WarmupStableDecay(0.1, total_steps=1000, warmup_steps=100, decay_steps=200, decay="sqrt")
    # warmup 50/100 -> 0.05; stable; decay at p = 0.25 -> 0.1 * (1 - 0.5); the end -> 0.
    assert [float(lr(t)) for t in (0, 50, 100, 799, 800, 850, 1000, 10**6)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.1, 0.1, 0.05, 0.0, 0.0], abs=1e-8
    )
    no_warmup = WarmupStableDecay(0.1, total_steps=10, warmup_steps=0, decay_steps=10)
    assert float(no_warmup(0)) == pytest.approx(0.1) and float(no_warmup(5)) == pytest.approx(0.05)


def test_warmup_is_a_ramp_then_the_wrapped_schedule_shifted():
    cosine = keras.optimizers.schedules.CosineDecay(0.1, 40, alpha=0.1)
    schedule = Warmup(cosine, warmup_steps=8, start_lr=0.02)
    steps = np.arange(0, 60)
    target = float(cosine(0))
    expected = np.where(steps < 8, 0.02 + (target - 0.02) * steps / 8, keras_values(cosine, np.maximum(steps - 8, 0)))
    assert_rel(schedule(steps), expected)
    cos = Warmup(cosine, warmup_steps=8, start_lr=0.02, shape="cos")
    ramp = 0.02 + (target - 0.02) * (1 - np.cos(np.pi * steps[:8] / 8)) / 2
    assert_rel(cos(steps[:8]), ramp)
    assert_rel(cos(steps[8:]), expected[8:])
    # The wrapped schedule's own step 0 comes at the end of the warmup; the rate is continuous there.
    assert float(schedule(8)) == pytest.approx(target, rel=1e-6)


def test_warmup_of_a_clr_schedule_and_of_a_constant():
    clr = CyclicalLearningRate(1e-3, 1e-2, 5)
    schedule = roundtrip(Warmup(clr, warmup_steps=4))
    steps = np.arange(4, 40)
    assert_rel(schedule(steps), tfa_oracle(steps - 4, 1e-3, 1e-2, 5, TRIANGULAR, "cycle"))
    np.testing.assert_allclose(schedule(np.arange(4)), [0.0, 2.5e-4, 5e-4, 7.5e-4], rtol=1e-6)
    constant = Warmup(0.05, warmup_steps=10)
    assert [float(constant(t)) for t in (0, 5, 10, 1000)] == pytest.approx([0.0, 0.025, 0.05, 0.05])


def test_warmup_momentum_holds_max_then_follows_the_wrapped_schedule():
    one_cycle = OneCycle(0.1, 30)
    schedule = Warmup(one_cycle, warmup_steps=5)
    steps = np.arange(0, 35)
    expected = np.where(steps < 5, 0.95, one_cycle.momentum(np.maximum(steps - 5, 0), 0.85, 0.95).numpy())
    assert_rel(schedule.momentum(steps, 0.85, 0.95), expected)
    with pytest.raises(AttributeError, match="no momentum"):
        Warmup(0.1, 3).momentum(1, 0.85, 0.95)


def test_sequence_segments_each_count_from_zero():
    poly = keras.optimizers.schedules.PolynomialDecay(0.01, 10, end_learning_rate=0.1)
    cosine = keras.optimizers.schedules.CosineDecay(0.1, 20)
    schedule = Sequence([(poly, 10), (0.07, 5), (cosine, None)])
    assert schedule.boundaries == [10, 15]
    steps = np.arange(0, 50)
    expected = np.concatenate([keras_values(poly, range(10)), np.full(5, 0.07), keras_values(cosine, range(35))])
    assert_rel(schedule(steps), expected)
    assert_rel(roundtrip(schedule)(steps), expected)


def test_nested_composites_keep_their_values_and_configs():
    inner = Sequence([(Warmup(OneCycle(0.1, 20), 3), 23), (0.001, None)])
    outer = Sequence([(0.0005, 4), (inner, None)])
    steps = np.arange(0, 40)
    one_cycle = OneCycle(0.1, 20)
    warm = np.concatenate([0.1 / 25 * np.arange(3) / 3, one_cycle(np.arange(20)).numpy()])
    expected = np.concatenate([np.full(4, 0.0005), warm, np.full(13, 0.001)])
    assert_rel(outer(steps), expected)
    text = json.dumps(keras.saving.serialize_keras_object(outer))
    restored = keras.saving.deserialize_keras_object(json.loads(text))
    assert restored.get_config() == outer.get_config()
    assert_rel(restored(steps), expected)


SCHEDULES = {
    "warmup": lambda: Warmup(OneCycle(0.1, 25), 5, start_lr=0.01, shape="cos"),
    "warmup_keras": lambda: Warmup(
        keras.optimizers.schedules.CosineDecayRestarts(0.1, 7), 5, start_lr=0.01, shape="cos"
    ),
    "sequence": lambda: Sequence([(Warmup(0.1, 3), 6), (CyclicalLearningRate(1e-3, 0.1, 4, mode="triangular2"), None)]),
    "wsd": lambda: WarmupStableDecay(0.1, 30, 4, 9, final_lr=0.001, decay="sqrt"),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_jit_compiled_on_int64_iterations_equals_eager(name):
    schedule = SCHEDULES[name]()
    optimizer = keras.optimizers.SGD(schedule)
    assert optimizer.iterations.dtype == "int64"

    @tf.function(jit_compile=True)
    def lr_and_advance():
        lr = schedule(optimizer.iterations)
        optimizer.iterations.assign_add(1)
        return lr

    compiled = np.array([lr_and_advance().numpy() for _ in range(40)])
    eager = np.array([schedule(s).numpy() for s in range(40)])
    assert compiled.dtype == np.float32
    if name == "warmup_keras":
        # Keras's own schedule computes in float32; XLA's cos differs from the eager one by ulps of the peak.
        np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-8)
    else:  # clr_loop's math is float64 and rounds to the same float32 either way
        np.testing.assert_array_equal(compiled, eager)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_keras_model_file_round_trip_keeps_the_schedule(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    schedule = SCHEDULES[name]()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # 4 steps
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.optimizer._learning_rate
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 4
    np.testing.assert_array_equal(restored(np.arange(40)), schedule(np.arange(40)))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make,culprit",
    [
        (lambda: Warmup("0.1", 5), "schedule"),
        (lambda: Warmup(-0.1, 5), "schedule"),
        (lambda: Warmup(0.1, 0), "warmup_steps"),
        (lambda: Warmup(0.1, 2.5), "warmup_steps"),
        (lambda: Warmup(0.1, 5, start_lr=-1.0), "start_lr"),
        (lambda: Warmup(0.1, 5, shape="exp"), "shape"),
        (lambda: Sequence([]), "segments"),
        (lambda: Sequence([(0.1, 5)]), r"segments\[0\] num_steps"),
        (lambda: Sequence([(0.1, None), (0.2, None)]), r"segments\[0\] num_steps"),
        (lambda: Sequence([(0.1, 0), (0.2, None)]), r"segments\[0\] num_steps"),
        (lambda: Sequence([(0.1, 3), (lambda s: s, None)]), r"segments\[1\] schedule"),
        (lambda: Sequence([0.1]), r"segments\[0\]"),
        (lambda: WarmupStableDecay(0.0, 10, 1, 1), "peak_lr"),
        (lambda: WarmupStableDecay(0.1, 0, 0, 1), "total_steps"),
        (lambda: WarmupStableDecay(0.1, 10, -1, 1), "warmup_steps"),
        (lambda: WarmupStableDecay(0.1, 10, 1, 0), "decay_steps"),
        (lambda: WarmupStableDecay(0.1, 10, 5, 6), "warmup_steps"),
        (lambda: WarmupStableDecay(0.1, 10, 1, 1, final_lr=0.2), "final_lr"),
        (lambda: WarmupStableDecay(0.1, 10, 1, 1, decay="exp"), "decay"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, culprit):
    with pytest.raises(ValueError, match=culprit):
        make()
