"""Tests for clr_loop.optimizers: SGD whose momentum, and Adam whose beta_1, follows the learning-rate schedule.

The oracles are float64 numpy transcriptions of PyTorch's formulas (OneCycleLR and CyclicLR with
cycle_momentum) and of Keras's momentum-SGD update, written here without the library's code.
The model is linear with a linear loss, so its gradients are known in closed form.
"""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from clr_loop import cli
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import fashion_mnist
from clr_loop import optimizers
from clr_loop import schedules
from clr_loop.experiment import trial

BASE_M, MAX_M = 0.85, 0.95


def cos_anneal(start, end, pct):
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def linear_anneal(start, end, pct):
    return (end - start) * pct + start


def torch_one_cycle(step, max_lr, total, pct_start, div=25.0, final_div=1e4, three_phase=False, strategy="cos"):
    """(lr, momentum) of PyTorch OneCycleLR at `step` <= total - 1, transcribed from its
    lr_scheduler.py: `_schedule_phases` (end_step, start/end lr, start/end momentum) and `get_lr`.
    Three phases: max_m -> base_m up to pct*T - 1, base_m -> max_m up to 2*pct*T - 2, then max_m held
    while the rate falls to its minimum."""
    initial = max_lr / div
    if three_phase:
        phases = [
            (float(pct_start * total) - 1, (initial, max_lr), (MAX_M, BASE_M)),
            (float(2 * pct_start * total) - 2, (max_lr, initial), (BASE_M, MAX_M)),
            (float(total - 1), (initial, initial / final_div), (MAX_M, MAX_M)),
        ]
    else:
        phases = [
            (float(pct_start * total) - 1, (initial, max_lr), (MAX_M, BASE_M)),
            (float(total - 1), (max_lr, initial / final_div), (BASE_M, MAX_M)),
        ]
    anneal = cos_anneal if strategy == "cos" else linear_anneal
    start = 0.0
    for i, (end, lrs, moms) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return anneal(*lrs, pct), anneal(*moms, pct)
        start = end


def torch_cyclic_triangular2(step, lo, hi, up, down):
    """(lr, momentum) of PyTorch CyclicLR(mode="triangular2", cycle_momentum=True) at `step`."""
    total = up + down
    ratio = up / total
    cycle = math.floor(1 + step / total)
    x = 1.0 + step / total - cycle
    scale_factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    scale = 1 / (2.0 ** (cycle - 1))
    return lo + (hi - lo) * scale_factor * scale, MAX_M - (MAX_M - BASE_M) * scale_factor * scale


CASES = {
    # total 20 steps: warm-up ends at step 5, so the momentum falls then rises within the run.
    "one_cycle": (lambda: schedules.OneCycle(0.4, 20, pct_start=0.3), lambda k: torch_one_cycle(k, 0.4, 20, 0.3), 20),
    # Three phases over 20 steps: the momentum falls to step 5, rises to step 10, then holds at max.
    "one_cycle_three_phase": (
        lambda: schedules.OneCycle(0.4, 20, pct_start=0.3, three_phase=True),
        lambda k: torch_one_cycle(k, 0.4, 20, 0.3, three_phase=True),
        20,
    ),
    # Asymmetric triangular2 (up 3, down 5): two and a half cycles with halving amplitude.
    "triangular2": (
        lambda: schedules.CyclicalLearningRate(0.01, 0.3, 3, mode="triangular2", step_size_down=5),
        lambda k: torch_cyclic_triangular2(k, 0.01, 0.3, 3, 5),
        20,
    ),
}


