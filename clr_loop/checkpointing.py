"""The mechanisms behind a run's persistent state: atomic JSON writes, checkpoints, TensorBoard logs.

`clr_loop.workdir` owns the workdir (its lock, run.json, history.json, the resume) and uses these.

Everything here is about not losing or mixing work: files are replaced atomically, a workdir that
holds another configuration is refused, a corrupt checkpoint is named and skipped for the previous
good one (never a silent restart from scratch), and TensorBoard logs written after the restored
step are cut so a resumed run has no duplicated points.
"""

import fnmatch
import glob
import json
import os
import shutil
import struct

import tensorflow as tf
from absl import logging

from clr_loop import errors

# Files and folders a run writes into its workdir; --overwrite removes these and nothing else.
RUN_OUTPUTS = ("ckpt", "train", "eval", "plugins", "history.json", "config.json", "run.json")


class _RunStateError(errors.Error, RuntimeError):
    """A workdir problem. `starting_over_helps` says whether clearing the run's outputs fixes it
    (another run's or unreadable state: yes; an unwritable folder, a full disk, a lock: no).
    `settings` names the run settings in which the workdir's run differs from this one (empty when
    the problem is not such a difference); `argument` is `errors.Error`'s."""

    def __init__(self, message, *, starting_over_helps=True, argument=None, settings=()):
        super().__init__(message, argument=argument)
        self.starting_over_helps = starting_over_helps
        self.settings = tuple(settings)


class WorkdirError(_RunStateError):
    """Raised when the workdir cannot be used: unwritable, another run's configuration, or unreadable state."""


class CheckpointError(_RunStateError):
    """Raised when no checkpoint can be restored or a checkpoint cannot be written; names the files."""


def write_text_atomic(path, text):
    """Writes the string `text` to `path` atomically: readers see the old file or the new one, never
    half. On failure (for example a full disk) the temporary file is removed, the previous file is
    left as it was, and the OSError propagates."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, value):
    """Writes `value` as JSON to `path` atomically (`write_text_atomic`); a value that is not JSON
    raises before any file is touched."""
    write_text_atomic(path, json.dumps(value, indent=1))


def remove_stale_temporaries(workdir):
    """Removes the temporary files that writers killed mid-write left in `workdir`; returns their paths.

    Those are `write_json_atomic`'s `<name>.json.tmp-<pid>` and `truncate_events`' `.tmp-events-<pid>`
    in `train/` and `eval/` whose process no longer runs (a live one may still be writing).
    """
    removed = []
    patterns = [os.path.join(workdir, "*.json.tmp-*")] + [
        os.path.join(workdir, sub, ".tmp-events-*") for sub in ("train", "eval")
    ]
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


def save_json(path, value, what, checkpoint=None):
    """`write_json_atomic`, with a failed write (a full disk) raised as a WorkdirError that names the
    file (`what` describes it) and says the previous file is intact and, given the `checkpoint`
    that holds the same value, that the same command resumes from it once writes succeed."""
    try:
        write_json_atomic(path, value)
    except OSError as e:
        raise WorkdirError(
            f"could not write {what} {path}: {e}; the previous file is intact"
            + (
                f", and the checkpoint {checkpoint} holds the new one: the same command resumes from it once "
                "the write can succeed"
                if checkpoint
                else ""
            ),
            starting_over_helps=False,
        ) from e


def read_json(path, what, kind=dict):
    """Returns the parsed JSON at `path`, which must be a `kind` (a dict by default); raises
    WorkdirError naming the file (`what` describes it) when it cannot be read, is not valid JSON
    (a truncated file) or holds another type."""
    # Not `starting_over_helps`: starting over deletes only files that clr_loop wrote (see
    # `clear_run_outputs`), and it cannot tell that this one is.
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise WorkdirError(f"cannot read {what} {path}: {e}", starting_over_helps=False) from e
    if not isinstance(value, kind):
        raise WorkdirError(
            f"{what} {path} holds a JSON {type(value).__name__}, not a {kind.__name__}: it was not written by clr_loop",
            starting_over_helps=False,
        )
    return value


# The keys every run identity (`<workdir>/run.json`, see `clr_loop.loop`) has held since the first.
RUN_IDENTITY_KEYS = ("batch_size", "num_examples", "seed", "variables")


def run_identity_problem(value):
    """Returns None when `value` (parsed JSON) is a run identity as clr_loop writes it, else why not (a str)."""
    if not isinstance(value, dict):
        return f"it holds a JSON {type(value).__name__}, not a dict"
    missing = [key for key in RUN_IDENTITY_KEYS if key not in value]
    return f"it has no {', '.join(missing)}" if missing else None


def history_problem(value):
    """Returns None when `value` (parsed JSON) is a history as clr_loop writes it (lists of numbers by
    key), else why not (a str)."""
    if not isinstance(value, dict):
        return f"it holds a JSON {type(value).__name__}, not a dict"
    try:
        check_history(value, "")
    except WorkdirError as e:
        return str(e).split(": ", 1)[-1]
    return None


def read_history(path):
    """Returns a history.json's per-epoch lists ({key: [float, ...]}); raises WorkdirError naming the
    file when it is unreadable or any entry is not a list of numbers."""
    history = read_json(path, "history", dict)
    return check_history(history, path)


def check_history(history, where):
    """Returns `history` when every value is a list of numbers (None for a missing value); raises
    WorkdirError naming `where` otherwise."""
    for key, values in history.items():
        if not isinstance(values, list) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
        ):
            raise WorkdirError(
                f"history {where} is not clr_loop's: {key!r} is {values!r:.80}, not a list of numbers",
                starting_over_helps=False,
            )
    return history


def check_writable(workdir):
    """Creates `workdir` if needed and proves it writable; raises WorkdirError naming it otherwise."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(
            f"workdir {workdir} is not a writable folder: {e}", starting_over_helps=False, argument="workdir"
        ) from e


