"""Tests for benchmarks.bench at tiny sizes: the cost model, the in-graph input variant, the
measurement plumbing and the profile breakdown. No timed assertions: speed is the benchmark's job."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from benchmarks import cost_model
from benchmarks import machine
from benchmarks import processes
from benchmarks import report
from benchmarks import step_profile
from benchmarks import variants
from benchmarks import whole_process
from benchmarks import worker
from clr_loop.experiment import models
from testing import tiny_data, weights

# The tutorial's CNN, by hand: (name, output H*W, kernel taps, C_in, C_out).
CONV1_MACS = 24 * 24 * 5 * 5 * 1 * 16  # 28x28 input, 5x5 valid
CONV2_MACS = 8 * 8 * 5 * 5 * 16 * 32  # 12x12 after pooling, 5x5 valid
DENSE_MACS = 32 * 128 + 128 * 10


def test_step_flops_match_the_hand_count():
    model = models.create_model(seed=0)
    forward = CONV1_MACS + CONV2_MACS + DENSE_MACS
    assert forward == 1_054_976
    # Forward, weight gradients (same again) and input gradients (same again minus the first layer).
    assert cost_model.step_flops(model, 64) == 2 * 64 * (forward + forward + forward - CONV1_MACS) == 375_619_584
    assert cost_model.step_flops(model, 1000, training=False) == 2 * 1000 * forward
    assert [macs for _, macs in cost_model.layer_macs(model)] == [CONV1_MACS, CONV2_MACS, 32 * 128, 128 * 10]


@pytest.mark.parametrize("dropout", [True, False])
def test_device_input_loop_gives_the_pipeline_loops_weights(dropout):
    """The bench's two input rows train alike: same batches, same dropout masks (the library's
    device mode itself is checked against the pipeline in tests/device_input_test.py)."""
    data = tiny_data(num_train=40)
    spec = variants.Spec("loop", batch_size=8, steps_per_loop=3, jit="false")
    runs = {}
    for kind in ("pipeline", "device"):
        run_steps, model, optimizer = worker.make_loop(variants.Spec(**{**spec.__dict__, "input": kind}), data)
        if not dropout:
            model.layers[5].rate = 0.0
        for _ in range(4):  # 12 steps: two epoch boundaries
            out = run_steps(3)
        runs[kind] = (weights(model), float(out["loss_sum"]), int(optimizer.iterations))
    assert runs["pipeline"][2] == runs["device"][2] == 12
    assert runs["device"][1] == pytest.approx(runs["pipeline"][1], rel=1e-6)
    for a, b in zip(runs["pipeline"][0], runs["device"][0]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_spec_splits_reach_the_trainer():
    """A spec's `splits` is the trainer's --batch_splits (0: its automatic choice), nothing swapped in."""
    data = tiny_data(num_train=40)
    for splits, expected in ((0, 1), (1, 1), (2, 2), (4, 4)):  # auto: a batch of 8 is never split
        trainer = worker.make_trainer(variants.Spec("loop", batch_size=8, jit="false", splits=splits), data)
        assert trainer.splits == expected


def test_is_trainer_default_matches_what_train_resolves():
    from clr_loop.experiment import config as config_lib
    from clr_loop import runtime
    from clr_loop.experiment import trial

    default_splits = trial.planned_batch_splits(config_lib.Config())
    threads = runtime.thread_pool_sizes(default_splits)
    spec = variants.Spec("loop", jit="false")
    assert worker.is_trainer_default(spec, default_splits, threads, "pipeline")
    assert not worker.is_trainer_default(spec, default_splits, threads, "device")
    assert worker.is_trainer_default(
        variants.Spec("loop", jit="false", input="device"), default_splits, threads, "device"
    )
    assert not worker.is_trainer_default(
        variants.Spec("loop", jit="false", steps_per_loop=10), default_splits, threads, "pipeline"
    )
    assert not worker.is_trainer_default(
        variants.Spec("loop", jit="false", precision="mixed_bfloat16"), default_splits, threads, "pipeline"
    )
    other = 1 if default_splits > 1 else 2
    assert not worker.is_trainer_default(spec, other, runtime.thread_pool_sizes(other), "pipeline")


@pytest.mark.parametrize(
    "spec",
    [
        variants.Spec("fit", batch_size=8, steps=3, repeats=2),
        variants.Spec("loop", batch_size=8, steps=5, repeats=2, steps_per_loop=2),
        variants.Spec("loop", batch_size=8, steps=5, repeats=1, steps_per_loop=10, input="device", splits=2),
        variants.Spec("eval_loop", batch_size=8, repeats=1, eval_batch_size=10),
        variants.Spec("eval_loop", batch_size=8, repeats=1, eval_batch_size=10, splits=2),
        variants.Spec("fit_eval", batch_size=8, repeats=1),
    ],
    ids=lambda spec: spec.name,
)
def test_run_spec_reports_every_measurement(spec):
    data = tiny_data()
    result = worker.run_spec(spec, data=data, data_description="tiny")
    per = "step" if spec.kind in ("fit", "loop") else "pass"
    assert result["name"] == spec.name and result["data"] == "tiny"
    assert len(result[f"ms_per_{per}_repeats"]) == spec.repeats
    assert result[f"ms_per_{per}"] > 0 and result["gflops"] > 0 and result["peak_rss_mb"] > 0
    if per == "step":
        assert result["steps"] == spec.steps
        assert result["flops_per_step"] == cost_model.step_flops(models.create_model(), spec.batch_size)
        assert result["examples_per_s"] == pytest.approx(spec.batch_size * 1000 / result["ms_per_step"])
    else:
        assert result["flops_per_pass"] == 2 * 25 * 1_054_976
    assert result["jit_resolved"] is False  # this is a CPU-only test run
    if spec.kind in ("loop", "eval_loop"):
        assert result["splits_resolved"] == (spec.splits or 1)  # a batch of 8 is never split automatically
    assert len(result["threads"]) == 2


def test_worker_subprocess_with_one_inter_op_thread_trains_like_the_default_threads():
    """The subprocess path end to end; one inter-op thread changes scheduling, not the arithmetic."""
    spec = variants.Spec("loop", batch_size=8, steps=4, repeats=1, steps_per_loop=4, data="random", examples=40)
    child = processes.run_spec_in_subprocess(variants.Spec(**{**spec.__dict__, "inter_op": 1}))
    assert child["spec"]["inter_op"] == 1 and child["process_peak_rss_mb"] >= child["peak_rss_mb"] * 0.9
    here = worker.run_spec(spec, *worker.load_data("random", examples=40))
    np.testing.assert_allclose(child["weights_checksum"], here["weights_checksum"], rtol=1e-6)


def test_load_data_random_is_marked_and_sized():
    data, description = worker.load_data("random", examples=30)
    assert "random" in description and "first 30" in description
    assert (data.train.num_examples, data.test.num_examples) == (30, 30)


def test_fit_epoch_runs_the_tutorial_with_validation():
    result = whole_process.fit_epoch(epochs=1, batch_size=8, data=tiny_data())
    assert set(result["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result["fit_s"] > 0


def test_merge_rounds_pools_repeats_and_takes_the_highest_peak():
    spec = {"batch_size": 10}
    rounds = [
        {
            "ms_per_step": 2.0,
            "ms_per_step_repeats": [1.0, 2.0, 9.0],
            "flops_per_step": 1e6,
            "spec": spec,
            "compile_s": 1.0,
            "first_call_s": 2.0,
            "cpu_ms_per_step": 3.0,
            "peak_rss_mb": 100.0,
            "process_peak_rss_mb": 110.0,
        },
        {
            "ms_per_step": 4.0,
            "ms_per_step_repeats": [3.0, 4.0, 5.0],
            "flops_per_step": 1e6,
            "spec": spec,
            "compile_s": 3.0,
            "first_call_s": 4.0,
            "cpu_ms_per_step": 5.0,
            "peak_rss_mb": 120.0,
            "process_peak_rss_mb": 105.0,
        },
    ]
    merged = processes.merge_rounds(rounds)
    assert merged["ms_per_step"] == 3.5  # median of 1, 2, 3, 4, 5, 9
    assert merged["examples_per_s"] == pytest.approx(10 * 1000 / 3.5)
    assert merged["gflops"] == pytest.approx(1e6 / 3.5e-3 / 1e9)
    assert (merged["peak_rss_mb"], merged["process_peak_rss_mb"], merged["rounds"]) == (120.0, 110.0, 2)


def test_add_ratios_against_the_baseline():
    results = [{"ms_per_step": 8.0, "gflops": 20.0}, {"ms_per_step": 4.0, "gflops": 40.0}]
    report.add_ratios(results, results[0], matmul_gflops=80.0)
    assert [r["speedup_vs_fit"] for r in results] == [1.0, 2.0]
    assert [r["pct_of_matmul_peak"] for r in results] == [25.0, 50.0]


@pytest.mark.parametrize(
    "long_name, op_type, category",
    [
        (
            "while/body/_1/while/StatefulPartitionedCall/clr_cnn_1/conv2d_1/Relu",
            "_MklNativeFusedConv2D",
            "conv forward",
        ),
        (
            "while/body/_1/while/StatefulPartitionedCall/gradient_tape/clr_cnn_1/conv2d_1_2/convolution/Conv2DBackpropInput",
            "_MklNativeConv2DBackpropInput",
            "conv backward",
        ),
        (
            "while/body/_1/while/StatefulPartitionedCall/gradient_tape/clr_cnn_1/conv2d_1/convolution/Conv2DBackpropFilter",
            "_MklNativeConv2DBackpropFilterWithBias",
            "conv backward",
        ),
        ("while/body/_1/while/StatefulPartitionedCall/sgd/AssignSubVariableOp_6", "AssignSubVariableOp", "optimizer"),
        ("while/body/_1/while/StatefulPartitionedCall/sgd/CyclicalLearningRate/SelectV2", "SelectV2", "optimizer"),
        ("while/body/_1/while/device_batches/GatherV2", "GatherV2", "input"),
        ("Iterator::Root::Prefetch", "Iterator::Root::Prefetch", "input"),
        (
            "while/body/_1/while/StatefulPartitionedCall/gradient_tape/clr_cnn_1/max_pooling2d_1/MaxPool2d/MaxPoolGrad",
            "_MklNativeMaxPoolGrad",
            "other backward",
        ),
        ("while/body/_1/while/StatefulPartitionedCall/clr_cnn_1/dense_1_2/Softmax", "_MklSoftmax", "other forward"),
        ("while/body/_1/while/StatefulPartitionedCall/ArgMax", "ArgMax", "loss, metrics, loop"),
    ],
)
def test_classify_op(long_name, op_type, category):
    assert step_profile.classify_op(long_name, op_type) == category


def test_profile_breakdown_of_a_synthetic_trace():
    def op(name, op_type, ts, dur, tid=1):
        return {
            "ph": "X",
            "name": op_type,
            "ts": ts,
            "dur": dur,
            "pid": 1,
            "tid": tid,
            "args": {"long_name": f"{name}:{op_type}"},
        }

    events = [
        op("m/clr_cnn/conv2d/Relu", "_MklNativeFusedConv2D", 0, 400),
        op("m/gradient_tape/clr_cnn/conv2d/Conv2DBackpropFilter", "_MklNativeConv2DBackpropFilter", 400, 600),
        op("m/gradient_tape/clr_cnn/conv2d/Conv2DBackpropInput", "_MklNativeConv2DBackpropInput", 500, 300, tid=2),
        op("m/sgd/AssignSubVariableOp", "AssignSubVariableOp", 1000, 100),
        # Nested tf.data events on one thread count once (outermost); a second thread adds its own.
        {"ph": "X", "name": "Iterator::Root", "ts": 1200, "dur": 200, "pid": 1, "tid": 3},
        {"ph": "X", "name": "Iterator::Root::Prefetch", "ts": 1250, "dur": 100, "pid": 1, "tid": 3},
        {"ph": "X", "name": "ExecutorState::Process", "ts": 0, "dur": 5000, "pid": 1, "tid": 1},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "x"}},
    ]
    events += [{"ph": "X", "name": "train", "ts": 0, "dur": d, "pid": 1, "tid": 9} for d in (900, 1000, 5000)]
    assert step_profile.step_wall_ms(events) == 1.0  # the median step event, in ms
    result = step_profile.profile_breakdown(events, num_steps=2, wall_ms_per_step=1.0)
    ms = result["ms_per_step"]
    assert ms["conv forward"] == pytest.approx(0.2)
    assert ms["conv backward"] == pytest.approx(0.45)  # (600 + 300) us over 2 steps
    assert ms["optimizer"] == pytest.approx(0.05)
    assert ms["input"] == pytest.approx(0.1)
    # Busy: 0..1100 and 1200..1400 = 1300 us in 2 steps; the rest of the 1 ms step is overhead.
    assert result["busy_ms_per_step"] == pytest.approx(0.65)
    assert result["overhead_ms_per_step"] == pytest.approx(0.35)
    assert result["parallelism"] == pytest.approx((400 + 600 + 300 + 100 + 200) / 1300)
    assert result["ops_per_step"] == 2.0
    assert "no op running" in step_profile.format_profile(result)


@pytest.mark.parametrize(
    "batch, cores, expected",
    [
        (64, 2, {"splits": 2, "inter_op": 2, "intra_op": 1}),
        (64, 16, {"splits": 2, "inter_op": 2, "intra_op": 8}),  # parts of at least 32 examples
        (96, 4, {"splits": 3, "inter_op": 3, "intra_op": 1}),  # 3 divides 96, 4 parts would be 24
        (32, 2, {}),
        (64, 1, {}),
    ],
)
def test_split_threads(batch, cores, expected):
    assert variants.split_threads(batch, cores) == expected


def test_tables_and_spec_round_trip():
    spec = variants.Spec("loop", steps_per_loop=10, jit="false", input="device", inter_op=1)
    assert variants.Spec.from_json(spec.to_json()) == spec
    assert spec.name == "loop device xla=false spl=10 threads=1x0"
    row = {
        "name": spec.name,
        "ms_per_step": 2.0,
        "ms_per_step_repeats": [1.5, 2.5],
        "cpu_ms_per_step": 3.0,
        "examples_per_s": 32000.0,
        "compile_s": 1.25,
        "process_peak_rss_mb": 800.0,
        "speedup_vs_fit": 1.6,
        "gflops": 187.8,
        "pct_of_matmul_peak": 50.0,
    }
    table = report.format_training_table([row])
    assert "1.50-2.50" in table and "1.60" in table and spec.name in table
    json.dumps(row)


def test_cli_rejects_bad_flags_before_running_anything(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--repeats=0", f"--out={out}"],
        cwd=processes.REPO_ROOT,
        env=processes.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "--repeats" in proc.stderr
    assert not out.exists()


def test_bench_and_train_import_together():
    """bench's flags are defined only when it runs as a program, so it never clashes with train's."""
    from benchmarks import bench  # noqa: F401  (the app's module, imported, not run)
    from clr_loop import train  # noqa: F401  (defines --batch_size, --steps_per_loop, ...)

    assert "repeats" not in flags.FLAGS


def test_whole_process_commands_run_the_tutorial_script_and_the_trainer():
    commands = whole_process.whole_process_commands(epochs=2)
    assert set(commands) == {"train", "fit", "fit_gc_tuned"}
    assert commands["train"][0][1:] == ["-m", "clr_loop.train", "--mode=triangular2", "--epochs=2"]
    assert commands["fit"][0][-2:] == ["--fit_epoch", "--fit_epochs=2"]
    assert commands["fit_gc_tuned"][0][-1] == "--fit_gc_tuned"
    # The tutorial script imports TensorFlow before clr_loop, then hands its arguments to the
    # bench app: a bad flag is reported by the app, with a non-zero exit.
    argv = commands["fit"][0][:3] + ["--repeats=0"]
    proc = subprocess.run(
        argv, cwd=processes.REPO_ROOT, env=processes.child_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "--repeats" in proc.stderr


def _fake_xprof(root, body):
    """Puts an `xprof` package whose `convert.raw_to_tool_data` module holds `body` under `root`."""
    package = root / "xprof" / "convert"
    package.mkdir(parents=True)
    (root / "xprof" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "raw_to_tool_data.py").write_text(body)
    (root / "tensorboard_plugin_profile").mkdir()
    (root / "tensorboard_plugin_profile" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = processes.child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(root), env["PYTHONPATH"]])
    return env


def test_cli_profile_without_xprof_says_how_to_install_before_running_anything(tmp_path):
    env = _fake_xprof(tmp_path, "raise ImportError('not installed')\n")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--profile", "--steps=2", f"--out={out}"],
        cwd=processes.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--profile" in proc.stderr and step_profile.PROFILE_INSTALL in proc.stderr
    assert "[round" not in proc.stderr and not out.exists()


# Runs the bench app with every worker in this one process (thread settings then stay TensorFlow's
# after the first, which does not matter here) and a profile stage that fails.
_IN_PROCESS_BENCH = """
import sys
from absl import app
from benchmarks import bench
from benchmarks import processes
from benchmarks import worker

