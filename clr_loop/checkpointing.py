"""A run's persistent state in its workdir: config.json, history.json, checkpoints, TensorBoard logs.

Everything here is about not losing or mixing work: files are replaced atomically, a workdir that
holds another configuration is refused, a corrupt checkpoint is named and skipped for the previous
good one (never a silent restart from scratch), and TensorBoard logs written after the restored
step are cut so a resumed run has no duplicated points.
"""

import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil

import tensorflow as tf
from absl import logging

# Settings that may change between a run and its resumption: they steer the plumbing (where
# files go, how often to log or save, how long to run), not the numbers the run computes.
RESUMABLE_CHANGES = frozenset(
    {
        "workdir", "steps_per_loop", "log_every_steps", "max_steps", "epochs", "profile_steps",
        "checkpoint_every_steps", "keep_checkpoints", "overwrite", "tfds_data_dir", "dataset_dir",
        "save_init", "init_weights", "eval_batch_size", "strategy", "devices", "virtual_cpus",
        "cluster_timeout",
        # How a batch is computed (one part per core on a CPU, one on a GPU): a run may move
        # between machines; only the dropout masks' draws change. Runs written before the
        # setting existed have no such key and resume too.
        "batch_splits",
    }
)
# Files and folders a run writes into its workdir; --overwrite removes these and nothing else.
RUN_OUTPUTS = ("ckpt", "train", "eval", "plugins", "history.json", "config.json", "run.json")


class WorkdirError(RuntimeError):
    """Raised when the workdir cannot be used: unwritable, another run's configuration, or unreadable state."""


class CheckpointError(RuntimeError):
    """Raised when no checkpoint can be restored or a checkpoint cannot be written; names the files."""


def write_json_atomic(path, value):
    """Writes `value` as JSON to `path` atomically: readers see the old file or the new one, never half.

    On failure (for example a full disk) the temporary file is removed, the previous file is left
    as it was, and the OSError propagates.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(workdir):
    """Removes the temporary files that writers killed mid-write left in `workdir`; returns their paths.

    Those are `write_json_atomic`'s `<name>.json.tmp-<pid>` and `truncate_events`' `.tmp-events-<pid>`
    in `train/` and `eval/` whose process no longer runs (a live one may still be writing).
    """
    removed = []
    patterns = [os.path.join(workdir, "*.json.tmp-*")] + [
        os.path.join(workdir, sub, ".tmp-events-*") for sub in ("train", "eval")]
    for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
        pid = path.rsplit("-", 1)[1]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(path)
        logging.info("removed %s, left by a process that was stopped while writing it", path)
    return removed


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def read_json(path, what):
    """Returns the parsed JSON at `path`; raises WorkdirError naming the file (`what` describes it)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(f"cannot read {what} {path}: {e}") from e


