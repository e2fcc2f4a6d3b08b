"""Tests for clr_loop.checkpointing: atomic writes, checkpoints, event truncation."""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from clr_loop import _keras
from clr_loop import actions
from clr_loop import checkpointing
from clr_loop.experiment import trial
from clr_loop import workdir as workdir_lib
from testing import fake_data, make_config, weights


def test_atomic_json_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "history.json")
    checkpointing.write_json_atomic(path, {"loss": [1.0]})

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        checkpointing.write_json_atomic(path, {"loss": [1.0, 0.5]})
    assert json.load(open(path)) == {"loss": [1.0]}
    assert os.listdir(tmp_path) == ["history.json"]


def test_atomic_json_write_is_never_half_written(tmp_path, monkeypatch):
    """Killed (here: interrupted) after the new text is written but before it is on disk: the old
    file stays whole and the temporary one goes."""
    path = str(tmp_path / "config.json")
    checkpointing.write_json_atomic(path, {"a": 1})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.write_json_atomic(path, {"a": 2, "b": "x" * 10_000})
    monkeypatch.undo()
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["config.json"]


def test_truncate_events_drops_points_after_the_step(tmp_path):
    logdir = str(tmp_path)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for step in range(1, 11):
            tf.summary.scalar("loss", float(step), step=step)
    writer.close()
    checkpointing.truncate_events(logdir, 6)
    steps = []
    for name in os.listdir(logdir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            steps += [event.step for _ in event.summary.value]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]


def test_checkpoint_write_failure_is_clear_and_keeps_the_previous(tmp_path, monkeypatch):
    step = tf.Variable(0, dtype=tf.int64)
    value = tf.Variable([1.0, 2.0])
    ckpts = checkpointing.RunCheckpoints(str(tmp_path), {"value": value}, step, max_to_keep=2)
    step.assign(5)
    first = ckpts.save()
    step.assign(10)
    value.assign([3.0, 4.0])

    def disk_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(ckpts.manager, "save", disk_full)
    with pytest.raises(checkpointing.CheckpointError, match=r"step 10 .*disk full\?.*ckpt-5 is intact"):
        ckpts.save()
    assert tf.train.latest_checkpoint(os.path.join(str(tmp_path), "ckpt")) == first
    np.testing.assert_array_equal(
        tf.train.load_checkpoint(first).get_tensor("value/.ATTRIBUTES/VARIABLE_VALUE"), [1.0, 2.0]
    )


def test_checkpoint_restores_dropout_rng_and_epoch_sums(tmp_path):
    config = make_config(tmp_path, epochs=1, max_steps=3)
    first = trial.Trainer(config, fake_data())
    first.train()
    rng_state = [v.numpy().copy() for v in _keras.seed_generator_states(first.model)]
    assert rng_state and any(s[1] != 0 for s in rng_state)  # dropout drew masks
    second = trial.Trainer(make_config(tmp_path, epochs=1, max_steps=5), fake_data())
    second.run.restore()
    assert second.run.step == 3
    assert [v.numpy().tolist() for v in _keras.seed_generator_states(second.model)] == [s.tolist() for s in rng_state]
    assert float(second.run.state.count.numpy()) == 3 * 32
    for a, b in zip(weights(first.model), weights(second.model)):
        assert np.array_equal(a, b)


def test_resume_removes_temporaries_of_killed_writers_only(tmp_path):
    """A writer killed mid-write leaves history.json.tmp-<pid> (or train/.tmp-events-<pid>) behind;
    the next run's restore removes those of dead processes and keeps a live process's."""
    config = make_config(tmp_path, epochs=1, max_steps=2)
    trial.Trainer(config, fake_data()).train()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        os.path.join(config.workdir, f"history.json.tmp-{dead.pid}"),
        os.path.join(config.workdir, "train", f".tmp-events-{dead.pid}"),
    ]
    live = os.path.join(config.workdir, f"notes.json.tmp-{os.getppid()}")  # a live process's (pytest's parent)
    for path in stale + [live]:
        open(path, "w").write("half")
    second = trial.Trainer(make_config(tmp_path, epochs=1, max_steps=3), fake_data())
    second.run.restore()
    assert second.run.step == 2
    assert [os.path.exists(p) for p in stale + [live]] == [False, False, True]
    assert checkpointing.remove_stale_temporaries(config.workdir) == []


