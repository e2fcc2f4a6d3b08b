"""Where a step's time goes: a TF profiler trace of clr_loop's loop, split into categories of ops.

`profile_spec` profiles one call of a "loop" configuration's loop (`python -m benchmarks.bench
--profile`, in a worker process); `trace_events_from_logdir` reads a trace with xprof (the
`profile` extra) and `profile_breakdown` classifies its ops (`classify_op`) into op time per step
by category, the time some op ran and the time none did (`--analyze_profile`); `format_profile`
prints it.
"""

import json
import os
import time

from benchmarks import worker


# What `classify_op` sorts an op into, in the order of the printed breakdown.
CATEGORIES = (
    "conv forward",
    "conv backward",
    "other forward",
    "other backward",
    "optimizer",
    "input",
    "loss, metrics, loop",
)


def classify_op(long_name, op_type):
    """Returns the CATEGORIES entry for one TensorFlow op, from its full node name and type.

    Convolutions by type (backprop kernels are the backward pass); the optimizer's ops (its
    update and the schedule) live under the `sgd/` scope; input is tf.data and the in-graph
    batch gather; the remaining model ops are forward, or backward under `gradient_tape/`.

    Args:
      long_name: the op's full node name (the trace's `args.long_name` before ":").
      op_type: the op's type (the trace event's name).

    Returns:
      One of CATEGORIES.
    """
    lowered = long_name.lower()
    if "Conv2DBackprop" in op_type or "Conv2DBackprop" in long_name:
        return "conv backward"
    if "Conv2D" in op_type:
        return "conv forward"
    if "/sgd/" in lowered or lowered.startswith("sgd/"):
        return "optimizer"
    if long_name.startswith("Iterator::") or "IteratorGetNext" in op_type or "device_batches" in long_name:
        return "input"
    if "gradient_tape/" in long_name:
        return "other backward"
    if "clr_cnn" in long_name:
        return "other forward"
    return "loss, metrics, loop"


