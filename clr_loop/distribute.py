"""tf.distribute set-up: virtual CPU devices, the strategy for `--strategy`, and the cluster checks.

clr_loop scales out on TensorFlow's own distribution engine: `MirroredStrategy` for the local GPUs
(or virtual CPUs, for development), `MultiWorkerMirroredStrategy` for several hosts described by
`TF_CONFIG`. The trainer creates its state inside `strategy.scope()` and feeds each replica its
slice of every global batch.
"""

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys

import numpy as np
import tensorflow as tf
from absl import logging

from clr_loop import errors

STRATEGIES = ("default", "mirrored", "multi_worker")
# The longest a multi-worker run waits for its peers and for a collective op, in seconds (a week):
# the join watchdog's wait and TensorFlow's collective timeout need a finite time they can represent.
MAX_CLUSTER_TIMEOUT = 7 * 24 * 3600


class ClusterError(errors.Error, RuntimeError):
    """Raised when the distribution cannot be set up: bad devices, bad TF_CONFIG.

    `argument` names the argument of `make_strategy` at fault ("devices", "cluster_timeout"), or is
    None when the cluster itself is (TF_CONFIG, a lost peer).
    """

    def __init__(self, message, argument=None):
        super().__init__(message, argument=argument)


def unreachable(peers):
    """Returns the addresses among `peers` ("host:port") where nothing accepts a connection now."""
    import socket  # pylint: disable=import-outside-toplevel  (this function's source also runs in _WATCHDOG)

    down = []
    for peer in peers:
        host, port = peer.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
        except OSError:
            down.append(peer)
    return down


_WATCHDOG = (
    inspect.getsource(unreachable)
    + r"""
import os, select, signal, sys
fd, timeout, pid, me, peers = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
if select.select([fd], [], [], timeout)[0]:
    sys.exit(0)  # the worker joined (it closed the pipe) or died
down = unreachable(peers)
sys.stderr.write(
    "error: worker %s could not join the cluster within %gs; unreachable: %s. Check that every worker of "
    "TF_CONFIG is started, with the same cluster list, and that the ports are right. Stopping it.\n"
    % (me, timeout, ", ".join(down) or "none (they are up but did not join)"))
sys.stderr.flush()
os.kill(pid, signal.SIGKILL)
"""
)


class _JoinWatchdog:
    """Kills this process with a message naming the unreachable peers if the block outlasts `timeout`.

    A separate process does the watching because TensorFlow's cluster join blocks inside C++
    while holding the GIL, so no Python thread or signal handler here can run.
    """

    def __init__(self, me, peers, timeout):
        self.args = [str(me), *peers]
        self.timeout = timeout

    def __enter__(self):
        read_fd, self.write_fd = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(read_fd), str(self.timeout), str(os.getpid()), *self.args],
            pass_fds=(read_fd,),
        )
        os.close(read_fd)
        return self

    def __exit__(self, *exc):
        os.close(self.write_fd)
        self.process.wait()
        return False


def configure_virtual_cpus(count):
    """Splits the host CPU into `count` logical devices; must run before TensorFlow starts its runtime.

    Returns the list of logical CPU device names. Raises ClusterError when the runtime is already
    initialised (the split can then no longer change).
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:
        raise ClusterError(
            f"virtual_cpus={count} must be applied before TensorFlow initialises: {e}", "virtual_cpus"
        ) from e
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def read_tf_config():
    """Returns the parsed TF_CONFIG environment variable; raises ClusterError naming what is wrong."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ClusterError(
            "the multi_worker strategy needs the TF_CONFIG environment variable (see docs/distribute.md)"
        )
    try:
        tf_config = json.loads(text)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"TF_CONFIG is not a valid cluster spec ({type(e).__name__}: {e}): {text}") from e
    if task.get("type") != "worker" or not 0 <= index < len(workers):
        raise ClusterError(f"TF_CONFIG task must be a worker with an index below {len(workers)}, got {task}")
    return tf_config


def make_strategy(name, devices=None, cluster_timeout=60.0):
    """Returns the `tf.distribute.Strategy` for `--strategy` (`default`, `mirrored` or `multi_worker`).

    `default` is TensorFlow's default one-device strategy. `mirrored` uses `devices` when given,
    else every local GPU, else every logical CPU. `multi_worker` reads the cluster from TF_CONFIG,
    waits at most `cluster_timeout` seconds for the peers to join (then the process is stopped
    with a message naming the unreachable peers), and fails collectives that hang longer.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if not devices:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        check_devices(devices)
        keys = [_device_key(d) for d in devices]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ClusterError(
                f"devices {', '.join(devices)} name "
                f"{', '.join(f'/{kind.lower()}:{index}' for kind, index in twice)} more than once; "
                "each replica needs a device of its own",
                "devices",
            )
        try:
            return tf.distribute.MirroredStrategy(devices=list(devices))
        except (ValueError, RuntimeError, AssertionError) as e:
            raise ClusterError(f"cannot mirror over devices {', '.join(devices)}: {e}", "devices") from e
    if name == "multi_worker":
        if (
            isinstance(cluster_timeout, bool)
            or not isinstance(cluster_timeout, (int, float))
            or not 0 < cluster_timeout <= MAX_CLUSTER_TIMEOUT
        ):  # also False for NaN
            raise ClusterError(
                f"cluster_timeout must be a number of seconds in (0, {MAX_CLUSTER_TIMEOUT}], got {cluster_timeout!r}",
                "cluster_timeout",
            )
        tf_config = read_tf_config()
        workers = tf_config["cluster"]["worker"]
        me = int(tf_config["task"]["index"])
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cluster_timeout)
        peers = [w for i, w in enumerate(workers) if i != me]
        # The constructor waits in C++, holding the GIL and with no time limit, until every worker
        # has joined; only another process can time it out.
        with _JoinWatchdog(me, peers, cluster_timeout):
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        logging.info("multi-worker cluster of %d workers; this is worker %d", len(workers), me)
        return strategy
    raise ClusterError(f"unknown strategy {name!r}; expected one of {STRATEGIES}", "strategy")


def _device_key(name):
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), spec.device_index or 0


def check_devices(devices):
    """Returns None when every device name in `devices` (like `/gpu:0`) is a logical device of this
    process; raises ClusterError naming the missing ones and those that exist otherwise.

    TensorFlow's MirroredStrategy over a device that does not exist waits for it for ever.
    """
    existing = tf.config.list_logical_devices()
    known = {_device_key(d.name) for d in existing}
    missing = []
    for name in devices:
        try:
            key = _device_key(name)
        except ValueError:
            missing.append(name)
            continue
        if key not in known:
            missing.append(name)
    if missing:
        raise ClusterError(
            f"device(s) {', '.join(missing)} do not exist here; this process has "
            + ", ".join(f"/{d.device_type.lower()}:{_device_key(d.name)[1]}" for d in existing),
            "devices",
        )


def is_default(strategy):
    """True for TensorFlow's default (no-distribution) strategy, under which a whole train step,
    update included, can be one compiled function."""
    with strategy.scope():
        return not tf.distribute.has_strategy()


def is_chief(strategy):
    """True for the process that writes history, summaries and the real checkpoints (worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)