def in_process(spec):
    result = worker.run_spec(spec)
    result.update(process_peak_rss_mb=result["peak_rss_mb"], process_wall_s=0.0)
    return result

def broken_profile(spec, logdir):
    raise RuntimeError("the profile stage broke")

processes.run_spec_in_subprocess = in_process
processes.profile_in_subprocess = broken_profile
bench.define_flags()
app.run(bench.main, argv=["bench", *sys.argv[1:]])
"""


def test_cli_keeps_the_measured_stages_when_a_later_stage_fails(tmp_path):
    """The JSON is written after every stage: a failing profile leaves the training table on disk."""
    env = _fake_xprof(tmp_path, "def xspace_to_tool_data(*args):\n    raise AssertionError('not reached')\n")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _IN_PROCESS_BENCH,
            "--steps=2",
            "--repeats=1",
            "--rounds=1",
            "--batch_size=8",
            "--data=random",
            "--eval=false",
            "--steps_per_loop=2",
            "--configs=pipeline xla=false spl=2",
            "--profile",
            "--torch=false",
            "--precisions=float32",
            "--kernels=false",
            f"--out={out}",
        ],
        cwd=processes.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "the profile stage broke" in proc.stderr
    saved = json.loads(out.read_text())
    assert saved["complete"] is False
    assert [row["name"] for row in saved["training"]] == ["(a) fit", "loop pipeline xla=false spl=2"]
    assert all(row["ms_per_step"] > 0 for row in saved["training"])
    assert "profile" not in saved or saved["profile"] == []


def test_cli_rejects_configs_that_match_no_loop(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--configs=no such config", f"--out={tmp_path / 'b.json'}"],
        cwd=processes.REPO_ROOT,
        env=processes.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--configs=no such config matches no loop configuration" in proc.stderr
    assert "loop pipeline xla=false spl=100" in proc.stderr and "[round" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# CPU features, kernels, precision, the PyTorch peer's plumbing (PyTorch itself: torch_peer_test)

SAPPHIRE_RAPIDS_FLAGS = (
    "fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni"
)


def test_cpu_features_from_a_fake_cpuinfo():
    text = f"processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: {SAPPHIRE_RAPIDS_FLAGS}\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    amx = machine.cpu_features(text)
    assert amx["bf16_units"] is True
    assert amx["flags"]["avx512_bf16"] and amx["flags"]["amx_bf16"] and amx["flags"]["avx_vnni"]
    assert not amx["flags"]["avx512_fp16"]
    assert "bf16 units: yes" in amx["line"] and "avx512_bf16" in amx["line"]
    avx2 = machine.cpu_features("flags\t\t: fpu avx avx2 fma\n")
    assert avx2["bf16_units"] is False and avx2["flags"]["avx2"] and not avx2["flags"]["avx_vnni"]
    assert "bf16 units: no" in avx2["line"] and "no avx512_bf16, amx_bf16, avx_vnni" in avx2["line"]
    # avx_vnni alone (int8 dot products) is no bf16 unit.
    assert machine.cpu_features("flags : avx2 avx_vnni")["bf16_units"] is False
    assert machine.cpu_features("")["bf16_units"] is False


def test_onednn_kernels_counts_primitive_executions():
    text = "\n".join(
        [
            "onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
            "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,memory_descriptors",
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx_bf16,forward_training,"
            "src_bf16::blocked:acdb::f0 wei_bf16:a:blocked:Acdb16a::f0 dst_bf16::blocked:acdb::f0,,alg:convolution_direct,mb64,0.1",
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx_bf16,forward_training,"
            "src_bf16::blocked:acdb::f0 wei_bf16::blocked:Acdb16a::f0,,alg:convolution_direct,mb64,0.1",
            "onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0 wei_f32::blocked:ab:f0,,,1248x25:25x16,11.7",
            "onednn_verbose,v1,graph,exec,cpu,100002,matmul_post_ops,,,,,",
            "dnnl_verbose,exec,cpu,pooling,jit:avx2,forward_training,src_f32::blocked:abcd:f0 dst_f32::blocked:abcd:f0,,alg:pooling_max,mb64,0.02",
            "some other line, with exec, in it",
        ]
    )
    assert machine.onednn_kernels(text) == {
        "convolution brg_conv_fwd:avx512_core_amx_bf16 bf16": 2,
        "gemm_api - f32": 1,
        "pooling jit:avx2 f32": 1,
    }
    assert "no oneDNN primitive ran" in report.format_kernels([{"name": "x", "kernels": {}}])


def test_kernels_of_a_bf16_fit_run_with_onednn_verbose_in_a_child():
    """The precision reaches the worker (its model computes in bfloat16) and oneDNN's lines are read."""
    spec = variants.Spec(
        "loop",
        batch_size=8,
        steps=2,
        repeats=1,
        steps_per_loop=2,
        jit="false",
        data="random",
        examples=40,
        precision="mixed_bfloat16",
    )
    result = processes.run_spec_in_subprocess(spec, env={"ONEDNN_VERBOSE": "1"})
    assert result["precision"] == "mixed_bfloat16" and result["compute_dtype"] == "bfloat16"
    assert np.isfinite(result["ms_per_step"])
    kernels = machine.onednn_kernels(result["stdout"])
    assert kernels and all(n > 0 for n in kernels.values())
    assert (
        variants.Spec("loop", jit="false", precision="mixed_bfloat16").name
        == "loop pipeline xla=false spl=100 mixed_bfloat16"
    )


