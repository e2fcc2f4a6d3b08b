"""benchmarks/gpu_check.sh in its tiny mode on this machine (no GPU needed): it leaves its results
folder with every stage's log and results, goes on past a failing or overlong stage and then exits
non-zero; and benchmarks/gpu_check.py's pieces against hand-made inputs.

The script's GPU mode runs the same stages at full size; only a GPU machine can run it.
"""

import json
import os
import subprocess
import tarfile

import numpy as np
import pytest

from benchmarks import gpu_check
from clr_loop.experiment import fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.sh")


def run_script(folder, timeout=300, **settings):
    env = dict(os.environ, GPU_CHECK_TINY="1", TF_CPP_MIN_LOG_LEVEL="2", **settings)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        ["bash", SCRIPT, str(folder)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def stage_lines(folder):
    """{stage: status} from the folder's stages.txt, and its last ("total") line."""
    lines = (folder / "stages.txt").read_text().splitlines()
    return {line.split()[0]: line.split()[1] for line in lines[:-1]}, lines[-1]


def test_tiny_run_leaves_every_stages_results_in_its_folder(tmp_path):
    """env, a one-test tests stage, a one-batch-size grid without whole-process runs, and the
    10-epoch main job on tiny data (the fusion stage is tests/gpu_fusion_test.py itself)."""
    folder = tmp_path / "out"
    proc = run_script(
        folder,
        GPU_CHECK_STAGES="env,tests,bench,main",
        GPU_CHECK_TESTS="tests/gpu_check_test.py::test_training_time_of_a_hand_made_history",
        GPU_CHECK_BATCH_SIZES="8",
        GPU_CHECK_PRECISIONS="float32",
        GPU_CHECK_STEPS="2",
        GPU_CHECK_WHOLE="0",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses, total = stage_lines(folder)
    assert statuses == {"env": "ok", "tests": "ok", "bench": "ok", "main": "ok"} and total.split()[1] == "ok"
    for name in (
        "env.txt",
        "env.json",
        "nvidia-smi.txt",
        "git.txt",
        "env.log",
        "tests.log",
        "tests.xml",
        "bench.log",
        "bench.json",
        "main.log",
        "main_time.json",
        "main_history.json",
    ):
        assert (folder / name).is_file(), name
    env = json.loads((folder / "env.json").read_text())
    assert env["tensorflow"] and "GPU:" in (folder / "env.txt").read_text()
    assert "data: tiny random IDX files" in (folder / "env.txt").read_text()
    assert "1 passed" in (folder / "tests.log").read_text()
    bench = json.loads((folder / "bench.json").read_text())
    assert bench["complete"] is True
    assert [row["name"] for row in bench["grid"]] == [
        "(a) fit b=8 float32",
        "loop tf.data b=8 float32",
        "loop device b=8 float32",
    ]
    assert all(row["ms_per_step"] > 0 and row["steps"] == 2 for row in bench["grid"])
    assert [row["spec"]["input"] for row in bench["grid"][1:]] == ["pipeline", "device"]
    timing = json.loads((folder / "main_time.json").read_text())
    history = json.loads((folder / "main_history.json").read_text())
    assert timing["epochs"] == 10 == len(history["loss"])
    assert timing["training_s"] == pytest.approx(sum(history["epoch_seconds"]))
    assert "training time:" in (folder / "main.log").read_text()
    with tarfile.open(f"{folder}.tar.gz") as archive:
        assert "out/stages.txt" in archive.getnames() and "out/bench.json" in archive.getnames()


def test_a_failing_or_overlong_stage_is_recorded_and_the_next_still_runs(tmp_path):
    folder = tmp_path / "out"
    proc = run_script(
        folder,
        GPU_CHECK_STAGES="tests,fusion",
        GPU_CHECK_TESTS="tests/no_such_test.py",
        GPU_CHECK_LIMIT_FUSION="1",
        timeout=120,
    )
    assert proc.returncode == 1
    statuses, total = stage_lines(folder)
    assert statuses["tests"] == "FAILED(exit" and statuses["fusion"] == "TIMEOUT(1s)"
    assert total.split()[1:4] == ["FAILED:", "tests", "fusion"]
    assert "no_such_test.py" in (folder / "tests.log").read_text()


def test_an_unknown_stage_is_refused_before_anything_runs(tmp_path):
    proc = run_script(tmp_path / "out", GPU_CHECK_STAGES="env,gpu", timeout=60)
    assert proc.returncode == 2 and "unknown stage 'gpu'" in proc.stderr
    assert not (tmp_path / "out" / "stages.txt").exists()


def test_training_time_of_a_hand_made_history():
    history = {"loss": [1.0, 0.5, 0.4], "val_accuracy": [0.7, 0.8, 0.85], "epoch_seconds": [3.0, 0.5, 0.75]}
    t = gpu_check.training_time(history)
    assert t == {
        "epochs": 3,
        "training_s": 4.25,
        "first_epoch_s": 3.0,
        "later_epoch_s": 0.625,
        "target_s": 5.0,
        "met": True,
        "val_accuracy": 0.85,
    }
    assert not gpu_check.training_time(history, target_s=4.0)["met"]
    text = gpu_check.format_training_time(t)
    assert "4.25 s for 3 epochs (target: under 5 s: met)" in text and "0.8500" in text


def test_idx_data_is_read_by_the_trainers_loader(tmp_path):
    gpu_check.write_idx_dir(str(tmp_path), n_train=12, n_test=5, seed=3)
    data = fashion_mnist.load_idx_dir(str(tmp_path), expect_full_size=False)
    assert (data.train.num_examples, data.test.num_examples) == (12, 5)
    assert data.train.images.shape == (12, 28, 28, 1) and data.train.images.dtype == np.uint8
    assert set(np.unique(data.test.labels)) <= set(range(10))


def test_format_environment_names_the_gpu_or_its_absence():
    env = {
        "gpus": [{"device": "/physical_device:GPU:0", "name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}],
        "build": {"cuda_version": "12.5.1", "cudnn_version": "9"},
        "tensorflow": "2.21.0",
        "keras": "3.15.1",
        "numpy": "2.4.6",
        "python": "3.12.3",
        "jit_compile_auto": True,
        "cpu": "x",
        "cpu_count": 16,
        "platform": "Linux",
    }
    text = gpu_check.format_environment(env)
    assert "GPU: NVIDIA H100 80GB HBM3 (compute capability 9.0)" in text and "cuda_version 12.5.1" in text
    assert "XLA on" in text
    assert "GPU: none seen by TensorFlow" in gpu_check.format_environment(
        {**env, "gpus": [], "jit_compile_auto": False}
    )
