"""End-to-end tests of `python -m clr_loop.train`: flags, data sources, outputs and errors."""

import gzip
import json
import os
import re
import struct
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl.testing import flagsaver

from clr_loop.experiment import fashion_mnist
from clr_loop import train  # noqa: F401  (defines the app's flags, which tests here parse)
from clr_loop.experiment import trial
from testing import REPO, app_message_lines, assert_one_line_usage_error, assert_run_outputs, run_main_in_process
from testing import write_tiny_idx_dir


def run_cli(*args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "clr_loop.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_on_tiny_idx_folder(tmp_path):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    workdir = str(tmp_path / "run")
    result = run_cli(
        f"--dataset_dir={data_dir}",
        f"--workdir={workdir}",
        "--mode=triangular2",
        "--epochs=2",
        "--batch_size=16",
        "--steps_per_loop=2",
        "--log_every_steps=2",
        "--eval_batch_size=16",
    )
    assert result.returncode == 0, result.stderr
    history = assert_run_outputs(workdir, epochs=2)
    assert "Epoch 2/2\n6/6 - " in result.stdout and "val_accuracy:" in result.stdout
    # The logged rate is the schedule's value at the epoch's last step (steps 5 and 11).
    assert history["lr"][0] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 5 / 12, rel=1e-5)


def test_cli_under_tfds_mock_data(tmp_path):
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=40):
        status = run_main_in_process(
            [
                f"--tfds_data_dir={tmp_path / 'tfds'}",
                f"--workdir={workdir}",
                "--mode=exp_range",
                "--gamma=0.99",
                "--epochs=1",
                "--batch_size=8",
                "--steps_per_loop=3",
                "--eval_batch_size=16",
            ]
        )
    assert status == 0
    assert_run_outputs(workdir, epochs=1)
    assert json.load(open(os.path.join(workdir, "config.json")))["resolved"]["steps_per_epoch"] == 5


@pytest.mark.parametrize("name", ["cosine", "cosine_restarts", "wsd"])
def test_the_new_modes_flagfiles_run(tmp_path, name):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    workdir = str(tmp_path / name)
    flagfile = os.path.join(REPO, "flags", f"{name}.flags")
    status = run_main_in_process(
        [
            f"--flagfile={flagfile}",
            f"--dataset_dir={data_dir}",
            f"--workdir={workdir}",
            "--batch_size=16",
            "--max_steps=4",
            "--eval_batch_size=40",
            "--jit_compile=false",
        ]
    )
    assert status == 0
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["mode"] == name and config["epochs"] == 10 and config["resolved"]["total_steps"] == 4
    # 96 examples in batches of 16: 6 steps per epoch; the warmup is 0.5 epochs, wsd's decay 20% of 60 steps.
    assert config["resolved"].get("warmup_steps") == (None if name == "cosine_restarts" else 3)
    assert config["resolved"].get("decay_steps") == (12 if name == "wsd" else None)


def test_flagfile_from_repo_root_and_later_flags_override(tmp_path):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    workdir = str(tmp_path / "smoke")
    result = run_cli(
        "--flagfile=flags/smoke.flags",
        f"--dataset_dir={data_dir}",
        f"--workdir={workdir}",
        "--batch_size=16",
        "--max_steps=4",
        "--eval_batch_size=40",
    )
    assert result.returncode == 0, result.stderr
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["mode"] == "triangular2" and config["steps_per_loop"] == 20  # from the flagfile
    assert config["batch_size"] == 16 and config["resolved"]["total_steps"] == 4  # overridden


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max_lr=1e-4", "--initial_lr=1e-3"], "--max_lr"),
        (["--max_lr=1e-3", "--initial_lr=1e-3"], "--max_lr"),
        (["--batch_size=0"], "--batch_size"),
        (["--epochs=-1"], "--epochs"),
        (["--lr=0"], "--lr"),
        (["--step_size_epochs=0"], "--step_size_epochs"),
        (["--steps_per_loop=0"], "--steps_per_loop"),
        (["--gamma=-0.5"], "--gamma"),
        (["--max_steps=-1"], "--max_steps"),
        (["--profile_steps=5"], "--profile_steps"),
        (["--profile_steps=9,3"], "--profile_steps"),
        (["--pct_start=1.5"], "--pct_start"),
        (["--base_momentum=0.99"], "--base_momentum"),
        (["--warmup_epochs=-1"], "--warmup_epochs"),
        (["--mode=wsd", "--decay_epochs=2", "--decay_fraction=0.3"], "--decay_epochs and --decay_fraction"),
        (["--mode=wsd", "--final_lr=0.5", "--max_lr=0.1"], r"--final_lr \(0.5\) must be less than --max_lr"),
        (["--mode=cosine_restarts", "--t_mul=-2"], "--t_mul"),
        (["--mode=triangular", "--t_mul=2"], "--t_mul is for --mode=cosine_restarts"),
        (["--mode=cosine", "--warmup_epochs=10", "--epochs=10"], "--warmup_epochs"),
    ],
)
def test_bad_flag_values_are_named_and_write_nothing(tmp_path, argv, message):
    workdir = tmp_path / "never"
    with pytest.raises(app.UsageError, match=message):
        run_main_in_process([f"--workdir={workdir}", *argv])
    assert not workdir.exists()


