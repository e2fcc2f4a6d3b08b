"""tf.distribute tests on CPU: mirrored over virtual CPUs, two localhost workers, unreachable peers.

Virtual CPU devices must be configured before TensorFlow starts, so each case runs in its own
process. The oracle for the mirrored run is the single-device run with the same global batch
and data order.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from clr_loop import distribute
from testing import (
    REPO,
    SUBPROCESS_ENV,
    Cluster,
    checkpoint_weights,
    fit_small_model,
    free_ports,
    history_without_timing,
)
from testing import saved_step, start_worker, write_tiny_idx_dir

MIRRORED_VS_SINGLE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from clr_loop import distribute
    from clr_loop.experiment import config as config_lib, trial
    from testing import fake_data

    distribute.configure_virtual_cpus(2)
    data = fake_data(num_train=256, num_test=37)
    results = {}
    for name, devices in (("default", None), ("mirrored", None), ("mirrored_one", ["/cpu:0"])):
        config = config_lib.Config(
            mode="triangular2", initial_lr=1e-3, max_lr=0.1, step_size_epochs=0.5, epochs=1, batch_size=32,
            eval_batch_size=12, jit_compile="false" if devices else "true", workdir=sys.argv[1] + "/" + name,
            max_steps=7,
        )
        strategy = distribute.make_strategy(name.split("_")[0], devices)
        trainer = trial.Trainer(config, data, strategy=strategy)
        trainer.model.layers[5].rate = 0.0  # replicas draw their own dropout masks
        window = trainer.run.run_steps(7)
        val, count = trainer.run.validate()
        schedule = trainer.optimizer._learning_rate
        results[name] = {
            "replicas": strategy.num_replicas_in_sync,
            "jit": trainer.jit_compile,
            "iterations": int(trainer.optimizer.iterations.numpy()),
            "lr": float(window["lr"]), "expected_lr": float(schedule(6)),
            "loss_sum": float(window["loss_sum"]), "count": float(window["count"]),
            "val": val, "val_count": count,
            "weights": [w.numpy().tolist() for w in trainer.model.trainable_variables],
        }
    print("RESULT" + json.dumps(results))
    """
)


def run_script(script, *args, timeout=240):
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [text for text in result.stdout.splitlines() if text.startswith("RESULT")]
    return json.loads(line[len("RESULT") :])