def linear_problem(seed=0, steps=20):
    """A Dense(2) model without bias, per-step inputs, and the loss weights c: loss_k = sum(model(x_k) * c)."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    inputs = rng.normal(size=(steps, 4, 3)).astype(np.float32)
    c = np.array([1.0, -2.0], np.float32)
    return model, inputs, c


def make_step(model, optimizer, c, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def step(x):
        momentum = optimizer.current_momentum()
        lr = optimizer.learning_rate
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) * c)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return momentum, lr

    return step


def numpy_momentum_sgd(w0, inputs, c, lrs, moms, nesterov):
    """Keras's momentum SGD in float64: v = m v - lr g; w += v (nesterov: w += m v - lr g)."""
    w, v = w0.astype(np.float64), np.zeros_like(w0, np.float64)
    ws, vs = [], []
    for x, lr, m in zip(inputs, lrs, moms):
        g = np.outer(x.astype(np.float64).sum(axis=0), c)  # d/dW of sum((x @ W) * c)
        v = m * v - lr * g
        w = w + (m * v - lr * g if nesterov else v)
        ws.append(w)
        vs.append(v)
    return np.array(ws), np.array(vs)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_velocity_update_uses_the_scheduled_momentum_of_each_step(case, nesterov):
    make_schedule, oracle, steps = CASES[case]
    model, inputs, c = linear_problem(steps=steps)
    schedule = make_schedule()
    momentum = optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M)
    opt = optimizers.CyclicalMomentumSGD(schedule, momentum, nesterov=nesterov)
    opt.build(model.trainable_variables)
    step = make_step(model, opt, c, jit_compile=True)
    w0 = model.trainable_variables[0].numpy()
    ws, vs = [], []
    for x in inputs:
        step(x)
        ws.append(model.trainable_variables[0].numpy())
        vs.append(opt.momentums[0].numpy())
    lrs, moms = zip(*(oracle(k) for k in range(steps)))
    want_w, want_v = numpy_momentum_sgd(w0, inputs, c, lrs, moms, nesterov)
    np.testing.assert_allclose(vs, want_v, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ws, want_w, rtol=2e-5, atol=1e-6)
    # The comparison can tell: reading the momentum one step late, or a constant momentum, is far off.
    late = list(moms[1:]) + [moms[-1]]
    for wrong in (late, [MAX_M] * steps):
        _, wrong_v = numpy_momentum_sgd(w0, inputs, c, lrs, wrong, nesterov)
        assert np.max(np.abs(wrong_v - want_v)) > 100 * (2e-5 * np.max(np.abs(want_v)) + 1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_momentum_read_inside_the_xla_step_matches_pytorch(case):
    make_schedule, oracle, steps = CASES[case]
    model, inputs, c = linear_problem(steps=steps)
    schedule = make_schedule()
    opt = optimizers.CyclicalMomentumSGD(schedule, optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M))
    opt.build(model.trainable_variables)
    step = make_step(model, opt, c, jit_compile=True)
    got = np.array([[float(v) for v in step(x)] for x in inputs])
    want = np.array([oracle(k) for k in range(steps)])
    np.testing.assert_allclose(got[:, 0], want[:, 1], rtol=1e-6)  # momentum
    np.testing.assert_allclose(got[:, 1], want[:, 0], rtol=1e-5)  # learning rate
    assert got[:, 0].min() < MAX_M - 0.05  # the momentum really moved during the run
    assert int(opt.iterations.numpy()) == steps


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_three_phase_one_cycle_momentum_matches_pytorch_at_every_step_including_the_end(strategy):
    total, pct = 100, 0.25  # PyTorch's phase ends: steps 24, 48 and 99
    # The oracle's own shape, by hand: max at 0, base at 24, max again at 48 and from there to the end.
    oracle = np.array(
        [torch_one_cycle(k, 0.1, total, pct, three_phase=True, strategy=strategy)[1] for k in range(total)]
    )
    assert oracle[0] == MAX_M and oracle[24] == pytest.approx(BASE_M) and np.all(oracle[48:] == pytest.approx(MAX_M))
    schedule = schedules.OneCycle(0.1, total, pct_start=pct, anneal_strategy=strategy, three_phase=True)
    steps = np.arange(total + 5)
    direct = np.asarray(schedule.momentum(steps, BASE_M, MAX_M), np.float64)
    through = np.asarray(optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M)(steps), np.float64)
    for got in (direct, through):
        np.testing.assert_allclose(got[:total], oracle, rtol=1e-6, atol=0)
        # Past the last step the momentum holds its final value, max_momentum (never base_momentum).
        np.testing.assert_allclose(got[total:], MAX_M, rtol=1e-6, atol=0)
    # And the optimizer's own momentum, step by step through `iterations`, to the last step.
    opt = optimizers.CyclicalMomentumSGD(schedule, optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M))
    opt.build([keras.Variable(np.zeros(2, np.float32))])
    read = []
    for k in range(total):
        opt.iterations.assign(k)
        read.append(float(opt.current_momentum()))
    np.testing.assert_allclose(read, oracle, rtol=1e-6, atol=0)


