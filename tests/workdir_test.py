"""A run's workdir under failure: a full disk at any write, broken or foreign files, left-overs of a
failed start, and checkpoints that belong to another run.

Oracles: an uninterrupted run of the same call (history, final weights, and TensorBoard values
read with TensorBoard's own reader), the files' bytes before and after, and hand-written files.
"""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from clr_loop import actions
from clr_loop import checkpointing
from clr_loop import cli
from clr_loop import inputs
from clr_loop import loop
from clr_loop.experiment import trial
from clr_loop import runner
from clr_loop import workdir as workdir_lib
from testing import BATCH, STEPS_PER_EPOCH, SigtermAt, compiled, event_values, fake_data, history_without_timing
from testing import REPO, make_config, toy_data, write_tiny_idx_dir

EPOCHS = 3


def fit(workdir, **overrides):
    """The same small run every time: 3 epochs of 7 steps, validation, a point every 2 steps."""
    x, y = toy_data()
    kwargs = dict(
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        seed=3,
        log_every_steps=2,
        validation_data=(x[:50], y[:50]),
        workdir=workdir,
    )
    kwargs.update(overrides)
    model = compiled()
    history = loop.fit(model, x, y, **kwargs)
    return model, history


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: (workdir, final weights, history)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    model, history = fit(workdir)
    return workdir, [w.copy() for w in model.get_weights()], history.history


def assert_same_run(workdir, reference, model):
    ref_dir, ref_weights, ref_history = reference
    assert history_without_timing(workdir) == ref_history
    for got, want in zip(model.get_weights(), ref_weights):
        np.testing.assert_array_equal(got, want)
    for sub in ("train", "eval"):
        assert event_values(os.path.join(workdir, sub)) == event_values(os.path.join(ref_dir, sub)), sub


def half_written(workdir):
    """Temporary files a write leaves if it is not cleaned up."""
    return [
        os.path.join(root, name)
        for root, dirs, files in os.walk(workdir)
        for name in dirs + files
        if ".tmp" in name or "_temp" in name
    ]