def test_mirrored_over_two_virtual_cpus_matches_single_device(tmp_path):
    """Also: mirrored over one device (whose update cannot be fused into the compiled step: it once
    crashed in merge_call) trains like the default strategy, and the eval splits 37 examples into
    19 / 18 per replica in 4 batches of at most 6 each (one replica's last one empty: an odd count
    of the 7 batches of 6 once crashed the mirrored eval)."""
    results = run_script(MIRRORED_VS_SINGLE, str(tmp_path))
    single, mirrored, one = results["default"], results["mirrored"], results["mirrored_one"]
    assert one["replicas"] == 1 and one["iterations"] == 7 and one["val_count"] == 37
    for a, b in zip(single["weights"], one["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)
    assert one["val"]["loss"] == pytest.approx(single["val"]["loss"], rel=1e-4)
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    # XLA cannot compile across CPU replicas: it is switched off there, not crashed on.
    assert single["jit"] is True and mirrored["jit"] is False
    # The schedule advances once per global step, not once per replica.
    assert single["iterations"] == mirrored["iterations"] == 7
    assert mirrored["lr"] == pytest.approx(mirrored["expected_lr"], rel=1e-6) == single["lr"]
    assert mirrored["count"] == single["count"] == 7 * 32
    assert mirrored["loss_sum"] == pytest.approx(single["loss_sum"], rel=1e-4)
    for a, b in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)
    # Every test example exactly once across replicas, including the partial last batches.
    assert mirrored["val_count"] == single["val_count"] == 37
    assert mirrored["val"]["loss"] == pytest.approx(single["val"]["loss"], rel=1e-4)
    assert mirrored["val"]["accuracy"] == single["val"]["accuracy"]


FIT_UNDER_STRATEGY = textwrap.dedent(
    """
    import json
    import numpy as np, keras, tensorflow as tf
    from clr_loop import distribute, loop

    distribute.configure_virtual_cpus(2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(250, 8)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)  # last batch: 26


    class NonEmpty(keras.layers.Layer):
        # Fails the step on an empty batch, which oneDNN's AVX-512 convolution cannot run.
        def call(self, inputs):
            with tf.control_dependencies([tf.debugging.assert_positive(tf.shape(inputs)[0], "an empty batch")]):
                return tf.identity(inputs)

    def build(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(3)
            model = keras.Sequential([keras.Input((8,)), NonEmpty(), keras.layers.Dense(16, activation="relu"),
                                      keras.layers.Dense(2)])
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    results = {}
    for name in ("default", "mirrored"):
        strategy = distribute.make_strategy(name)
        # Validation arrays: 37 examples in per-replica batches of 6, 19 / 18 per replica (replica 1's
        # 4th batch has none); a validation Dataset whose last global batch of 1 splits into 1 / 0.
        model = build(strategy)
        history = loop.fit(model, x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                           validation_data=(x[:37], y[:37]), validation_batch_size=12, jit_compile=False)
        # With sample weights, a third of them 0: Keras still counts those examples in the loss's
        # divisor and in the (unweighted) accuracy, so the padding must not be told by them.
        w = (np.arange(37) % 3 != 0).astype(np.float32)
        val_ds = tf.data.Dataset.from_tensor_slices((x[:37], y[:37], w)).batch(12)
        ds_model = build(strategy)
        ds_history = loop.fit(ds_model, x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                              validation_data=val_ds, jit_compile=False)
        results[name] = {"replicas": strategy.num_replicas_in_sync, "history": history.history,
                         "ds_history": ds_history.history,
                         "weights": [w.tolist() for w in model.get_weights()],
                         "evaluate": model.evaluate(x[:37], y[:37], verbose=0, return_dict=True)}
    print("RESULT" + json.dumps(results))
    """
)


def test_fit_trains_a_model_compiled_under_a_strategy_on_its_replicas(tmp_path):
    """clr_loop.fit on a model built and compiled in MirroredStrategy.scope() over two virtual CPUs:
    two replicas, and the weights and metrics of the one-device run (each global batch is split across
    the replicas, the last partial one of 26 examples too). Validation never hands a replica an empty
    batch (a layer asserts it), from arrays or from a Dataset of sample-weighted batches, and its
    numbers are the one-device run's."""
    results = run_script(FIT_UNDER_STRATEGY)
    single, mirrored = results["default"], results["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    for a, b in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert mirrored["history"][key] == pytest.approx(single["history"][key], rel=1e-5), key
        assert mirrored["ds_history"][key] == pytest.approx(single["ds_history"][key], rel=1e-5), key
    assert mirrored["history"]["val_accuracy"][-1] == pytest.approx(mirrored["evaluate"]["accuracy"], abs=1e-4)


EMPTY_TRAIN_BATCH = textwrap.dedent(
    """
    import json
    import numpy as np, keras
    from clr_loop import distribute, inputs, loop

    distribute.configure_virtual_cpus(2)
    x = np.zeros((65, 8, 8, 1), np.float32); y = np.zeros(65, np.int32)  # 65 = 2 * 32 + 1
    with distribute.make_strategy("mirrored").scope():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                                  keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    try:
        loop.fit(model, x, y, batch_size=32, epochs=1, verbose=0, jit_compile=False)
    except inputs.InputError as e:
        print("RESULT" + json.dumps(str(e)))
    """
)


def test_fit_refuses_a_last_batch_that_leaves_a_replica_without_an_example():
    """65 examples in batches of 32 over 2 replicas: the last batch of 1 would give replica 1 an empty
    batch, whose convolution gradient TensorFlow cannot compute ("Missing 1-th output from
    Conv2DBackpropFilter"): refused before training, naming batch_size."""
    message = run_script(EMPTY_TRAIN_BATCH)
    assert message.startswith("batch_size=32 leaves 1 example(s)") and "2 replicas" in message


# The story runs: 320 training examples in global batches of 16 (20 steps per epoch, 40 in all).
STORY_FLAGS = (
    "--epochs=2",
    "--steps_per_loop=2",
    "--log_every_steps=4",
    "--checkpoint_every_steps=4",
    "--keep_checkpoints=50",
    "--deterministic",
    "--cluster_timeout=30",
)


@pytest.fixture(scope="module")
def story_idx(tmp_path_factory):
    return write_tiny_idx_dir(str(tmp_path_factory.mktemp("idx")), n_train=320, n_test=41)


@pytest.fixture(scope="module")
def reference_cluster(tmp_path_factory, story_idx):
    """An uninterrupted 2-worker run of STORY_FLAGS: its workdir."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    cluster = Cluster(free_ports(2), workdir, story_idx, *STORY_FLAGS)
    codes = cluster.finish()
    assert codes == [0, 0], cluster.output(0)[-2000:] + cluster.output(1)[-2000:]
    return workdir


def test_two_localhost_workers_train_to_the_end_with_identical_weights(reference_cluster):
    workdir = reference_cluster
    chief = checkpoint_weights(os.path.join(workdir, "ckpt"))
    other = checkpoint_weights(os.path.join(workdir, ".worker-1", "ckpt"))
    assert len(chief) > 8 and set(chief) == set(other)  # weights, epoch sums, rate
    for name in chief:
        assert np.array_equal(chief[name], other[name]), name
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert len(history["val_loss"]) == 2  # only the chief writes it, once per epoch
    assert os.path.basename(tf_latest(workdir)) == "ckpt-40"


def test_sigterm_to_one_worker_stops_all_at_one_step_and_a_killed_worker_is_named(
    tmp_path, story_idx, reference_cluster
):
    """The whole preemption story on one workdir, against the uninterrupted 2-worker run:

    1. SIGTERM to worker 1 only: both workers checkpoint at the same step and exit 128+15.
    2. The same cluster command again resumes there; worker 0 is then killed with SIGKILL: worker 1
       exits 1 well within the cluster timeout, naming worker 0 and its address.
    3. The same command again resumes from the last checkpoint and ends bit-identical to the
       uninterrupted run (every checkpointed variable, history.json).
    """
    workdir = str(tmp_path / "run")
    ports = free_ports(2)
    cluster = Cluster(ports, workdir, story_idx, *STORY_FLAGS)
    cluster.wait_for(1, lambda line: saved_step(line) >= 4)
    cluster.workers[1].send_signal(signal.SIGTERM)
    codes = cluster.finish()
    outs = [cluster.output(0), cluster.output(1)]
    assert codes == [128 + signal.SIGTERM] * 2, outs[0][-2000:] + outs[1][-2000:]
    steps = [int(o.split("received SIGTERM at step ")[1].split(":")[0]) for o in outs]
    assert steps[0] == steps[1] and 4 <= steps[0] < 40, steps
    assert "it reached worker 1, and all 2 workers stop at this step" in outs[0]
    stopped = steps[0]
    assert os.path.exists(os.path.join(workdir, "ckpt", f"ckpt-{stopped}.index"))
    assert os.path.exists(os.path.join(workdir, ".worker-1", "ckpt", f"ckpt-{stopped}.index"))

    cluster = Cluster(ports, workdir, story_idx, *STORY_FLAGS)
    line = cluster.wait_for(0, lambda line: saved_step(line) >= stopped + 8)
    cluster.workers[0].kill()
    killed_at = time.monotonic()
    last_saved = saved_step(line)
    survivor = cluster.workers[1].wait(timeout=120)
    waited = time.monotonic() - killed_at
    codes = cluster.finish()
    out = cluster.output(1)
    assert f"Resuming from {workdir}/ckpt/ckpt-{stopped} at step {stopped}" in cluster.output(0)
    assert codes == [-signal.SIGKILL, 1] and survivor == 1, out[-3000:]
    assert f"worker 0 (localhost:{ports[0]})" in out and "lost its cluster" in out, out[-3000:]
    assert "Traceback" not in out
    assert waited < 30, waited

    cluster = Cluster(ports, workdir, story_idx, *STORY_FLAGS)
    codes = cluster.finish()
    out = cluster.output(0)
    assert codes == [0, 0], out[-2000:] + cluster.output(1)[-2000:]
    resumed = int(out.split("Resuming from ")[1].split(" at step ")[1].split()[0])
    assert resumed >= last_saved, (resumed, last_saved)
    reference = checkpoint_weights(os.path.join(reference_cluster, "ckpt"))
    final = checkpoint_weights(os.path.join(workdir, "ckpt"))
    assert os.path.basename(tf_latest(workdir)) == "ckpt-40" and set(final) == set(reference)
    for name in reference:
        assert np.array_equal(final[name], reference[name]), name
    assert history_without_timing(workdir) == history_without_timing(reference_cluster)


def tf_latest(workdir):
    import tensorflow as tf

    return tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))


WORKER_FIT = textwrap.dedent(
    """
    import json
    from clr_loop import distribute
    from testing import fit_small_model

    print("RESULT" + json.dumps(fit_small_model(distribute.make_strategy("multi_worker", cluster_timeout=60))))
    """
)


def test_two_workers_train_the_weights_of_one_device_with_the_same_global_batch():
    """clr_loop.fit of a dropout-free model under MultiWorkerMirroredStrategy on two localhost workers
    (one CPU replica each, each global batch of 32 split 16 / 16 between them) against the same fit
    on one device (in this process): the same weights to float tolerance (a sharding bug feeding
    both workers the same slice trains on half the data and fails this), the same history, and a
    validation over every one of the 37 examples (19 / 18 between the workers, in 4 batches each)
    equal to Keras's evaluate."""
    import tensorflow as tf

    ports = free_ports(2)
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER_FIT],
                cwd=REPO,
                text=True,
                env=dict(SUBPROCESS_ENV, TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    single = fit_small_model(tf.distribute.get_strategy())
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    workers = []
    for out, _ in outputs:
        (line,) = [text for text in out.splitlines() if text.startswith("RESULT")]
        workers.append(json.loads(line[len("RESULT") :]))
    assert single["replicas"] == 1 and [w["replicas"] for w in workers] == [2, 2]
    for worker in workers:
        for a, b in zip(single["weights"], worker["weights"]):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert worker["history"][key] == pytest.approx(single["history"][key], rel=1e-5), key
    assert single["history"]["val_accuracy"][-1] == pytest.approx(single["evaluate"]["accuracy"], abs=1e-6)
    assert single["history"]["val_loss"][-1] == pytest.approx(single["evaluate"]["loss"], rel=1e-5)


def test_worker_without_its_peer_fails_clearly_in_bounded_time(tmp_path):
    idx_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    ports = free_ports(2)
    started = time.monotonic()
    worker = start_worker(0, ports, str(tmp_path / "run"), idx_dir, "--cluster_timeout=3")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode != 0, out[-2000:]
    assert "worker 0 could not join the cluster within 3s" in out and f"unreachable: localhost:{ports[1]}" in out
    assert time.monotonic() - started < 60


def test_mirrored_over_devices_that_do_not_exist_is_refused_naming_them():
    """TensorFlow's MirroredStrategy waits for ever for a device that is not there."""
    with pytest.raises(
        distribute.ClusterError, match=r"device\(s\) /gpu:97, /cpu:99 do not exist here; this process has /cpu:0"
    ):
        distribute.make_strategy("mirrored", ["/gpu:97", "/cpu:99"])
    with pytest.raises(distribute.ClusterError, match="/tpu:x"):
        distribute.check_devices(["/cpu:0", "/tpu:x"])
    distribute.check_devices(["/cpu:0", "/job:localhost/replica:0/task:0/device:CPU:0"])


def test_mirrored_over_one_device_named_twice_is_refused_naming_it():
    """TensorFlow's own answer is an AssertionError traceback ("No duplicates allowed").
    (The CLI's message names --devices: cli_test.)"""
    with pytest.raises(distribute.ClusterError, match=r"devices /cpu:0, /CPU:0 name /cpu:0 more than once") as caught:
        distribute.make_strategy("mirrored", ["/cpu:0", "/CPU:0"])
    assert caught.value.argument == "devices"
    with pytest.raises(
        distribute.ClusterError, match=r"cluster_timeout must be a number of seconds in \(0, 604800\], got inf"
    ):
        distribute.make_strategy("multi_worker", cluster_timeout=float("inf"))


def test_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(distribute.ClusterError, match="index below 1"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", "not json")
    with pytest.raises(distribute.ClusterError, match="not a valid cluster spec"):
        distribute.read_tf_config()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(distribute.ClusterError, match="needs the TF_CONFIG"):
        distribute.read_tf_config()
