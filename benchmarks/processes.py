"""The parent side of the benchmark: worker processes, run and timed one configuration each.

Every configuration runs in its own subprocess (`run_spec_in_subprocess`: `python -m
benchmarks.bench --worker=<JSON Spec>`, or `benchmarks.torch_peer`'s worker for the PyTorch
kinds), so thread settings can differ between configurations and the peak RSS the OS reports for
that process (`run_process`) belongs to that configuration alone. `run_specs` and `run_grid` run
lists of them in interleaved rounds and `merge_rounds` pools the rounds' repeats.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import machine
from benchmarks import measure
from benchmarks import variants


# The repository's root: the workers run there, with it on their PYTHONPATH.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env():
    """Returns the environment of a worker process: this one's, with the repository on PYTHONPATH.

    Returns:
      A dict of environment variables (TF_CPP_MIN_LOG_LEVEL defaults to 2).
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_process(argv, timeout=1800, env=None):
    """Runs `argv` as a child process; returns {"rc", "wall_s", "cpu_s", "peak_rss_mb", "stdout", "stderr"}.

    Wall time is measured around the whole process (interpreter start to exit); CPU time and peak
    RSS come from the OS's accounting of that one child (`os.wait4`), so they belong to it alone.
    `env` adds variables to the child's environment.

    Args:
      argv: the command line.
      timeout: seconds before the child is killed (TimeoutError).
      env: variables added to the child's environment (`child_env()`).

    Returns:
      {"rc", "wall_s", "cpu_s", "peak_rss_mb", "stdout", "stderr"}.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**child_env(), **(env or {})}, cwd=REPO_ROOT)
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        scale = 1 if sys.platform == "darwin" else 1024
        return {
            "rc": proc.returncode,
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss * scale / 2**20,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def _wait4(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        waited, status, usage = os.wait4(pid, os.WNOHANG)
        if waited == pid:
            return waited, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} ran longer than {timeout} s")
        time.sleep(0.05)


def worker_argv(spec):
    """Returns the command line of `spec`'s worker: `python -m benchmarks.bench --worker=<spec>`, or
    for the PyTorch kinds `python -m benchmarks.torch_peer --worker=<spec>` (no TensorFlow in it).

    Args:
      spec: a `variants.Spec`.

    Returns:
      The argv list.
    """
    module = "benchmarks.torch_peer" if spec.kind in variants.TORCH_KINDS else "benchmarks.bench"
    return [sys.executable, "-m", module, f"--worker={spec.to_json()}"]


def run_spec_in_subprocess(spec, env=None):
    """Runs `spec` in a fresh worker process (`worker_argv`); returns its result dict.

    The worker's own measurements are kept; `name`, `spec`, `process_peak_rss_mb` and
    `process_wall_s` (the OS's view of the whole worker process) are added, and `stdout` when
    `env` is given (extra environment, for ONEDNN_VERBOSE; a "torch_compile" worker also gets an
    empty TORCHINDUCTOR_CACHE_DIR). A failed worker raises RuntimeError
    with its stderr's tail; a PyTorch worker whose torch.compile failed returns its "error".

    Args:
      spec: a `variants.Spec`.
      env: extra environment variables of the worker (None: none).

    Returns:
      The worker's result dict, with the fields above added.
    """
    if spec.kind == "torch_compile":  # an empty Inductor cache: the compile is timed as on a first run
        env = {**(env or {}), "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="clr_bench_inductor_")}
    proc = run_process(worker_argv(spec), env=env)
    lines = [line for line in proc["stdout"].splitlines() if line.startswith(measure.RESULT_PREFIX)]
    if proc["rc"] != 0 or not lines:
        raise RuntimeError(f"benchmark worker for {spec.name} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}")
    result = json.loads(lines[-1][len(measure.RESULT_PREFIX) :])
    result.setdefault("name", spec.name)
    result.setdefault("spec", dataclasses.asdict(spec))
    result["process_peak_rss_mb"] = proc["peak_rss_mb"]
    result["process_wall_s"] = proc["wall_s"]
    if env and "ONEDNN_VERBOSE" in env:
        result["stdout"] = proc["stdout"]
    return result


def merge_rounds(results):
    """Merges results of the same spec from several rounds into one (median of all their repeats).

    `results` is a list of result dicts of one spec; the merged dict is the first, with the
    per-step (or per-pass) figures recomputed over the pooled repeats and the peak RSS the max.

    Args:
      results: result dicts of one spec, one per round.

    Returns:
      The merged result dict (with "rounds" when there was more than one).
    """
    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    for key in ("ms_per_step", "ms_per_pass"):
        if key in merged:
            pooled = [v for r in results for v in r[key + "_repeats"]]
            merged[key + "_repeats"] = pooled
            merged[key] = statistics.median(pooled)
            batch = merged["spec"]["batch_size"] if key == "ms_per_step" else None
            if batch:
                merged["examples_per_s"] = batch * 1000.0 / merged[key]
                merged["gflops"] = merged["flops_per_step"] / merged[key] / 1e6
            else:
                merged["gflops"] = merged["flops_per_pass"] / merged[key] / 1e6
    for key in ("compile_s", "first_call_s", "cpu_ms_per_step", "cpu_ms_per_pass"):
        if key in merged:
            merged[key] = statistics.median(r[key] for r in results)
    for key in ("peak_rss_mb", "process_peak_rss_mb"):
        merged[key] = max(r[key] for r in results)
    merged["rounds"] = len(results)
    return merged


def run_specs(specs, rounds=1, log=print, matmul=None):
    """Runs every spec in its own subprocess, `rounds` times interleaved; returns merged results in order.

    Interleaving (all specs, then all again) spreads slow drifts of a shared machine's load over
    every configuration instead of charging them to whichever ran at that moment. With a list as
    `matmul`, a "matmul" spec runs at the start of every round and its results are appended there.

    Args:
      specs: the `variants.Spec` list.
      rounds: runs of each spec, interleaved.
      log: prints a progress line.
      matmul: a list the "matmul" results are appended to (None: no matmul rounds).

    Returns:
      The merged results, in the order of `specs`.
    """
    by_spec = {spec: [] for spec in specs}
    for round_index in range(rounds):
        if matmul is not None:
            matmul.append(run_spec_in_subprocess(variants.Spec("matmul", repeats=3)))
        for spec in specs:
            log(f"[round {round_index + 1}/{rounds}] {spec.name} ...")
            by_spec[spec].append(run_spec_in_subprocess(spec))
    return [merge_rounds(by_spec[spec]) for spec in specs]


def run_kernel_specs(specs, log=print):
    """Runs each spec once with ONEDNN_VERBOSE=1; returns [{"name", "precision", "kernels": onednn_kernels}].

    Args:
      specs: `variants.kernel_specs`'s list.
      log: prints a progress line.

    Returns:
      [{"name", "precision", "kernels"}], one per spec.
    """
    out = []
    for spec in specs:
        log(f"oneDNN kernels of {spec.name} ...")
        result = run_spec_in_subprocess(spec, env={"ONEDNN_VERBOSE": "1"})
        out.append(
            {"name": spec.name, "precision": spec.precision, "kernels": machine.onednn_kernels(result.pop("stdout"))}
        )
    return out


def run_grid(specs, rounds=1, log=print, save=None):
    """Runs every spec of `grid_specs` in its own worker, `rounds` times interleaved; returns the
    merged results in order, each with `speedup_vs_fit` (its group's fit ms over its own) where
    both were measured. A failed worker becomes {"name", "spec", "error"} instead of stopping the
    grid; `save(results)` is called after every worker with the results so far.

    Args:
      specs: `variants.grid_specs`'s list.
      rounds: runs of each spec, interleaved.
      log: prints a progress line.
      save: called with the results so far after every worker (None: not called).

    Returns:
      The merged results (`grid_results`).
    """
    runs = {spec: [] for spec in specs}
    errors = {}
    for round_index in range(rounds):
        for spec in specs:
            if spec in errors:
                continue
            log(f"[round {round_index + 1}/{rounds}] {spec.name} ...")
            try:
                runs[spec].append(run_spec_in_subprocess(spec))
            except (RuntimeError, TimeoutError) as e:
                errors[spec] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
                log(f"  failed: {errors[spec]}")
            if save:
                save(grid_results(specs, runs, errors))
    return grid_results(specs, runs, errors)


def grid_results(specs, runs, errors):
    """Returns the `--grid` results so far: each spec's rounds merged, or why it was not measured.

    Args:
      specs: `variants.grid_specs`'s list.
      runs: {spec: [result dicts of its rounds]}.
      errors: {spec: why its worker failed}.

    Returns:
      The results in the order of `specs`: merged, or {"name", "spec", "error"}; each with
      "speedup_vs_fit" where its group's fit and it were measured.
    """
    results = []
    for spec in specs:
        if spec in errors or not runs[spec]:
            results.append({"name": spec.name, "spec": dataclasses.asdict(spec), "error": errors.get(spec, "not run")})
        else:
            results.append(merge_rounds(runs[spec]))
    per_group = len(variants.GRID_CONTENDERS)
    for index in range(0, len(results), per_group):
        group = results[index : index + per_group]
        fit = group[0].get("ms_per_step")
        for r in group:
            if fit and r.get("ms_per_step"):
                r["speedup_vs_fit"] = fit / r["ms_per_step"]
    return results


def profile_in_subprocess(spec, logdir):
    """Profiles `spec` in a fresh `python -m benchmarks.bench --profile_worker=<spec>` process.

    Args:
      spec: a "loop" `variants.Spec`.
      logdir: where the worker writes the profiler trace.

    Returns:
      The worker's `step_profile.profile_spec` dict.

    Raises:
      RuntimeError: the worker failed (with its stderr's tail).
    """
    proc = run_process(
        [sys.executable, "-m", "benchmarks.bench", f"--profile_worker={spec.to_json()}", f"--profile_logdir={logdir}"]
    )
    lines = [line for line in proc["stdout"].splitlines() if line.startswith(measure.RESULT_PREFIX)]
    if proc["rc"] != 0 or not lines:
        raise RuntimeError(f"profile of {spec.name} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}")
    return json.loads(lines[-1][len(measure.RESULT_PREFIX) :])
