"""tf.distribute tests on CPU: mirrored over virtual CPUs, two localhost workers, unreachable peers.

Virtual CPU devices must be configured before TensorFlow starts, so each case runs in its own
process. The oracle for the mirrored run is the single-device run with the same global batch
and data order.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from clr_loop import distribute
from train_cli_test import REPO, write_tiny_idx_dir

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))

MIRRORED_VS_SINGLE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from clr_loop import config as config_lib, distribute, trainer as trainer_lib
    from trainer_test import fake_data

    distribute.configure_virtual_cpus(2)
    data = fake_data(num_train=256, num_test=37)
    results = {}
    for name in ("default", "mirrored"):
        config = config_lib.Config(
            mode="triangular2", initial_lr=1e-3, max_lr=0.1, step_size_epochs=0.5, epochs=1, batch_size=32,
            eval_batch_size=10, jit_compile="true", workdir=sys.argv[1] + "/" + name, max_steps=7,
        )
        strategy = distribute.make_strategy(name)
        trainer = trainer_lib.Trainer(config, data, strategy=strategy)
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
        [sys.executable, "-c", script, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [l for l in result.stdout.splitlines() if l.startswith("RESULT")]
    return json.loads(line[len("RESULT"):])


def test_mirrored_over_two_virtual_cpus_matches_single_device(tmp_path):
    results = run_script(MIRRORED_VS_SINGLE, str(tmp_path))
    single, mirrored = results["default"], results["mirrored"]
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
    results = {}
    for name in ("default", "mirrored"):
        strategy = distribute.make_strategy(name)
        with strategy.scope():
            keras.utils.set_random_seed(3)
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        history = loop.fit(model, x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                           validation_data=(x[:37], y[:37]), jit_compile=False)
        results[name] = {"replicas": strategy.num_replicas_in_sync, "history": history.history,
                         "weights": [w.tolist() for w in model.get_weights()],
                         "evaluate": model.evaluate(x[:37], y[:37], verbose=0, return_dict=True)}
    print("RESULT" + json.dumps(results))
    """
)


def test_fit_trains_a_model_compiled_under_a_strategy_on_its_replicas(tmp_path):
    """clr_loop.fit on a model built and compiled in MirroredStrategy.scope() over two virtual CPUs:
    two replicas, and the weights and metrics of the one-device run (each global batch is split across
    the replicas, the last partial one of 26 examples too)."""
    results = run_script(FIT_UNDER_STRATEGY)
    single, mirrored = results["default"], results["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    for a, b in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert mirrored["history"][key] == pytest.approx(single["history"][key], rel=1e-5), key
    assert mirrored["history"]["val_accuracy"][-1] == pytest.approx(mirrored["evaluate"]["accuracy"], abs=1e-4)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_worker(index, ports, workdir, idx_dir, *extra):
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    env = dict(ENV, TF_CONFIG=json.dumps(tf_config))
    args = [
        sys.executable, "-m", "clr_loop.train", "--strategy=multi_worker", f"--dataset_dir={idx_dir}",
        f"--workdir={workdir}", "--batch_size=16", "--epochs=2", "--steps_per_loop=4", "--eval_batch_size=16", *extra,
    ]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_weights(directory):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    return {k: reader.get_tensor(k) for k, d in reader.get_variable_to_dtype_map().items() if d.is_floating}


def test_two_localhost_workers_train_to_the_end_with_identical_weights(tmp_path):
    idx_dir = write_tiny_idx_dir(str(tmp_path / "idx"), n_train=96, n_test=41)
    workdir = str(tmp_path / "run")
    ports = free_ports(2)
    workers = [start_worker(i, ports, workdir, idx_dir, "--cluster_timeout=60") for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    chief = checkpoint_weights(os.path.join(workdir, "ckpt"))
    other = checkpoint_weights(os.path.join(workdir, ".worker-1", "ckpt"))
    assert len(chief) > 8 and set(chief) == set(other)  # weights, epoch sums, rate
    for name in chief:
        assert np.array_equal(chief[name], other[name]), name
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert len(history["val_loss"]) == 2  # only the chief writes it, once per epoch
    assert os.path.basename(tf_latest(workdir)) == "ckpt-12"


def tf_latest(workdir):
    import tensorflow as tf

    return tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))


def test_worker_without_its_peer_fails_clearly_in_bounded_time(tmp_path):
    idx_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    ports = free_ports(2)
    started = time.monotonic()
    worker = start_worker(0, ports, str(tmp_path / "run"), idx_dir, "--cluster_timeout=3")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode != 0, out[-2000:]
    assert "worker 0 could not join the cluster within 3s" in out and f"unreachable: localhost:{ports[1]}" in out
    assert time.monotonic() - started < 60


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