def test_nan_guard_keeps_the_last_good_checkpoint(tmp_path):
    trial.Trainer(make_config(tmp_path, epochs=1), fake_data()).train()  # ckpt-8
    resumed = trial.Trainer(make_config(tmp_path, epochs=2), fake_data())
    real_run_steps = resumed.run.run_steps

    def poison_then_run(n):
        bias = resumed.model.trainable_variables[-1]  # the logits' bias: NaN reaches the loss
        bias.assign(tf.fill(bias.shape, float("nan")))
        return real_run_steps(n)

    resumed.run.run_steps = poison_then_run
    with pytest.raises(
        actions.TrainingDiverged, match=r"(at|after) step 8 \(learning rate .*last good checkpoint .*ckpt-8"
    ):
        resumed.train()
    path = tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt"))
    assert path.endswith("ckpt-8")
    reader = tf.train.load_checkpoint(path)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.all(np.isfinite(reader.get_tensor(name))), name


HOLD_LOCK = """
import sys
from clr_loop import workdir
with workdir.workdir_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test closes our stdin
"""


@contextlib.contextmanager
def locked_by_another_process(workdir):
    """Inside the block another process holds `workdir`'s lock; yields its pid. The lock is
    released (the process ends) on the way out."""
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, workdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert owner.stdout.readline().strip() == "locked"
        yield owner.pid
    finally:
        owner.stdin.close()
        owner.wait(timeout=60)


def test_a_second_process_on_a_locked_workdir_is_refused_naming_the_owner(tmp_path):
    workdir = str(tmp_path / "run")
    with locked_by_another_process(workdir) as pid:
        with pytest.raises(checkpointing.WorkdirError, match=rf"in use by another process \(pid {pid}\)"):
            with workdir_lib.workdir_lock(workdir):
                pass
    with workdir_lib.workdir_lock(workdir):  # released when its owner ended
        with workdir_lib.workdir_lock(workdir):  # re-entered by the same process
            pass


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    """kill -9 leaves `.lock` with a dead pid in it, but the kernel dropped the flock with the process."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / workdir_lib.LOCK_FILE).write_text("999999\n")
    with workdir_lib.workdir_lock(str(workdir)):
        assert (workdir / workdir_lib.LOCK_FILE).read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("kind", ["symlink", "dangling_symlink", "folder", "fifo"])
def test_a_lock_that_is_not_a_regular_file_is_refused_in_one_line_and_left_alone(tmp_path, kind):
    """A `.lock` symlink is never followed (its target neither truncated nor created); a folder or a
    FIFO gets a WorkdirError naming it, not an OSError traceback."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_lib.LOCK_FILE
    target = tmp_path / "precious.txt"
    if kind == "symlink":
        target.write_text("keep me")
        lock.symlink_to(target)
    elif kind == "dangling_symlink":
        lock.symlink_to(target)
    elif kind == "folder":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    with pytest.raises(checkpointing.WorkdirError) as raised:
        with workdir_lib.workdir_lock(str(workdir)):
            pass
    message = str(raised.value)
    assert str(lock) in message and "\n" not in message
    assert ("symbolic link" if "symlink" in kind else "not a regular file") in message
    assert not raised.value.starting_over_helps
    if kind == "symlink":
        assert target.read_text() == "keep me"
    if kind == "dangling_symlink":
        assert not target.exists()
    assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK_FILE]


def test_training_on_a_workdir_locked_by_another_process_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    with locked_by_another_process(workdir) as pid:
        with pytest.raises(checkpointing.WorkdirError, match=f"pid {pid}"):
            trial.Trainer(make_config(tmp_path, epochs=1), fake_data()).train()
    assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK_FILE]


def test_a_checkpoint_without_text_records_restores_the_rest(tmp_path):
    """A checkpoint written before runs recorded their identity and history restores its variables;
    the records keep their defaults."""
    step = tf.Variable(5, dtype=tf.int64)
    checkpointing.RunCheckpoints(str(tmp_path), {"value": tf.Variable([1.0, 2.0])}, step, 1).save()
    value, record = tf.Variable([0.0, 0.0]), checkpointing.TextRecord("unset")
    restored = checkpointing.RunCheckpoints(
        str(tmp_path), {"value": value, "run_history": record}, tf.Variable(0, dtype=tf.int64), 1
    )
    assert restored.restore_latest().endswith("ckpt-5")
    np.testing.assert_array_equal(value.numpy(), [1.0, 2.0])
    assert record.text == "unset"