def test_precision_rows_pair_each_policy_with_its_float32_twin():
    def row(precision, ms, label=""):
        spec = variants.Spec("fit", precision=precision, label=label)
        return {"name": spec.name, "spec": dataclasses.asdict(spec), "ms_per_step": ms}

    rows = report.precision_rows(
        [
            row("float32", 6.0, "(a) fit"),
            row("mixed_bfloat16", 3.0, "(a) fit mixed_bfloat16"),
            {**row("mixed_float16", 1.0), "spec": {**row("mixed_float16", 1.0)["spec"], "batch_size": 32}},
        ]
    )
    assert rows == [
        {
            "name": "(a) fit mixed_bfloat16",
            "precision": "mixed_bfloat16",
            "ms_per_step": 3.0,
            "float32_ms_per_step": 6.0,
            "speedup": 2.0,
        }
    ]  # the batch-32 row has no twin
    assert "2.00" in report.format_precision_table(rows)


def test_training_specs_add_the_precision_and_pytorch_rows():
    plain = variants.training_specs(64, 10, 1, [100], "random")
    more = variants.training_specs(64, 10, 1, [100], "random", precisions=("float32", "mixed_bfloat16"), torch=True)
    added = [s.name for s in more if s not in plain]
    assert added == [
        "(a) fit mixed_bfloat16",
        "loop pipeline xla=false spl=100 mixed_bfloat16",
        "(p) PyTorch eager",
        "(p) PyTorch torch.compile",
    ]
    assert {s.kind for s in plain} <= {"fit", "loop"}
    assert processes.worker_argv(more[-1])[1:3] == ["-m", "benchmarks.torch_peer"]
    assert processes.worker_argv(more[0])[1:3] == ["-m", "benchmarks.bench"]