def test_momentum_moves_opposite_to_the_rate_and_holds_after_one_cycle():
    schedule = schedules.OneCycle(1.0, 50)
    momentum = optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M)
    steps = np.arange(60)
    lr, m = np.asarray(schedule(steps), np.float64), np.asarray(momentum(steps), np.float64)
    assert m[0] == pytest.approx(MAX_M) and m[np.argmax(lr)] == pytest.approx(BASE_M)
    # One-cycle's momentum is an affine image of its rate within each phase, decreasing in it.
    assert np.all(np.diff(m[:15]) * np.diff(lr[:15]) <= 0)
    assert np.all(m[49:] == pytest.approx(MAX_M))


def test_constant_float_momentum_is_keras_sgd():
    model, inputs, c = linear_problem(steps=5)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    pairs = (
        (model, optimizers.CyclicalMomentumSGD(0.1, momentum=0.9, nesterov=True)),
        (reference, keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)),
    )
    for m, opt in pairs:
        for x in inputs:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(m(x) * c)
            opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
    np.testing.assert_allclose(model.get_weights()[0], reference.get_weights()[0], rtol=1e-6)


def test_velocity_variables_exist_before_the_first_step_with_keras_names():
    model, _, _ = linear_problem()
    schedule = schedules.OneCycle(0.1, 10)
    opt = optimizers.CyclicalMomentumSGD(schedule, optimizers.CyclicalMomentum(schedule))
    opt.build(model.trainable_variables)
    keras_sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    keras_sgd.build(model.trainable_variables)
    assert [v.name for v in opt.momentums] == [v.name for v in keras_sgd.momentums]
    assert all(np.all(v.numpy() == 0) for v in opt.momentums)


def test_checkpoint_restores_velocity_and_step_so_training_continues_identically(tmp_path):
    def fresh():
        model, inputs, c = linear_problem(steps=6)
        schedule = schedules.OneCycle(0.4, 6)
        opt = optimizers.CyclicalMomentumSGD(schedule, optimizers.CyclicalMomentum(schedule))
        opt.build(model.trainable_variables)
        return model, opt, make_step(model, opt, c, jit_compile=False), inputs

    model, opt, step, inputs = fresh()
    for x in inputs[:3]:
        step(x)
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt"))
    for x in inputs[3:]:
        step(x)
    resumed_model, resumed_opt, resumed_step, _ = fresh()
    tf.train.Checkpoint(model=resumed_model, optimizer=resumed_opt).restore(path).assert_consumed()
    assert int(resumed_opt.iterations.numpy()) == 3
    for x in inputs[3:]:
        resumed_step(x)
    np.testing.assert_array_equal(resumed_model.get_weights()[0], model.get_weights()[0])
    np.testing.assert_array_equal(resumed_opt.momentums[0].numpy(), opt.momentums[0].numpy())


@pytest.mark.parametrize("nesterov", [False, True])
def test_config_round_trips_through_json_and_keras_serialization(nesterov):
    schedule = schedules.CyclicalLearningRate(1e-3, 0.1, 4, mode="exp_range", gamma=0.99, step_size_down=6)
    opt = optimizers.CyclicalMomentumSGD(schedule, optimizers.CyclicalMomentum(schedule, 0.8, 0.9), nesterov=nesterov)
    config = json.loads(json.dumps(opt.get_config()))
    direct = optimizers.CyclicalMomentumSGD.from_config(config)
    via_keras = keras.optimizers.deserialize(json.loads(json.dumps(keras.optimizers.serialize(opt))))
    steps = np.arange(40)
    for copy in (direct, via_keras):
        assert type(copy) is optimizers.CyclicalMomentumSGD
        assert copy.get_config() == opt.get_config()
        assert copy.nesterov is nesterov
        np.testing.assert_allclose(np.asarray(copy.momentum(steps)), np.asarray(opt.momentum(steps)), rtol=1e-7)
    # Independent check of the restored values: PyTorch CyclicLR exp_range momentum, up 4 / down 6.
    oracle = []
    for s in steps:
        cycle = math.floor(1 + s / 10)
        x = 1.0 + s / 10 - cycle
        factor = x / 0.4 if x <= 0.4 else (x - 1) / (0.4 - 1)
        oracle.append(0.9 - 0.1 * factor * 0.99**s)
    np.testing.assert_allclose(np.asarray(direct.momentum(steps)), oracle, rtol=1e-6)


