"""The workdir: the one owner of a run's folder and what it holds.

A `Workdir` holds the lock (one writing process per run), run.json (the run's identity, refused
when another run's), the caller's own files (config.json), history.json, the TensorBoard events'
truncation on resume, and the checkpoints (through `clr_loop.checkpointing`'s `RunCheckpoints`),
including the resume itself: which checkpoint every worker of a cluster restores, and the history
that comes back with it. It knows nothing of the caller's configuration beyond the JSON it is given.

Example:
    >>> store = Workdir("/tmp/run", strategy, keep_checkpoints=3)
    >>> with store.locked():
    ...     history = store.resume(identity, trackables, step_counter, position=position)
    ...     ...  # train, calling store.save() and store.write_history(record, path)
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import stat

from absl import logging

from clr_loop import checkpointing
from clr_loop import distribute
from clr_loop import runtime

# The file in a workdir that identifies the run a checkpoint belongs to (see `run_identity`).
RUN_FILE = "run.json"
# The run's per-epoch history, a copy of the one each checkpoint holds.
HISTORY_FILE = "history.json"


def run_identity(model, train_input, seed, run_config=None):
    """Returns what a workdir's checkpoint must match to be resumed (run.json holds it).

    Args:
        model: the compiled Keras model.
        train_input: the run's `clr_loop.inputs.TrainInput` (batch size, data size, shuffle...).
        seed: the data-order seed.
        run_config: the caller's settings, a JSON-safe dict compared by `identity_differences`,
            or None.

    Returns:
        A JSON-safe dict: batch size, data size, seed, the variables (paths without Keras's numbers,
        shapes, dtypes), the precision (the model's Keras dtype policy: it defines the numbers a run
        computes, and mixed_float16 adds the loss-scale state) and `config` when `run_config` is given.
    """
    identity = {
        "batch_size": train_input.batch_size,
        "num_examples": train_input.num_examples,
        "steps_per_epoch": train_input.steps_per_epoch,
        "shuffle": train_input.shuffle,
        "drop_remainder": train_input.drop_remainder,
        "seed": seed,
        "variables": [[unnumbered(v.path), list(v.shape), str(v.dtype)] for v in model.variables],
        "precision": runtime.model_precision(model),
    }
    if run_config is not None:
        identity["config"] = run_config
    return identity


def unnumbered(path):
    """`path` without Keras's automatic name suffixes ("sequential_3/dense_7/kernel" ->
    "sequential/dense/kernel"): a model built again in the same process (a notebook re-running its
    cell) gets new numbers but restores the same checkpoint, which matches objects, not names."""
    return re.sub(r"_\d+(?=/|$)", "", path)


# The run identity's entries (`run_identity`) as a refusal names them.
_IDENTITY_LABELS = {
    "batch_size": "the batch size",
    "num_examples": "the number of training examples",
    "steps_per_epoch": "the batches per epoch",
    "shuffle": "shuffle",
    "drop_remainder": "drop_remainder",
    "seed": "the seed",
    "variables": "the model's variables",
    "precision": "the precision",
}


def _with_defaults(saved):
    """A recorded identity with what runs recorded before an entry existed: float32's precision."""
    return {"precision": "float32", **saved}


def differing_identity_keys(saved, current):
    """Returns the entries of run identity `current` that differ from the recorded `saved` (not its
    `config`, which the caller compares): a list of keys of `run_identity`'s dict, in its order. A
    `current` seed of None matches any."""
    saved = _with_defaults(saved)
    return [
        key
        for key in _IDENTITY_LABELS
        if not (key == "seed" and current.get("seed") is None) and saved.get(key) != current.get(key)
    ]


