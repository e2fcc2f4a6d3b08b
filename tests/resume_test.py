"""Interruptions and resuming, end to end: SIGKILL, SIGTERM, corrupt checkpoints, mismatched configs.

The oracle for every resume is an uninterrupted run with the same flags: final checkpoint
variables and history.json values must be bit-identical.
"""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from testing import REPO, write_tiny_idx_dir

BASE_FLAGS = [
    "--mode=triangular2",
    "--step_size_epochs=0.5",
    "--epochs=3",
    "--batch_size=16",
    "--eval_batch_size=50",
    "--steps_per_loop=1",
    "--log_every_steps=5",
    "--checkpoint_every_steps=4",
    "--keep_checkpoints=50",
    "--deterministic",
    "--verbosity=1",  # the "checkpoint saved at step N" lines the tests wait for
]
# The seed of the kill points below: a failure names it and the points, so it can be rerun as it was.
KILL_SEED = 20240914


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_tiny_idx_dir(str(tmp_path_factory.mktemp("idx")), n_train=640, n_test=50)


def start(workdir, idx_dir, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    args = [
        sys.executable,
        "-u",
        "-m",
        "clr_loop.train",
        f"--dataset_dir={idx_dir}",
        f"--workdir={workdir}",
        *BASE_FLAGS,
        *extra,
    ]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(workdir, idx_dir, *extra):
    proc = start(workdir, idx_dir, *extra)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def run_until_checkpoint_then(workdir, idx_dir, min_step, signum, *extra):
    """Starts a run, waits (by reading its log, no sleeping) for a checkpoint at >= min_step, signals it."""
    proc = start(workdir, idx_dir, *extra)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if (
            "checkpoint saved at step" in line
            and int(line.split("checkpoint saved at step ")[1].split(":")[0]) >= min_step
        ):
            proc.send_signal(signum)
            break
    out = "".join(lines) + proc.stdout.read()
    proc.wait(timeout=300)
    return proc.returncode, out


def checkpoint_values(workdir):
    """Returns {name: array} for every numeric variable of the workdir's latest checkpoint."""
    path = tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    return path, {
        name: reader.get_tensor(name) for name, dtype in dtypes.items() if dtype.is_floating or dtype.is_integer
    }


def history_without_timing(workdir):
    history = json.load(open(os.path.join(workdir, "history.json")))
    history.pop("epoch_seconds")
    return history


def event_steps(logdir):
    steps = {}
    for name in os.listdir(logdir):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
                for value in event.summary.value:
                    steps.setdefault(value.tag, []).append(event.step)
    return {tag: sorted(s) for tag, s in steps.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, idx_dir):
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    code, out = run(workdir, idx_dir)
    assert code == 0, out
    return workdir


def test_sigkill_twice_then_resume_is_bit_identical_to_uninterrupted(tmp_path, idx_dir, reference):
    workdir = str(tmp_path / "run")
    rng = random.Random(KILL_SEED)
    first, second = rng.randrange(4, 40, 4), rng.randrange(52, 100, 4)
    where = f"(kill seed {KILL_SEED}: SIGKILL at the first checkpoints >= steps {first} and {second})"
    code, out = run_until_checkpoint_then(workdir, idx_dir, first, signal.SIGKILL)
    assert code == -signal.SIGKILL, f"{where}\n{out}"
    code, out = run_until_checkpoint_then(workdir, idx_dir, second, signal.SIGKILL)
    assert code == -signal.SIGKILL, f"{where}\n{out}"
    assert "Resuming from" in out, f"{where}\n{out}"
    code, out = run(workdir, idx_dir)
    assert code == 0, f"{where}\n{out}"
    assert "Resuming from" in out, f"{where}\n{out}"
    ref_path, ref_values = checkpoint_values(reference)
    path, values = checkpoint_values(workdir)
    assert os.path.basename(path) == os.path.basename(ref_path) == "ckpt-120", where
    assert set(values) == set(ref_values), where
    for name in ref_values:
        assert np.array_equal(values[name], ref_values[name]), f"{name} {where}"
    assert history_without_timing(workdir) == history_without_timing(reference), where
    # TensorBoard: every point once, the same steps as the uninterrupted run.
    for sub in ("train", "eval"):
        assert event_steps(os.path.join(workdir, sub)) == event_steps(os.path.join(reference, sub)), f"{sub} {where}"


def test_split_batches_resume_bit_identically(tmp_path, idx_dir):
    """--batch_splits=2 (each part draws its own dropout mask) resumes exactly like the whole-batch step."""
    split = ("--batch_splits=2",)
    reference_dir = str(tmp_path / "reference")
    code, out = run(reference_dir, idx_dir, *split)
    assert code == 0, out
    workdir = str(tmp_path / "run")
    code, out = run_until_checkpoint_then(workdir, idx_dir, 40, signal.SIGKILL, *split)
    assert code == -signal.SIGKILL, out
    code, out = run(workdir, idx_dir, *split)
    assert code == 0 and "Resuming from" in out, out
    _, ref_values = checkpoint_values(reference_dir)
    _, values = checkpoint_values(workdir)
    assert set(values) == set(ref_values)
    assert all(np.array_equal(values[k], ref_values[k]) for k in ref_values)
    assert history_without_timing(workdir) == history_without_timing(reference_dir)
    assert json.load(open(os.path.join(workdir, "config.json")))["resolved"]["batch_splits"] == 2


def test_max_steps_stops_at_exactly_that_step(tmp_path, idx_dir):
    """--max_steps=47 (mid epoch 2; no multiple of the loop, log or checkpoint interval) ends at step 47."""
    workdir = str(tmp_path / "run")
    code, out = run(workdir, idx_dir, "--max_steps=47", "--steps_per_loop=3", "--checkpoint_every_steps=0")
    assert code == 0, out
    path, values = checkpoint_values(workdir)
    assert os.path.basename(path) == "ckpt-47"
    assert values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 47
    # TensorBoard's last point is step 47 too: train every 5 steps and at the (capped) end, the eval
    # at each epoch end and of the cut-short epoch.
    assert event_steps(os.path.join(workdir, "eval")) == {"loss": [40, 47], "accuracy": [40, 47]}
    assert event_steps(os.path.join(workdir, "train"))["loss"] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 47]
    history = history_without_timing(workdir)
    assert len(history["loss"]) == 2
    # The last rate logged is the one step 46 used: triangular2, step size 20, cycle 2, 6 steps up.
    assert history["lr"][-1] == pytest.approx(1e-4 + (1e-2 - 1e-4) * (6 / 20) * 0.5, rel=1e-6)


