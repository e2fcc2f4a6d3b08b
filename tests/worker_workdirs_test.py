"""Two localhost workers, each with its own workdir (no shared filesystem): preemption and resume.

Every worker keeps its own checkpoints (the chief in `<workdir>/ckpt`, worker N in
`<workdir>/.worker-N/ckpt`) and resumes from them; before any of them restores or trains, the
workers compare the steps of their newest checkpoints. The oracle for an exact resume is an uninterrupted 2-worker run of the same flags.
"""

import os
import shutil
import signal

import numpy as np
import pytest

from clr_loop import checkpointing, distribute
from testing import Cluster, checkpoint_weights, free_ports, saved_step, write_tiny_idx_dir

# 160 training examples in global batches of 16: 10 steps per epoch, 20 in all.
FLAGS = (
    "--epochs=2",
    "--steps_per_loop=2",
    "--log_every_steps=2",
    "--checkpoint_every_steps=2",
    "--keep_checkpoints=20",
    "--deterministic",
    "--seed=5",
    "--cluster_timeout=30",
)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_tiny_idx_dir(str(tmp_path_factory.mktemp("idx")), n_train=160, n_test=24, seed=4)


def worker_dirs(root):
    return [str(root / "w0"), str(root / "w1")]


def own_checkpoints(workdirs):
    """Each worker's checkpoint folder in its own workdir."""
    return [os.path.join(workdirs[0], "ckpt"), os.path.join(workdirs[1], ".worker-1", "ckpt")]


def finished(cluster):
    codes = cluster.finish()
    return codes, [cluster.output(0), cluster.output(1)]


def test_sigterm_then_the_same_commands_resume_every_worker_from_its_own_workdir_exactly(tmp_path, idx_dir):
    """The preemption story without a shared filesystem: SIGTERM to worker 1 stops both at one step,
    each checkpointing into its own workdir; the same commands again resume both from that step (worker
    1 from its own `.worker-1/ckpt`, not a fresh start that would crash the first all-reduce) and end
    bit-identical to an uninterrupted run of two workers (every checkpointed variable, on both)."""
    reference = worker_dirs(tmp_path / "reference")
    ports = free_ports(2)
    codes, outs = finished(Cluster(ports, reference, idx_dir, *FLAGS))
    assert codes == [0, 0], outs[0][-2000:] + outs[1][-2000:]

    workdirs = worker_dirs(tmp_path / "run")
    cluster = Cluster(ports, workdirs, idx_dir, *FLAGS)
    cluster.wait_for(1, lambda line: saved_step(line) >= 2)
    cluster.workers[1].send_signal(signal.SIGTERM)
    codes, outs = finished(cluster)
    assert codes == [128 + signal.SIGTERM] * 2, outs[0][-2000:] + outs[1][-2000:]
    steps = [int(o.split("received SIGTERM at step ")[1].split(":")[0]) for o in outs]
    assert steps[0] == steps[1] and 2 <= steps[0] < 20, steps
    stopped = steps[0]
    for folder in own_checkpoints(workdirs):
        assert os.path.exists(os.path.join(folder, f"ckpt-{stopped}.index")), os.listdir(folder)
    assert not os.path.exists(os.path.join(workdirs[1], "ckpt"))  # nothing of the chief's on worker 1

    codes, outs = finished(Cluster(ports, workdirs, idx_dir, *FLAGS))
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert f"Resuming from {workdirs[0]}/ckpt/ckpt-{stopped} at step {stopped}" in outs[0]
    assert "Traceback" not in outs[0] + outs[1]
    expected = checkpoint_weights(own_checkpoints(reference)[0])
    assert len(expected) > 8
    for folder in own_checkpoints(workdirs):
        assert os.path.basename(tf_latest(folder)) == "ckpt-20"
        final = checkpoint_weights(folder)
        assert set(final) == set(expected)
        for name in expected:
            assert np.array_equal(final[name], expected[name]), (folder, name)