SAVED_OPTIMIZERS = {
    "sgd": lambda s: optimizers.CyclicalMomentumSGD(s, optimizers.CyclicalMomentum(s)),
    "adamw": lambda s: optimizers.CyclicalMomentumAdamW(s, beta_1=optimizers.CyclicalMomentum(s), weight_decay=0.01),
}


@pytest.mark.parametrize("kind", sorted(SAVED_OPTIMIZERS))
def test_saved_keras_model_loads_with_the_scheduled_optimizer(tmp_path, kind):
    model, _, _ = linear_problem()
    schedule = schedules.OneCycle(0.1, 100, three_phase=True)
    model.compile(optimizer=SAVED_OPTIMIZERS[kind](schedule), loss="mse")
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 1
    for mine, theirs in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(theirs.numpy(), mine.numpy())


def test_bad_arguments_are_named():
    schedule = schedules.OneCycle(0.1, 10)
    with pytest.raises(ValueError, match=r"must have a momentum\(step"):
        optimizers.CyclicalMomentum(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(ValueError, match="base_momentum"):
        optimizers.CyclicalMomentum(schedule, 0.95, 0.85)
    with pytest.raises(ValueError, match="max_momentum"):
        optimizers.CyclicalMomentum(schedule, 0.5, 1.5)
    with pytest.raises(ValueError, match="momentum must be"):
        optimizers.CyclicalMomentumSGD(schedule, momentum=-0.1)
    # A TFA-style scale_fn no longer stops the optimizer's config: `lambda x: 1.0` is the triangular mode.
    tfa_style = schedules.CyclicalLearningRate(1e-3, 0.1, 4, scale_fn=lambda x: 1.0)
    opt = optimizers.CyclicalMomentumSGD(0.1, optimizers.CyclicalMomentum(tfa_style))
    config = json.loads(json.dumps(opt.get_config()))
    assert '"mode": "triangular"' in json.dumps(config)


def tiny_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = (rng.integers(0, 40, (n, 28, 28, 1)) + (labels * 20)[:, None, None, None]).astype(np.uint8)
    split = fashion_mnist.Split(images=images, labels=labels)
    return fashion_mnist.FashionMnist(train=split, test=split, source="tiny")


@pytest.mark.parametrize(
    "overrides,cycled,constant",
    [
        (dict(mode="one_cycle"), True, None),
        (dict(mode="one_cycle", cycle_momentum=False, momentum=0.9), False, 0.9),
        (dict(mode="triangular2"), False, 0.0),
        (dict(mode="triangular2", cycle_momentum=True), True, None),
        (dict(mode="none", cycle_momentum=True), False, 0.0),
    ],
)
def test_make_optimizer_cycles_momentum_only_when_the_config_says_so(overrides, cycled, constant):
    config = config_lib.Config(**overrides)
    plan = config_lib.plan_steps(config, 640)
    opt = trial.make_optimizer(config, plan)
    if cycled:
        assert type(opt) is optimizers.CyclicalMomentumSGD
        schedule = config_lib.make_schedule(config, plan)
        # Max momentum where the rate is lowest (step 0), base momentum at the rate's peak.
        peak = int(np.argmax(np.asarray(schedule(np.arange(plan.total_steps)))))
        assert float(opt.momentum(0)) == pytest.approx(MAX_M)
        assert float(opt.momentum(peak)) == pytest.approx(BASE_M)
    else:
        assert type(opt) is keras.optimizers.SGD
        assert opt.momentum == constant


def test_trainer_runs_one_cycle_with_cycled_momentum(tmp_path):
    config = config_lib.Config(
        mode="one_cycle",
        max_lr=0.05,
        epochs=2,
        batch_size=32,
        eval_batch_size=32,
        steps_per_loop=2,
        log_every_steps=2,
        jit_compile="false",
        workdir=str(tmp_path / "run"),
    )
    trainer = trial.Trainer(config, tiny_data())
    history = trainer.train()
    assert type(trainer.optimizer) is optimizers.CyclicalMomentumSGD
    assert int(trainer.optimizer.iterations.numpy()) == 6
    assert all(np.isfinite(history["val_loss"]))
    assert any(np.any(v.numpy() != 0) for v in trainer.optimizer.momentums)


def test_one_cycle_flagfile_builds_cycled_momentum_sgd():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flag_values = flags.FlagValues()
    cli.define_training_flags(flag_values)
    flag_values(["clr_loop.train", f"--flagfile={os.path.join(repo, 'flags', 'one_cycle.flags')}"])
    config = cli.config_from_flags(flag_values)
    assert config.mode == "one_cycle" and config.uses_cycle_momentum and config.epochs == 10
    opt = trial.make_optimizer(config, config_lib.plan_steps(config, fashion_mnist.FULL_SIZE["train"]))
    assert type(opt) is optimizers.CyclicalMomentumSGD
    assert float(opt.learning_rate) == pytest.approx(config.max_lr / config.div_factor)
    assert float(opt.current_momentum()) == pytest.approx(config.max_momentum)


def numpy_adam(w0, inputs, c, lrs, betas, beta_2=0.999, eps=1e-7, decay=0.0, corrected=True):
    """Adam in float64 with a per-step beta_1: m = b_t m + (1 - b_t) g, bias-corrected by 1 - prod(b_1..b_t)
    (with `corrected=False`, by 1 - b_t**t as if b_t had always been the beta); Keras's decoupled decay first."""
    w = w0.astype(np.float64)
    m, v, product = np.zeros_like(w), np.zeros_like(w), 1.0
    ws = []
    for t, (x, lr, b) in enumerate(zip(inputs, lrs, betas), start=1):
        g = np.outer(x.astype(np.float64).sum(axis=0), c)
        w = w - lr * decay * w
        product *= b
        m = b * m + (1 - b) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        correction = 1 - (product if corrected else b**t)
        w = w - lr * np.sqrt(1 - beta_2**t) / correction * m / (np.sqrt(v) + eps)
        ws.append(w)
    return np.array(ws)


def adam_step(model, optimizer, c):
    @tf.function(jit_compile=True)
    def step(x):
        beta_1 = optimizer.current_beta_1()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) * c)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return beta_1

    return step


