"""Measurement helpers shared by the benchmark's TensorFlow and PyTorch workers, free of both frameworks.

The benchmark's TensorFlow workers import TensorFlow; `benchmarks.torch_peer`'s processes must not (a PyTorch
process carrying TensorFlow's runtime would not be the peer a PyTorch user runs), so what both
need to time a step the same way lives here: process CPU time, peak RSS and the per-step summary
(the cost model is `benchmarks.cost_model`).
"""

import resource
import statistics
import sys

RESULT_PREFIX = "BENCH_RESULT "


def cpu_seconds():
    """Returns this process's CPU time so far (user + system, all threads), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb():
    """Returns this process's peak resident set size so far (`ru_maxrss`), in MiB."""
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def summary(batch_size, seconds_per_repeat, cpu_per_repeat, steps, first_call_s, first_call_steps, flops):
    """Returns the per-step figures of timed repeats of `steps` steps each, as a dict.

    Keys: "ms_per_step" (median over the repeats) and "ms_per_step_repeats", "cpu_ms_per_step"
    (median process CPU time per step), "examples_per_s", "first_call_s", "compile_s" (the first
    call minus its `first_call_steps` steps at the median rate), "steps", "flops_per_step" and
    "gflops".
    """
    ms = [1000.0 * s / steps for s in seconds_per_repeat]
    ms_step = statistics.median(ms)
    return {
        "ms_per_step": ms_step,
        "ms_per_step_repeats": ms,
        "cpu_ms_per_step": statistics.median(1000.0 * c / steps for c in cpu_per_repeat),
        "examples_per_s": batch_size * 1000.0 / ms_step,
        "first_call_s": first_call_s,
        "compile_s": max(first_call_s - first_call_steps * ms_step / 1000.0, 0.0),
        "steps": steps,
        "flops_per_step": flops,
        "gflops": flops / ms_step / 1e6,
    }