# What each output folder of a run holds (fnmatch patterns of paths inside it); --overwrite removes
# a folder only when everything in it matches, so a user's own `train/` or `eval/` is never deleted.
_OUTPUT_FOLDER_FILES = {
    "ckpt": ("checkpoint", "ckpt-*", ".tmp-*"),
    "train": ("events.out.tfevents.*", ".tmp-events-*"),
    "eval": ("events.out.tfevents.*", ".tmp-events-*"),
    "plugins": ("profile/*",),
}


def _foreign_entry(folder, name, patterns):
    """Returns why the output folder `folder` (a run's `name`/) cannot be deleted as a run's: a file
    that is not a run output, a symbolic link, or a folder whose entries cannot be removed; None
    when it can."""
    for root, dirs, files in os.walk(folder):
        if not os.access(root, os.W_OK | os.X_OK):
            return f"{root} is not writable, so not all of its files could be deleted"
        for entry in dirs + files:
            path = os.path.join(root, entry)
            if os.path.islink(path):
                return f"its {name}/ holds {path}, a symbolic link, which a clr_loop run does not write"
        for entry in files:
            relative = os.path.relpath(os.path.join(root, entry), folder)
            if not any(fnmatch.fnmatch(relative, p) for p in patterns):
                return f"its {name}/ holds {os.path.join(root, entry)}, which is not a clr_loop run output"
    return None


def _output_problem(workdir, name, json_checks):
    """Returns why `<workdir>/<name>` (one of RUN_OUTPUTS) is not a run's output that --overwrite may
    delete, or None when it is (or is absent)."""
    path = os.path.join(workdir, name)
    if os.path.islink(path):
        return f"{path} is a symbolic link, which a clr_loop run does not write"
    if not os.path.exists(path):
        return None
    if name in _OUTPUT_FOLDER_FILES:
        if not os.path.isdir(path):
            return f"{path} is not a folder, as a run's {name}/ is"
        return _foreign_entry(path, name, _OUTPUT_FOLDER_FILES[name])
    if not os.path.isfile(path):
        return f"{path} is not a file, as a run's {name} is"
    check = json_checks.get(name)
    if check is None:
        return None
    try:
        with open(path, "rb") as f:
            why = check(json.loads(f.read().decode("utf-8")))
    except (OSError, ValueError) as e:
        why = f"it cannot be read as JSON: {first_line(e)}"
    return f"{path} is not one clr_loop wrote ({why})" if why else None