def test_bad_flags_exit_1_with_one_line_before_writing(tmp_path):
    workdir = tmp_path / "never"
    # A Config problem (a UsageError from main) prints the message, not the app's whole help.
    result = run_cli(f"--workdir={workdir}", "--max_lr=1e-5")
    assert_one_line_usage_error(result, "--max_lr (1e-05) must be greater than --initial_lr")
    assert not workdir.exists()
    result = run_cli(f"--workdir={workdir}", "--mode=cosine_annealing")
    assert_one_line_usage_error(result, "--mode", "triangular2")
    assert not workdir.exists()
    result = run_cli(f"--workdir={workdir}", "--mode=cosine", "--decay_shape=sqrt")
    assert_one_line_usage_error(result, "--decay_shape is for --mode=wsd, not --mode=cosine")
    assert not workdir.exists()
    # A flagfile that is not UTF-8 text is named, with the byte at fault.
    flagfile = tmp_path / "latin1.flags"
    flagfile.write_bytes("--mode=none\n# caf\u00e9\n".encode("latin-1"))
    result = run_cli(f"--workdir={workdir}", f"--flagfile={flagfile}")
    assert_one_line_usage_error(result, f"flagfile {flagfile} is not utf-8 text", "0xe9 at offset 17")
    assert not workdir.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_numpys_range_is_a_flag_error(tmp_path, seed):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        with pytest.raises(
            flags.IllegalFlagValueError, match=r"--seed=.*not an integer in the range \[0, 4294967295\]"
        ):
            flags.FLAGS(["clr_loop.train", f"--seed={seed}", f"--workdir={tmp_path / 'never'}"])


def test_empty_workdir_is_refused_not_defaulted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(app.UsageError, match="--workdir must not be empty"):
        run_main_in_process(["--workdir=", "--max_steps=1"])
    assert os.listdir(tmp_path) == []


def test_unwritable_save_init_is_named_as_the_flag(tmp_path, capsys):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    (tmp_path / "a_file").write_text("in the way")
    target = tmp_path / "a_file" / "init.weights.h5"
    status = run_main_in_process(
        [
            f"--dataset_dir={data_dir}",
            f"--workdir={tmp_path / 'run'}",
            f"--save_init={target}",
            "--epochs=1",
            "--max_steps=2",
            "--batch_size=16",
            "--jit_compile=false",
        ]
    )
    assert status == 1
    (line,) = app_message_lines(capsys.readouterr().err)
    assert line.startswith(f"error: --save_init: cannot write initial weights to {target}: ")
    assert not os.path.exists(tmp_path / "run" / "history.json")


def test_missing_flagfile_is_named(tmp_path):
    result = run_cli("--flagfile=flags/does_not_exist.flags", f"--workdir={tmp_path / 'never'}")
    assert result.returncode != 0
    assert "flags/does_not_exist.flags" in result.stderr


