"""Tests for clr_loop.experiment.config: epochs-to-steps conversion, schedules from a Config, validation."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from clr_loop.experiment import checks
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import resume
from clr_loop import schedules


def flag_problems(config):
    """Returns `checks.validate`'s problems with `config` as the CLI shows them: the fields as --flags."""
    return [problem.render(lambda name: f"--{name}") for problem in checks.validate(config)]


def test_plan_steps_converts_epochs_to_steps_once():
    plan = config_lib.plan_steps(config_lib.Config(), 60000)
    assert plan.steps_per_epoch == 937  # 60000 // 64, last partial batch dropped
    assert plan.total_steps == 9370
    assert plan.step_size == 1874 and plan.step_size_down is None
    plan = config_lib.plan_steps(
        config_lib.Config(step_size_epochs=0.5, step_size_down_epochs=1.5, max_steps=100), 60000
    )
    assert (plan.step_size, plan.step_size_down, plan.total_steps) == (468, 1406, 100)  # round(468.5)=468
    assert config_lib.plan_steps(config_lib.Config(step_size_epochs=0.0001), 60000).step_size == 1


def test_make_schedule_per_mode():
    plan = config_lib.plan_steps(config_lib.Config(), 60000)
    assert config_lib.make_schedule(config_lib.Config(mode="none", lr=0.03), plan) == 0.03
    clr = config_lib.make_schedule(config_lib.Config(mode="exp_range", gamma=0.999), plan)
    assert isinstance(clr, schedules.CyclicalLearningRate)
    assert (clr.mode, clr.step_size, clr.gamma, clr.scale_mode) == ("exp_range", 1874, 0.999, "iterations")
    capped = config_lib.plan_steps(config_lib.Config(mode="one_cycle", max_steps=50), 60000)
    one = config_lib.make_schedule(config_lib.Config(mode="one_cycle", max_lr=0.1), capped)
    assert isinstance(one, schedules.OneCycle) and one.total_steps == 9370  # epochs, not max_steps


def test_json_round_trip():
    config = config_lib.Config(profile_steps=(3, 5), devices=("/cpu:0",), mode="triangular")
    assert config_lib.Config.from_json_dict(config.to_json_dict()) == config
    with pytest.raises(ValueError, match="unknown configuration keys: bogus"):
        config_lib.Config.from_json_dict({**config.to_json_dict(), "bogus": 1})


def test_cycle_momentum_defaults():
    assert config_lib.Config(mode="one_cycle").uses_cycle_momentum
    assert not config_lib.Config(mode="triangular2").uses_cycle_momentum
    assert config_lib.Config(mode="triangular2", cycle_momentum=True).uses_cycle_momentum
    assert not config_lib.Config(mode="none", cycle_momentum=True).uses_cycle_momentum