def clear_run_outputs(workdir, json_checks=None):
    """Removes a previous run's outputs (`RUN_OUTPUTS`) from `workdir`, leaving other files alone.

    Everything is checked before anything is removed: it refuses (WorkdirError naming the path)
    when an output is a symbolic link, a file where a run writes a folder or the other way round,
    a folder holding a file a run does not write or that cannot be emptied, or a JSON file that is
    not the run's: history.json and run.json are checked here, other files by `json_checks`
    ({file name: check(parsed value) -> None, or why it is not the run's}).
    """
    checks = {"history.json": history_problem, "run.json": run_identity_problem, **(json_checks or {})}
    for name in RUN_OUTPUTS:
        problem = _output_problem(workdir, name, checks)
        if problem is not None:
            raise WorkdirError(
                f"refusing to overwrite {workdir}: {problem}. Use another workdir, or move it away.",
                starting_over_helps=False,
            )
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def has_checkpoint(workdir):
    """True when `<workdir>/ckpt` holds at least one checkpoint (an index file)."""
    return bool(glob.glob(os.path.join(workdir, "ckpt", "ckpt-*.index")))


class TextRecord(tf.train.experimental.PythonState):
    """A string saved inside a checkpoint (as `<name>/.ATTRIBUTES/py_state`): a run records its
    identity and its history there, so a checkpoint carries what resuming it needs."""

    def __init__(self, text=""):
        self.text = text

    def serialize(self):
        return self.text

    def deserialize(self, string_value):
        self.text = string_value.decode("utf-8") if isinstance(string_value, bytes) else str(string_value)