@pytest.mark.parametrize("correction", optimizers.BIAS_CORRECTIONS)
@pytest.mark.parametrize("decay", [0.0, 0.05])
@pytest.mark.parametrize("case", sorted(CASES))
def test_adam_with_cycled_beta_1_matches_numpy_adam_with_each_bias_correction(case, decay, correction):
    make_schedule, oracle, steps = CASES[case]
    model, inputs, c = linear_problem(steps=steps)
    schedule = make_schedule()
    opt = optimizers.CyclicalMomentumAdam(
        schedule,
        beta_1=optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M),
        weight_decay=decay or None,
        bias_correction=correction,
    )
    opt.build(model.trainable_variables)
    step = adam_step(model, opt, c)
    w0 = model.trainable_variables[0].numpy()
    ws, betas_used = [], []
    for x in inputs:
        betas_used.append(float(step(x)))
        ws.append(model.trainable_variables[0].numpy())
    lrs, moms = zip(*(oracle(k) for k in range(steps)))
    np.testing.assert_allclose(betas_used, moms, rtol=1e-6)
    want = numpy_adam(w0, inputs, c, lrs, moms, decay=decay, corrected=correction == "product")
    # float32 against float64: Keras's own Adam is up to ~2e-5 from this oracle on these problems.
    np.testing.assert_allclose(ws, want, rtol=0, atol=1e-4)
    # The comparison can tell the two bias corrections apart.
    other = numpy_adam(w0, inputs, c, lrs, moms, decay=decay, corrected=correction != "product")
    assert np.max(np.abs(other - want)) > 100 * 1e-4


def test_adam_with_a_constant_beta_1_is_keras_adam():
    model, inputs, c = linear_problem(steps=6)
    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    ours, keras_adam = optimizers.CyclicalMomentumAdam(0.01, beta_1=0.9), keras.optimizers.Adam(0.01, beta_1=0.9)
    for m, opt in ((model, ours), (other, keras_adam)):
        opt.build(m.trainable_variables)
        for x in inputs:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(m(x) * c)
            opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
    np.testing.assert_allclose(model.get_weights()[0], other.get_weights()[0], rtol=1e-6)