@pytest.mark.parametrize(
    "changes,flag",
    [
        (dict(mode="cosine_annealing"), "--mode"),
        (dict(max_lr=1e-5), "--max_lr"),
        (dict(batch_size=0), "--batch_size"),
        (dict(epochs=2.5), "--epochs"),
        (dict(step_size_down_epochs=-1.0), "--step_size_down_epochs"),
        (dict(strategy="tpu"), "--strategy"),
        (dict(devices=("/gpu:0",)), "--devices"),
        (dict(virtual_cpus=-2), "--virtual_cpus"),
        (dict(virtual_cpus=100_000), "--virtual_cpus"),
        (dict(deterministic=True, jit_compile="true"), "--deterministic cannot run with --jit_compile=true"),
        (dict(save_init="init.h5"), "--save_init"),
        (dict(workdir=""), "--workdir"),
        (dict(seed=-1), "--seed"),
        (dict(seed=2**32), "--seed"),
        (dict(epochs=10**9 + 1), "--epochs"),
        (dict(step_size_epochs=1e300), "--step_size_epochs"),  # its steps would overflow int64
        (dict(eval_batch_size=2**63), "--eval_batch_size"),
        (dict(max_steps=10**20), "--max_steps"),
        (dict(dataset_dir=""), "--dataset_dir"),
        (dict(tfds_data_dir=" "), "--tfds_data_dir"),
        (dict(batch_splits=-1), "--batch_splits"),
        (dict(batch_splits=3), "--batch_splits"),  # does not divide 64
        (dict(batch_splits=2, strategy="mirrored"), "--batch_splits"),
        (dict(precision="bfloat16"), "--precision must be one of float32, mixed_bfloat16, mixed_float16"),
        # The multi-worker watchdog and TensorFlow's collective timeout need a finite, bounded time.
        (dict(cluster_timeout=float("inf")), "--cluster_timeout"),
        (dict(cluster_timeout=1e12), "--cluster_timeout"),
        (dict(cluster_timeout=float("nan")), "--cluster_timeout"),
        # Mode none has no cycle for the momentum to follow (as piecewise, cosine, wsd refuse it).
        (dict(mode="none", cycle_momentum=True), "--cycle_momentum needs a cyclical --mode"),
    ],
)
def test_validate_names_the_flag(changes, flag):
    problems = flag_problems(dataclasses.replace(config_lib.Config(), **changes))
    assert len(problems) == 1 and problems[0].startswith(flag), problems


def test_default_config_is_valid():
    assert flag_problems(config_lib.Config()) == []


def test_a_one_cycle_too_short_for_its_phases_names_the_settings():
    config = config_lib.Config(mode="one_cycle", epochs=1, batch_size=64)
    with pytest.raises(
        config_lib.ScheduleError, match=r"^mode=one_cycle spans epochs=1 x 1 batches per epoch = 1 steps, too few"
    ):
        config_lib.make_schedule(config, config_lib.plan_steps(config, 96))


def test_piecewise_schedule_against_a_numpy_oracle():
    config = config_lib.Config(
        mode="piecewise", boundaries_epochs=(1, 2.55), values=(0.1, 0.01, 0.001), batch_size=10, epochs=4
    )
    plan = config_lib.plan_steps(config, 105)  # 10 steps per epoch: boundaries at steps 10 and round(25.5) = 26
    assert plan.boundaries == (10, 26)
    schedule = config_lib.make_schedule(config, plan)
    steps = np.arange(plan.total_steps)
    # The rate for step s (optimizer.iterations before the update): values[i] for s in (b[i-1], b[i]].
    expected = np.array([0.1, 0.01, 0.001])[np.searchsorted([10, 26], steps, side="left")]
    np.testing.assert_allclose(np.asarray(schedule(steps), dtype=np.float64), expected, rtol=1e-6)
    assert np.asarray(schedule(10)) == pytest.approx(0.1) and np.asarray(schedule(11)) == pytest.approx(0.01)
    assert json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))  # JSON-safe
    assert not config.uses_cycle_momentum
    # Other modes plan no boundaries; the settings round-trip through config.json.
    assert config_lib.plan_steps(config_lib.Config(), 105).boundaries is None
    assert config_lib.Config.from_json_dict(json.loads(json.dumps(config.to_json_dict()))) == config


@pytest.mark.parametrize(
    "changes,message",
    [
        ({}, "--mode=piecewise needs --boundaries_epochs"),
        ({"boundaries_epochs": (3.0, 2.0), "values": (1.0, 0.1, 0.01)}, "--boundaries_epochs must increase"),
        ({"boundaries_epochs": (0.0,), "values": (1.0, 0.1)}, "--boundaries_epochs must be positive"),
        ({"boundaries_epochs": (1.0,)}, "--mode=piecewise needs --values"),
        (
            {"boundaries_epochs": (1.0, 2.0), "values": (1.0, 0.1)},
            "--values needs one rate more than --boundaries_epochs",
        ),
        ({"boundaries_epochs": (1.0,), "values": (1.0, -0.1)}, "--values must be positive"),
        (
            {"boundaries_epochs": (1.0,), "values": (1.0, 0.1), "cycle_momentum": True},
            "--cycle_momentum needs a cyclical --mode",
        ),
        ({"mode": "one_cycle", "values": (1.0, 0.1)}, "--values is for --mode=piecewise, not --mode=one_cycle"),
    ],
)
def test_piecewise_settings_are_validated_naming_the_flags(changes, message):
    config = config_lib.Config(**{"mode": "piecewise", **changes})
    assert any(message in problem for problem in flag_problems(config)), flag_problems(config)