def test_workers_whose_newest_checkpoints_differ_resume_from_the_newest_step_all_hold_or_stop_naming_each(
    tmp_path, idx_dir
):
    """Worker 1's newest checkpoint lost: both resume from the newest step both hold (worker 0 from
    an older checkpoint of its own). Worker 1's checkpoints all lost: every worker stops before
    training, exit 1, with one line naming each worker and the step it would resume from. With
    `--overwrite` every worker starts over, worker 1 from its own cleared folder."""
    workdirs = worker_dirs(tmp_path / "run")
    ports = free_ports(2)
    codes, outs = finished(Cluster(ports, workdirs, idx_dir, *FLAGS, "--max_steps=4"))
    assert codes == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    worker1 = own_checkpoints(workdirs)[1]
    for name in os.listdir(worker1):
        if name.startswith("ckpt-4."):
            os.remove(os.path.join(worker1, name))

    codes, outs = finished(Cluster(ports, workdirs, idx_dir, *FLAGS, "--max_steps=6"))
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "all resume from step 2, the newest they all hold" in outs[0]
    assert f"Resuming from {workdirs[0]}/ckpt/ckpt-2 at step 2" in outs[0]
    for folder in own_checkpoints(workdirs):
        assert os.path.basename(tf_latest(folder)) == "ckpt-6"

    shutil.rmtree(worker1)
    codes, outs = finished(Cluster(ports, workdirs, idx_dir, *FLAGS))
    assert codes == [1, 1], outs[0][-3000:] + outs[1][-3000:]
    for out in outs:
        assert "Traceback" not in out, out[-3000:]
        (line,) = [text for text in out.splitlines() if text.startswith("error:")]
        assert (
            "the workers would resume from different steps (worker 0 from step 6, worker 1 from step 0 "
            "(no checkpoint);" in line
        ), line
    assert os.path.basename(tf_latest(own_checkpoints(workdirs)[0])) == "ckpt-6"  # nothing trained, nothing lost

    # Starting over: every worker clears its own checkpoints (worker 1's would otherwise disagree).
    os.makedirs(worker1)
    for name in ("ckpt-6.index", "ckpt-6.data-00000-of-00001"):
        shutil.copy(os.path.join(own_checkpoints(workdirs)[0], name), worker1)
    codes, outs = finished(Cluster(ports, workdirs, idx_dir, *FLAGS, "--max_steps=2", "--overwrite"))
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "Resuming" not in outs[0] + outs[1]
    for folder in own_checkpoints(workdirs):
        assert sorted(os.listdir(folder)) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]


def test_the_steps_workers_compare_are_of_readable_checkpoints_and_restore_nothing(tmp_path):
    """What each worker puts into the comparison: the newest checkpoint whose index reads (a torn
    one is skipped), or a given step's; nothing is restored until the step is agreed."""
    import tensorflow as tf

    step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
    ckpts = checkpointing.RunCheckpoints(str(tmp_path), {"value": value}, step, max_to_keep=5)
    for n in (2, 4, 6):
        step.assign(n)
        value.assign(10.0 * n)
        ckpts.save()
    with open(os.path.join(str(tmp_path), "ckpt", "ckpt-6.index"), "wb") as f:
        f.write(b"torn")
    value.assign(-1.0)
    assert ckpts.newest_readable_step() == 4
    assert [ckpts.newest_readable_step(step=n) for n in (2, 5, 6)] == [2, None, None]
    assert float(value.numpy()) == -1.0 and int(step.numpy()) == 6
    assert ckpts.restore_latest(step=2).endswith("ckpt-2")
    assert float(value.numpy()) == 20.0

    def another_run(path, reader):
        raise checkpointing.WorkdirError(f"{path} holds another run")

    with pytest.raises(checkpointing.WorkdirError, match="ckpt-4 holds another run"):
        ckpts.newest_readable_step(verify=another_run)
    # One worker: its own row back, no collective.
    assert distribute.gather_from_workers(tf.distribute.get_strategy(), [6, 1]).tolist() == [[6.0, 1.0]]


def tf_latest(folder):
    import tensorflow as tf

    return tf.train.latest_checkpoint(folder)
