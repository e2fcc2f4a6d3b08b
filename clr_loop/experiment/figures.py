"""Figures of learning-rate schedules and training histories, as PNG files (headless).

Data preparation and drawing are kept apart: `schedule_series`, `load_history`, `history_panels`,
`val_accuracy_lines` and `shared_ylim` are pure functions returning the numbers that get plotted
(tests check those), and the `draw_*` functions only turn them into a matplotlib Figure and a PNG.
matplotlib (the `clr_loop[plot]` extra) is imported only when a figure is drawn, with the Agg
renderer and no pyplot, so nothing needs a display and no global figure state builds up.
`python -m clr_loop.plot` is the app around these functions.
"""

import dataclasses
import json
import math
import os

import numpy as np

from clr_loop import errors
from clr_loop.experiment import checks
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import fashion_mnist

REQUIRED_HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# The tutorial draws both loss panels with ylim [0, 2.5]; the limits only grow to fit larger values.
TUTORIAL_LOSS_YLIM = (0.0, 2.5)
ACCURACY_YLIM = (0.0, 1.0)
HISTORY_FIGURES = ("loss.png", "accuracy.png", "val_accuracy.png")
# A schedule figure shows at most this many steps (evenly spaced, first and last included): more
# than a figure's pixels, and a bounded cost for any run length.
MAX_SCHEDULE_POINTS = 100_000
# Steps beyond this are not exact in float64, which the sampling uses.
_MAX_SCHEDULE_STEPS = 2**53


class PlotError(errors.Error):
    """Raised for an unusable input (a history folder, matplotlib missing); the message names it."""