def test_bad_data_file_is_named_with_its_problem(tmp_path):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    bad = os.path.join(data_dir, fashion_mnist.IDX_FILES["train_labels"])
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">II", 0x801, 96) + bytes([3] * 95 + [12]))
    result = run_cli(f"--dataset_dir={data_dir}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert bad in result.stderr and "12" in result.stderr
    open(bad, "wb").write(b"\x1f\x8b\x08\x00 truncated")
    result = run_cli(f"--dataset_dir={data_dir}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1 and bad in result.stderr


def test_non_finite_run_stops_with_step_and_rate(tmp_path):
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    result = run_cli(
        f"--dataset_dir={data_dir}", f"--workdir={tmp_path / 'run'}", "--mode=none", "--lr=1e12", "--batch_size=16"
    )
    assert result.returncode == 1
    # The update at a rate of 1e12 takes the weights past float32's range at the step that names it.
    assert re.search(r"non-finite (loss at|weights after) step \d+ \(learning rate 1e\+12\)", result.stderr), (
        result.stderr
    )


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR), reason="needs apt-get install dataset-fashion-mnist")
def test_real_data_few_hundred_steps_beat_the_untrained_model(tmp_path):
    from clr_loop.experiment import config as config_lib

    config = config_lib.Config(mode="none", lr=0.05, max_steps=300, workdir=str(tmp_path / "run"), jit_compile="false")
    trainer = trial.Trainer(config, fashion_mnist.load_idx_dir(fashion_mnist.DEBIAN_DIR))
    untrained, count = trainer.run.validate()
    history = trainer.train()
    assert count == 10000
    assert history["val_loss"][-1] < untrained["loss"] - 0.1
    assert history["val_accuracy"][-1] > 0.3  # chance is 0.1


def test_batch_splits_on_a_batch_norm_model_is_one_line_naming_the_flags(tmp_path, capsys):
    """Was runtime's ValueError traceback."""
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    status = run_main_in_process(
        [
            f"--dataset_dir={data_dir}",
            f"--workdir={tmp_path / 'run'}",
            "--model=resnet20",
            "--batch_splits=2",
            "--batch_size=16",
            "--max_steps=1",
            "--jit_compile=false",
        ]
    )
    assert status == 1
    (line,) = app_message_lines(capsys.readouterr().err)
    # Keras numbers a layer's default name by how many such layers the process has made before.
    assert re.fullmatch(
        r"error: --batch_splits=2 cannot compute --model=resnet20 in parts: layer 'batch_normalization(_\d+)?' "
        r"\(BatchNormalization\) may depend on the whole batch; leave --batch_splits at 0 \(automatic\) or 1",
        line,
    )
    assert not (tmp_path / "run").exists()


def test_a_batch_the_mirrored_replicas_do_not_divide_is_one_line_naming_the_flags(tmp_path):
    """Was loop's ValueError traceback."""
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    result = run_cli(
        f"--dataset_dir={data_dir}",
        f"--workdir={tmp_path / 'run'}",
        "--strategy=mirrored",
        "--virtual_cpus=3",
        "--batch_size=16",
        "--max_steps=1",
        "--jit_compile=false",
    )
    assert result.returncode == 1, result.stderr
    assert [line for line in app_message_lines(result.stderr) if not line.startswith("INFO:tensorflow:")] == [
        "error: --batch_size=16 must be a multiple of the 3 replicas of --strategy=mirrored "
        "(/cpu:0, /cpu:1, /cpu:2), e.g. --batch_size=15 or --batch_size=18"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_console_shows_the_source_plan_and_epochs_and_the_rest_with_verbosity_1(tmp_path):
    """No TensorFlow C++ line and no per-checkpoint INFO line by default."""
    data_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    args = [
        sys.executable,
        "-m",
        "clr_loop.train",
        f"--dataset_dir={data_dir}",
        "--epochs=2",
        "--batch_size=16",
        "--steps_per_loop=3",
        "--checkpoint_every_steps=3",
        "--eval_batch_size=40",
        "--jit_compile=false",
    ]
    quiet = subprocess.run(
        [*args, f"--workdir={tmp_path / 'quiet'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "Epoch 2/2" in quiet.stdout and "val_accuracy:" in quiet.stdout
    lines = quiet.stderr.splitlines()
    assert any(f"Fashion-MNIST from idx files in {data_dir}" in line for line in lines), quiet.stderr
    assert any("] fit: 12 steps (6 per epoch)" in line for line in lines), quiet.stderr
    noise = [
        line
        for line in lines
        if re.search(
            r"\.cc:\d+\]|absl::InitializeLog|checkpoint saved|Sharding callback|"
            r"evaluating at step|tensorflow",
            line,
        )
    ]
    assert noise == [], quiet.stderr
    verbose = subprocess.run(
        [*args, f"--workdir={tmp_path / 'verbose'}", "-v", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "checkpoint saved at step 3" in verbose.stderr and "Sharding callback duration" in verbose.stderr
