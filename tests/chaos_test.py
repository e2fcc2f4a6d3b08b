"""The chaos soak (tools/chaos.py), small: a run killed with SIGKILL three times at seeded events
ends bit-identical to an uninterrupted one, and the tool's comparison finds planted differences.

The oracle is the uninterrupted run with the same flags; the tool compares the checkpoints tensor by
tensor, history.json value by value and TensorBoard through its own event_accumulator. The test
only calls the tool (all waiting for kill points happens inside it).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from clr_loop import checkpointing
from clr_loop.experiment import fashion_mnist
from testing import REPO, write_tiny_idx_dir

CHAOS = os.path.join(REPO, "tools", "chaos.py")
# 640 real training examples at batch 16: 40 steps an epoch, 80 in all, a checkpoint every 4 steps.
TRAIN_FLAGS = [
    "--mode=triangular2",
    "--step_size_epochs=0.5",
    "--epochs=2",
    "--batch_size=16",
    "--eval_batch_size=50",
    "--steps_per_loop=1",
    "--log_every_steps=5",
    "--checkpoint_every_steps=4",
    "--deterministic",
]


def run_chaos(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, CHAOS, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
        pytest.skip(
            f"the real Fashion-MNIST files are not in {fashion_mnist.DEBIAN_DIR} (apt-get install dataset-fashion-mnist)"
        )
    idx = write_tiny_idx_dir(
        str(tmp_path_factory.mktemp("idx")), n_train=640, n_test=500, source=fashion_mnist.DEBIAN_DIR
    )
    root = str(tmp_path_factory.mktemp("chaos") / "root")
    result = run_chaos(
        "--kills=3",
        "--seed=0",
        f"--root={root}",
        "--",
        sys.executable,
        "-m",
        "clr_loop.train",
        f"--dataset_dir={idx}",
        *TRAIN_FLAGS,
    )
    return root, result


def test_three_kills_survived_bit_identically(soak):
    root, result = soak
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "chaos: survived 3/3 kills (" in result.stdout, out
    assert "checkpoint, history and TensorBoard identical to the uninterrupted run" in result.stdout, out
    assert result.stdout.count("SIGKILL") == 3, out
    # Four processes on the chaos workdir: three killed, each resumed by the next, the last finished.
    logs = sorted(n for n in os.listdir(root) if n.startswith("chaos-"))
    assert logs == ["chaos-1.log", "chaos-2.log", "chaos-3.log", "chaos-4.log"], logs
    assert "Resuming from" in open(os.path.join(root, "chaos-4.log")).read()


def test_compare_reports_a_planted_history_difference(soak, tmp_path):
    root, _ = soak
    copy = str(tmp_path / "copy")
    shutil.copytree(os.path.join(root, "reference"), copy)
    history = json.load(open(os.path.join(copy, "history.json")))
    history["val_loss"][1] = history["val_loss"][1] + 1e-12
    json.dump(history, open(os.path.join(copy, "history.json"), "w"))
    result = run_chaos("--compare", os.path.join(root, "reference"), copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "history.json val_loss[1]:" in result.stdout


def test_compare_reports_planted_checkpoint_and_tensorboard_differences(soak, tmp_path):
    root, _ = soak
    reference = os.path.join(root, "reference")
    # The previous checkpoint (step 76) under the last one's name: same name, other weights.
    copy = str(tmp_path / "weights")
    shutil.copytree(reference, copy)
    ckpt = os.path.join(copy, "ckpt")
    for name in os.listdir(ckpt):
        if name.startswith("ckpt-80."):
            os.remove(os.path.join(ckpt, name))
    for name in os.listdir(ckpt):
        if name.startswith("ckpt-76."):
            os.rename(os.path.join(ckpt, name), os.path.join(ckpt, name.replace("ckpt-76.", "ckpt-80.")))
    result = run_chaos("--compare", reference, copy)
    assert result.returncode == 1 and "ckpt-80: tensor " in result.stdout and " differs" in result.stdout, result.stdout
    # The eval points after step 40 cut from TensorBoard.
    copy = str(tmp_path / "events")
    shutil.copytree(reference, copy)
    checkpointing.truncate_events(os.path.join(copy, "eval"), 40)
    result = run_chaos("--compare", reference, copy)
    assert result.returncode == 1 and "TensorBoard eval/" in result.stdout and "steps" in result.stdout, result.stdout


def test_a_command_that_sets_the_workdir_is_refused(tmp_path):
    result = run_chaos(f"--root={tmp_path / 'r'}", "--", sys.executable, "-m", "clr_loop.train", "--workdir=x")
    assert result.returncode == 2
    assert "must not set --workdir" in result.stderr
    assert not os.path.exists(tmp_path / "r")