def worker_id(strategy):
    """Returns this process's worker index (0 when not multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0
    return int(resolver.task_id or 0)


def worker_count(strategy):
    """Returns the number of worker processes of `strategy`'s cluster (1 when not multi-worker)."""
    return len(_workers(strategy)) or 1


def xla_allowed(strategy):
    """True unless the strategy mirrors over several CPU replicas, which XLA cannot compile across."""
    if strategy.num_replicas_in_sync == 1:
        return True
    devices = getattr(strategy.extended, "worker_devices", ())
    return not any("CPU" in d.upper().rsplit("/", 1)[-1] for d in devices)


def _workers(strategy):
    """Returns the "host:port" of each worker of `strategy`'s cluster ([] when not multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return []
    return list(resolver.cluster_spec().as_dict().get("worker", []))


# The signals a run stops for, in the order of precedence when workers got different ones.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def make_signal_vote(strategy):
    """Returns `vote(signum) -> {worker index: signum}`: every worker of a multi-worker `strategy`
    calls it at the same point with the signal it received (or None), and all get the same answer,
    the workers that received one of `STOP_SIGNALS` and which. Returns None for a one-worker strategy
    (the local signal is the answer; no collective is needed).

    The vote is one all-reduce of 2 floats per worker.
    """
    workers, me = worker_count(strategy), worker_id(strategy)
    if workers == 1:
        return None
    size = workers * len(STOP_SIGNALS)

    @tf.function(autograph=False)
    def total(flags):
        per_replica = strategy.run(tf.identity, args=(flags,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def vote(signum):
        flags = np.zeros(size, np.float32)
        if signum in STOP_SIGNALS:
            flags[me * len(STOP_SIGNALS) + STOP_SIGNALS.index(signum)] = 1.0
        sums = total(tf.constant(flags)).numpy().reshape(workers, len(STOP_SIGNALS))
        return {w: STOP_SIGNALS[int(np.argmax(row > 0))] for w, row in enumerate(sums) if (row > 0).any()}

    return vote


def gather_from_workers(strategy, row):
    """Returns every worker's `row` (a sequence of numbers, the same length on each worker): a float64
    array of shape (workers, len(row)), the same on every worker of a multi-worker `strategy`, row i
    from worker i. Every worker must call it at the same point; one all-reduce of `workers * len(row)`
    values. For a one-worker strategy it returns `[row]` and runs no collective.
    """
    row = np.asarray(row, np.float64)
    workers, me = worker_count(strategy), worker_id(strategy)
    if workers == 1:
        return row[None, :]
    rows = np.zeros((workers, row.size), np.float64)
    rows[me] = row

    @tf.function(autograph=False)
    def total(values):
        per_replica = strategy.run(tf.identity, args=(values,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # Every replica of a worker adds its row: the sum holds each row once per local replica (an
    # exact multiple of whole numbers, so the division below is exact for them).
    local_replicas = max(1, strategy.num_replicas_in_sync // workers)
    return total(tf.constant(rows)).numpy() / local_replicas


# What a collective raises when a peer has gone (its connection closes) or does not answer in time.
# (A killed peer: UnavailableError at once; a stopped or hung one: DeadlineExceededError after the
# cluster timeout.)
_LOST_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@contextlib.contextmanager
def lost_workers_named(strategy):
    """Inside the block, a collective that fails because a peer worker of `strategy` is gone (killed,
    its host down) or does not answer within the cluster timeout raises ClusterError naming the
    workers that no longer accept connections, instead of TensorFlow's error. One-worker runs are
    not affected."""
    try:
        yield
    except _LOST_PEER_ERRORS as e:
        workers = _workers(strategy)
        if len(workers) < 2:
            raise
        me = worker_id(strategy)
        down = unreachable([w for i, w in enumerate(workers) if i != me])
        lost = ", ".join(f"worker {workers.index(w)} ({w})" for w in down) or (
            "none refuses connections (a peer did not answer within the cluster timeout: stopped, hung or overloaded)"
        )
        raise ClusterError(
            f"worker {me} lost its cluster: a collective failed ({type(e).__name__}); "
            f"unreachable now: {lost}. Every worker stops; start the same command on every worker again "
            "to resume from the last checkpoint"
        ) from e
