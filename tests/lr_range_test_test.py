"""Tests for the clr_loop.lr_range_test app: its trainer flags, its curve, its outputs, flag-named errors."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

from clr_loop.experiment import config as config_lib
from clr_loop.experiment import fashion_mnist
from clr_loop import lr_finder
from clr_loop import lr_range_test as lrt
from testing import REPO, assert_one_line_usage_error, write_tiny_idx_dir


def test_trainer_flags_follow_the_momentum_of_the_test():
    sug = lr_finder.Suggestions(steepest_lr=0.2, valley_lr=0.0812, max_lr=0.0812, base_lr=0.0203, window=(0, 9))
    plain = lrt.trainer_flags(sug, 0.0)
    assert plain["triangular2"] == "--mode=triangular2 --initial_lr=0.02 --max_lr=0.081"
    assert plain["one_cycle"] == "--mode=one_cycle --max_lr=0.081 --cycle_momentum=false"
    heavy = lrt.trainer_flags(sug, 0.9)
    assert heavy["triangular2"] == "--mode=triangular2 --initial_lr=0.02 --max_lr=0.081 --momentum=0.9"
    assert heavy["one_cycle"] == "--mode=one_cycle --max_lr=0.081"
    some = lrt.trainer_flags(sug, 0.5)
    assert some["one_cycle"] == "--mode=one_cycle --max_lr=0.081 --cycle_momentum=false --momentum=0.5"


def test_trainer_flags_of_an_adam_test_name_the_optimizer_in_every_family():
    sug = lr_finder.Suggestions(steepest_lr=0.002, valley_lr=0.0016, max_lr=0.0016, base_lr=0.0004, window=(0, 9))
    assert lrt.trainer_flags(sug, 0.0, "adamw") == {
        "triangular2": "--mode=triangular2 --initial_lr=0.0004 --max_lr=0.0016 --optimizer=adamw",
        "one_cycle": "--mode=one_cycle --max_lr=0.0016 --optimizer=adamw",
        "cosine": "--mode=cosine --max_lr=0.0016 --optimizer=adamw",
        "wsd": "--mode=wsd --max_lr=0.0016 --optimizer=adamw",
        "schedule_free": "--mode=schedule_free --max_lr=0.0016 --optimizer=adamw",
    }
    assert (
        lrt.trainer_flags(sug, 0.0, "adam")["schedule_free"] == "--mode=schedule_free --max_lr=0.0016 --optimizer=adamw"
    )


def test_the_app_compiles_the_optimizer_it_is_given():
    for name, cls in (
        ("sgd", keras.optimizers.SGD),
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
    ):
        optimizer = lrt._optimizer(lrt.RangeTestConfig(optimizer=name, momentum=0.5 if name == "sgd" else 0.0))
        assert type(optimizer) is cls
    assert lrt._optimizer(lrt.RangeTestConfig(optimizer="adamw")).weight_decay == config_lib.ADAMW_WEIGHT_DECAY
    assert lrt._optimizer(lrt.RangeTestConfig(momentum=0.5)).momentum == 0.5


def test_trainer_flags_give_every_schedule_family_its_peak_rate():
    sug = lr_finder.Suggestions(steepest_lr=0.2, valley_lr=0.0812, max_lr=0.0812, base_lr=0.0203, window=(0, 9))
    assert lrt.trainer_flags(sug, 0.0) == {
        "triangular2": "--mode=triangular2 --initial_lr=0.02 --max_lr=0.081",
        "one_cycle": "--mode=one_cycle --max_lr=0.081 --cycle_momentum=false",
        "cosine": "--mode=cosine --max_lr=0.081",
        "wsd": "--mode=wsd --max_lr=0.081",
        "schedule_free": "--mode=schedule_free --max_lr=0.081",
    }
    heavy = lrt.trainer_flags(sug, 0.9)
    assert heavy["cosine"] == "--mode=cosine --max_lr=0.081 --momentum=0.9"
    assert heavy["wsd"] == "--mode=wsd --max_lr=0.081 --momentum=0.9"
    assert heavy["schedule_free"] == "--mode=schedule_free --max_lr=0.081"
    # The report prints one `python -m clr_loop.train` line per family, in that order.
    result = lr_finder.RangeTestResult(
        lr=[1e-3, 1e-2, 1e-1],
        loss=[2.3, 1.0, 0.5],
        smoothed_loss=[2.3, 1.5, 0.9],
        stop_reason="completed",
        stop_lr=0.1,
        suggestions=sug,
        settings={"num_steps": 3, "start_lr": 1e-3, "end_lr": 0.1, "ramp": "exp"},
    )
    lines = lrt.report(result, 0.9).splitlines()
    start = lines.index("Trainer flags:")
    assert lines[start + 1 :] == [
        "  python -m clr_loop.train --mode=triangular2 --initial_lr=0.02 --max_lr=0.081 --momentum=0.9",
        "  python -m clr_loop.train --mode=one_cycle --max_lr=0.081",
        "  python -m clr_loop.train --mode=cosine --max_lr=0.081 --momentum=0.9",
        "  python -m clr_loop.train --mode=wsd --max_lr=0.081 --momentum=0.9",
        "  python -m clr_loop.train --mode=schedule_free --max_lr=0.081",
    ]


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "clr_loop.lr_range_test", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_main_in_process(argv):
    """Parses `argv` as the app would and runs `lr_range_test.main`; returns its exit status."""
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.lr_range_test", *argv])
        return lrt.main(rest)


def test_app_writes_json_and_png_and_prints_the_flags(tmp_path, capsys):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"), learnable=True)
    workdir = tmp_path / "lr"
    status = run_main_in_process(
        [
            f"--dataset_dir={data_dir}",
            f"--workdir={workdir}",
            "--start_lr=1e-4",
            "--end_lr=1",
            "--num_steps=40",
            "--batch_size=16",
            "--momentum=0.9",
            "--jit_compile=false",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    saved = json.loads((workdir / lrt.JSON_NAME).read_text())
    steps = len(saved["lr"])
    assert 3 <= steps <= 40 and len(saved["loss"]) == len(saved["smoothed_loss"]) == steps
    assert saved["lr"][0] == pytest.approx(1e-4)
    assert saved["settings"]["num_steps"] == 40 and saved["settings"]["momentum"] == 0.9
    assert saved["stop_reason"] in lr_finder.STOP_REASONS
    assert set(saved["suggestions"]) >= {"steepest_lr", "valley_lr", "max_lr", "base_lr"}
    assert saved["suggestions"]["base_lr"] == pytest.approx(saved["suggestions"]["max_lr"] / 4)
    assert f"python -m clr_loop.train {saved['flags']['triangular2']}" in out
    assert saved["flags"]["triangular2"].endswith("--momentum=0.9")
    assert (workdir / lrt.PNG_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_apps_curve_is_keras_own_train_on_batch_losses(tmp_path):
    # Oracle: Keras's own training of the same CNN (same seed, hence the same weights and dropout
    # masks), compiled as the app documents (SGD at the momentum, with the ramp as its rate, the
    # trainer's loss), fed the batches of the documented order: epoch k's examples in
    # `epoch_permutation(N, seed, k)` order, each epoch's last partial batch dropped. 96 examples
    # in batches of 32 are 3 per epoch, so the 5 steps run on into the second epoch.
    import keras

    from clr_loop import inputs
    from clr_loop.experiment import models

    data = fashion_mnist.load(dataset_dir=write_tiny_idx_dir(str(tmp_path / "idx"), learnable=True))
    config = lrt.RangeTestConfig(
        start_lr=1e-3,
        end_lr=0.3,
        num_steps=5,
        batch_size=32,
        seed=7,
        momentum=0.9,
        jit_compile="false",
        workdir=str(tmp_path / "lr"),
    )
    result, _ = lrt.run_range_test(config, data)

    keras.utils.set_random_seed(config.seed)
    model = models.create_model(seed=config.seed)
    ramp = lr_finder.RangeRamp(config.start_lr, config.end_lr, config.num_steps)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=ramp, momentum=0.9), loss="sparse_categorical_crossentropy"
    )
    n = data.train.num_examples
    order = np.concatenate([np.asarray(inputs.epoch_permutation(n, config.seed, epoch)) for epoch in (0, 1)])
    expected = []
    for step in range(config.num_steps):
        epoch, index = divmod(step, n // 32)
        batch = order[epoch * n + index * 32 : epoch * n + (index + 1) * 32]
        expected.append(model.train_on_batch(data.train.images[batch], data.train.labels[batch]))
    assert result.stop_reason == "completed"
    np.testing.assert_allclose(result.loss, expected, rtol=1e-5)
    np.testing.assert_allclose(result.lr, [float(ramp(k)) for k in range(5)], rtol=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--start_lr=0"], "--start_lr"),
        (["--start_lr=1e-2", "--end_lr=1e-3"], r"--end_lr \(0.001\) must be greater than --start_lr \(0.01\)"),
        (["--num_steps=1"], "--num_steps"),
        (["--batch_size=0"], "--batch_size"),
        (["--momentum=1.5"], "--momentum"),
        (
            ["--dataset=cifar10", "--model=resnet20"],
            r"runs the tutorial's CNN on Fashion-MNIST; --dataset=cifar10 --model=resnet20 is not used",
        ),
        (["--optimizer=adamw", "--momentum=0.9"], r"--momentum is SGD's; --optimizer=adamw uses Keras's beta_1=0.9"),
    ],
)
def test_bad_flags_are_named_and_write_nothing(tmp_path, argv, message):
    workdir = tmp_path / "never"
    with pytest.raises(app.UsageError, match=message):
        run_main_in_process([f"--workdir={workdir}", *argv])
    assert not workdir.exists()


def test_bad_flag_exits_1_with_one_line_before_writing(tmp_path):
    workdir = tmp_path / "never"
    result = run_cli(f"--workdir={workdir}", "--end_lr=1e-9")
    assert_one_line_usage_error(result, "--end_lr (1e-09) must be greater than --start_lr (1e-07)")
    assert not workdir.exists()


@pytest.mark.parametrize("argv", [["--seed=-1"], [f"--seed={2**32}"]])
def test_seed_outside_numpys_range_is_a_flag_error(argv):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        with pytest.raises(
            flags.IllegalFlagValueError, match=r"--seed=.*not an integer in the range \[0, 4294967295\]"
        ):
            flags.FLAGS(["clr_loop.lr_range_test", *argv])


def test_empty_workdir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(app.UsageError, match="--workdir must not be empty"):
        run_main_in_process(["--workdir="])
    assert os.listdir(tmp_path) == []


@pytest.fixture
def no_range_test(monkeypatch):
    """Makes `lr_finder.find_lr` fail the test if the app gets as far as running it."""
    monkeypatch.setattr(lr_finder, "find_lr", lambda *a, **k: pytest.fail("the range test ran"))


def test_unwritable_workdir_is_refused_before_the_test_runs(tmp_path, capsys, no_range_test):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"), learnable=True)
    (tmp_path / "a_file").write_text("in the way")
    workdir = tmp_path / "a_file" / "lr"
    assert run_main_in_process([f"--dataset_dir={data_dir}", f"--workdir={workdir}", "--jit_compile=false"]) == 1
    assert f"error: --workdir: workdir {workdir} is not a writable folder" in capsys.readouterr().err


def test_a_batch_larger_than_the_data_is_refused_before_writing(tmp_path, capsys, no_range_test):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"), learnable=True)
    workdir = tmp_path / "lr"
    assert run_main_in_process([f"--dataset_dir={data_dir}", f"--workdir={workdir}", "--batch_size=100"]) == 1
    assert "error: --batch_size: 96 examples are fewer than one batch of 100" in capsys.readouterr().err
    assert not workdir.exists()


def test_an_output_file_that_cannot_be_written_is_named(tmp_path, capsys):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"), learnable=True)
    workdir = tmp_path / "lr"
    (workdir / lrt.JSON_NAME).mkdir(parents=True)  # a folder where the JSON goes
    status = run_main_in_process(
        [f"--dataset_dir={data_dir}", f"--workdir={workdir}", "--num_steps=3", "--batch_size=32", "--jit_compile=false"]
    )
    assert status == 1
    assert f"error: --workdir: cannot write {workdir / lrt.JSON_NAME}: " in capsys.readouterr().err
    assert sorted(os.listdir(workdir)) == [lrt.JSON_NAME]  # no temporary file left


def test_ctrl_c_during_the_test_keeps_the_curve_so_far(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the range test was a KeyboardInterrupt traceback and kept nothing."""
    from clr_loop import steps as steps_lib

    class InterruptedAtStep5(steps_lib.Steps):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            step, calls = self.train_step, []

            def train_step(x, y):
                calls.append(1)
                if len(calls) == 5:
                    raise KeyboardInterrupt
                return step(x, y)

            self.train_step = train_step

    monkeypatch.setattr(lr_finder.steps_lib, "Steps", InterruptedAtStep5)
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"), learnable=True)
    workdir = tmp_path / "lr"
    status = run_main_in_process(
        [
            f"--dataset_dir={data_dir}",
            f"--workdir={workdir}",
            "--start_lr=1e-4",
            "--end_lr=1",
            "--num_steps=40",
            "--batch_size=16",
            "--jit_compile=false",
        ]
    )
    assert status == 130
    saved = json.loads((workdir / lrt.JSON_NAME).read_text())
    assert saved["stop_reason"] == "interrupted" and len(saved["lr"]) == 4
    assert saved["lr"][0] == pytest.approx(1e-4) and saved["stop_lr"] == pytest.approx(1e-4 * 1e4 ** (4 / 39))
    err = capsys.readouterr().err
    assert f"stopped: interrupted (SIGINT) after 4 of 40 steps; the curve so far is in {workdir / lrt.JSON_NAME}" in err