def test_deterministic_repeat_is_bit_identical(tmp_path, idx_dir, reference):
    workdir = str(tmp_path / "again")
    code, out = run(workdir, idx_dir)
    assert code == 0, out
    _, ref_values = checkpoint_values(reference)
    _, values = checkpoint_values(workdir)
    assert all(np.array_equal(values[k], ref_values[k]) for k in ref_values)
    assert history_without_timing(workdir) == history_without_timing(reference)


def test_rerunning_a_finished_run_says_so_and_trains_nothing(reference, idx_dir):
    before = open(os.path.join(reference, "history.json")).read()
    code, out = run(reference, idx_dir)
    assert code == 0
    assert "already complete at step 120" in out
    assert "Epoch" not in out
    assert open(os.path.join(reference, "history.json")).read() == before


def test_sigterm_saves_then_exits_non_zero(tmp_path, idx_dir):
    workdir = str(tmp_path / "run")
    code, out = run_until_checkpoint_then(workdir, idx_dir, 8, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out
    assert "received SIGTERM at step" in out
    step = int(out.split("received SIGTERM at step ")[1].split(":")[0])
    assert os.path.exists(os.path.join(workdir, "ckpt", f"ckpt-{step}.index"))
    code, out = run(workdir, idx_dir)
    assert code == 0 and f"at step {step}" in out


def test_config_mismatch_is_refused_naming_the_settings(tmp_path, idx_dir, reference):
    code, out = run(reference, idx_dir, "--batch_size=32", "--max_lr=0.05")
    assert code == 1
    assert "different configuration" in out and "batch_size: 16 (saved) vs 32 (now)" in out and "max_lr" in out
    workdir = str(tmp_path / "over")
    assert run(workdir, idx_dir, "--max_steps=4")[0] == 0
    code, out = run(workdir, idx_dir, "--batch_size=32", "--max_steps=4")
    assert code == 1 and "batch_size" in out
    code, out = run(workdir, idx_dir, "--batch_size=32", "--max_steps=4", "--overwrite")
    assert code == 0, out
    assert json.load(open(os.path.join(workdir, "config.json")))["batch_size"] == 32


def test_corrupt_checkpoint_is_named_and_the_previous_one_used(tmp_path, idx_dir):
    workdir = str(tmp_path / "run")
    assert run(workdir, idx_dir, "--max_steps=12")[0] == 0
    ckpt = os.path.join(workdir, "ckpt")
    data_file = [n for n in os.listdir(ckpt) if n.startswith("ckpt-12.data")][0]
    with open(os.path.join(ckpt, data_file), "r+b") as f:
        f.truncate(100)
    code, out = run(workdir, idx_dir, "--max_steps=16")
    assert code == 0, out
    assert "ckpt-12 cannot be restored" in out and "previous good checkpoint" in out and "ckpt-8" in out
    for name in os.listdir(ckpt):
        if name.startswith("ckpt-") and name.endswith(".index"):
            with open(os.path.join(ckpt, name), "wb") as f:
                f.write(b"garbage")
    code, out = run(workdir, idx_dir, "--max_steps=20")
    assert code == 1
    assert "no checkpoint in" in out and "cannot be restored" in out


def test_history_without_checkpoints_is_not_silently_restarted(tmp_path, idx_dir):
    workdir = str(tmp_path / "run")
    assert run(workdir, idx_dir, "--max_steps=4")[0] == 0
    for name in os.listdir(os.path.join(workdir, "ckpt")):
        os.remove(os.path.join(workdir, "ckpt", name))
    code, out = run(workdir, idx_dir, "--max_steps=4")
    assert code == 1 and "refusing to restart from scratch" in out


def test_unusable_workdir_is_an_error_before_training(tmp_path, idx_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out = run(str(blocker / "run"), idx_dir)
    assert code == 1 and "is not a writable folder" in out and "Epoch" not in out


def assert_killed_run_resumes_bit_identically(tmp_path, idx_dir, extra, kill_at):
    """Runs `extra` uninterrupted and killed (SIGKILL at the first checkpoint >= kill_at) then resumed;
    asserts every checkpoint tensor and history.json equal. Returns (reference workdir, resumed workdir)."""
    reference_dir = str(tmp_path / "reference")
    code, out = run(reference_dir, idx_dir, *extra)
    assert code == 0, out
    workdir = str(tmp_path / "run")
    code, out = run_until_checkpoint_then(workdir, idx_dir, kill_at, signal.SIGKILL, *extra)
    assert code == -signal.SIGKILL, out
    code, out = run(workdir, idx_dir, *extra)
    assert code == 0 and "Resuming from" in out, out
    ref_path, ref_values = checkpoint_values(reference_dir)
    path, values = checkpoint_values(workdir)
    assert os.path.basename(path) == os.path.basename(ref_path)
    assert set(values) == set(ref_values)
    assert [k for k in ref_values if not np.array_equal(values[k], ref_values[k])] == []
    assert history_without_timing(workdir) == history_without_timing(reference_dir)
    return reference_dir, workdir


# Optimizers and schedules beyond the base flags: each resumes bit-identically after kill -9.
RESUME_CASES = {
    "adam_one_cycle_cycled_beta_1": ("--optimizer=adam", "--mode=one_cycle", "--max_lr=0.003"),
    "adamw_one_cycle_cycled_beta_1": ("--optimizer=adamw", "--mode=one_cycle", "--max_lr=0.003"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_sigkill_then_resume_is_bit_identical_for_each_optimizer_and_schedule(tmp_path, idx_dir, case):
    assert_killed_run_resumes_bit_identically(tmp_path, idx_dir, RESUME_CASES[case], kill_at=52)


def test_wsd_with_warmup_killed_then_resumed_is_bit_identical(tmp_path, idx_dir):
    """The composed schedules are pure functions of optimizer.iterations: a killed WSD run resumes exactly."""
    wsd = (
        "--mode=wsd",
        "--max_lr=0.05",
        "--warmup_epochs=0.5",
        "--decay_fraction=0.3",
        "--decay_shape=sqrt",
        "--epochs=2",
    )
    _, workdir = assert_killed_run_resumes_bit_identically(tmp_path, idx_dir, wsd, kill_at=44)  # the stable phase
    history = history_without_timing(workdir)
    assert len(history["lr"]) == 2
    # The logged rates are WSD's at each epoch's last step (39, 79): stable, then 1 - sqrt(23/24) of the decay.
    assert history["lr"] == pytest.approx([0.05, 0.05 * (1 - (23 / 24) ** 0.5)], rel=1e-6)
