r"""Chaos soak: kill -9 a training run at seeded moments, resume it each time, and check that it ends
bit-identical to an uninterrupted run.

  python tools/chaos.py --kills=10 --seed=0 --root=/tmp/chaos -- \
      python -m clr_loop.train --mode=triangular2 --epochs=10 --deterministic --checkpoint_every_steps=200

The command after `--` is run twice, with `--workdir=<root>/reference` and `--workdir=<root>/chaos`
appended: once uninterrupted, then again and again on the chaos workdir, each process killed with
SIGKILL at the next planned moment, until one exits 0. Then the two workdirs are compared:

- the latest checkpoints: the same name and every tensor bit-identical (`tf.train.load_checkpoint`;
  the save counter is included: with SIGKILL only it is a function of the step, since a killed save
  is redone from the checkpoint before it), the history record they carry as history.json is;
- history.json: equal, except `epoch_seconds` (wall time), which must only have the same length;
- TensorBoard, `train/` and `eval/`: every tag, every step, every value, read with TensorBoard's own
  `event_accumulator` (all points kept).

It prints one line per kill and a summary line `chaos: survived N/N kills (...)`, and exits 0 when
everything is identical, 1 with the first difference otherwise, 2 on a usage error or when a
process fails or a planned kill cannot land before the run ends. `--compare A B` compares two
finished workdirs and does nothing else.

The kill points are seeded *events*, not times (times are not reproducible on a loaded machine).
The seed draws, for each kill, a kind and a step S from the reference run's range, and the kill
lands at the first such event after the run is seen past S (the step is seen in the run's
"checkpoint saved at step N" log lines, which an app writes from absl verbosity 1: the tool adds
`--verbosity=1` to a command that sets no verbosity):

- `checkpoint`: during a checkpoint write. The tool polls the workdir every millisecond; when a write
  is visible (TF's `ckpt/ckpt-N_temp/` folder of the data being written, the manager's
  `ckpt/checkpoint.tmp*` state file, or a new `ckpt-N.index` that the state file does not list
  yet) it freezes the process with SIGSTOP, looks again, and sends SIGKILL only if the write is
  still in progress while the process is frozen; otherwise it lets it go on (SIGCONT) and waits for
  the next write. So a kill counted "during a checkpoint write" provably landed in one.
- `history`: the same, during the atomic write of history.json (its `history.json.tmp-*` file). That
  write lasts well under a millisecond, so from the epoch's summary line on (printed just before
  it) the tool scans the workdir without pausing, for up to 3 s.
- `eval`: at the "evaluating at step N" log line that the loop writes before each validation; the
  process is frozen at once and killed. It counts as "during eval" when the epoch's summary line
  (printed after the evaluation) had not appeared.
- `step`: mid-training, a seeded fraction of a checkpoint interval (in wall time) after the first
  checkpoint past S: the work since that checkpoint is lost and redone.
- `restore`: while the next process resumes: while it cuts TensorBoard points written after its
  checkpoint (`train/.tmp-events-*`) or at its "Resuming from" line.

Temporary files that a killed process left behind are older than the process that runs next, and
only newer ones count as a write in progress. Every process is frozen before it is killed and the state it was frozen in decides how the kill is
counted, so the summary reports where the kills landed, not where they were aimed. Where exactly
in a window a kill lands depends on timing; which window it aims at depends only on the seed.
"""

import argparse
import glob
import json
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

KINDS = ("checkpoint", "eval", "step", "history", "restore")
POLL_SECONDS = 0.001
SAVED = re.compile(r"checkpoint saved at step (\d+)")
EVALUATING = re.compile(r"evaluating at step (\d+)")
RESUMING = re.compile(r"Resuming from (\S+) at step (\d+)")
EPOCH_LINE = "val_loss"  # Keras's per-epoch line (verbose=2), printed after the validation


class ChaosError(RuntimeError):
    """A run that did not behave (failed, hung, or ended before a planned kill could land)."""


# Planning -----------------------------------------------------------------------------------


