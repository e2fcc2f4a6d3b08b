"""Tests for benchmarks.fit_bench at tiny sizes: the ResNet-20 against He et al.'s description, the
data padding, the thread choice, the two contenders' plumbing, the summary and the CLI. No timed
assertions: speed is the benchmark's job."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from benchmarks import cost_model
from benchmarks import fit_bench
from benchmarks import processes
from testing import tiny_data
from clr_loop import runtime


def test_resnet20_has_he_et_als_layers_and_parameters():
    model = fit_bench.resnet20_projection()
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    # 1 + 3 stages x 3 blocks x 2 convs = 19 3x3 convs and the dense layer: 20 weight layers,
    # plus the two 1x1 projection shortcuts (option B).
    assert sum(layer.kernel_size == (3, 3) for layer in convs) == 19 and len(dense) == 1
    assert sorted(tuple(layer.kernel.shape) for layer in convs if layer.kernel_size == (1, 1)) == [
        (1, 1, 16, 32),
        (1, 1, 32, 64),
    ]
    # Trainable parameters by hand: conv kernels (no biases), BN gamma and beta, the dense layer.
    kernels = (
        3 * 3 * 3 * 16
        + 6 * 3 * 3 * 16 * 16
        + (3 * 3 * 16 * 32 + 5 * 3 * 3 * 32 * 32)
        + (3 * 3 * 32 * 64 + 5 * 3 * 3 * 64 * 64)
        + 16 * 32
        + 32 * 64
    )
    bn_channels = 16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64
    assert len(norms) == 1 + 6 + 6 + 1 + 6 + 1
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == kernels + 2 * bn_channels + 64 * 10 + 10 == 272_474
    assert model.output_shape == (None, 10)
    assert model.get_layer(index=-3).output.shape[1:] == (8, 8, 64)  # the last block's ReLU: 32 / 2 / 2


def test_resnet20_cannot_be_split_and_the_app_threads_agree():
    splits, why = runtime.resolve_batch_splits(0, fit_bench.resnet20_projection(), 128)
    assert splits == 1 and "BatchNormalization" in why
    assert fit_bench.app_splits(fit_bench.CASES["resnet20"]) == 1
    cnn = fit_bench.CASES["cnn"]
    assert (fit_bench.app_splits(cnn, cores=2), fit_bench.app_splits(cnn, cores=1)) == (2, 1)
    assert fit_bench.app_splits(cnn) == runtime.auto_batch_splits(64)


def test_pad_to_cifar_centres_the_image_on_three_equal_channels():
    images = np.random.default_rng(1).integers(1, 256, (3, 28, 28, 1), dtype=np.uint8)
    padded = fit_bench.pad_to_cifar(images)
    assert padded.shape == (3, 32, 32, 3) and padded.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(padded[:, 2:30, 2:30, channel], images[..., 0])
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not padded[:, border].any()


def test_both_contenders_start_from_the_same_weights_and_report_every_measurement():
    case = fit_bench.Case("cnn", batch_size=8, steady_steps=2, steady_repeats=2, step_size=10)
    data = tiny_data(num_test=20)
    results = {c: fit_bench.time_contender(case, c, data=data) for c in fit_bench.CONTENDERS}
    keras.utils.set_random_seed(fit_bench.SEED)
    from clr_loop.experiment import models

    expected = cost_model.weights_checksum(models.create_model(seed=fit_bench.SEED).get_weights())
    for contender, r in results.items():
        assert r["init_checksum"] == pytest.approx(expected)
        assert (r["epoch_steps"], r["epoch_examples"], r["val_examples"]) == (5, 40, 20)
        assert r["steady_steps"] == 2 and len(r["steady_ms_repeats"]) == 2 and r["steady_ms_per_step"] > 0
        assert r["epoch_s"] > 0 and r["peak_rss_epoch_mb"] > 0
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(r["epoch_logs"])
        assert np.isfinite(r["epoch_logs"]["loss"])
    assert results["keras"]["splits_resolved"] == 1
    assert results["clr_loop"]["splits_resolved"] == 1  # a batch of 8 is never split


def test_bare_step_of_the_resnet():
    case = fit_bench.Case("resnet20", batch_size=4)
    result = fit_bench.time_bare_step(case, splits=1, calls=2, data=tiny_data(num_train=8, num_test=4))
    assert result["step_ms"] > 0 and len(result["step_ms_repeats"]) == 3
    assert result["flops_per_step"] == cost_model.step_flops(fit_bench.resnet20_projection(), 4)


def _result(model, contender, epoch_s, steady, checksum=(1.0, 2.0), rss=100.0):
    return {
        "model": model,
        "contender": contender,
        "batch_size": 8,
        "epoch_s": epoch_s,
        "epoch_steps": 5,
        "epoch_examples": 40,
        "val_examples": 20,
        "steady_steps": 2,
        "steady_ms_repeats": steady,
        "steady_ms_per_step": float(np.median(steady)),
        "init_checksum": list(checksum),
        "threads": [0, 0],
        "splits_resolved": 1,
        "process_peak_rss_mb": rss,
        "peak_rss_epoch_mb": rss,
        "epoch_logs": {"val_accuracy": 0.5},
        "loadavg_before": 1.0,
        "loadavg_after": 1.5,
        "data": "tiny",
    }


def test_summarize_pools_rounds_and_takes_keras_over_clr_loop():
    results = [
        _result("cnn", "clr_loop", 10.0, [1.0, 2.0], rss=200.0),
        _result("cnn", "keras", 30.0, [4.0, 5.0], rss=300.0),
        _result("cnn", "keras", 20.0, [6.0], rss=300.0),
        _result("cnn", "clr_loop", 12.0, [3.0], rss=200.0),
    ]
    s = fit_bench.summarize(results)["cnn"]
    assert s["clr_loop"]["steady_ms_per_step"] == 2.0 and s["keras"]["steady_ms_per_step"] == 5.0
    assert s["speedup_steady"] == 2.5
    assert s["speedup_epoch"] == pytest.approx(25.0 / 11.0)
    assert s["rss_ratio"] == 1.5
    assert s["speedup_epoch_by_round"] == [3.0, pytest.approx(20.0 / 12.0)]
    assert s["clr_loop"]["loadavg"] == [1.0, 1.5]
    assert "2.50" in fit_bench.format_summary({"cnn": s})


def test_summarize_refuses_different_initial_weights():
    results = [_result("cnn", "clr_loop", 1.0, [1.0]), _result("cnn", "keras", 1.0, [1.0], checksum=(1.0, 3.0))]
    with pytest.raises(ValueError, match="different initial weights"):
        fit_bench.summarize(results)


def test_fit_jobs_alternate_the_contenders_from_round_to_round():
    cases = [fit_bench.CASES["cnn"], fit_bench.CASES["resnet20"]]
    jobs = fit_bench.fit_jobs(cases, rounds=2)
    order = [(j["round"], j["case"]["model"], j["contender"]) for j in jobs]
    assert order == [
        (0, "cnn", "clr_loop"),
        (0, "cnn", "keras"),
        (0, "resnet20", "clr_loop"),
        (0, "resnet20", "keras"),
        (1, "cnn", "keras"),
        (1, "cnn", "clr_loop"),
        (1, "resnet20", "keras"),
        (1, "resnet20", "clr_loop"),
    ]
    steps = fit_bench.step_jobs(cases)
    assert [(j["case"]["model"], j["threads"][0]) for j in steps] == (
        [("cnn", "default")]
        + ([("cnn", "app")] if fit_bench.app_splits(cases[0]) > 1 else [])
        + [("resnet20", "default")]
    )


def test_cli_runs_both_contenders_in_their_own_processes(tmp_path):
    out = tmp_path / "fit_bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.fit_bench",
            "--models=cnn",
            "--rounds=1",
            "--examples=128",
            "--steady_steps=2",
            "--data=random",
            "--breakdown=false",
            f"--out={out}",
        ],
        cwd=processes.REPO_ROOT,
        env=processes.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["command"].startswith("python -m benchmarks.fit_bench --models=cnn")
    rows = {r["contender"]: r for r in report["fit"]}
    assert set(rows) == set(fit_bench.CONTENDERS)
    assert all(r["process_peak_rss_mb"] > 0 and "random" in r["data"] for r in rows.values())
    # clr_loop's process has the app's pools; Keras's keeps TensorFlow's defaults.
    assert rows["clr_loop"]["threads"] == list(runtime.thread_pool_sizes(fit_bench.app_splits(fit_bench.CASES["cnn"])))
    assert rows["keras"]["threads"] == [0, 0]
    assert report["summary"]["cnn"]["speedup_steady"] > 0 and "x steady" in proc.stdout


def test_cli_rejects_an_unknown_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fit_bench", "--models=vgg", f"--out={tmp_path / 'b.json'}"],
        cwd=processes.REPO_ROOT,
        env=processes.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "--models" in proc.stderr and "resnet20" in proc.stderr
    assert not (tmp_path / "b.json").exists()