def _row(name, kind, ms, default=False, error=None):
    row = {"name": name, "spec": {"kind": kind}, "is_trainer_default": default}
    if error:
        row["error"] = error
    else:
        row["ms_per_step"] = ms
    return row


def test_side_by_side_puts_the_four_contenders_in_one_table():
    training = [
        _row("(a) fit", "fit", 4.0),
        _row("loop pipeline xla=false spl=100", "loop", 2.0, default=True),
        _row("(p) PyTorch eager", "torch", 5.0),
        _row("(p) PyTorch torch.compile", "torch_compile", 0, error="no compiler"),
    ]
    medians = {
        name: {"wall_s": s, "cpu_s": s, "peak_rss_mb": m}
        for name, s, m in (
            ("train", 5.0, 800.0),
            ("fit", 10.0, 700.0),
            ("fit_gc_tuned", 9.0, 700.0),
            ("torch", 8.0, 500.0),
        )
    }
    rows = report.side_by_side(training, {"medians": medians, "errors": {"torch_compile": "InductorError"}})
    by = {r["contender"]: r for r in rows}
    assert [r["contender"] for r in rows] == ["clr_loop", "Keras fit", "PyTorch eager", "torch.compile"]
    assert (by["clr_loop"]["x_fit_step"], by["clr_loop"]["x_fit_whole"], by["clr_loop"]["peak_rss_mb"]) == (
        2.0,
        2.0,
        800.0,
    )
    assert (by["PyTorch eager"]["x_fit_step"], by["PyTorch eager"]["x_fit_whole"]) == (0.8, 1.25)
    assert by["torch.compile"]["ms_per_step"] is None and by["torch.compile"]["note"] == "no compiler; InductorError"
    table = report.format_side_by_side(rows)
    assert "InductorError" in table and "1.25" in table
    # Without PyTorch and without the whole-process stage: the rows are there, unmeasured.
    rows = report.side_by_side(training[:2])
    assert rows[2]["ms_per_step"] is None and rows[0]["whole_s"] is None
    assert report.format_training_table([]).count("\n") == 1  # header and rule only
    failed = report.format_training_table([training[3]])
    assert "(p) PyTorch torch.compile: not measured: no compiler" in failed