def config_rates(config, num_train_examples, steps=None):
    """Returns (plan, float64 rates at every step of the run) of `config`'s schedule, as the trainer builds it."""
    plan = config_lib.plan_steps(config, num_train_examples)
    schedule = config_lib.make_schedule(config, plan)
    steps = np.arange(plan.total_steps) if steps is None else steps
    return plan, np.asarray(schedule(steps), dtype=np.float64)


def test_cosine_and_wsd_span_the_run_from_max_lr_to_final_lr():
    # 10 steps per epoch, 4 epochs: 40 steps.
    cosine = config_lib.Config(mode="cosine", max_lr=0.2, final_lr=0.002, epochs=4, batch_size=10)
    _, lr = config_rates(cosine, 100)
    t = np.arange(40)
    np.testing.assert_allclose(lr, 0.002 + (0.2 - 0.002) * (1 + np.cos(np.pi * t / 40)) / 2, rtol=1e-5)
    wsd = config_lib.Config(mode="wsd", max_lr=0.2, epochs=4, batch_size=10, decay_shape="sqrt")
    plan, lr = config_rates(wsd, 100)
    assert plan.decay_steps == 8  # the default 20% of 40 steps
    p = (t - 32) / 8
    np.testing.assert_allclose(lr, np.where(t < 32, 0.2, 0.2 * (1 - np.sqrt(np.clip(p, 0, 1)))), rtol=1e-6, atol=1e-9)
    by_epochs = config_lib.plan_steps(dataclasses.replace(wsd, decay_epochs=1.55), 100)
    assert by_epochs.decay_steps == 16  # round(15.5) = 16 (round half to even)
    assert config_lib.plan_steps(dataclasses.replace(wsd, decay_fraction=0.5), 100).decay_steps == 20


def test_cosine_restarts_is_keras_sgdr_with_the_first_period_from_step_size_epochs():
    config = config_lib.Config(
        mode="cosine_restarts",
        max_lr=0.1,
        step_size_epochs=0.5,
        t_mul=2.0,
        m_mul=0.5,
        final_lr=0.01,
        epochs=4,
        batch_size=10,
    )
    _, lr = config_rates(config, 100)
    # SGDR (Loshchilov & Hutter) as Keras documents it: periods of 5, 10, 20, ... steps, the cosine's
    # height times m_mul**i above the floor final_lr = alpha * max_lr (alpha = 0.1), which stays put.
    expected = []
    for i, length in enumerate((5, 10, 20, 40)):
        t = np.arange(length)
        expected.append(0.01 + (0.1 - 0.01) * 0.5**i * (1 + np.cos(np.pi * t / length)) / 2)
    np.testing.assert_allclose(lr, np.concatenate(expected)[:40], rtol=1e-5)


