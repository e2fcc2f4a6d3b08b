"""Tests for clr_loop.config: epochs-to-steps conversion, schedules from a Config, validation."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from clr_loop import config as config_lib
from clr_loop import schedules


def test_plan_steps_converts_epochs_to_steps_once():
    plan = config_lib.plan_steps(config_lib.Config(), 60000)
    assert plan.steps_per_epoch == 937  # 60000 // 64, last partial batch dropped
    assert plan.total_steps == 9370
    assert plan.step_size == 1874 and plan.step_size_down is None
    plan = config_lib.plan_steps(config_lib.Config(step_size_epochs=0.5, step_size_down_epochs=1.5, max_steps=100), 60000)
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
        (dict(mode="cosine"), "--mode"),
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
    ],
)
def test_validate_names_the_flag(changes, flag):
    problems = config_lib.validate(dataclasses.replace(config_lib.Config(), **changes))
    assert len(problems) == 1 and problems[0].startswith(flag), problems


def test_default_config_is_valid():
    assert config_lib.validate(config_lib.Config()) == []


def test_a_one_cycle_too_short_for_its_phases_names_the_settings():
    config = config_lib.Config(mode="one_cycle", epochs=1, batch_size=64)
    with pytest.raises(config_lib.ScheduleError, match=r"--mode=one_cycle spans --epochs=1 x 1 batches per epoch = 1 steps, too few"):
        config_lib.make_schedule(config, config_lib.plan_steps(config, 96))


def test_piecewise_schedule_against_a_numpy_oracle():
    config = config_lib.Config(mode="piecewise", boundaries_epochs=(1, 2.55), values=(0.1, 0.01, 0.001), batch_size=10,
                               epochs=4)
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
        ({"boundaries_epochs": (1.0, 2.0), "values": (1.0, 0.1)}, "--values needs one rate more than --boundaries_epochs"),
        ({"boundaries_epochs": (1.0,), "values": (1.0, -0.1)}, "--values must be positive"),
        ({"boundaries_epochs": (1.0,), "values": (1.0, 0.1), "cycle_momentum": True}, "--cycle_momentum needs a cyclical --mode"),
        ({"mode": "one_cycle", "values": (1.0, 0.1)}, "--values is for --mode=piecewise, not --mode=one_cycle"),
    ],
)
def test_piecewise_settings_are_validated_naming_the_flags(changes, message):
    config = config_lib.Config(**{"mode": "piecewise", **changes})
    assert any(message in problem for problem in config_lib.validate(config)), config_lib.validate(config)