def identity_differences(saved, current, config_differences=None):
    """Returns why the run identity `current` cannot resume a checkpoint of `saved`.

    Args:
        saved: the identity a checkpoint or run.json recorded (`run_identity`'s dict).
        current: this run's identity.
        config_differences: compares the identities' `config` entries (the caller's settings):
            `f(saved, current)` returns a list of str, empty when the run may resume; None
            compares them key by key (`settings_differences`).

    Returns:
        A list of str, one per difference (empty: the run may resume). A `current` seed of None
        matches any; a `saved` identity without a precision is float32's.
    """
    saved = _with_defaults(saved)
    problems = []
    for key in differing_identity_keys(saved, current):
        label = _IDENTITY_LABELS[key]
        if key == "variables":
            saved_vars = {tuple(v[:1]): v for v in saved.get(key, [])}
            now_vars = {tuple(v[:1]): v for v in current.get(key, [])}
            diff = sorted(set(map(str, saved_vars.values())) ^ set(map(str, now_vars.values())))
            problems.append(
                f"{label} differ ({len(saved.get(key, []))} saved vs {len(current.get(key, []))} now; e.g. {diff[:2]})"
            )
        else:
            problems.append(f"{label}: {saved.get(key)!r} (saved) vs {current.get(key)!r} (now)")
    if "config" in saved or "config" in current:
        saved_config, config = saved.get("config") or {}, current.get("config") or {}
        problems += (config_differences or settings_differences)(saved_config, config)
    return problems


def settings_differences(saved, current, differing=None, value=dict.get):
    """Returns why the caller's settings `current` (a run identity's `config`) cannot resume a run of
    `saved`, as one `the configuration (name: saved (saved) vs now (now), ...)` line, or an empty list
    when nothing differs.

    Args:
        saved: the settings dict the checkpoint recorded.
        current: this run's settings dict.
        differing: the names of the settings that forbid resuming; None: every key whose value differs.
        value: reads a setting, `value(settings, name)` (default: `dict.get`). A caller whose settings
            may partly change on resumption passes its own `differing` and `value` (through `Run`'s
            `run_config_differences`).
    """
    if differing is None:
        differing = sorted(k for k in set(saved) | set(current) if value(saved, k) != value(current, k))
    if not differing:
        return []
    return [f"the configuration ({describe_settings(saved, current, differing, value)})"]


def describe_settings(saved, current, names, value=dict.get):
    """Returns `name: saved (saved) vs now (now)` for each setting in `names`, comma-separated, each
    value read with `value(settings, name)`."""
    return ", ".join(f"{k}: {value(saved, k)!r} (saved) vs {value(current, k)!r} (now)" for k in names)


def worker_folder(workdir, strategy):
    """Returns the folder under `workdir` where a non-chief worker of a multi-worker `strategy` keeps
    its checkpoints (`<workdir>/.worker-N`, N its worker index).

    Args:
        workdir: the run's folder.
        strategy: a multi-worker `tf.distribute.Strategy`.

    Returns:
        The folder's path (str).
    """
    return os.path.join(workdir, f".worker-{distribute.worker_id(strategy)}")