def test_torch_status_hidden_by_the_env_switch_and_by_sys_modules(monkeypatch):
    from benchmarks import torch_peer

    monkeypatch.setenv(torch_peer.HIDE_ENV, "1")
    assert torch_peer.torch_status() == (False, f"PyTorch hidden by {torch_peer.HIDE_ENV}=1")
    monkeypatch.delenv(torch_peer.HIDE_ENV)
    monkeypatch.setitem(sys.modules, "torch", None)
    available, why = torch_peer.torch_status()
    assert not available and torch_peer.INSTALL in why


def test_torch_peer_cli_without_torch_exits_with_the_install_hint():
    from benchmarks import torch_peer

    env = {**processes.child_env(), torch_peer.HIDE_ENV: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.torch_peer", "--epoch"],
        cwd=processes.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "PyTorch hidden" in proc.stderr and "Traceback" not in proc.stderr


def test_whole_process_keeps_going_when_a_pytorch_process_fails(monkeypatch, tmp_path):
    commands = whole_process.whole_process_commands(epochs=1, torch=True)
    assert commands["torch"][0][1:] == ["-m", "benchmarks.torch_peer", "--epoch", "--epochs=1"]
    assert commands["torch_compile"][0][-1] == "--compile"
    wall = {"train": 4.0, "fit": 8.0, "fit_gc_tuned": 7.0, "torch": 6.0}
    calls = []

    def fake_run_process(argv, env=None):
        name = next(n for n, (a, _) in commands.items() if argv == a or (n == "train" and argv[:-1] == a))
        calls.append(name)
        assert (env is not None and os.path.isdir(env["TORCHINDUCTOR_CACHE_DIR"])) == name.startswith("torch")
        if name == "torch_compile":
            return {"rc": 1, "stderr": "Traceback ...\ntorch._inductor.exc.InductorError: no compiler\n"}
        return {"rc": 0, "wall_s": wall[name], "cpu_s": 1.0, "peak_rss_mb": 100.0 * wall[name]}

    monkeypatch.setattr(processes, "run_process", fake_run_process)
    result = whole_process.whole_process(2, str(tmp_path), log=lambda message: None, torch=True)
    assert calls.count("torch_compile") == 1 and calls.count("torch") == 2  # not retried after it failed
    assert result["errors"] == {"torch_compile": "torch._inductor.exc.InductorError: no compiler"}
    med = result["medians"]
    assert "torch_compile" not in med and med["speedup_wall_vs_torch"] == 1.5 and med["speedup_wall"] == 2.0
    assert med["torch"]["peak_rss_mb"] == 600.0


def test_format_whole_process_prints_each_process_and_the_speedups():
    """The table's and the grid's whole-process lines (one formatter since the split)."""
    commands = {
        "train": "python -m clr_loop.train",
        "fit": "tutorial script",
        "fit_gc_tuned": "tuned script",
        "torch": "PyTorch eager",
    }
    medians = {
        name: {"wall_s": s, "cpu_s": s / 2, "peak_rss_mb": 100.0 * s}
        for name, s in (("train", 4.0), ("fit", 8.0), ("fit_gc_tuned", 6.0))
    }
    medians.update(speedup_wall=2.0, speedup_wall_vs_tuned_fit=1.5)
    text = report.format_whole_process({"commands": commands, "medians": medians, "errors": {"torch": "boom"}}, 3)
    lines = text.splitlines()
    assert lines[0] == "" and "(median of 3):" in lines[1]
    assert (
        lines[2].startswith("  python -m clr_loop.train") and "4.00 s wall   2.00 s CPU    400 MB peak RSS" in lines[2]
    )
    assert lines[5].endswith("failed: boom")
    assert (
        lines[6]
        == "  speed-up of clr_loop.train: x2.00 against the tutorial script, x1.50 against its start-up-tuned process"
    )
    grid = {"commands": {k: commands[k] for k in ("train", "fit")}, "medians": medians, "errors": {}}
    assert report.format_whole_process(grid, 1, speedups=False).splitlines()[-1] == (
        "  speed-up of clr_loop.train: x2.00 against the tutorial script"
    )


def test_cli_without_torch_runs_as_before_and_says_the_pytorch_rows_were_skipped(tmp_path):
    from benchmarks import torch_peer

    out = tmp_path / "bench.json"
    env = {**processes.child_env(), torch_peer.HIDE_ENV: "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _IN_PROCESS_BENCH.replace("processes.profile_in_subprocess = broken_profile\n", ""),
            "--steps=2",
            "--repeats=1",
            "--batch_size=8",
            "--data=random",
            "--eval=false",
            "--steps_per_loop=2",
            "--configs=pipeline xla=false spl=2",
            "--precisions=float32",
            "--kernels=false",
            f"--out={out}",
        ],
        cwd=processes.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PyTorch rows skipped: PyTorch hidden by" in proc.stdout and "CPU features:" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["torch"] == {"available": False, "skipped_because": f"PyTorch hidden by {torch_peer.HIDE_ENV}=1"}
    assert [row["name"] for row in saved["training"]] == ["(a) fit", "loop pipeline xla=false spl=2"]
    assert [r["contender"] for r in saved["side_by_side"]] == [
        "clr_loop",
        "Keras fit",
        "PyTorch eager",
        "torch.compile",
    ]


# ---------------------------------------------------------------------------------------------
# --grid (benchmarks/gpu_check.sh's benchmark stage) and --dataset_dir


def test_grid_specs_put_fit_and_both_input_modes_side_by_side_first_precision_first():
    specs = variants.grid_specs(
        [64, 1024], ["float32", "mixed_float16"], steps=100, repeats=2, data="idx:/d", examples=0
    )
    assert [s.name for s in specs[:3]] == [
        "(a) fit b=64 float32",
        "loop tf.data b=64 float32",
        "loop device b=64 float32",
    ]
    assert [(s.batch_size, s.precision) for s in specs[::3]] == [
        (64, "float32"),
        (1024, "float32"),
        (64, "mixed_float16"),
        (1024, "mixed_float16"),
    ]
    assert {(s.kind, s.input, s.jit, s.steps_per_loop, s.splits) for s in specs} == {
        ("fit", "pipeline", "auto", 100, 0),
        ("loop", "pipeline", "auto", 100, 0),
        ("loop", "device", "auto", 100, 0),
    }
    assert all(s.steps == 100 and s.repeats == 2 and s.data == "idx:/d" for s in specs)


def test_grid_results_compare_with_their_groups_fit_and_keep_failed_rows():
    specs = variants.grid_specs([8], ["float32", "mixed_bfloat16"], steps=2, repeats=1, data="random")

    def measured(spec, ms):
        return {
            "name": spec.name,
            "spec": dataclasses.asdict(spec),
            "ms_per_step": ms,
            "ms_per_step_repeats": [ms],
            "examples_per_s": 8000.0 / ms,
            "compile_s": 0.5,
            "process_peak_rss_mb": 700.0,
            "jit_resolved": False,
        }

    runs = {spec: [measured(spec, ms)] for spec, ms in zip(specs, [4.0, 2.0, 1.0, 8.0, 4.0, 5.0])}
    runs[specs[3]] = []
    results = processes.grid_results(specs, runs, {specs[3]: "worker failed: boom"})
    assert [r.get("speedup_vs_fit") for r in results] == [1.0, 2.0, 4.0, None, None, None]
    assert results[3]["error"] == "worker failed: boom" and "ms_per_step" not in results[3]
    table = report.format_grid_table(results)
    assert "(a) fit b=8 mixed_bfloat16: not measured: worker failed: boom" in table
    assert "loop device b=8 float32" in table and "4.00" in table


def test_whole_process_commands_read_the_given_idx_folder():
    commands = whole_process.whole_process_commands(epochs=1, dataset_dir="/data/fm")
    assert commands["train"][0][-1] == "--dataset_dir=/data/fm"
    assert (
        commands["fit"][0][-1] == "--dataset_dir=/data/fm"
        and commands["fit_gc_tuned"][0][-2] == "--dataset_dir=/data/fm"
    )


def test_load_data_reads_an_idx_folder(tmp_path):
    from benchmarks import gpu_check

    gpu_check.write_idx_dir(str(tmp_path), n_train=20, n_test=6)
    data, description = worker.load_data(variants.IDX_PREFIX + str(tmp_path), examples=8)
    assert (data.train.num_examples, data.test.num_examples) == (8, 6)
    assert str(tmp_path) in description and "first 8 examples" in description