def plan_kills(kills, seed, total_steps):
    """Returns the kill plan, a list of `kills` dicts {kind, after_step, fraction}, ordered by step.

    Kinds cycle through KINDS in a seeded order (a `restore` kill never first: the first process
    has nothing to restore); steps are distinct seeded draws from the middle 90% of the run.
    """
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(kills)]
    rng.shuffle(kinds)
    if kinds and kinds[0] == "restore":
        swap = next((i for i, k in enumerate(kinds) if k != "restore"), None)
        if swap is not None:
            kinds[0], kinds[swap] = kinds[swap], kinds[0]
    low, high = max(1, total_steps // 20), max(2, total_steps - total_steps // 20)
    population = range(low, high)
    steps = sorted(
        rng.sample(population, kills) if kills <= len(population) else [rng.randrange(low, high) for _ in range(kills)]
    )
    return [{"kind": kind, "after_step": step, "fraction": rng.random()} for kind, step in zip(kinds, steps)]


# Observing a workdir ------------------------------------------------------------------------


def _checkpoint_steps(workdir):
    """Returns the steps of the `ckpt/ckpt-N.index` files in `workdir`, as a set of ints."""
    return {
        int(m.group(1))
        for p in glob.glob(os.path.join(workdir, "ckpt", "ckpt-*.index"))
        if (m := re.search(r"ckpt-(\d+)\.index$", p))
    }


def _listed_checkpoint(workdir):
    """Returns the step of the checkpoint the manager's state file names as latest, or -1."""
    try:
        text = open(os.path.join(workdir, "ckpt", "checkpoint")).read()
    except OSError:
        return -1
    match = re.search(r'^model_checkpoint_path: ".*?ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else -1


def _fresh(pattern, since):
    """Returns whether a path matching `pattern` was created or changed at or after `since` (epoch
    seconds): a temporary file a killed process left behind is older than the process now running."""
    for path in glob.glob(pattern):
        try:
            if os.stat(path).st_mtime >= since:
                return True
        except FileNotFoundError:
            pass  # renamed or removed since the glob: that write is over
    return False


def _history_write_shows(workdir, since):
    """Returns whether a history.json.tmp-* file newer than `since` exists: write_in_progress's
    history check, in one directory scan."""
    try:
        with os.scandir(workdir) as entries:
            for entry in entries:
                if entry.name.startswith("history.json.tmp-"):
                    try:
                        if entry.stat().st_mtime >= since:
                            return True
                    except FileNotFoundError:
                        pass
    except FileNotFoundError:
        pass
    return False


def write_in_progress(workdir, known_checkpoints, since):
    """Returns what the workdir shows being written ("checkpoint write", "history.json write",
    "TensorBoard cut"), or None. Only files of the process started at `since` count:
    `known_checkpoints` are the checkpoint steps present when it started (an unlisted index among
    them is an old leftover, not a write), and older temporary files are a killed process's."""
    ckpt = os.path.join(workdir, "ckpt")
    if _fresh(os.path.join(ckpt, "*_temp*"), since) or _fresh(os.path.join(ckpt, "checkpoint.tmp*"), since):
        return "checkpoint write"
    new = _checkpoint_steps(workdir) - known_checkpoints
    if new and max(new) > _listed_checkpoint(workdir):
        return "checkpoint write"
    if _fresh(os.path.join(workdir, "history.json.tmp-*"), since):
        return "history.json write"
    if _fresh(os.path.join(workdir, "train", ".tmp-events-*"), since) or _fresh(
        os.path.join(workdir, "eval", ".tmp-events-*"), since
    ):
        return "TensorBoard cut"
    return None


# One process --------------------------------------------------------------------------------


class Process:
    """One run of the training command: its output lines (read by a thread into a queue and a log
    file), and SIGSTOP/SIGKILL control that knows whether the process really stopped."""

    def __init__(self, command, log_path):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        self.lines = queue.Queue()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, timeout):
        """Returns the next output line, "" when none came within `timeout` s, None at the end."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def exited(self):
        return self.proc.poll() is not None

    def freeze(self):
        """Stops the process (SIGSTOP) and waits until it has stopped; returns False if it exited."""
        if self.exited():
            return False
        os.kill(self.proc.pid, signal.SIGSTOP)
        pid, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            return True
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return False

    def thaw(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        """Sends SIGKILL and waits for the end of the process and of its output."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.finish()

    def finish(self, timeout=None):
        self.proc.wait(timeout=timeout)
        self.reader.join()
        self.log.close()
        return self.proc.returncode


def run_to_end(command, log_path, timeout):
    """Runs `command` to its end; returns its output. Raises ChaosError if it fails or hangs."""
    process = Process(command, log_path)
    try:
        code = process.finish(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise ChaosError(f"{' '.join(command)} ran past {timeout} s; its log is {log_path}") from None
    if code != 0:
        raise ChaosError(f"{' '.join(command)} exited {code}; its log is {log_path}:\n" + "".join(process.output[-20:]))
    return "".join(process.output)


class Life:
    """One process of the chaos run, with the kill it is to receive (or none: run to the end)."""

    def __init__(self, command, workdir, log_path, kill, interval):
        self.workdir = workdir
        self.interval = interval  # wall seconds between two checkpoints, as last seen
        self.known = _checkpoint_steps(workdir)
        # A leftover of the killed process is older than this; the new one writes seconds later.
        self.started = time.time()
        if kill is not None and kill["kind"] == "restore" and not self.known:
            kill = dict(kill, kind="step")  # nothing to restore yet: a mid-training kill instead
        self.kill_plan = kill
        self.process = Process(command, log_path)
        self.progress = -1  # the last step the run was seen at
        self.last_saved = None  # (step, time) of the last "checkpoint saved" line
        self.resumed_from = None
        self.evaluating = None  # the step of an evaluation in progress, as far as the output says
        self.deadline_at = None  # `step` kind: when to kill
        self.landed = None

    def armed(self):
        return self.kill_plan is not None and self.progress >= self.kill_plan["after_step"]

    def observe(self, line):
        """Updates what is known from one output line; returns a kill label if the line triggers one."""
        kind = self.kill_plan and self.kill_plan["kind"]
        if match := RESUMING.search(line):
            self.resumed_from = match.group(1)
            self.progress = int(match.group(2))
            if kind == "restore":
                return "resume"
        elif match := SAVED.search(line):
            step, now = int(match.group(1)), time.monotonic()
            if self.last_saved is not None and step > self.last_saved[0]:
                self.interval = now - self.last_saved[1]
            self.last_saved = (step, now)
            self.progress = max(self.progress, step)
            if kind == "step" and self.armed() and self.deadline_at is None:
                self.deadline_at = now + self.kill_plan["fraction"] * self.interval
        elif match := EVALUATING.search(line):
            self.evaluating = int(match.group(1))
            self.progress = max(self.progress, self.evaluating)
            if kind == "eval" and self.armed():
                return "eval"
        elif EPOCH_LINE in line:
            self.evaluating = None
        if self.progress < 0 and "Epoch" in line:
            self.progress = 0
        return None

    def run(self, timeout):
        """Runs the process until it exits or its kill lands; returns its exit code."""
        kind = self.kill_plan and self.kill_plan["kind"]
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                self.process.kill()
                raise ChaosError(f"a process of the chaos run ran past {timeout} s")
            watching = (
                (kind in ("checkpoint", "history") and self.armed())
                or kind == "restore"
                or self.deadline_at is not None
            )
            line = self.process.next_line(POLL_SECONDS if watching else 0.05)
            if line is None:
                return self.process.finish()
            trigger = self.observe(line) if line else None
            if (
                trigger is None
                and kind == "step"
                and self.deadline_at is not None
                and time.monotonic() >= self.deadline_at
            ):
                trigger = "training"
            if trigger is None and kind in ("checkpoint", "history", "restore") and (self.armed() or kind == "restore"):
                seen = write_in_progress(self.workdir, self.known, self.started)
                wanted = {
                    "checkpoint": "checkpoint write",
                    "history": "history.json write",
                    "restore": "TensorBoard cut",
                }[kind]
                if seen == wanted:
                    trigger = seen
            if trigger is None and kind == "history" and self.armed() and line and EPOCH_LINE in line:
                # The epoch's line is printed just before history.json is written, a write too short
                # to catch polling every millisecond: watch without pausing for a while.
                trigger = self._watch_closely("history.json write", seconds=3.0)
            if trigger is not None and self._kill(trigger):
                return self.process.proc.returncode

    def _watch_closely(self, wanted, seconds):
        """Polls the workdir without pausing for up to `seconds`; returns `wanted` once it shows."""
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.process.exited():
            if _history_write_shows(self.workdir, self.started):
                return wanted
        return None

    def _kill(self, trigger):
        """Freezes the process, decides where it is, and kills it if it is where the plan wants it;
        returns whether it was killed."""
        if not self.process.freeze():
            return False
        state = write_in_progress(self.workdir, self.known, self.started)
        if trigger in ("checkpoint write", "history.json write", "TensorBoard cut"):
            if state != trigger:
                self.process.thaw()  # the write ended before the process stopped: wait for the next
                return False
            self.landed = trigger if trigger != "TensorBoard cut" else "resume (cutting TensorBoard points)"
        elif trigger == "eval":
            self.landed = "eval"  # confirmed or corrected once the output is read to its end
        else:
            self.landed = state or trigger
        self.process.kill()
        if self.landed in ("eval", "training"):
            # The output, read to its end, says whether an evaluation had begun and not ended.
            text = "".join(self.process.output)
            in_eval = "evaluating at step" in text and EPOCH_LINE not in text.split("evaluating at step")[-1]
            if in_eval:
                self.landed = "eval"
            elif self.landed == "eval":
                self.landed = "just after eval"
        return True


# Comparing two workdirs ---------------------------------------------------------------------


def _latest_checkpoint(workdir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))


# The checkpoint key of the run's history (`workdir.Workdir`'s `run_history` TextRecord).
HISTORY_RECORD = "run_history/.ATTRIBUTES/py_state"


def compare_checkpoints(reference, chaos):
    """Returns the first difference between the two workdirs' latest checkpoints, or None."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    paths = [_latest_checkpoint(w) for w in (reference, chaos)]
    if None in paths:
        return f"no checkpoint in {[w for w, p in zip((reference, chaos), paths) if p is None][0]}/ckpt"
    names = [os.path.basename(p) for p in paths]
    if names[0] != names[1]:
        return f"latest checkpoint: {names[0]} (reference) vs {names[1]} (chaos)"
    readers = [tf.train.load_checkpoint(p) for p in paths]
    keys = [set(r.get_variable_to_shape_map()) for r in readers]
    if keys[0] != keys[1]:
        return (
            f"checkpoint tensors: only in the reference {sorted(keys[0] - keys[1])[:5]}, "
            f"only in the chaos run {sorted(keys[1] - keys[0])[:5]}"
        )
    for key in sorted(keys[0]):
        if key == HISTORY_RECORD:  # the history in the checkpoint holds wall times too
            difference = _history_difference(
                *(json.loads(r.get_tensor(key)) for r in readers), f"{names[0]}'s history record"
            )
            if difference:
                return difference
            continue
        a, b = (np.asarray(r.get_tensor(key)) for r in readers)
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            where = ""
            if a.shape == b.shape and a.dtype == b.dtype and a.dtype.kind in "fiu":
                index = np.argwhere(a != b)
                where = (
                    f" (first at {tuple(index[0])}: {a[tuple(index[0])]!r} vs {b[tuple(index[0])]!r})"
                    if len(index)
                    else ""
                )
            return f"{names[0]}: tensor {key} differs{where}"
    return None


def compare_history(reference, chaos):
    """Returns the first difference between the two history.json files (wall time aside), or None."""
    try:
        histories = [json.load(open(os.path.join(w, "history.json"))) for w in (reference, chaos)]
    except (OSError, ValueError) as e:
        return f"history.json cannot be read: {e}"
    return _history_difference(*histories, "history.json")


def _history_difference(a, b, what):
    """Returns the first difference between two histories ({key: per-epoch list}) named `what`, wall
    time (`epoch_seconds`) aside but for its length, or None."""
    if set(a) != set(b):
        return f"{what} keys: {sorted(a)} (reference) vs {sorted(b)} (chaos)"
    for key in sorted(a):
        if len(a[key]) != len(b[key]):
            return f"{what} {key}: {len(a[key])} epochs (reference) vs {len(b[key])} (chaos)"
        if key == "epoch_seconds":
            continue
        for epoch, (x, y) in enumerate(zip(a[key], b[key])):
            if not (x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))):
                return f"{what} {key}[{epoch}]: {x!r} (reference) vs {y!r} (chaos)"
    return None


def tensorboard_points(logdir):
    """Returns {tag: [(step, value bytes), ...]} of a TensorBoard folder, every point, in the order
    TensorBoard's event_accumulator gives them."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
    from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel

    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    tags = acc.Tags()
    points = {}
    for tag in tags.get("tensors", []):
        points[tag] = [
            (e.step, np.asarray(tensor_util.make_ndarray(e.tensor_proto)).tobytes()) for e in acc.Tensors(tag)
        ]
    for tag in tags.get("scalars", []):
        points["scalar:" + tag] = [(e.step, np.float64(e.value).tobytes()) for e in acc.Scalars(tag)]
    return points


def compare_tensorboard(reference, chaos):
    """Returns the first difference between the two runs' TensorBoard train/ and eval/ points, or None."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    for sub in ("train", "eval"):
        a, b = (tensorboard_points(os.path.join(w, sub)) for w in (reference, chaos))
        if not a:
            return f"TensorBoard {sub}/: the reference has no points"
        if set(a) != set(b):
            return f"TensorBoard {sub}/ tags: {sorted(a)} (reference) vs {sorted(b)} (chaos)"
        for tag in sorted(a):
            steps_a, steps_b = [s for s, _ in a[tag]], [s for s, _ in b[tag]]
            if steps_a != steps_b:
                return (
                    f"TensorBoard {sub}/{tag} steps: {len(steps_a)} points (reference) vs {len(steps_b)} "
                    f"(chaos); first difference near step "
                    f"{next((x, y) for x, y in zip(steps_a + [None], steps_b + [None]) if x != y)}"
                )
            for (step, x), (_, y) in zip(a[tag], b[tag]):
                if x != y:
                    return (
                        f"TensorBoard {sub}/{tag} at step {step}: {np.frombuffer(x, np.float32)} (reference) "
                        f"vs {np.frombuffer(y, np.float32)} (chaos)"
                    )
    return None


def compare(reference, chaos):
    """Returns the first difference between two finished workdirs (checkpoint, history, TensorBoard), or None."""
    return (
        compare_checkpoints(reference, chaos)
        or compare_history(reference, chaos)
        or compare_tensorboard(reference, chaos)
    )


# The soak -----------------------------------------------------------------------------------


PLURALS = {"checkpoint write": "checkpoint writes", "history.json write": "history.json writes"}


def _count_phrase(where, n):
    """Returns "3 during checkpoint writes", "1 just after eval" and the like."""
    return f"{n} {'' if where.startswith('just') else 'during '}{PLURALS.get(where, where) if n > 1 else where}"


def soak(command, kills, seed, root, timeout):
    """Runs the reference and the chaos run; returns (exit code, summary line)."""
    if not any(a.lstrip("-").split("=")[0] in ("verbosity", "v") for a in command if a.startswith("-")):
        command = command + ["--verbosity=1"]  # the checkpoint and eval lines it watches are absl debug lines
    reference, chaos = os.path.join(root, "reference"), os.path.join(root, "chaos")
    started = time.monotonic()
    print(f"chaos: reference run in {reference}", flush=True)
    run_to_end(command + [f"--workdir={reference}"], os.path.join(root, "reference.log"), timeout)
    reference_seconds = time.monotonic() - started
    last = _latest_checkpoint(reference)
    if last is None:
        raise ChaosError(f"the reference run wrote no checkpoint in {reference}/ckpt")
    total_steps = int(last.rsplit("-", 1)[1])
    plan = plan_kills(kills, seed, total_steps)
    print(
        f"chaos: reference done in {reference_seconds:.0f} s at step {total_steps}; plan (seed {seed}): "
        + ", ".join(f"{p['kind']} after step {p['after_step']}" for p in plan),
        flush=True,
    )
    landed = []
    interval = 1.0
    life = 0
    chaos_started = time.monotonic()
    while True:
        life += 1
        kill = plan[len(landed)] if len(landed) < len(plan) else None
        current = Life(command + [f"--workdir={chaos}"], chaos, os.path.join(root, f"chaos-{life}.log"), kill, interval)
        code = current.run(timeout)
        interval = current.interval
        if current.known and current.resumed_from is None and not (current.landed or "").startswith("resume"):
            raise ChaosError(
                f"process {life} of the chaos run did not say it resumed; its log is {root}/chaos-{life}.log"
            )
        if current.landed is not None:
            if code != -signal.SIGKILL:
                raise ChaosError(f"process {life} was sent SIGKILL but exited {code}")
            landed.append(current.landed)
            print(
                f"chaos: kill {len(landed)}/{kills} (aimed: {kill['kind']} after step {kill['after_step']}): "
                f"SIGKILL {'during ' if not current.landed.startswith('just') else ''}{current.landed}, "
                f"last seen at step {current.progress}"
                + (f", resumed from {os.path.basename(current.resumed_from)}" if current.resumed_from else ""),
                flush=True,
            )
            continue
        if code != 0:
            raise ChaosError(
                f"process {life} of the chaos run exited {code}; its log is {root}/chaos-{life}.log:\n"
                + "".join(current.process.output[-20:])
            )
        break
    chaos_seconds = time.monotonic() - chaos_started
    counts = {}
    for where in landed:
        counts[where] = counts.get(where, 0) + 1
    details = ", ".join(_count_phrase(w, n) for w, n in sorted(counts.items(), key=lambda x: -x[1]))
    if len(landed) < kills:
        return 2, (
            f"chaos: only {len(landed)}/{kills} kills landed before the run finished ({details}); "
            "use fewer kills or a longer run"
        )
    difference = compare(reference, chaos)
    timing = f" [reference {reference_seconds:.0f} s, chaos run {chaos_seconds:.0f} s in {life} processes]"
    if difference:
        return (
            1,
            f"chaos: survived {len(landed)}/{kills} kills ({details}) but the outputs differ: {difference}{timing}",
        )
    return 0, (
        f"chaos: survived {len(landed)}/{kills} kills ({details}); checkpoint, history and TensorBoard "
        f"identical to the uninterrupted run{timing}"
    )


def main(argv=None):
    """Parses the arguments and runs the soak or the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Kill a training command with SIGKILL at seeded moments, resume it, and check its outputs "
        "are bit-identical to an uninterrupted run's.",
        usage="%(prog)s [--kills=N] [--seed=S] [--root=DIR] -- COMMAND...  |  %(prog)s --compare A B",
    )
    parser.add_argument("--kills", type=int, default=10, help="how many times to kill the run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan (default 0)")
    parser.add_argument(
        "--root", help="folder for the two workdirs and the logs (new or empty; default: a new temp folder)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds any one process may run (default 3600)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="only compare two finished workdirs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command (without --workdir)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.compare:
        if command:
            parser.error("--compare takes two workdirs and no command")
        difference = compare(*args.compare)
        print(
            f"chaos: {difference}"
            if difference
            else f"chaos: {args.compare[0]} and {args.compare[1]}: checkpoint, history and TensorBoard identical"
        )
        return 1 if difference else 0
    if not command:
        parser.error("give the training command after --, e.g. -- python -m clr_loop.train --deterministic ...")
    if any(a == "--workdir" or a.startswith("--workdir=") for a in command):
        parser.error("the command must not set --workdir: the tool appends its own (<root>/reference, <root>/chaos)")
    if args.kills < 0:
        parser.error(f"--kills must be >= 0, got {args.kills}")
    root = args.root or tempfile.mkdtemp(prefix="chaos-")
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        parser.error(f"--root {root} must be a new or empty folder")
    os.makedirs(root, exist_ok=True)
    try:
        code, summary = soak(command, args.kills, args.seed, root, args.timeout)
    except (ChaosError, OSError) as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        return 2
    print(summary, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
