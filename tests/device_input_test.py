"""fit's device-resident input mode (`input_mode="device"`, `inputs.DeviceBatches`) against its oracle,
the tf.data pipeline (`input_mode="pipeline"`, `inputs.array_train_dataset`): the same batches in
the same order, so the same weights bit for bit on CPU, through resumes and the split-batch path.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from clr_loop import actions
from clr_loop import cli
from clr_loop.experiment import checks
from clr_loop.experiment import config as config_lib
from clr_loop import inputs
from clr_loop import loop
from clr_loop import runner
from clr_loop import runtime

from testing import BATCH, SigtermAt, compiled, dict_model, run_main_in_process, sigkill_then_resume, toy_data
from testing import write_tiny_idx_dir


def _stream(dataset, count):
    return [tuple(tf.nest.map_structure(np.asarray, b)) for b in dataset.take(count)]


@pytest.mark.parametrize("shuffle, drop_remainder", [(True, False), (True, True), (False, False)])
def test_device_batches_are_the_pipelines_batches_across_epochs(shuffle, drop_remainder):
    """10 examples in batches of 4, 8 steps: 3 epochs and more, each with its own permutation (and,
    without drop_remainder, a last batch of 2), gathered for the step counter's value at each step."""
    x = {"a": np.arange(10, dtype=np.float32)[:, None] * [1.0, -1.0], "b": np.arange(10, dtype=np.int64)}
    arrays = inputs.Arrays.from_user(x, np.arange(10, dtype=np.int32) * 10, "x")
    expected = _stream(inputs.array_train_dataset(arrays, 4, 5, shuffle=shuffle, drop_remainder=drop_remainder), 8)
    batches = inputs.DeviceBatches(arrays, 4, 5, shuffle=shuffle, drop_remainder=drop_remainder)
    spec = inputs.array_train_dataset(arrays, 4, 5, drop_remainder=drop_remainder).element_spec
    gather = tf.function(lambda: next(batches), autograph=False)
    got_spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), gather.get_concrete_function().structured_outputs
    )
    assert got_spec == spec  # the same static shapes as the pipeline's (None for a partial last batch)
    batches.at(0)
    check = lambda got, want: tf.nest.map_structure(  # noqa: E731
        np.testing.assert_array_equal,
        tf.nest.map_structure(np.asarray, got),
        tf.nest.pack_sequence_as(got, tf.nest.flatten(want)),
    )
    for want in expected:  # each call gathers the next step's batch
        check(gather(), want)
    assert int(batches.position.numpy()) == len(expected)
    for i in (5, 2, 7):  # positioned at any step, as a resume does
        batches.at(i)
        check(gather(), expected[i])
    assert [len(b[1]) for b in expected[:3]] == ([4, 4, 4] if drop_remainder else [4, 4, 2])


def _fit_weights(input_mode, x=None, y=None, build=None, **kwargs):
    x, y = toy_data() if x is None else (x, y)
    model = compiled(build) if build else compiled(momentum=0.9)
    history = loop.fit(
        model, x, y, batch_size=BATCH, epochs=2, seed=7, verbose=0, input_mode=input_mode, steps_per_loop=3, **kwargs
    )
    return model.get_weights(), history.history


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_splits=2, drop_remainder=False),
        dict(batch_splits=1, drop_remainder=True),
        dict(jit_compile=True, drop_remainder=False),
    ],
    ids=["split2-remainder", "whole-drop", "xla-remainder"],
)
def test_device_mode_trains_the_pipelines_weights_bit_for_bit(kwargs):
    """Two epochs of 200 examples in batches of 32 (the last one 8 without drop_remainder), with the
    batch computed in 2 parts, whole, and under XLA (which compiles the last partial batch's shape
    once more, as in the pipeline mode)."""
    device, device_history = _fit_weights("device", **kwargs)
    pipeline, pipeline_history = _fit_weights("pipeline", **kwargs)
    for a, b in zip(device, pipeline):
        assert np.array_equal(a, b)
    assert device_history == pipeline_history


def test_dict_inputs_in_device_mode_train_the_pipelines_weights():
    x, y = toy_data(features=7)
    as_dict = {"a": x[:, :4], "b": x[:, 4:]}
    device, _ = _fit_weights("device", as_dict, y, build=dict_model)
    pipeline, _ = _fit_weights("pipeline", as_dict, y, build=dict_model)
    for a, b in zip(device, pipeline):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("resumed_mode", ["device", "pipeline"])