# 1. A full disk, for real: a small tmpfs filled to a given number of free bytes ----------------


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 256 KiB tmpfs (skipped where this process may not mount one)."""
    mountpoint = str(tmp_path_factory.mktemp("small_disk"))
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mountpoint], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a tmpfs needs root and the mount permission")
    yield mountpoint
    subprocess.run(["umount", mountpoint], check=True)


# Free bytes left on the disk: from too little for the first events file to enough for the whole
# run; with this model the failures fall on the events writers, the first checkpoint's data,
# index and list, history.json, and later epochs' checkpoints.
@pytest.mark.parametrize("free_bytes", list(range(4_000, 64_001, 6_000)))
def test_a_full_disk_at_any_write_stops_cleanly_and_the_same_call_then_resumes(small_disk, reference, free_bytes):
    for name in os.listdir(small_disk):
        path = os.path.join(small_disk, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    stat = os.statvfs(small_disk)
    filler = os.path.join(small_disk, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free_bytes))
    workdir = os.path.join(small_disk, "run")
    try:
        fit(workdir)
    except (checkpointing.WorkdirError, checkpointing.CheckpointError) as e:
        assert "No space left on device" in str(e)
    assert half_written(workdir) == []
    if os.path.exists(os.path.join(workdir, "history.json")):  # what was written is whole
        checkpointing.read_history(os.path.join(workdir, "history.json"))
    os.remove(filler)
    model, _ = fit(workdir)
    assert_same_run(workdir, reference, model)


def test_the_app_with_stdout_on_a_full_device_trains_every_epoch_then_exits_1(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "clr_loop.train",
                "--epochs=3",
                f"--workdir={workdir}",
                f"--dataset_dir={write_tiny_idx_dir(str(tmp_path / 'idx'))}",
            ],
            cwd=REPO,
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert result.returncode == 1, result.stderr
    assert "error: could not write the output to stdout ([Errno 28] No space left on device)" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(history_without_timing(workdir)["loss"]) == 3
    assert os.path.exists(os.path.join(workdir, "ckpt", "ckpt-3.index"))


# 2. Failures injected at one write ------------------------------------------------------------


def test_a_failed_history_write_keeps_the_epoch_in_the_checkpoint(tmp_path, monkeypatch, reference, capsys):
    workdir = str(tmp_path / "run")
    real_write = checkpointing.write_json_atomic
    writes = []

    def second_history_write_fails(path, value):
        if path.endswith("history.json"):
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", path)
        real_write(path, value)

    monkeypatch.setattr(checkpointing, "write_json_atomic", second_history_write_fails)
    with pytest.raises(
        checkpointing.WorkdirError,
        match=r"could not write the history .*history.json.*the "
        r"checkpoint .*ckpt-14 holds the new one",
    ):
        fit(workdir)
    assert len(history_without_timing(workdir)["loss"]) == 1  # the previous file, intact
    monkeypatch.setattr(checkpointing, "write_json_atomic", real_write)
    model, _ = fit(workdir)
    assert "Resuming from" in capsys.readouterr().out
    assert_same_run(workdir, reference, model)


def test_a_deleted_history_json_is_rebuilt_from_the_checkpoint(tmp_path, reference, capsys):
    workdir = str(tmp_path / "run")
    fit(workdir, max_steps=2 * STEPS_PER_EPOCH)
    os.remove(os.path.join(workdir, "history.json"))
    model, history = fit(workdir)
    assert "history.json is missing; rewriting it from the checkpoint" in capsys.readouterr().out
    assert len(history.history["loss"]) == EPOCHS
    assert_same_run(workdir, reference, model)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ('{"loss": [0.5, 0.4', "cannot read history"),  # truncated
        ('{"loss": 5}', "'loss' is 5, not a list of numbers"),
        ("[]", "holds a JSON list, not a dict"),
        (b"\xff\xfe", "cannot read history"),
    ],
)
def test_a_broken_history_json_is_named_and_never_replaced(tmp_path, content, pattern):
    workdir = str(tmp_path / "run")
    fit(workdir, max_steps=STEPS_PER_EPOCH)
    path = os.path.join(workdir, "history.json")
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    with pytest.raises(checkpointing.WorkdirError, match=pattern) as raised:
        fit(workdir)
    assert path in str(raised.value) and "remove the file to resume" in str(raised.value)
    with open(path, "rb") as f:
        assert f.read() == (content.encode() if isinstance(content, str) else content)


def test_an_empty_checkpoint_list_is_set_aside_and_the_checkpoints_used(tmp_path, reference, capsys):
    workdir = str(tmp_path / "run")
    fit(workdir, max_steps=2 * STEPS_PER_EPOCH)
    state = os.path.join(workdir, "ckpt", "checkpoint")
    open(state, "w").close()
    model, _ = fit(workdir)
    out = capsys.readouterr().out
    assert f"the checkpoint list {state} is unreadable" in out and "Resuming from" in out and "ckpt-14" in out
    assert os.path.exists(state + ".unreadable")
    assert_same_run(workdir, reference, model)


# 3. Checkpoints of another run ----------------------------------------------------------------


def test_a_checkpoint_copied_into_a_fresh_workdir_is_checked_against_the_run(tmp_path):
    first = str(tmp_path / "first")
    fit(first, max_steps=STEPS_PER_EPOCH)
    second = str(tmp_path / "second")
    os.makedirs(second)
    shutil.copytree(os.path.join(first, "ckpt"), os.path.join(second, "ckpt"))
    with pytest.raises(
        checkpointing.WorkdirError,
        match=r"ckpt-7 holds a checkpoint of another run.*the batch "
        r"size: 32 \(saved\) vs 16 \(now\)",
    ):
        fit(second, batch_size=16)
    _, history = fit(second, max_steps=2 * STEPS_PER_EPOCH)  # the same run resumes from the copy
    assert len(history.history["loss"]) == 2


def trained(config, data):
    trainer = trial.Trainer(config, data)
    return trainer.train(verbose=0)


def test_the_experiments_config_is_checked_from_the_checkpoint_when_config_json_is_lost(tmp_path):
    config = make_config(tmp_path, max_steps=8)
    trained(config, fake_data())
    os.remove(os.path.join(config.workdir, "config.json"))
    os.remove(os.path.join(config.workdir, workdir_lib.RUN_FILE))
    with pytest.raises(checkpointing.WorkdirError, match=r"another run.*max_lr: 0.1 \(saved\) vs 0.2 \(now\)"):
        trained(make_config(tmp_path, max_steps=16, max_lr=0.2), fake_data())
    history = trained(make_config(tmp_path, max_steps=16), fake_data())  # the same config resumes
    assert len(history["loss"]) == 2


def test_resuming_on_a_dataset_of_another_size_is_refused(tmp_path):
    config = make_config(tmp_path, max_steps=8)
    trained(config, fake_data(num_train=256))
    with pytest.raises(checkpointing.WorkdirError, match=r"number of training examples: 256 \(saved\) vs 320 \(now\)"):
        trained(make_config(tmp_path, max_steps=16), fake_data(num_train=320))


# 4. What a failed start leaves behind, and --overwrite -----------------------------------------


def test_a_run_that_saved_nothing_does_not_bind_the_next_command(tmp_path, capsys):
    config = make_config(tmp_path, max_lr=1e9, max_steps=8)  # diverges at once: no checkpoint
    with pytest.raises(actions.TrainingDiverged):
        trained(config, fake_data())
    assert os.path.exists(os.path.join(config.workdir, "config.json"))
    fixed = make_config(tmp_path, max_steps=8, batch_size=16)
    history = trained(fixed, fake_data())
    assert "is from a run that saved no checkpoint (batch_size: 32 (saved) vs 16 (now)" in capsys.readouterr().out
    assert len(history["loss"]) == 1
    with open(os.path.join(config.workdir, "config.json")) as f:
        assert json.load(f)["batch_size"] == 16


def test_a_non_finite_one_cycle_rate_saves_nothing_and_the_corrected_command_starts_clean(tmp_path, capsys):
    """div_factor=1e-300 makes one_cycle's rate inf (float32) from step 0: the guard stops the run before
    any checkpoint, and the corrected command starts clean, saying so, instead of being refused."""
    steps = dict(mode="one_cycle", checkpoint_every_steps=1, steps_per_loop=1, max_steps=6)
    bad = make_config(tmp_path, div_factor=1e-300, final_div_factor=1e-300, **steps)
    with pytest.raises(
        actions.TrainingDiverged, match=r"non-finite learning rate (inf|nan) at step 0; stopped without saving it\.$"
    ):
        trained(bad, fake_data())
    assert not checkpointing.has_checkpoint(bad.workdir)
    history = trained(make_config(tmp_path, **steps), fake_data())
    assert (
        "config.json is from a run that saved no checkpoint (div_factor: 1e-300 (saved) vs 25.0 (now)"
        in capsys.readouterr().out
    )
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])


def test_a_checkpoint_with_non_finite_weights_is_passed_over_for_the_previous_good_one(
    tmp_path, reference, monkeypatch, capsys
):
    """A workdir whose last checkpoint holds NaN weights (as an earlier version's guard saved them) resumes
    from the one before, naming it, and ends as the uninterrupted run."""
    workdir = str(tmp_path / "run")

    class NanAtEpochEnd(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel = self.model.trainable_variables[0]
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with monkeypatch.context() as patch:  # the save without the guard's check
        patch.setattr(runner.Run, "save", lambda run: run.store.save())
        fit(workdir, max_steps=STEPS_PER_EPOCH, checkpoint_every_steps=3, callbacks=[NanAtEpochEnd()])
    capsys.readouterr()
    model, _ = fit(workdir)
    out = capsys.readouterr().out
    assert "ckpt-7 cannot be resumed: it holds non-finite weights (sequential/dense/kernel)" in out
    assert "resuming from the previous good checkpoint" in out and "ckpt-6" in out
    assert_same_run(workdir, reference, model)


@pytest.mark.parametrize("content, pattern", [("[]", "holds a JSON list, not a dict"), ('{"mode": ', "cannot read")])
def test_a_broken_config_json_is_named_and_kept(tmp_path, content, pattern):
    config = make_config(tmp_path, max_steps=4)
    os.makedirs(config.workdir)
    path = os.path.join(config.workdir, "config.json")
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(checkpointing.WorkdirError, match=pattern):
        trained(config, fake_data())
    with open(path) as f:
        assert f.read() == content


def test_overwrite_never_deletes_a_folder_that_is_not_a_runs_output(tmp_path):
    config = make_config(tmp_path, max_steps=4, overwrite=True)
    notes = os.path.join(config.workdir, "train", "notes.txt")
    os.makedirs(os.path.dirname(notes))
    with open(notes, "w") as f:
        f.write("mine")
    with pytest.raises(
        checkpointing.WorkdirError, match=f"its train/ holds {notes}, which is not a clr_loop run output"
    ):
        trained(config, fake_data())
    assert open(notes).read() == "mine"
    os.remove(notes)
    trained(config, fake_data())  # a run's own outputs are cleared
    trained(config, fake_data())
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(config.workdir, "ckpt", "ckpt-*.index"))) == [
        "ckpt-4.index"
    ]


USERS_OWN = '{"learning_rate": 0.3, "notes": "my own experiment"}'


def one_line_without_overwrite(error):
    message = cli.error_message(error)
    assert "\n" not in message and "--overwrite" not in message, message
    return message


@pytest.mark.parametrize("name", ["config.json", workdir_lib.RUN_FILE])
def test_a_users_own_json_in_a_workdir_that_never_held_a_run_is_refused_and_kept(tmp_path, name):
    config = make_config(tmp_path, max_steps=4)
    os.makedirs(config.workdir)
    path = os.path.join(config.workdir, name)
    with open(path, "w") as f:
        f.write(USERS_OWN)
    with pytest.raises(checkpointing.WorkdirError) as raised:
        trained(config, fake_data())
    message = one_line_without_overwrite(raised.value)
    assert path in message and "not one clr_loop wrote" in message
    assert open(path).read() == USERS_OWN
    assert sorted(os.listdir(config.workdir)) == sorted([name, workdir_lib.LOCK_FILE])


@pytest.mark.parametrize("name", ["config.json", "history.json", workdir_lib.RUN_FILE])
def test_overwrite_refuses_a_foreign_json_before_deleting_anything(tmp_path, name):
    trained(make_config(tmp_path, max_steps=4), fake_data())
    path = os.path.join(tmp_path, "run", name)
    with open(path, "w") as f:
        f.write(USERS_OWN if name != "history.json" else '{"loss": "mine"}')
    before = sorted(os.listdir(os.path.join(tmp_path, "run")))
    with pytest.raises(checkpointing.WorkdirError) as raised:
        trained(make_config(tmp_path, max_steps=4, overwrite=True), fake_data())
    message = one_line_without_overwrite(raised.value)
    assert f"refusing to overwrite {tmp_path / 'run'}" in message and path in message
    assert sorted(os.listdir(os.path.join(tmp_path, "run"))) == before
    assert checkpointing.has_checkpoint(str(tmp_path / "run"))


@pytest.mark.parametrize("case", ["train_symlink", "ckpt_a_file", "history_a_folder", "symlink_in_ckpt"])
def test_overwrite_checks_every_output_before_deleting_anything(tmp_path, case):
    """Anything --overwrite would delete that a run does not write (a symlink, a file where a run writes a
    folder or the other way round) is refused in one line naming it, before anything is deleted."""
    workdir = str(tmp_path / "run")
    trained(make_config(tmp_path, max_steps=4), fake_data())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    if case == "train_symlink":
        logs = tmp_path / "logs"  # another folder of TensorBoard events, all named as a run names them
        os.rename(os.path.join(workdir, "train"), logs)
        os.symlink(logs, os.path.join(workdir, "train"))
        culprit = os.path.join(workdir, "train")
    elif case == "ckpt_a_file":
        shutil.rmtree(os.path.join(workdir, "ckpt"))
        shutil.copy(mine / "notes.txt", os.path.join(workdir, "ckpt"))
        culprit = os.path.join(workdir, "ckpt")
    elif case == "history_a_folder":
        os.remove(os.path.join(workdir, "history.json"))
        shutil.copytree(mine, os.path.join(workdir, "history.json"))
        culprit = os.path.join(workdir, "history.json")
    else:
        culprit = os.path.join(workdir, "ckpt", "ckpt-99.index")
        os.symlink(mine / "notes.txt", culprit)
    before = {root: sorted(dirs + files) for root, dirs, files in os.walk(workdir)}
    with pytest.raises(checkpointing.WorkdirError) as raised:
        trained(make_config(tmp_path, max_steps=4, overwrite=True), fake_data())
    message = one_line_without_overwrite(raised.value)
    assert f"refusing to overwrite {workdir}" in message and culprit in message
    assert {root: sorted(dirs + files) for root, dirs, files in os.walk(workdir)} == before
    assert (mine / "notes.txt").read_text() == "mine"
    if case == "train_symlink":
        assert glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))


def test_an_empty_run_json_is_named_not_blamed_on_the_checkpoint(tmp_path, reference):
    workdir = str(tmp_path / "run")
    fit(workdir, max_steps=STEPS_PER_EPOCH)
    path = os.path.join(workdir, workdir_lib.RUN_FILE)
    with open(path, "w") as f:
        f.write("{}")
    with pytest.raises(checkpointing.WorkdirError) as raised:
        fit(workdir)
    message = one_line_without_overwrite(raised.value)
    assert f"run identity {path} is not one clr_loop wrote" in message and "another run" not in message
    assert "remove it to resume" in message
    assert open(path).read() == "{}"
    os.remove(path)
    model, _ = fit(workdir)  # the checkpoint carries the identity: the run resumes
    assert_same_run(workdir, reference, model)


# 5. TensorBoard event files ----------------------------------------------------------------------


def write_points(logdir, steps):
    writer = tf.summary.create_file_writer(logdir)
    for step in steps:
        with writer.as_default(step=step):
            actions.write_scalar("loss", float(step))
        writer.flush()  # one record per point
    writer.close()
    return glob.glob(os.path.join(logdir, "events.out.tfevents.*"))[0]


def records(path):
    """(offset, length) of each TFRecord in the file, from its framing (8-byte length, 4-byte CRC,
    data, 4-byte CRC)."""
    out, offset = [], 0
    data = open(path, "rb").read()
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        out.append((offset, length))
        offset += 16 + length
    return out


def test_a_corrupt_record_in_an_event_file_keeps_everything_after_it(tmp_path, capsys):
    logdir = str(tmp_path)
    path = write_points(logdir, range(1, 11))
    framing = records(path)
    offset, length = framing[6]  # the file-version record, then points 1..10: this is point 6
    with open(path, "r+b") as f:
        f.seek(offset + 12 + length // 2)
        byte = f.read(1)
        f.seek(offset + 12 + length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = open(path, "rb").read()
    checkpointing.truncate_events(logdir, 3)
    after = open(path, "rb").read()
    assert f"{path} has an unreadable record at byte {offset}" in capsys.readouterr().out
    # Points 4 and 5 (readable, after step 3) are dropped; the corrupt record and all after it stay.
    assert after.endswith(before[offset:])
    assert len(after) == len(before) - (framing[6][0] - framing[4][0])
    assert event_values(logdir) == {"loss": {1: 1.0, 2: 2.0, 3: 3.0}}  # TensorBoard stops at the bad record


def test_a_torn_last_record_is_dropped(tmp_path):
    logdir = str(tmp_path)
    path = write_points(logdir, range(1, 6))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5)
    checkpointing.truncate_events(logdir, 10)
    assert event_values(logdir) == {"loss": {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}}
    assert [o for o, _ in records(path)][-1] + 16 + records(path)[-1][1] == os.path.getsize(path)


def raw_points(logdir):
    """{tag: [(step, value), ...]} in file order, read with TensorFlow's own event iterator (which,
    unlike TensorBoard's reader, keeps a step written twice)."""
    points = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                points.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return points


@pytest.mark.parametrize("how", ["killed", "diverged"])
def test_tensorboard_points_of_a_run_that_never_checkpointed_are_cut(tmp_path, reference, how):
    """A run that saved no checkpoint (killed before its first, or diverged) leaves points; the next
    run starts at step 0 and cuts them, as a resume cuts those after its checkpoint: every point once,
    the uninterrupted run's."""
    workdir = str(tmp_path / "run")
    if how == "killed":  # what a kill -9 before the first checkpoint leaves: points, no checkpoint
        for sub in ("train", "eval"):
            write_points(os.path.join(workdir, sub), [2, 4, 6])
    else:
        x, y = toy_data()
        model = compiled()
        model.compile(tf.keras.optimizers.SGD(1e30), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pytest.raises(actions.TrainingDiverged):
            loop.fit(
                model,
                x,
                y,
                batch_size=BATCH,
                epochs=EPOCHS,
                verbose=0,
                seed=3,
                log_every_steps=1,
                steps_per_loop=1,
                workdir=workdir,
            )
    assert raw_points(os.path.join(workdir, "train"))  # the stale points are on disk
    assert not checkpointing.has_checkpoint(workdir)
    fit(workdir)
    for sub in ("train", "eval"):
        assert raw_points(os.path.join(workdir, sub)) == raw_points(os.path.join(reference[0], sub)), sub


# 6. The profiler window --------------------------------------------------------------------------


def test_a_profile_window_outside_the_run_is_refused():
    x, y = toy_data()
    with pytest.raises(
        inputs.InputError, match=r"profile_steps=\(30, 40\) starts at or after the run's last step \(21\)"
    ):
        loop.fit(compiled(), x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, profile_steps=(30, 40))


def test_a_sigterm_inside_the_profile_window_keeps_the_trace(tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(actions.Interrupted, match="SIGTERM at step 4"):
        fit(workdir, profile_steps=(2, 10), steps_per_loop=1, callbacks=[SigtermAt(4)])
    assert glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))