@pytest.mark.parametrize(
    "mode,extra",
    [
        ("none", {}),
        ("triangular2", {}),
        ("one_cycle", {}),
        ("cosine", {}),
        ("cosine_restarts", {}),
        ("wsd", {}),
        ("piecewise", {"boundaries_epochs": (2.0, 3.0), "values": (0.1, 0.05, 0.01)}),
    ],
)
def test_warmup_epochs_applies_to_every_mode(mode, extra):
    # 10 steps per epoch, 4 epochs, 1.25 warmup epochs = round(12.5) = 12 steps.
    config = config_lib.Config(
        mode=mode,
        max_lr=0.1,
        initial_lr=0.01,
        epochs=4,
        batch_size=10,
        warmup_epochs=1.25,
        step_size_epochs=0.5,
        **extra,
    )
    plan, lr = config_rates(config, 100)
    assert (
        plan.warmup_steps == 12
        and config_lib.plan_steps(dataclasses.replace(config, warmup_epochs=0), 100).warmup_steps == 0
    )
    first = lr[12]
    np.testing.assert_allclose(lr[:12], first * np.arange(12) / 12, rtol=1e-5, atol=1e-9)
    if mode == "wsd":  # its own warmup, then 20% of the 40 steps of decay
        np.testing.assert_allclose(lr[12:32], 0.1, rtol=1e-6)
        return
    # After the warmup: the mode's schedule with its steps counted from the warmup's end; the spanning
    # modes span the 28 steps left, piecewise's boundaries stay at epochs 2 and 3.
    t = np.arange(28)
    expected = {
        "none": lambda: np.full(28, 0.01),  # --lr
        "piecewise": lambda: np.where(t + 12 <= 20, 0.1, np.where(t + 12 <= 30, 0.05, 0.01)),
        "triangular2": lambda: schedules.CyclicalLearningRate(0.01, 0.1, 5, mode="triangular2")(t),
        "one_cycle": lambda: schedules.OneCycle(0.1, 28)(t),
        "cosine": lambda: 0.1 * (1 + np.cos(np.pi * t / 28)) / 2,
        "cosine_restarts": lambda: keras.optimizers.schedules.CosineDecayRestarts(0.1, 5)(t),
    }[mode]()
    np.testing.assert_allclose(lr[12:], expected, rtol=1e-5)


def test_warmup_before_a_one_cycle_keeps_its_cycled_momentum():
    from clr_loop.experiment import trial as trainer

    config = config_lib.Config(mode="one_cycle", max_lr=0.1, epochs=2, batch_size=10, warmup_epochs=0.5)
    plan = config_lib.plan_steps(config, 100)
    optimizer = trainer.make_optimizer(config, plan)  # a CyclicalMomentumSGD whose momentum is a CyclicalMomentum
    momentum = np.asarray(optimizer.momentum(np.arange(20)), dtype=np.float64)
    np.testing.assert_allclose(momentum[:5], 0.95, rtol=1e-6)
    inner = schedules.OneCycle(0.1, 15)
    np.testing.assert_allclose(momentum[5:], inner.momentum(np.arange(15), 0.85, 0.95), rtol=1e-6)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"warmup_epochs": -0.5}, "--warmup_epochs must be a number of epochs >= 0"),
        ({"warmup_epochs": float("inf")}, "--warmup_epochs must be a number of epochs >= 0"),
        (
            {"mode": "cosine", "warmup_epochs": 10.0},
            "--warmup_epochs (10) must be less than --epochs (10) for --mode=cosine",
        ),
        (
            {"mode": "piecewise", "boundaries_epochs": (1.0,), "values": (0.1, 0.01), "warmup_epochs": 1.0},
            "--boundaries_epochs must be after the warmup",
        ),
        (
            {"final_lr": 0.001},
            "--final_lr is for --mode=cosine or --mode=cosine_restarts or --mode=wsd, not --mode=triangular2",
        ),
        ({"mode": "cosine", "t_mul": 2.0}, "--t_mul is for --mode=cosine_restarts, not --mode=cosine"),
        ({"mode": "one_cycle", "decay_shape": "sqrt"}, "--decay_shape is for --mode=wsd, not --mode=one_cycle"),
        ({"mode": "cosine", "final_lr": 0.01}, "--final_lr (0.01) must be less than --max_lr (0.01)"),
        ({"mode": "wsd", "final_lr": -1.0}, "--final_lr must be a learning rate >= 0"),
        ({"mode": "cosine_restarts", "m_mul": 0.0}, "--m_mul must be a positive number"),
        ({"mode": "cosine", "cycle_momentum": True}, "--cycle_momentum needs a cyclical --mode"),
        ({"mode": "wsd", "decay_epochs": 2.0, "decay_fraction": 0.2}, "--decay_epochs and --decay_fraction both"),
        ({"mode": "wsd", "decay_epochs": 0.0}, "--decay_epochs must be a positive number of epochs"),
        ({"mode": "wsd", "decay_fraction": 0.0}, "--decay_fraction must be in (0, 1]"),
        (
            {"mode": "wsd", "warmup_epochs": 3.0, "decay_epochs": 8.0},
            "--warmup_epochs (3) + --decay_epochs (8) must be at most --epochs (10)",
        ),
        (
            {"mode": "wsd", "warmup_epochs": 9.0},
            "--warmup_epochs (9) + --decay_fraction (0.2) x --epochs (10) must be at most",
        ),
        ({"mode": "wsd", "decay_shape": "exp"}, "--decay_shape must be one of linear, cos, sqrt"),
    ],
)
def test_warmup_cosine_and_wsd_settings_are_validated_naming_the_flags(changes, message):
    problems = flag_problems(config_lib.Config(**changes))
    assert len(problems) == 1 and message in problems[0], problems