def check_writable(workdir):
    """Creates `workdir` if needed and proves it writable; raises WorkdirError naming it otherwise."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not a writable folder: {e}") from e


def clear_run_outputs(workdir):
    """Removes a previous run's outputs (`RUN_OUTPUTS`) from `workdir`, leaving other files alone."""
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds an exclusive lock on `workdir` inside the block: one writing process per run.

    The lock is `fcntl.flock` on `<workdir>/.lock`, which holds the owner's pid. Another process
    on the same workdir gets a WorkdirError naming that pid at once. The operating system drops
    the lock when its process ends in any way (kill -9 included), so a lock file left behind
    never blocks a resume. Re-entering the lock in the process that holds it is allowed.
    """
    path = os.path.join(workdir, LOCK_FILE)
    key = os.path.realpath(path)
    if key in _HELD_LOCKS:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirError(f"cannot lock workdir {workdir}: {e}") from e
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirError(
                f"workdir {workdir} is in use by another process (pid {owner}); two runs writing one "
                "workdir would interleave their checkpoints. Wait for it to end, or use another workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD_LOCKS.add(key)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_HELD_LOCKS = set()


def config_differences(saved, current):
    """Returns the names of settings that differ between two config dicts and forbid resuming.

    `epochs` may only change when the schedule does not depend on it (not one_cycle).
    """
    free = set(RESUMABLE_CHANGES)
    if current.get("mode") == "one_cycle" or saved.get("mode") == "one_cycle":
        free.discard("epochs")
    keys = (set(saved) | set(current)) - free - {"resolved"}
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def describe_differences(saved, current, names):
    """Returns a one-line description `name: saved -> current` of each differing setting."""
    return ", ".join(f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)" for k in names)


class RunCheckpoints:
    """Saves and restores a run's trackable state with `tf.train.CheckpointManager` in `<workdir>/ckpt`.

    `trackables` is a dict for `tf.train.Checkpoint`; `step_counter` (the optimizer's iterations)
    numbers the checkpoints, so `ckpt-937` holds the state after step 937. `restore_from` names
    another folder to restore from (a multi-worker run's non-chief workers restore the chief's).
    """

    def __init__(self, workdir, trackables, step_counter, max_to_keep, restore_from=None):
        self.directory = os.path.join(workdir, "ckpt")
        self.restore_directory = restore_from or self.directory
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=max_to_keep, step_counter=step_counter
        )
        self.step_counter = step_counter
        self.last_saved_step = None

    def restore_latest(self):
        """Restores the newest readable checkpoint; returns its path, or None when there is none.

        A checkpoint that cannot be read is reported by name and the previous one is tried, saying
        so. If checkpoints exist but none can be restored, raises CheckpointError naming them all.
        """
        candidates = list(reversed(self._existing_checkpoints()))
        if not candidates:
            return None
        failures = []
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
            # A torn or garbled file fails inside TF's reader in many ways (OpError, IndexError,
            # ValueError, AssertionError from the object-graph match); each means "unusable".
            except Exception as e:  # pylint: disable=broad-except
                message = f"checkpoint {path} cannot be restored: {type(e).__name__}: {_first_line(e)}"
                logging.error("%s", message)
                failures.append(message)
                continue
            if failures:
                logging.warning("fell back to the previous good checkpoint %s", path)
                print(f"warning: {failures[-1]}; resuming from the previous good checkpoint {path}", flush=True)
            self.last_saved_step = int(self.step_counter.numpy())
            return path
        raise CheckpointError(
            "no checkpoint in " + self.restore_directory + " can be restored:\n  " + "\n  ".join(failures)
            + "\nRemove the broken files, or start the run over."
        )

    def _existing_checkpoints(self):
        """Returns checkpoint prefixes on disk, oldest first (the manager's list plus any it lost)."""
        listed = list(self.manager.checkpoints) if self.restore_directory == self.directory else []
        on_disk = {p[: -len(".index")] for p in glob.glob(os.path.join(self.restore_directory, "ckpt-*.index"))}
        return sorted(set(listed) | set(on_disk), key=lambda p: int(p.rsplit("-", 1)[1]))

    def save(self):
        """Saves the state at the current step (once per step); returns the path written.

        Raises CheckpointError naming the folder when writing fails (for example a full disk);
        the previous checkpoints are left as they were.
        """
        step = int(self.step_counter.numpy())
        if self.last_saved_step == step:
            return self.manager.latest_checkpoint
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise CheckpointError(
                f"could not write a checkpoint at step {step} in {self.directory}: {type(e).__name__}: "
                f"{_first_line(e)} (disk full?). The previous checkpoint "
                f"{self.manager.latest_checkpoint} is intact."
            ) from e
        self.last_saved_step = step
        logging.info("checkpoint saved at step %d: %s", step, path)
        return path


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def truncate_events(logdir, max_step):
    """Drops TensorBoard events with step > `max_step` from every event file in `logdir`.

    A resumed run restarts from its last checkpoint and writes those steps again; cutting the
    points logged after the checkpoint keeps each step once. Files are rewritten atomically.
    """
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        kept, dropped = [], 0
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                if event.step > max_step and event.HasField("summary"):
                    dropped += 1
                else:
                    kept.append(record.numpy())
        except tf.errors.DataLossError:
            # A process killed mid-write leaves a torn last record; it is dropped too.
            dropped += 1
        if not dropped:
            continue
        tmp = os.path.join(logdir, f".tmp-events-{os.getpid()}")
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in kept:
                writer.write(record)
        os.replace(tmp, path)
        logging.info("dropped %d TensorBoard points after step %d from %s", dropped, max_step, path)