def recorded_seed(workdir):
    """Returns the data-order seed the run in `workdir` recorded in its run.json, or None.

    Args:
        workdir: the run's folder.

    Returns:
        The seed (int), or None without a run.json, or with one that is not a run identity
        (someone else's file: `Workdir.resume` names it).

    Raises:
        checkpointing.WorkdirError: run.json cannot be read.
    """
    path = os.path.join(workdir, RUN_FILE)
    if os.path.exists(path):
        saved = checkpointing.read_json(path, "run identity")
        if (
            checkpointing.run_identity_problem(saved) is None
            and isinstance(saved["seed"], int)
            and not isinstance(saved["seed"], bool)
        ):
            return saved["seed"]
    return None


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
    fd = _open_lock_file(path, workdir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise checkpointing.WorkdirError(
                    f"cannot lock workdir {workdir}: {e}", starting_over_helps=False
                ) from e
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise checkpointing.WorkdirError(
                f"workdir {workdir} is in use by another process (pid {owner}); two runs writing one "
                "workdir would interleave their checkpoints. Wait for it to end, or use another workdir.",
                starting_over_helps=False,
                argument="workdir",
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


def _open_lock_file(path, workdir):
    """Opens (creating) the lock file `path` for reading and writing; returns its descriptor. A
    symbolic link is never followed (its target is neither truncated nor created), and anything but a
    regular file is refused: WorkdirError naming `path`, with nothing changed."""
    refusal = (
        f"the lock file {path} of workdir {workdir} is {{}}, not a file clr_loop wrote; refusing to "
        "use it. Remove it (clr_loop makes its own), or use another workdir."
    )
    try:
        # O_NONBLOCK: a FIFO opens without waiting for a writer (and is then refused).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise checkpointing.WorkdirError(refusal.format("a symbolic link"), starting_over_helps=False) from None
        if e.errno == errno.EISDIR:
            raise checkpointing.WorkdirError(
                refusal.format("a folder (not a regular file)"), starting_over_helps=False
            ) from None
        raise checkpointing.WorkdirError(
            f"cannot open the lock file {path} of workdir {workdir}: {e}", starting_over_helps=False
        ) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise checkpointing.WorkdirError(refusal.format("not a regular file"), starting_over_helps=False)
    return fd


def locked(workdir, is_chief):
    """Returns a context holding the workdir's lock (`workdir_lock`; the chief's only,
    since all workers of a cluster share the workdir).

    Args:
        workdir: the run's folder.
        is_chief: whether this worker is the cluster's chief (a null context otherwise).

    Raises:
        checkpointing.WorkdirError: the folder is not writable or another process holds the lock.
    """
    if not is_chief:
        return contextlib.nullcontext()
    checkpointing.check_writable(workdir)
    return workdir_lock(workdir)


class Workdir:
    """A run's folder: its lock, run.json, the caller's files, history.json, events and checkpoints.

    Args:
        path: the folder.
        strategy: the model's `tf.distribute.Strategy` (the chief writes the files; every worker
            saves checkpoints, the others into `worker_folder`).
        keep_checkpoints: how many checkpoints to keep.
        run_files: {file name: JSON value} written next to run.json once the checks pass
            (config.json); the dict is kept, not copied, so entries added before `resume` count.

    Attributes:
        identity_record, history_record, stopped_record: `checkpointing.TextRecord`s every checkpoint
            holds (`records()`): the run's identity, its history up to the last epoch end, and
            (when a callback stopped the run) where it stopped.
        checkpoints: the `checkpointing.RunCheckpoints`, once `resume` made them.
    """

    def __init__(self, path, strategy, *, keep_checkpoints, run_files=None, config_differences=None):
        self.path = path
        self.strategy = strategy
        self.is_chief = distribute.is_chief(strategy)
        self.keep_checkpoints = keep_checkpoints
        self.run_files = {} if run_files is None else run_files
        self.config_differences = config_differences
        self.identity_record = checkpointing.TextRecord()
        self.history_record = checkpointing.TextRecord()
        # Set when a callback ended the run (model.stop_training): the run is complete, and calling
        # the same code again trains no further than the uninterrupted run did.
        self.stopped_record = checkpointing.TextRecord()
        self.checkpoints = None

    def records(self):
        """Returns the workdir's own trackables for the checkpoint, by key."""
        return {
            "run_identity": self.identity_record,
            "run_history": self.history_record,
            "run_stopped": self.stopped_record,
        }

    def locked(self):
        """A context holding the workdir's lock (see `locked`)."""
        return locked(self.path, self.is_chief)

    @property
    def last_checkpoint(self):
        """The path of the newest checkpoint, or None."""
        return self.checkpoints.manager.latest_checkpoint if self.checkpoints is not None else None

    def stopped(self):
        """True when a callback stopped the run that the restored checkpoint belongs to."""
        return bool(self.stopped_record.text)

    def record_epoch(self, history_text, stopped_at=None):
        """Sets the history (JSON text) and, when a callback stopped the run, `stopped_at` (a JSON-safe
        dict), for the next checkpoint to hold."""
        self.history_record.text = history_text
        if stopped_at is not None:
            self.stopped_record.text = json.dumps(stopped_at)

    def save(self):
        """Saves a checkpoint at the run's step (`RunCheckpoints.save`); returns its path, or None
        before `resume`."""
        if self.checkpoints is None:
            return None
        return self.checkpoints.save()

    def write_history(self, record, checkpoint):
        """Writes history.json (on the chief): `record` (a JSON-safe dict), the copy of the history
        that `checkpoint` holds (named when the write fails)."""
        if self.is_chief:
            checkpointing.save_json(os.path.join(self.path, HISTORY_FILE), record, "the history", checkpoint)

    def resume(self, identity, trackables, step_counter, *, position, prepare=None, check_restored=None):
        """Opens the workdir and restores its latest checkpoint; returns the saved history (or {}).

        On the chief: removes writers' stale temporaries, refuses another run's run.json or
        checkpoint, restores the newest good checkpoint, writes run.json and `run_files`, and cuts
        the TensorBoard events after the restored step. Every worker of a cluster restores the same
        step (see `_restore_agreed`).

        Args:
            identity: this run's `run_identity`.
            trackables: `trackables() -> dict` of what a checkpoint holds (`records()` among them).
            step_counter: the variable that numbers the checkpoints (the run's position).
            position: `position() -> (step, epochs completed)`, read after the restore.
            prepare: called once the checkpoints exist, before the restore (a Dataset's iterator
                must exist for the restore to fill in its state), on the chief only.
            check_restored: `check_restored() -> None or why`, why the state just restored cannot
                be resumed (a checkpoint with non-finite weights, which is passed over).

        Returns:
            The history up to the restored checkpoint's last epoch end ({name: list}), {} when none.

        Raises:
            checkpointing.WorkdirError: the workdir holds another run (batch size, data size, seed or
                the model's variables differ; see `run_identity`), a run.json clr_loop did not write,
                or a history without checkpoints.
            checkpointing.CheckpointError: checkpoints exist but none can be read.
            distribute.ClusterError: the workers of a cluster hold no common checkpoint.
        """
        workdir = self.path
        self.identity_record.text = json.dumps(identity, sort_keys=True)

        def verify(path, reader):
            saved = checkpointing.saved_text(reader, "run_identity")
            if saved is not None:
                _refuse_another_run(json.loads(saved), identity, path, self.config_differences)

        if not self.is_chief:
            # Every worker takes part in saving (the variables are mirrored); the workers other than
            # the chief save into a folder of their own and resume from it, so no filesystem needs
            # to be shared. One whose folder holds no checkpoint restores the chief's (a shared
            # filesystem, after a run with fewer workers).
            scratch = worker_folder(workdir, self.strategy)
            checkpointing.check_writable(scratch)
            own = checkpointing.has_checkpoint(scratch)
            self.checkpoints = checkpointing.RunCheckpoints(
                scratch,
                trackables(),
                step_counter,
                self.keep_checkpoints,
                restore_from=None if own else os.path.join(workdir, "ckpt"),
            )
            self._restore_agreed(verify, check_restored)
            return {}
        checkpointing.check_writable(workdir)
        checkpointing.remove_stale_temporaries(workdir)
        run_path = os.path.join(workdir, RUN_FILE)
        history_path = os.path.join(workdir, HISTORY_FILE)
        # run.json names the run whose checkpoints the workdir holds; without a checkpoint it is a
        # left-over of a run that failed before saving anything, and does not bind the next one. A
        # file there that clr_loop did not write is named, and never replaced.
        if os.path.lexists(run_path):
            saved = checkpointing.read_json(run_path, "run identity")
            why = checkpointing.run_identity_problem(saved)
            if why is not None:
                advice = (
                    f"the checkpoints in {os.path.join(workdir, 'ckpt')} carry their own identity: remove it to "
                    "resume from them"
                    if checkpointing.has_checkpoint(workdir)
                    else "refusing to replace it: move it away, or use another workdir"
                )
                raise checkpointing.WorkdirError(
                    f"run identity {run_path} is not one clr_loop wrote ({why}); {advice}", starting_over_helps=False
                )
            if checkpointing.has_checkpoint(workdir):
                _refuse_another_run(saved, identity, workdir, self.config_differences)
        self.checkpoints = checkpointing.RunCheckpoints(workdir, trackables(), step_counter, self.keep_checkpoints)
        if prepare is not None:
            prepare()

        restored = self._restore_agreed(verify, check_restored)
        if restored is None and os.path.exists(history_path):
            raise checkpointing.WorkdirError(
                f"{history_path} exists but {self.checkpoints.directory} holds no checkpoint to resume "
                "from; refusing to restart from scratch over it. Remove the workdir's outputs to start over."
            )
        checkpointing.save_json(run_path, identity, "the run identity")
        for name, value in self.run_files.items():
            checkpointing.save_json(os.path.join(workdir, name), value, name)
        if restored is None:
            # Points of a run that saved no checkpoint (killed before its first, or diverged): this
            # run starts at step 0 and writes its own, so they are cut as a resume cuts those after
            # its checkpoint.
            dropped = sum(checkpointing.truncate_events(os.path.join(workdir, sub), 0) for sub in ("train", "eval"))
            if dropped:
                print(
                    f"note: dropped {dropped} TensorBoard points of an earlier run in {workdir} that saved no "
                    "checkpoint; starting at step 0",
                    flush=True,
                )
            return {}
        step, done = position()  # done: epochs completed (an epoch end counts its own)
        history = self._saved_history(history_path, restored)
        history = {k: list(v)[:done] for k, v in history.items()}
        for sub in ("train", "eval"):
            checkpointing.truncate_events(os.path.join(workdir, sub), step)
        logging.info("resuming from %s at step %d (epoch %d)", restored, step, done + 1)
        print(f"Resuming from {restored} at step {step}", flush=True)
        return history

    def _restore_agreed(self, verify, check_restored):
        """Restores the newest checkpoint (`RunCheckpoints.restore_latest`); in a multi-worker run, the
        newest step every worker holds, agreed before any of them restores or trains. Returns the
        path restored, or None when there is none (on every worker).

        The workers exchange the step of their newest readable checkpoint (one small all-reduce;
        restoring nothing yet, since a restore runs collectives that every worker must run alike).
        When those differ, the lowest is taken if every worker holds a readable checkpoint of that
        step (a worker's newest was lost or torn); otherwise raises ClusterError naming each worker
        and the step it would resume from (0 without a checkpoint). Every worker gets the same
        answer, so all stop at once, before any training collective.
        """
        # A checkpoint with non-finite weights (an earlier version's guard saved them) is passed over.
        check = check_restored
        if distribute.worker_count(self.strategy) == 1:
            return self.checkpoints.restore_latest(verify=verify, check_restored=check)
        newest = self.checkpoints.newest_readable_step(verify)
        steps = distribute.gather_from_workers(self.strategy, [-1 if newest is None else newest])[:, 0].astype(int)
        target = int(steps.min())
        if len(set(steps)) > 1:
            held = target >= 0 and self.checkpoints.newest_readable_step(verify, step=target) is not None
            if not distribute.gather_from_workers(self.strategy, [float(held)])[:, 0].all():
                raise distribute.ClusterError(
                    "the workers would resume from different steps ("
                    + ", ".join(
                        f"worker {w} from step {s}" if s >= 0 else f"worker {w} from step 0 (no checkpoint)"
                        for w, s in enumerate(steps)
                    )
                    + f"; this is worker {distribute.worker_id(self.strategy)}, whose checkpoints are in "
                    f"{self.checkpoints.restore_directory}), and they can only resume together: give each worker "
                    "its own workdir's checkpoints back, or start all of them over in new workdirs"
                )
            if self.is_chief:
                print(
                    f"note: the workers' newest checkpoints are of steps {', '.join(map(str, steps))}; "
                    f"all resume from step {target}, the newest they all hold",
                    flush=True,
                )
        if target < 0:
            return None
        return self.checkpoints.restore_latest(verify=verify, step=target, check_restored=check)

    def _saved_history(self, history_path, restored):
        """The history of the restored checkpoint: its own record (history.json is a copy, rewritten
        when missing), or history.json for a checkpoint written before histories were recorded."""
        on_disk = None
        if os.path.exists(history_path):
            try:
                on_disk = checkpointing.read_history(history_path)
            except checkpointing.WorkdirError as e:
                hint = (
                    " The checkpoint holds its own copy of the history: remove the file to resume with it."
                    if self.history_record.text
                    else ""
                )
                raise checkpointing.WorkdirError(
                    f"{e}.{hint}", starting_over_helps=e.starting_over_helps, argument=e.argument, settings=e.settings
                ) from e
        if not self.history_record.text:
            return on_disk or {}
        history = checkpointing.check_history(json.loads(self.history_record.text), restored)
        if on_disk is None and history:
            print(f"warning: {history_path} is missing; rewriting it from the checkpoint {restored}", flush=True)
            checkpointing.save_json(history_path, history, "the history", restored)
        return history


def _refuse_another_run(saved, identity, where, config_differences):
    problems = identity_differences(saved, identity, config_differences)
    if problems:
        raise checkpointing.WorkdirError(
            f"{where} holds a checkpoint of another run, which cannot be resumed: "
            + "; ".join(problems)
            + ". Use another workdir, or remove that one to start over.",
            settings=differing_identity_keys(saved, identity),
        )