def _union_length(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def profile_breakdown(trace_events, num_steps, wall_ms_per_step):
    """Returns where `num_steps` steps' time went, from Chrome-trace events of a TF profiler trace.

    Op events (complete events "X" with `args.long_name`, and tf.data `Iterator::` events, of which
    only the outermost on each thread counts) are classified with `classify_op`. Returns
    {"ms_per_step": {category: op time per step}, "busy_ms_per_step": time per step during which at
    least one op ran (the union over threads), "overhead_ms_per_step": `wall_ms_per_step` minus
    busy (Python, dispatch, executor scheduling, idle threads), "ops_per_step", "wall_ms_per_step",
    "parallelism": summed op time / busy time}. Times are in ms per step.

    Args:
      trace_events: Chrome-trace events (`trace_events_from_logdir`).
      num_steps: the steps the trace covers.
      wall_ms_per_step: the wall time per step measured around them.

    Returns:
      The dict above.
    """
    per_category = dict.fromkeys(CATEGORIES, 0.0)
    intervals = []
    iterator_by_thread = {}
    ops = 0
    for event in trace_events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = event.get("name", "")
        args = event.get("args") or {}
        if name.startswith("Iterator::"):
            iterator_by_thread.setdefault((event.get("pid"), event.get("tid")), []).append(
                (event["ts"], event["ts"] + event["dur"])
            )
            continue
        if "long_name" not in args:
            continue
        long_name = args["long_name"].split(":", 1)[0]
        per_category[classify_op(long_name, name)] += event["dur"]
        intervals.append((event["ts"], event["ts"] + event["dur"]))
        ops += 1
    for thread_intervals in iterator_by_thread.values():
        per_category["input"] += _union_length(thread_intervals)
        intervals.extend(thread_intervals)
    busy = _union_length(intervals) / 1000.0 / num_steps
    summed = sum(per_category.values()) / 1000.0 / num_steps
    return {
        "ms_per_step": {k: v / 1000.0 / num_steps for k, v in per_category.items()},
        "busy_ms_per_step": busy,
        "overhead_ms_per_step": max(wall_ms_per_step - busy, 0.0),
        "wall_ms_per_step": wall_ms_per_step,
        "ops_per_step": ops / num_steps,
        "parallelism": summed / busy if busy else 0.0,
    }


def step_wall_ms(trace_events):
    """Returns the median duration in ms of the trainer's per-step "train" trace events (those
    `--profile_steps` wraps each profiled step in), or None when the trace has none.

    Args:
      trace_events: Chrome-trace events.

    Returns:
      The median in ms, or None.
    """
    durations = sorted(e["dur"] for e in trace_events if e.get("ph") == "X" and e.get("name") == "train" and "dur" in e)
    return durations[len(durations) // 2] / 1000.0 if durations else None


def format_profile(breakdown):
    """Returns a profile breakdown as text: op time per step by category, its share of all op time,
    how many ops ran at once on average, and the time per step with no op running.

    Args:
      breakdown: `profile_breakdown`'s dict (with "name" and "unprofiled_ms_per_step" when known).

    Returns:
      The text, one line per category and the totals.
    """
    wall = breakdown["wall_ms_per_step"]
    total = sum(breakdown["ms_per_step"].values()) or 1.0
    unprofiled = breakdown.get("unprofiled_ms_per_step")
    lines = [
        f"profile of {breakdown.get('name', '?')}: {wall:.2f} ms/step under the profiler"
        + (f" ({unprofiled:.2f} without)" if unprofiled else "")
        + f", {breakdown['ops_per_step']:.0f} traced ops/step",
        f"  {'category':<22} {'op ms/step':>10}  {'share of op time':>16}",
    ]
    for category, ms in breakdown["ms_per_step"].items():
        lines.append(f"  {category:<22} {ms:10.3f}  {100 * ms / total:15.1f}%")
    lines.append(f"  {'all ops':<22} {total:10.3f}  (x{breakdown['parallelism']:.2f} ops running at once on average)")
    lines.append(f"  {'some op running':<22} {breakdown['busy_ms_per_step']:10.3f}")
    lines.append(
        f"  {'no op running':<22} {breakdown['overhead_ms_per_step']:10.3f}  (Python, dispatch, executor scheduling)"
    )
    return "\n".join(lines)


# How to install what reads a trace (xprof).
PROFILE_INSTALL = 'python -m pip install -e ".[profile]"'


def trace_converter():
    """Returns xprof's `raw_to_tool_data` module, which turns a profiler trace into trace-viewer events.

    xprof is TensorBoard's profile plugin (the `profile` extra; older releases were called
    tensorboard-plugin-profile, which is tried too). Raises ImportError saying how to install it.

    Returns:
      The `raw_to_tool_data` module.
    """
    try:
        from xprof.convert import raw_to_tool_data  # pylint: disable=import-outside-toplevel
    except ImportError:
        try:
            from tensorboard_plugin_profile.convert import raw_to_tool_data  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ImportError(
                f"reading a profiler trace needs xprof (TensorBoard's profile plugin): {PROFILE_INSTALL}"
            ) from None
    return raw_to_tool_data


def trace_events_from_logdir(logdir):
    """Returns the Chrome-trace events of the newest TF profiler run under `logdir` (needs xprof).

    `logdir` is a profiler log dir (the trace lies in `plugins/profile/<run>/*.xplane.pb`) or that
    run folder itself; the events come from xprof's trace-viewer converter.

    Args:
      logdir: a profiler log dir or one run folder of it.

    Returns:
      The list of trace events.
    """
    import glob  # pylint: disable=import-outside-toplevel

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    paths = paths or sorted(glob.glob(os.path.join(logdir, "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir} (or its plugins/profile/*/)")
    newest = os.path.dirname(paths[-1])
    paths = [p for p in paths if os.path.dirname(p) == newest]
    data, _ = trace_converter().xspace_to_tool_data(paths, "trace_viewer", {})
    if data is None:
        raise RuntimeError(f"xprof could not convert {paths}")
    return json.loads(data)["traceEvents"]


def profile_spec(spec, logdir, data=None):
    """Profiles `spec` (a "loop" spec) in this process and returns `profile_breakdown`'s dict.

    After compilation and a warm-up, one call of `steps_per_loop` steps (the configuration's own
    loop length) runs under the TF profiler with every op traced (host tracer level 3, which adds
    about a microsecond per op); the trace is written under `logdir`.

    Args:
      spec: a "loop" `variants.Spec`.
      logdir: where the trace is written.
      data: its `FashionMnist` (None: `worker.load_data(spec.data)`).

    Returns:
      `profile_breakdown`'s dict with "name", "logdir" and "unprofiled_ms_per_step".
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    worker.apply_threads(spec)
    if data is None:
        data, _ = worker.load_data(spec.data)
    run_steps, _, _ = worker.make_loop(spec, data)
    steps = spec.steps_per_loop
    worker.run_loop(run_steps, 2 * steps, steps)
    options = tf.profiler.experimental.ProfilerOptions(
        host_tracer_level=3, python_tracer_level=0, device_tracer_level=1
    )
    tf.profiler.experimental.start(logdir, options=options)
    start = time.perf_counter()
    worker.run_loop(run_steps, steps, steps)
    wall_ms = (time.perf_counter() - start) * 1000.0 / steps
    tf.profiler.experimental.stop()
    # Unprofiled rate right after, to show what tracing every op costs.
    start = time.perf_counter()
    worker.run_loop(run_steps, steps, steps)
    plain_ms = (time.perf_counter() - start) * 1000.0 / steps
    breakdown = profile_breakdown(trace_events_from_logdir(logdir), steps, wall_ms)
    breakdown.update(name=spec.name, logdir=logdir, unprofiled_ms_per_step=plain_ms)
    return breakdown
