"""The benchmark's report: its JSON header, the rows derived from the results, and the text tables.

`report_header` starts the JSON report (the command, versions, CPU); `precision_rows`,
`side_by_side` and `add_ratios` derive rows from the measured results; the `format_*`
functions print them as fixed-width tables (`table`). The JSON is written by the app
(`clr_loop.checkpointing.write_json_atomic`, after every stage). Nothing here imports TensorFlow
at import time.
"""

import json
import os

from benchmarks import machine


def report_header(argv, program="python -m benchmarks.bench"):
    """Returns the fields every JSON report starts with.

    Args:
      argv: the app's command-line arguments after the program name (`sys.argv[1:]`).
      program: how the app was run, the start of the "command" field.

    Returns:
      {"command": the command line, "versions": `machine.versions()`, "cpu_model", "cpu_count"}.
    """
    return {
        "command": " ".join([program, *argv]),
        "versions": machine.versions(),
        "cpu_model": machine.cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def format_whole_process(whole, runs, speedups=True):
    """Returns `whole_process.whole_process`'s medians as text lines, one per process and the speed-ups.

    Args:
      whole: the dict `whole_process.whole_process` returned.
      runs: how many runs each median is of (for the heading).
      speedups: also give the speed-ups against the start-up-tuned script and the PyTorch peer,
        and say which processes failed (the main table); False gives the `--grid` lines.

    Returns:
      The lines, joined with newlines, starting with an empty line.
    """
    med = whole["medians"]
    lines = [f"\nwhole process, 1 epoch incl. start-up, data loading and validation (median of {runs}):"]
    for name, description in whole["commands"].items():
        if speedups and name not in med:
            lines.append(f"  {description:<62} failed: {whole['errors'].get(name)}")
            continue
        lines.append(
            f"  {description:<62} {med[name]['wall_s']:6.2f} s wall {med[name]['cpu_s']:6.2f} s CPU"
            f" {med[name]['peak_rss_mb']:6.0f} MB peak RSS"
        )
    if not speedups:
        lines.append(f"  speed-up of clr_loop.train: x{med['speedup_wall']:.2f} against the tutorial script")
        return "\n".join(lines)
    lines.append(
        f"  speed-up of clr_loop.train: x{med['speedup_wall']:.2f} against the tutorial script,"
        f" x{med['speedup_wall_vs_tuned_fit']:.2f} against its start-up-tuned process"
        + "".join(
            f", x{med[f'speedup_wall_vs_{n}']:.2f} against {n}"
            for n in ("torch", "torch_compile")
            if f"speedup_wall_vs_{n}" in med
        )
    )
    return "\n".join(lines)


def add_ratios(results, baseline, matmul_gflops):
    """Adds `speedup_vs_fit` (baseline ms / this ms: above 1 is faster) and `pct_of_matmul_peak` to each result.

    Args:
      results: result dicts (changed in place).
      baseline: the result the others are compared with.
      matmul_gflops: the best matmul rate (None or 0: no %peak).

    Returns:
      `results`.
    """
    key = "ms_per_step" if "ms_per_step" in baseline else "ms_per_pass"
    for result in results:
        if key not in result:  # a row that failed (a PyTorch row whose torch.compile broke)
            continue
        result["speedup_vs_fit"] = baseline[key] / result[key]
        result["pct_of_matmul_peak"] = 100.0 * result["gflops"] / matmul_gflops if matmul_gflops else None
    return results


def precision_rows(results):
    """Returns [{"name", "precision", "ms_per_step", "float32_ms_per_step", "speedup"}] for every result
    whose precision is not float32 and whose float32 twin (the same spec otherwise) is in `results`;
    speedup is the float32 ms over this one's (above 1: faster).

    Args:
      results: the training result dicts.

    Returns:
      The rows, in the order of `results`.
    """
    by_spec = {}
    for r in results:
        if "ms_per_step" in r and r["spec"].get("precision", "float32") == "float32":
            key = {**r["spec"], "label": ""}
            by_spec[json.dumps(key, sort_keys=True)] = r
    rows = []
    for r in results:
        if r["spec"].get("precision", "float32") == "float32" or "ms_per_step" not in r:
            continue
        key = {**r["spec"], "precision": "float32", "label": ""}
        twin = by_spec.get(json.dumps(key, sort_keys=True))
        if twin is not None:
            rows.append(
                {
                    "name": r["name"],
                    "precision": r["spec"]["precision"],
                    "ms_per_step": r["ms_per_step"],
                    "float32_ms_per_step": twin["ms_per_step"],
                    "speedup": twin["ms_per_step"] / r["ms_per_step"],
                }
            )
    return rows


def format_precision_table(rows):
    """Returns `precision_rows` as a fixed-width text table.

    Args:
      rows: `precision_rows`'s list.

    Returns:
      The table's text.
    """
    return table(
        ("config", "precision", "ms/step", "float32 ms/step", "x float32"),
        [
            (
                r["name"],
                r["precision"],
                f"{r['ms_per_step']:.2f}",
                f"{r['float32_ms_per_step']:.2f}",
                f"{r['speedup']:.2f}",
            )
            for r in rows
        ],
    )


def side_by_side(training, whole=None):
    """Returns the four contenders' rows: clr_loop's default, Keras fit, PyTorch eager, torch.compile.

    Each {"contender", "name", "ms_per_step", "x_fit_step", "whole_s", "x_fit_whole", "peak_rss_mb",
    "note"}: per step from the training results (the trainer's default row, "(a) fit", the "torch"
    and "torch_compile" rows; None where a row is missing or failed, with the reason in "note"),
    whole process from `whole_process`'s medians ("train", "fit", "torch", "torch_compile"), peak
    RSS that of the whole-process run. x_*: fit's time over the row's (above 1: faster than fit).

    Args:
      training: the training result dicts.
      whole: `whole_process.whole_process`'s dict (None: not run).

    Returns:
      Four row dicts: clr_loop, Keras fit, PyTorch eager, torch.compile.
    """

    def pick(predicate):
        return next((r for r in training if predicate(r)), None)

    per_step = {
        "clr_loop": pick(lambda r: r.get("is_trainer_default")),
        "Keras fit": pick(lambda r: r["name"] == "(a) fit"),
        "PyTorch eager": pick(lambda r: r["spec"]["kind"] == "torch"),
        "torch.compile": pick(lambda r: r["spec"]["kind"] == "torch_compile"),
    }
    processes = {"clr_loop": "train", "Keras fit": "fit", "PyTorch eager": "torch", "torch.compile": "torch_compile"}
    medians = (whole or {}).get("medians", {})
    errors = (whole or {}).get("errors", {})
    fit_step = (per_step["Keras fit"] or {}).get("ms_per_step")
    fit_whole = medians.get("fit", {}).get("wall_s")
    rows = []
    for contender, r in per_step.items():
        ms = (r or {}).get("ms_per_step")
        process = medians.get(processes[contender], {})
        whole_s = process.get("wall_s")
        notes = [n for n in ((r or {}).get("error"), errors.get(processes[contender])) if n]
        rows.append(
            {
                "contender": contender,
                "name": (r or {}).get("name"),
                "ms_per_step": ms,
                "x_fit_step": fit_step / ms if ms and fit_step else None,
                "whole_s": whole_s,
                "x_fit_whole": fit_whole / whole_s if whole_s and fit_whole else None,
                "peak_rss_mb": process.get("peak_rss_mb"),
                "note": "; ".join(notes),
            }
        )
    return rows


def format_side_by_side(rows):
    """Returns `side_by_side`'s rows as a fixed-width text table ("-": not measured).

    Args:
      rows: `side_by_side`'s list.

    Returns:
      The table's text.
    """

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    return table(
        ("contender", "ms/step", "x fit", "whole process s", "x fit", "peak RSS MB", "note"),
        [
            (
                r["contender"],
                num(r["ms_per_step"], ".2f"),
                num(r["x_fit_step"], ".2f"),
                num(r["whole_s"], ".2f"),
                num(r["x_fit_whole"], ".2f"),
                num(r["peak_rss_mb"], ".0f"),
                r["note"][:80],
            )
            for r in rows
        ],
    )


def format_training_table(results):
    """Returns the training results as a fixed-width text table (one row per configuration).

    "*" marks the trainer's default configuration; "range" is the fastest and slowest repeat. A row
    that failed (its "error") is listed under the table with the reason.

    Args:
      results: the training result dicts (with `add_ratios`'s fields).

    Returns:
      The table's text, failed rows under it.
    """
    header = (
        "config",
        "parts/threads",
        "ms/step",
        "range",
        "cpu ms",
        "ex/s",
        "compile s",
        "peak RSS MB",
        "x(a)",
        "GFLOP/s",
        "%peak",
    )
    rows = []
    failed = [f"  {r['name']}: not measured: {r['error']}" for r in results if "error" in r]
    for r in results:
        if "error" in r:
            continue
        reps = r["ms_per_step_repeats"]
        rows.append(
            (
                r["name"] + (" *" if r.get("is_trainer_default") else ""),
                _parallelism(r),
                f"{r['ms_per_step']:.2f}",
                f"{min(reps):.2f}-{max(reps):.2f}",
                f"{r['cpu_ms_per_step']:.2f}",
                f"{r['examples_per_s']:.0f}",
                f"{r['compile_s']:.2f}",
                f"{r['process_peak_rss_mb']:.0f}",
                f"{r['speedup_vs_fit']:.2f}",
                f"{r['gflops']:.1f}",
                f"{r['pct_of_matmul_peak']:.1f}",
            )
        )
    return "\n".join([table(header, rows), *failed])


def _parallelism(result):
    """Returns "parts/threads" of a result: batch parts per step and the inter-op x intra-op pools (0: TF's default)."""
    inter, intra = result.get("threads", (0, 0))
    return f"{result.get('splits_resolved', 1)}/{inter}x{intra}"


def format_eval_table(results):
    """Returns the eval results (one pass over the test split) as a fixed-width text table.

    Args:
      results: the eval result dicts (with `add_ratios`'s fields).

    Returns:
      The table's text.
    """
    header = (
        "config",
        "parts/threads",
        "batch",
        "ms/pass",
        "cpu ms",
        "ex/s",
        "compile s",
        "peak RSS MB",
        "x(fit_eval)",
        "GFLOP/s",
    )
    rows = [
        (
            r["name"],
            _parallelism(r),
            str(r["eval_batch_size"]),
            f"{r['ms_per_pass']:.1f}",
            f"{r['cpu_ms_per_pass']:.1f}",
            f"{r['examples_per_s']:.0f}",
            f"{r['compile_s']:.2f}",
            f"{r['process_peak_rss_mb']:.0f}",
            f"{r['speedup_vs_fit']:.2f}",
            f"{r['gflops']:.1f}",
        )
        for r in results
    ]
    return table(header, rows)


def format_grid_table(results):
    """Returns the `--grid` results as a fixed-width text table; failed rows say why.

    Args:
      results: `processes.grid_results`'s list.

    Returns:
      The table's text, failed rows under it.
    """
    header = (
        "config",
        "batch",
        "precision",
        "XLA",
        "input",
        "ms/step",
        "range",
        "x fit",
        "ex/s",
        "compile s",
        "peak RSS MB",
    )
    rows, failed = [], []
    for r in results:
        spec = r["spec"]
        if "error" in r:
            failed.append(f"  {r['name']}: not measured: {r['error']}")
            continue
        reps = r["ms_per_step_repeats"]
        speedup = r.get("speedup_vs_fit")
        rows.append(
            (
                r["name"],
                str(spec["batch_size"]),
                spec["precision"],
                "on" if r.get("jit_resolved") else "off",
                "-" if spec["kind"] == "fit" else spec["input"],
                f"{r['ms_per_step']:.3f}",
                f"{min(reps):.3f}-{max(reps):.3f}",
                "-" if speedup is None else f"{speedup:.2f}",
                f"{r['examples_per_s']:.0f}",
                f"{r['compile_s']:.2f}",
                f"{r['process_peak_rss_mb']:.0f}",
            )
        )
    return "\n".join([table(header, rows), *failed])


def format_kernels(runs, top=6):
    """Returns the kernel lists as text: per run the `top` most executed oneDNN primitives.

    Args:
      runs: `processes.run_kernel_specs`'s list.
      top: kernels listed per run.

    Returns:
      One line per run, joined with newlines.
    """
    lines = []
    for run in runs:
        kernels = list(run["kernels"].items())
        listed = (
            ", ".join(f"{k} x{n}" for k, n in kernels[:top]) or "no oneDNN primitive ran (TensorFlow's Eigen kernels)"
        )
        more = f", and {len(kernels) - top} more" if len(kernels) > top else ""
        lines.append(f"  {run['name']}: {listed}{more}")
    return "\n".join(lines)


def table(header, rows):
    """Returns rows as a fixed-width text table: the first column left-aligned, the others right-aligned.

    Args:
      header: the column names.
      rows: tuples of cell values (strings), as many as `header` has.

    Returns:
      The header, a rule of dashes and the rows, joined with newlines.
    """
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