def saved_text(reader, name):
    """Returns the TextRecord saved under the top-level checkpoint key `name` (a str), or None when
    the checkpoint read by `reader` (a `tf.train.CheckpointReader`) has none."""
    key = f"{name}/.ATTRIBUTES/py_state"
    if not reader.has_tensor(key):
        return None
    value = reader.get_tensor(key)
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RunCheckpoints:
    """Saves and restores a run's trackable state with `tf.train.CheckpointManager` in `<workdir>/ckpt`.

    `trackables` is a dict for `tf.train.Checkpoint`; `step_counter` (the optimizer's iterations)
    numbers the checkpoints, so `ckpt-937` holds the state after step 937. `restore_from` names
    another folder to restore from (a non-chief worker whose own folder holds no checkpoint restores the
    chief's, when they share a filesystem).
    """

    def __init__(self, workdir, trackables, step_counter, max_to_keep, restore_from=None):
        self.directory = os.path.join(workdir, "ckpt")
        self.restore_directory = restore_from or self.directory
        self.trackables = dict(trackables)
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = self._manager(max_to_keep, step_counter)
        self.step_counter = step_counter
        self.last_saved_step = None

    def _manager(self, max_to_keep, step_counter):
        """The CheckpointManager of `directory`. Its state file (`ckpt/checkpoint`) only lists the
        checkpoints; one that cannot be parsed (a 0-byte file after a crash) is set aside, named,
        and the checkpoints found on disk are used."""

        def make():
            return tf.train.CheckpointManager(
                self.checkpoint, self.directory, max_to_keep=max_to_keep, step_counter=step_counter
            )

        try:
            return make()
        except (ValueError, tf.errors.OpError) as e:
            state = os.path.join(self.directory, "checkpoint")
            aside = f"{state}.unreadable"
            os.replace(state, aside)
            message = (
                f"the checkpoint list {state} is unreadable ({first_line(e)}); moved it to {aside} "
                "and using the checkpoint files on disk"
            )
            logging.warning("%s", message)
            print(f"warning: {message}", flush=True)
            return make()

    def restore_latest(self, verify=None, step=None, check_restored=None):
        """Restores the newest readable checkpoint (with `step`, the one of that step only); returns
        its path, or None when there is none.

        A checkpoint that cannot be read is reported by name and the previous one is tried, saying
        so. If checkpoints exist but none can be restored, raises CheckpointError naming them all.
        `verify(path, reader)`, given a candidate and its `tf.train.CheckpointReader`, runs before
        it is restored and raises WorkdirError (passed on) when the checkpoint belongs to another run.
        `check_restored()`, run after each restore, returns None, or what makes the state just
        restored unusable (non-finite weights): that checkpoint is then named and passed over too.
        """
        candidates = list(reversed(self._existing_checkpoints()))
        if step is not None:
            candidates = [p for p in candidates if int(p.rsplit("-", 1)[1]) == step]
        if not candidates:
            return None
        failures = []
        for path in candidates:
            try:
                reader = tf.train.load_checkpoint(path)
                if verify is not None:
                    verify(path, reader)
                self._restorer(reader).restore(path).assert_existing_objects_matched().expect_partial()
                problem = check_restored() if check_restored is not None else None
                if problem:
                    message = f"checkpoint {path} cannot be resumed: it {problem}"
                    logging.error("%s", message)
                    failures.append(message)
                    continue
            except WorkdirError:
                raise  # a readable checkpoint of another run: not a reason to fall back
            # A torn or garbled file fails inside TF's reader in many ways (OpError, IndexError,
            # ValueError, AssertionError from the object-graph match); each means "unusable".
            except Exception as e:  # pylint: disable=broad-except
                message = f"checkpoint {path} cannot be restored: {type(e).__name__}: {first_line(e)}"
                logging.error("%s", message)
                failures.append(message)
                continue
            if failures:
                logging.warning("fell back to the previous good checkpoint %s", path)
                print(f"warning: {failures[-1]}; resuming from the previous good checkpoint {path}", flush=True)
            self.last_saved_step = int(self.step_counter.numpy())
            return path
        raise CheckpointError(
            "no checkpoint in "
            + self.restore_directory
            + " can be restored:\n  "
            + "\n  ".join(failures)
            + "\nRemove the broken files, or start the run over."
        )

    def newest_readable_step(self, verify=None, step=None):
        """Returns the step of the newest checkpoint whose index can be read (with `step`, that step
        if its checkpoint can be), or None when there is none; restores nothing. `verify` is
        `restore_latest`'s. A multi-worker run's workers compare these before any of them restores,
        since a restore takes part in collectives that every worker must run alike."""
        for path in reversed(self._existing_checkpoints()):
            if step is not None and int(path.rsplit("-", 1)[1]) != step:
                continue
            try:
                reader = tf.train.load_checkpoint(path)
            except Exception as e:  # pylint: disable=broad-except  (as in restore_latest)
                logging.error("checkpoint %s cannot be read: %s: %s", path, type(e).__name__, first_line(e))
                continue
            if verify is not None:
                verify(path, reader)
            return int(path.rsplit("-", 1)[1])
        return None

    def _restorer(self, reader):
        """The Checkpoint that restores the checkpoint `reader` reads: all the trackables, less the
        TextRecords it has no value for (a checkpoint written before they were recorded)."""
        missing = [
            name
            for name, value in self.trackables.items()
            if isinstance(value, TextRecord) and saved_text(reader, name) is None
        ]
        if not missing:
            return self.checkpoint
        return tf.train.Checkpoint(**{k: v for k, v in self.trackables.items() if k not in missing})

    def _existing_checkpoints(self):
        """Returns the checkpoint prefixes on disk (those with an index file), oldest first; the
        manager's list may name files that a failed save removed, or miss some it lost."""
        on_disk = {p[: -len(".index")] for p in glob.glob(os.path.join(self.restore_directory, "ckpt-*.index"))}
        return sorted(on_disk, key=lambda p: int(p.rsplit("-", 1)[1]))

    def save(self):
        """Saves the state at the current step (once per step); returns the path written.

        Raises CheckpointError naming the folder when writing fails (for example a full disk);
        the previous checkpoints are left as they were.
        """
        step = int(self.step_counter.numpy())
        if self.last_saved_step == step:
            return self.manager.latest_checkpoint
        previous = self.manager.latest_checkpoint
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            # Nothing half-written stays: this step's files (a torn index), its temporary folder and
            # the checkpoint list's temporary copy.
            for pattern in (f"ckpt-{step}.*", f"ckpt-{step}_temp*", "checkpoint.tmp*"):
                for leftover in glob.glob(os.path.join(self.directory, pattern)):
                    if os.path.isdir(leftover):
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        os.remove(leftover)
            raise CheckpointError(
                f"could not write a checkpoint at step {step} in {self.directory}: {type(e).__name__}: "
                f"{first_line(e)} (disk full?). "
                + (
                    f"The previous checkpoint {previous} is intact."
                    if previous
                    else "No earlier checkpoint was written."
                ),
                starting_over_helps=False,
            ) from e
        self.last_saved_step = step
        logging.debug("checkpoint saved at step %d: %s", step, path)  # shown from absl verbosity 1 (-v 1)
        return path


