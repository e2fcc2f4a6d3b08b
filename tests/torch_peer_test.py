"""Tests for benchmarks.torch_peer, the benchmark's PyTorch peer, at tiny sizes: the model against the
tutorial's Keras model, the schedule against clr_loop's, the data against clr_loop's readers, and the
timing plumbing. No timed assertions: speed is the benchmark's job."""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import cost_model
from benchmarks import processes
from benchmarks import variants
from benchmarks import worker
from benchmarks import torch_peer
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import models
from clr_loop import schedules
from testing import write_tiny_idx_dir

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_constants_are_clr_loops():
    config = config_lib.Config()
    assert (torch_peer.INITIAL_LR, torch_peer.MAX_LR, torch_peer.STEP_SIZE_EPOCHS) == (
        config.initial_lr,
        config.max_lr,
        config.step_size_epochs,
    )
    assert torch_peer.BATCH_SIZE == config.batch_size == variants.TUTORIAL_BATCH_SIZE
    assert torch_peer.DEBIAN_DIR == fashion_mnist.DEBIAN_DIR and torch_peer.IDX_FILES == fashion_mnist.IDX_FILES
    assert torch_peer.FULL_SIZE == fashion_mnist.FULL_SIZE and torch_peer.SEED == variants.SEED


def test_model_has_the_keras_models_layers_parameters_and_cost():
    model = torch_peer.make_model()
    keras_model = models.create_model(seed=0)
    assert sum(p.numel() for p in model.parameters()) == keras_model.count_params() == 18_762
    assert [m for _, m in cost_model.layer_macs(model)] == [m for _, m in cost_model.layer_macs(keras_model)]
    out = model(torch.zeros((3, 1, 28, 28), dtype=torch.uint8))
    assert tuple(out.shape) == (3, 10)
    # Glorot-uniform weights (Keras's default), zero biases.
    for layer in model:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            w = layer.weight.detach().numpy()
            receptive = w[0, 0].size if w.ndim == 4 else 1
            limit = math.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * receptive))
            assert np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit
            assert not layer.bias.detach().numpy().any()
    # The same seed, the same weights.
    again = torch_peer.make_model()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_cyclic_lr_gives_clr_loops_triangular2_schedule():
    model = torch_peer.make_model()
    optimizer, scheduler = torch_peer.make_optimizer(model, steps_per_epoch=5)  # half cycle: 10 steps
    lrs = []
    for _ in range(70):  # three and a half cycles
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    clr = schedules.CyclicalLearningRate(1e-4, 1e-2, 10, mode="triangular2")
    expected = [float(clr(step)) for step in range(70)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5)
    assert max(lrs[20:40]) == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2, rel=1e-5)  # the second peak halved


def test_load_arrays_random_is_bench_load_datas():
    (train_x, train_y, test_x, test_y), description = torch_peer.load_arrays("random", examples=30)
    data, bench_description = worker.load_data("random", examples=30)
    np.testing.assert_array_equal(train_x, data.train.images)
    np.testing.assert_array_equal(train_y, data.train.labels)
    np.testing.assert_array_equal(test_x, data.test.images)
    np.testing.assert_array_equal(test_y, data.test.labels)
    assert train_y.dtype == np.int32 and description == bench_description


def test_load_arrays_reads_the_idx_files_as_clr_loop_does(tmp_path):
    directory = str(tmp_path / "idx")
    write_tiny_idx_dir(directory, n_train=20, n_test=12)
    arrays, description = torch_peer.load_arrays("auto", directory=directory)
    data = fashion_mnist.load_idx_dir(directory, expect_full_size=False)
    for got, want in zip(arrays, (data.train.images, data.train.labels, data.test.images, data.test.labels)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert directory in description
    _, fallback = torch_peer.load_arrays("auto", examples=5, directory=str(tmp_path / "missing"))
    assert "random" in fallback and "no Fashion-MNIST IDX files" in fallback


def test_batches_cover_each_epoch_once_in_a_new_order():
    x = torch.arange(10).reshape(10, 1, 1, 1).to(torch.uint8)
    y = torch.arange(10)
    stream = torch_peer.batches(x, y, 4, seed=1, drop_remainder=False)
    epochs = [[next(stream) for _ in range(3)] for _ in range(2)]  # 4 + 4 + 2 per epoch
    orders = []
    for epoch in epochs:
        assert [len(b[1]) for b in epoch] == [4, 4, 2]
        labels = torch.cat([b[1] for b in epoch]).tolist()
        assert sorted(labels) == list(range(10))
        assert torch.cat([b[0].flatten() for b in epoch]).tolist() == labels
        orders.append(labels)
    assert orders[0] != orders[1]
    dropped = torch_peer.batches(x, y, 4, seed=1, drop_remainder=True)
    assert [len(next(dropped)[1]) for _ in range(3)] == [4, 4, 4]  # the next epoch starts


def test_time_steps_reports_what_the_bench_table_needs():
    spec = variants.Spec("torch", batch_size=8, steps=3, repeats=2, data="random", examples=64)
    result = torch_peer.time_steps(dataclasses.asdict(spec), cores=1)
    assert len(result["ms_per_step_repeats"]) == 2 and result["ms_per_step"] > 0 and result["steps"] == 3
    assert result["flops_per_step"] == cost_model.step_flops(models.create_model(), 8)
    assert result["threads"][1] == 1 and np.isfinite(result["last_loss"]) and "random" in result["data"]
    assert result["jit_resolved"] is False


def test_time_steps_reports_a_failing_torch_compile_instead_of_raising(monkeypatch):
    def broken_compile(model, **kwargs):
        def forward(x):
            raise RuntimeError("Compiler: cc is not found\nmore detail")

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    spec = variants.Spec("torch_compile", batch_size=8, steps=2, repeats=1, data="random", examples=32)
    result = torch_peer.time_steps(dataclasses.asdict(spec), cores=1)
    assert result["error"] == "RuntimeError: Compiler: cc is not found" and "ms_per_step" not in result


def test_run_epochs_trains_and_validates():
    lines = []
    result = torch_peer.run_epochs(epochs=2, data="random", examples=40, log=lines.append, cores=1)
    history = result["history"]
    assert set(history) == {"loss", "val_loss", "val_accuracy"} and len(history["loss"]) == 2
    assert all(np.isfinite(v) for v in history["loss"] + history["val_loss"])
    assert all(0.0 <= a <= 1.0 for a in history["val_accuracy"])
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2")


def test_the_worker_process_prints_a_bench_result():
    """The subprocess path end to end, as the bench runs it: no TensorFlow in the PyTorch process."""
    spec = variants.Spec("torch", batch_size=8, steps=2, repeats=1, data="random", examples=32)
    result = processes.run_spec_in_subprocess(spec)
    assert result["name"] == "(p) PyTorch eager" and result["process_peak_rss_mb"] > 0
    assert result["ms_per_step"] > 0 and result["torch"] == torch.__version__
    probe = "import sys, benchmarks.torch_peer; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=processes.REPO_ROOT,
        env=processes.child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False", out.stderr