@dataclasses.dataclass(frozen=True)
class Line:
    """One plotted curve: its legend `label`, x values (epochs counted from 1, or steps) and y values."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: str = None
    linestyle: str = "-"


@dataclasses.dataclass(frozen=True)
class Panel:
    """One axes of a figure: its title and the Lines drawn in it."""

    title: str
    lines: tuple


def schedule_series(config, num_train_examples=fashion_mnist.FULL_SIZE["train"], max_points=MAX_SCHEDULE_POINTS):
    """Returns (steps, lr): int64 steps from 0 to total_steps-1 and the float64 rate the optimizer uses at each.

    Every step when there are at most `max_points`, else `max_points` evenly spaced steps
    including the first and the last. `total_steps` and the step size come from
    `config_lib.plan_steps` for a training set of `num_train_examples` (60000, Fashion-MNIST's, by
    default; the last partial batch is dropped), and the rates from `config_lib.make_schedule`,
    exactly as the trainer builds them. Mode "none" gives the constant `config.lr`. Rates are per
    step. Raises PlotError for a schedule longer than 2**53 steps, config.ConfigError for a Config
    whose values cannot run (`checks.check`).
    """
    checks.check(config)
    plan = config_lib.plan_steps(config, num_train_examples)
    if plan.total_steps > _MAX_SCHEDULE_STEPS:
        raise PlotError(f"a schedule of {plan.total_steps} steps is too long to plot (at most 2**53)")
    if plan.total_steps <= max_points:
        steps = np.arange(plan.total_steps, dtype=np.int64)
    else:
        steps = np.unique(np.round(np.linspace(0, plan.total_steps - 1, max_points)).astype(np.int64))
    schedule = config_lib.make_schedule(config, plan)
    if callable(schedule):
        lr = np.asarray(schedule(steps), dtype=np.float64)
    else:
        lr = np.full(steps.shape, float(schedule), dtype=np.float64)
    return steps, lr


def load_history(run_dir):
    """Returns the history dict of a run folder: per-epoch float lists, one per key of `history.json`.

    Raises PlotError naming the folder when `history.json` is missing, is not valid JSON, lacks one
    of `REQUIRED_HISTORY_KEYS`, or holds lists that are empty, not numbers or of different lengths.
    """
    path = os.path.join(run_dir, "history.json")
    if not os.path.isfile(path):
        raise PlotError(f"{run_dir}: no history.json in this folder (is it a clr_loop run's --workdir?)")
    try:
        with open(path) as f:
            history = json.load(f)
    except (OSError, ValueError) as e:
        raise PlotError(f"{run_dir}: history.json cannot be read as JSON: {e}") from e
    if not isinstance(history, dict):
        raise PlotError(f"{run_dir}: history.json holds a {type(history).__name__}, expected an object of lists")
    missing = [key for key in REQUIRED_HISTORY_KEYS if key not in history]
    if missing:
        raise PlotError(f"{run_dir}: history.json lacks {', '.join(missing)}")
    lengths = set()
    for key, values in history.items():
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise PlotError(f"{run_dir}: history.json key {key!r} is not a list of numbers")
        if key in REQUIRED_HISTORY_KEYS:
            lengths.add(len(values))
    if len(lengths) != 1 or 0 in lengths:
        raise PlotError(f"{run_dir}: history.json lists are empty or of different lengths")
    return {key: [float(v) for v in values] for key, values in history.items()}


def shared_ylim(histories, keys, floor):
    """Returns (low, high) y-limits covering every finite value of `keys` in all `histories` and `floor`.

    `floor` is the (low, high) range to show at least (the tutorial's (0, 2.5) for loss); a limit
    only moves out, by 5% of the span, when some value lies beyond it.
    """
    values = np.array([v for h in histories for key in keys for v in h[key]], dtype=np.float64)
    values = values[np.isfinite(values)]
    low, high = floor
    if values.size:
        margin = 0.05 * (max(high, values.max()) - min(low, values.min()))
        if values.min() < low:
            low = float(values.min() - margin)
        if values.max() > high:
            high = float(values.max() + margin)
    return (low, high)


def history_panels(histories, labels, train_key, val_key, groups=None):
    """Returns one Panel per group of runs: `train_key` and `val_key` (per epoch, from 1) of each run.

    `groups[i]` names the panel run i goes into (default: its label, so one panel per run); panels
    keep the groups' first-appearance order. Inside a panel the train curve is colour C0 and the
    val curve C1, as in the tutorial; runs sharing a panel differ by line style.
    """
    groups = list(labels) if groups is None else list(groups)
    order = list(dict.fromkeys(groups))
    styles = ("-", "--", ":", "-.")
    panels = []
    for group in order:
        members = [i for i, g in enumerate(groups) if g == group]
        lines = []
        for n, i in enumerate(members):
            suffix = f" ({labels[i]})" if len(members) > 1 else ""
            style = styles[n % len(styles)]
            for key, color in ((train_key, "C0"), (val_key, "C1")):
                y = np.asarray(histories[i][key], dtype=np.float64)
                name = "train_" + key if key == train_key else key
                lines.append(Line(f"{name}{suffix}", np.arange(1, len(y) + 1), y, color, style))
        panels.append(Panel(group, tuple(lines)))
    return panels


def val_accuracy_lines(histories, labels, groups=None):
    """Returns one Line of val_accuracy per run (epochs from 1); runs of one group share a colour."""
    groups = list(labels) if groups is None else list(groups)
    colors = {g: f"C{n % 10}" for n, g in enumerate(dict.fromkeys(groups))}
    seen = {}
    styles = ("-", "--", ":", "-.")
    lines = []
    for history, label, group in zip(histories, labels, groups):
        y = np.asarray(history["val_accuracy"], dtype=np.float64)
        style = styles[seen.get(group, 0) % len(styles)]
        seen[group] = seen.get(group, 0) + 1
        lines.append(Line(label, np.arange(1, len(y) + 1), y, colors[group], style))
    return lines


def _matplotlib():
    """Returns (matplotlib.figure, matplotlib.ticker), or raises PlotError saying how to install them."""
    try:
        from matplotlib import figure  # pylint: disable=import-outside-toplevel
        from matplotlib import ticker  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise PlotError(
            "figures need matplotlib, the optional extra clr_loop[plot]: "
            'python -m pip install -e ".[plot]" (or: python -m pip install matplotlib)'
        ) from e
    return figure, ticker


def _new_figure(**kwargs):
    return _matplotlib()[0].Figure(layout="tight", **kwargs)


def _integer_epochs(ax):
    lo, hi = ax.get_xlim()
    if hi - lo < 2:
        # One or two epochs: matplotlib's small margins leave too few integers for integer ticks.
        mid = (lo + hi) / 2
        ax.set_xlim(min(lo, mid - 1), max(hi, mid + 1))
    ax.xaxis.set_major_locator(_matplotlib()[1].MaxNLocator(integer=True))


def require_matplotlib():
    """Raises PlotError (with the install command) unless matplotlib can be imported; returns None."""
    _matplotlib()


def _save(fig, path):
    """Writes `fig` as a PNG to exactly `path`, atomically; returns `path`. Raises PlotError naming
    `path` when it cannot be written (the temporary file removed, an earlier file left as it was)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # The Agg canvas for PNG: no pyplot, no display, no backend switch; format= keeps the
        # name as given (savefig would add ".png" to a name without an extension).
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    except OSError as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise PlotError(f"{path}: cannot write the figure ({e})") from e
    return path


def draw_schedule(steps, lr, path, title):
    """Draws lr against step as in the tutorial, writes it to `path` (PNG); returns the Figure."""
    fig = _new_figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(steps, lr)
    ax.set_xlabel("Steps")
    ax.set_ylabel("Learning Rate")
    ax.set_title(title)
    _save(fig, path)
    return fig


def draw_panels(panels, ylim, ylabel, path):
    """Draws each Panel in its own axes with the same `ylim`, writes `path` (PNG); returns the Figure.

    Two panels or fewer are stacked in rows, like the tutorial's loss figure; more go in a grid of
    two columns.
    """
    ncols = 1 if len(panels) <= 2 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(figsize=(10 if ncols == 1 else 12, 4 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels):
        for line in panel.lines:
            # A one-epoch history is a single point, which a line alone does not show.
            marker = "o" if len(line.x) == 1 else None
            ax.plot(line.x, line.y, label=line.label, color=line.color, linestyle=line.linestyle, marker=marker)
        ax.set_title(panel.title)
        ax.set_xlabel("Epochs")
        ax.set_ylabel(ylabel)
        ax.set_ylim(ylim)
        _integer_epochs(ax)
        ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _save(fig, path)
    return fig


def draw_overlay(lines, ylabel, path, title):
    """Draws all Lines in one axes (epochs on x), writes `path` (PNG); returns the Figure."""
    fig = _new_figure(figsize=(9, 5))
    ax = fig.subplots()
    for line in lines:
        ax.plot(line.x, line.y, label=line.label, color=line.color, linestyle=line.linestyle, marker=".")
    ax.set_title(title)
    ax.set_xlabel("Epochs")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _integer_epochs(ax)
    ax.legend(fontsize="small")
    _save(fig, path)
    return fig


def plot_schedule(config, path, num_train_examples=fashion_mnist.FULL_SIZE["train"]):
    """Writes the lr-against-step figure of `config`'s schedule to `path` (PNG); returns `path`."""
    steps, lr = schedule_series(config, num_train_examples)
    plan = config_lib.plan_steps(config, num_train_examples)
    title = f"{config.mode}: {config.epochs} epochs of {plan.steps_per_epoch} steps"
    if config.mode == "piecewise":
        title += f", boundaries at steps {', '.join(map(str, plan.boundaries))}"
    elif config.mode not in ("none", "one_cycle", "cosine", "wsd"):  # no step size in these
        title += f", step_size {plan.step_size}"
    draw_schedule(steps, lr, path, title)
    return path


def plot_histories(run_dirs, out_dir, labels=None, groups=None):
    """Writes the loss, accuracy and val_accuracy-overlay figures of runs into `out_dir`; returns the paths.

    `labels` default to the folders' base names; `groups` (default: one per run) put runs into the
    same loss/accuracy panel and the same overlay colour, e.g. the seeds of one flagfile. All
    histories are loaded first, so a bad folder raises PlotError before any file is written.
    """
    histories = [load_history(d) for d in run_dirs]
    labels = [os.path.basename(os.path.normpath(d)) for d in run_dirs] if labels is None else list(labels)
    require_matplotlib()
    loss_panels = history_panels(histories, labels, "loss", "val_loss", groups)
    accuracy_panels = history_panels(histories, labels, "accuracy", "val_accuracy", groups)
    paths = [os.path.join(out_dir, name) for name in HISTORY_FIGURES]
    draw_panels(loss_panels, shared_ylim(histories, ("loss", "val_loss"), TUTORIAL_LOSS_YLIM), "Loss", paths[0])
    draw_panels(
        accuracy_panels, shared_ylim(histories, ("accuracy", "val_accuracy"), ACCURACY_YLIM), "Accuracy", paths[1]
    )
    draw_overlay(val_accuracy_lines(histories, labels, groups), "val_accuracy", paths[2], "Validation accuracy")
    return paths


def default_out_dir(run_dirs):
    """Returns where `history` writes figures by default: `figures/` in the folder common to all runs.

    For one run that is `<run>/figures`; for runs `a/x` and `a/y` it is `a/figures`.
    """
    return os.path.join(os.path.commonpath([os.path.abspath(d) for d in run_dirs]), "figures")