def test_sigterm_mid_epoch_in_device_mode_resumes_to_the_uninterrupted_pipelines_bits(tmp_path, resumed_mode):
    """Stopped at step 9 (mid epoch 2) in device mode; the same call again (or one switching to the
    pipeline: the mode is not part of a run's identity) ends with the uninterrupted run's bits."""
    x, y = toy_data()
    kwargs = dict(
        batch_size=BATCH,
        epochs=2,
        seed=7,
        verbose=0,
        steps_per_loop=2,
        batch_splits=2,
        validation_data=(x[:50], y[:50]),
    )
    reference = compiled(momentum=0.9)
    loop.fit(reference, x, y, input_mode="pipeline", **kwargs)
    workdir = str(tmp_path / "run")
    with pytest.raises(actions.Interrupted, match="SIGTERM at step 9"):
        loop.fit(compiled(momentum=0.9), x, y, workdir=workdir, input_mode="device", callbacks=[SigtermAt(9)], **kwargs)
    resumed = compiled(momentum=0.9)
    history = loop.fit(resumed, x, y, workdir=workdir, input_mode=resumed_mode, **kwargs)
    assert len(history.history["loss"]) == 2
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(a, b)


def test_sigkill_in_device_mode_then_the_same_call_again_is_the_pipelines_run(tmp_path, monkeypatch):
    """The killed-and-resumed run (a subprocess) in device mode, the uninterrupted one through tf.data."""
    sigkill_then_resume(tmp_path, monkeypatch, reference_mode="pipeline", killed_mode="device")


def test_device_mode_of_a_dataset_or_another_strategy_is_refused_and_auto_uses_the_pipeline():
    x, y = toy_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    with pytest.raises(inputs.InputError, match="input_mode='device' needs in-memory arrays.*tf.data.Dataset"):
        loop.fit(compiled(), dataset, epochs=1, verbose=0, input_mode="device")
    with pytest.raises(inputs.InputError, match="input_mode must be one of 'auto', 'device', 'pipeline', got 'gpu'"):
        loop.fit(compiled(), x, y, verbose=0, input_mode="gpu")
    arrays = inputs.make_train_input(x, y, BATCH)
    one_cpu = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert runner.resolve_input_mode("auto", arrays, one_cpu) == "pipeline"
    with pytest.raises(inputs.InputError, match="default strategy only.*MirroredStrategy with 1 replica"):
        runner.resolve_input_mode("device", arrays, one_cpu)
    default = tf.distribute.get_strategy()
    assert runner.resolve_input_mode("auto", inputs.make_train_input(dataset, None, None), default) == "pipeline"
    assert runner.resolve_input_mode("pipeline", arrays, default) == "pipeline"


def test_auto_places_the_set_on_a_gpu_when_it_takes_at_most_a_quarter_of_its_memory(monkeypatch):
    x, y = toy_data()  # 200 * (8 float32 + 1 int32) = 7200 bytes
    arrays = inputs.make_train_input(x, y, BATCH)
    assert inputs.array_bytes(arrays.arrays) == 7200
    default = tf.distribute.get_strategy()
    monkeypatch.setattr(runtime, "accelerator_present", lambda: True)
    monkeypatch.setattr(runtime, "accelerator_memory_bytes", lambda: 4 * 7200)
    assert runner.resolve_input_mode("auto", arrays, default) == "device"
    monkeypatch.setattr(runtime, "accelerator_memory_bytes", lambda: 4 * 7200 - 1)
    assert runner.resolve_input_mode("auto", arrays, default) == "pipeline"
    assert runner.resolve_input_mode("device", arrays, default) == "device"  # asked for: the user's call


def flag_problems(config):
    """Returns `checks.validate`'s problems with `config` as the CLI shows them: the fields as --flags."""
    return [problem.render(cli.flag_name) for problem in checks.validate(config)]


def test_the_cli_setting_is_validated_and_a_library_refusal_names_the_flag():
    assert flag_problems(config_lib.Config(input_mode="device")) == []
    problems = flag_problems(config_lib.Config(input_mode="device", strategy="mirrored"))
    assert any(p.startswith("--input_mode=device needs --strategy=default") for p in problems), problems
    assert any("--input_mode must be one of" in p for p in flag_problems(config_lib.Config(input_mode="x")))
    error = inputs.InputError(
        "input_mode='device' needs in-memory arrays on one device: the training input is a tf.data.Dataset",
        argument="input_mode",
    )
    assert cli.error_message(error).startswith("--input_mode: input_mode='device' needs")


def test_the_app_trains_the_same_history_in_both_modes(tmp_path):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    histories = {}
    for mode in ("device", "pipeline"):
        workdir = str(tmp_path / mode)
        status = run_main_in_process(
            [
                f"--dataset_dir={data_dir}",
                f"--workdir={workdir}",
                "--epochs=2",
                "--batch_size=16",
                "--steps_per_loop=2",
                "--eval_batch_size=16",
                "--seed=3",
                f"--input_mode={mode}",
            ]
        )
        assert status in (0, None)
        with open(os.path.join(workdir, "history.json")) as f:
            histories[mode] = {k: v for k, v in json.load(f).items() if k != "epoch_seconds"}
    assert histories["device"] == histories["pipeline"]