def first_line(error):
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def truncate_events(logdir, max_step):
    """Drops TensorBoard events with step > `max_step` from every event file in `logdir`.

    A resumed run restarts from its last checkpoint and writes those steps again; cutting the
    points logged after the checkpoint keeps each step once. Files are rewritten atomically. A
    torn last record (a process killed mid-write) is dropped; an unreadable record inside a file
    (a corrupt byte) is kept with everything after it, unread, and named in a warning: points
    that cannot be read are never deleted. Returns how many points were dropped.
    """
    total = 0
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        kept, dropped, offset, tail = [], 0, 0, b""
        try:
            for record in tf.data.TFRecordDataset(path):
                data = record.numpy()
                offset += _RECORD_OVERHEAD + len(data)
                event = tf.compat.v1.Event.FromString(data)
                if event.step > max_step and event.HasField("summary"):
                    dropped += 1
                else:
                    kept.append(data)
        except tf.errors.DataLossError:
            tail = _unreadable_tail(path, offset)
            if tail:
                message = (
                    f"{path} has an unreadable record at byte {offset}; it and the {len(tail)} bytes after "
                    "it are kept as they are (TensorBoard stops reading there)"
                )
                logging.warning("%s", message)
                print(f"warning: {message}", flush=True)
            else:
                dropped += 1  # a torn last record
        if not dropped:
            continue
        tmp = os.path.join(logdir, f".tmp-events-{os.getpid()}")
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in kept:
                writer.write(record)
        if tail:
            with open(tmp, "ab") as f:
                f.write(tail)
        os.replace(tmp, path)
        total += dropped
        logging.info("dropped %d TensorBoard points after step %d from %s", dropped, max_step, path)
    return total


# A TFRecord is a little-endian uint64 length, its masked CRC32C, the data, and the data's CRC.
_RECORD_OVERHEAD = 8 + 4 + 4


def _unreadable_tail(path, offset):
    """Returns the bytes of the event file `path` from `offset`, where reading stopped, or b"" when
    they are only a torn last record (a header or data cut short by a killed writer)."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # pylint: disable=import-outside-toplevel

    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read()
    if len(tail) < 12:
        return b""
    (length,) = struct.unpack("<Q", tail[:8])
    (length_crc,) = struct.unpack("<I", tail[8:12])
    if length_crc == masked_crc32c(tail[:8]) and len(tail) < _RECORD_OVERHEAD + length:
        return b""  # a whole, valid header whose record runs past the end: torn
    return tail