@pytest.mark.parametrize("cls", [optimizers.CyclicalMomentumAdam, optimizers.CyclicalMomentumAdamW])
def test_cycled_adam_config_round_trips(cls):
    schedule = schedules.OneCycle(0.01, 100)
    opt = cls(schedule, beta_1=optimizers.CyclicalMomentum(schedule), weight_decay=0.01, bias_correction="product")
    config = json.loads(json.dumps(keras.optimizers.serialize(opt)))
    back = keras.optimizers.deserialize(config)
    assert type(back) is cls and back.weight_decay == 0.01 and back.bias_correction == "product"
    assert float(back.beta_1(0)) == pytest.approx(float(opt.beta_1(0))) == pytest.approx(MAX_M)
    assert optimizers.CyclicalMomentumAdamW(0.01).weight_decay == keras.optimizers.AdamW(0.01).weight_decay
    with pytest.raises(ValueError, match="beta_1 must be a float in"):
        cls(0.01, beta_1=1.5)
    with pytest.raises(ValueError, match="bias_correction must be one of current, product, got 'exact'"):
        cls(0.01, bias_correction="exact")


def test_make_optimizer_cycles_adams_beta_1_for_one_cycle():
    plan = config_lib.plan_steps(config_lib.Config(), 640)
    adamw = trial.make_optimizer(config_lib.Config(mode="one_cycle", optimizer="adamw"), plan)
    assert type(adamw) is optimizers.CyclicalMomentumAdamW and adamw.weight_decay == config_lib.ADAMW_WEIGHT_DECAY
    adam = trial.make_optimizer(config_lib.Config(mode="one_cycle", optimizer="adam", cycle_momentum=False), plan)
    assert type(adam) is keras.optimizers.Adam


def least_squares(seed=0, n=32, d=5):
    """A least-squares problem (A, b) in float32 and a starting point w0: loss(w) = mean((A w - b)**2)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)).astype(np.float32)
    b = (a @ rng.normal(size=d) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return a, b, rng.normal(size=d).astype(np.float32)


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("torch_name", ["Adam", "AdamW"])
def test_cycled_beta_1_adam_follows_pytorchs_trajectory_under_one_cycle_step_for_step(torch_name, three_phase):
    """PyTorch Adam/AdamW with OneCycleLR(cycle_momentum=True) is the oracle: its parameters after every step."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    a, b, w0 = least_squares()
    steps, max_lr, decay = 60, 0.05, (0.01 if torch_name == "AdamW" else 0.0)

    w_torch = torch.nn.Parameter(torch.tensor(w0))
    torch_opt = getattr(torch.optim, torch_name)([w_torch], lr=max_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=decay)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
        torch_opt,
        max_lr=max_lr,
        total_steps=steps,
        pct_start=0.3,
        three_phase=three_phase,
        cycle_momentum=True,
        base_momentum=BASE_M,
        max_momentum=MAX_M,
    )
    want = []
    for _ in range(steps):
        torch_opt.zero_grad()
        loss = torch.mean((torch.tensor(a) @ w_torch - torch.tensor(b)) ** 2)
        loss.backward()
        torch_opt.step()
        torch_schedule.step()
        want.append(w_torch.detach().numpy().copy())

    schedule = schedules.OneCycle(max_lr, steps, pct_start=0.3, three_phase=three_phase)
    cls = optimizers.CyclicalMomentumAdamW if torch_name == "AdamW" else optimizers.CyclicalMomentumAdam
    opt = cls(
        schedule, beta_1=optimizers.CyclicalMomentum(schedule, BASE_M, MAX_M), epsilon=1e-8, weight_decay=decay or None
    )
    w = keras.Variable(w0, name="w")
    opt.build([w])

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((tf.linalg.matvec(a, w.value) - b) ** 2)
        opt.apply_gradients([(tape.gradient(loss, w.value), w)])

    got = []
    for _ in range(steps):
        step()
        got.append(w.numpy().copy())
    # float32 in both: 60 steps of rounding leave the trajectories up to ~7e-6 apart (|w| ~ 0.5).
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-5)
    # The comparison can tell a constant beta_1 from the cycled one: Keras Adam drifts away.
    keras_w = keras.Variable(w0, name="w_const")
    constant = (keras.optimizers.AdamW if decay else keras.optimizers.Adam)(
        schedule, beta_1=0.9, epsilon=1e-8, weight_decay=decay or None
    )
    constant.build([keras_w])
    drift = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((tf.linalg.matvec(a, keras_w.value) - b) ** 2)
        constant.apply_gradients([(tape.gradient(loss, keras_w.value), keras_w)])
        drift.append(keras_w.numpy().copy())
    assert np.max(np.abs(np.array(drift) - np.array(want))) > 30 * 3e-5