def test_a_warmup_longer_than_the_data_allows_names_the_settings():
    # 96 examples in batches of 64: one step per epoch; 2 epochs; a 1.5-epoch warmup rounds to 2 steps.
    config = config_lib.Config(mode="cosine", epochs=2, warmup_epochs=1.5)
    with pytest.raises(
        config_lib.ScheduleError,
        match=r"^warmup_epochs=1.5 is 2 steps, which leaves none of the "
        r"epochs=2 x 1 batches per epoch = 2 steps for mode=cosine",
    ):
        config_lib.make_schedule(config, config_lib.plan_steps(config, 96))
    wsd = config_lib.Config(mode="wsd", epochs=2, warmup_epochs=1.5)
    with pytest.raises(config_lib.ScheduleError, match=r"^mode=wsd spans .* 2 warmup steps .* 1 decay steps"):
        config_lib.make_schedule(wsd, config_lib.plan_steps(wsd, 96))


def test_epochs_are_part_of_the_spanning_schedules_on_resume():

    for mode, resumable in (
        ("cosine", False),
        ("wsd", False),
        ("one_cycle", False),
        ("triangular2", True),
        ("cosine_restarts", True),
    ):
        saved = config_lib.Config(mode=mode).to_json_dict()
        current = config_lib.Config(mode=mode, epochs=20).to_json_dict()
        assert (resume.config_differences(saved, current) == []) == resumable, mode
    # A run saved before the new settings existed resumes with their defaults.
    old = {
        k: v
        for k, v in config_lib.Config().to_json_dict().items()
        if k not in ("warmup_epochs", "final_lr", "t_mul", "m_mul", "decay_epochs", "decay_fraction", "decay_shape")
    }
    assert resume.config_differences(old, config_lib.Config().to_json_dict()) == []


def test_config_differences():
    saved = {"mode": "triangular2", "batch_size": 64, "max_lr": 0.01, "epochs": 10, "workdir": "a", "max_steps": 0}
    current = dict(saved, workdir="b", max_steps=100, epochs=20)
    assert resume.config_differences(saved, current) == []
    current = dict(saved, batch_size=32, max_lr=0.1)
    assert resume.config_differences(saved, current) == ["batch_size", "max_lr"]
    one_cycle = dict(saved, mode="one_cycle")
    assert resume.config_differences(one_cycle, dict(one_cycle, epochs=20)) == ["epochs"]


def test_a_run_from_before_batch_splits_resumes_with_any_split():
    """config.json of a run written before --batch_splits existed has no such key."""
    saved = {"mode": "triangular2", "batch_size": 64, "workdir": "a"}
    for splits in (0, 1, 2):
        assert resume.config_differences(saved, dict(saved, batch_splits=splits)) == []
    assert resume.config_differences(dict(saved, batch_splits=2), dict(saved, batch_splits=1)) == []
