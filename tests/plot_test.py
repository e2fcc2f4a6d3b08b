"""Tests of clr_loop.experiment.figures and the clr_loop.plot app: plotted series against hand-computed schedules, history checks, PNGs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

from clr_loop.experiment import config as config_lib
from clr_loop.experiment import figures
from clr_loop import plot
from testing import REPO, assert_one_line_usage_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The tutorial's numbers: 60000 // 64 = 937 steps per epoch, step size 2 epochs.
STEPS_PER_EPOCH = 937
STEP_SIZE = 2 * STEPS_PER_EPOCH
LO, HI = 1e-4, 1e-2


def tutorial_config(**overrides):
    values = dict(mode="triangular2", initial_lr=LO, max_lr=HI, step_size_epochs=2.0, epochs=10, batch_size=64)
    values.update(overrides)
    return config_lib.Config(**values)


def strict_extrema(y):
    """Returns the interior indices where y is strictly above (maxima) or below (minima) both neighbours."""
    left, mid, right = y[:-2], y[1:-1], y[2:]
    return np.flatnonzero((mid > left) & (mid > right)) + 1, np.flatnonzero((mid < left) & (mid < right)) + 1


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(path) > 1000, path


def write_history(run_dir, loss, val_loss, accuracy, val_accuracy):
    os.makedirs(run_dir, exist_ok=True)
    history = {
        "loss": loss,
        "accuracy": accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "lr": [0.01] * len(loss),
        "epoch_seconds": [1.0] * len(loss),
    }
    with open(os.path.join(run_dir, "history.json"), "w") as f:
        json.dump(history, f)
    return str(run_dir)


def test_triangular2_series_handed_to_the_plot_peaks_and_troughs_where_expected(tmp_path, monkeypatch):
    drawn = []
    draw = figures.draw_schedule
    monkeypatch.setattr(figures, "draw_schedule", lambda *args: drawn.append(draw(*args)) or drawn[-1])
    path = figures.plot_schedule(tutorial_config(), str(tmp_path / "t2.png"))
    assert_png(path)
    (line,) = drawn[0].axes[0].get_lines()
    steps, lr = line.get_xdata(), line.get_ydata()

    np.testing.assert_array_equal(steps, np.arange(10 * STEPS_PER_EPOCH))
    maxima, minima = strict_extrema(lr)
    # 10 epochs hold 2.5 cycles: peaks at S and 3S, troughs at 2S and 4S, and it starts at the low rate.
    np.testing.assert_array_equal(maxima, [STEP_SIZE, 3 * STEP_SIZE])
    np.testing.assert_array_equal(minima, [2 * STEP_SIZE, 4 * STEP_SIZE])
    assert lr[0] == pytest.approx(LO, rel=1e-6) and lr[1] > lr[0]
    # triangular2 halves the amplitude each cycle: 1e-4 + 9.9e-3 / 2**k at the k-th peak.
    np.testing.assert_allclose(lr[maxima], [HI, LO + (HI - LO) / 2], rtol=1e-6)
    np.testing.assert_allclose(lr[minima], LO, rtol=1e-6)
    # Halfway up the first rise, by hand: 1e-4 + 9.9e-3 * 937 / 1874.
    assert lr[STEPS_PER_EPOCH] == pytest.approx(LO + (HI - LO) * 0.5, rel=1e-6)


def test_100_epoch_series_has_25_halving_peaks():
    steps, lr = figures.schedule_series(tutorial_config(epochs=100))
    assert len(steps) == 100 * STEPS_PER_EPOCH
    peaks = STEP_SIZE + 2 * STEP_SIZE * np.arange(25)
    np.testing.assert_allclose(lr[peaks], LO + (HI - LO) / 2.0 ** np.arange(25), rtol=1e-6)
    np.testing.assert_allclose(lr[2 * STEP_SIZE * np.arange(25)], LO, rtol=1e-6)
    # While the amplitude is still far above float32 resolution, each cycle's maximum is its peak step.
    for k in range(10):
        cycle = lr[2 * STEP_SIZE * k : 2 * STEP_SIZE * (k + 1)]
        assert int(np.argmax(cycle)) == STEP_SIZE


def test_series_follows_batch_size_train_size_and_constant_mode():
    steps, lr = figures.schedule_series(tutorial_config(mode="triangular", batch_size=100, epochs=4), 1000)
    # 1000 // 100 = 10 steps per epoch, step size 20: triangles of constant height.
    assert len(steps) == 40
    maxima, minima = strict_extrema(lr)
    np.testing.assert_array_equal(maxima, [20])
    assert lr[20] == pytest.approx(HI, rel=1e-6) and lr[39] == pytest.approx(LO + (HI - LO) / 20, rel=1e-6)
    steps, lr = figures.schedule_series(tutorial_config(mode="none", lr=0.01, epochs=2), 640)
    np.testing.assert_array_equal(lr, np.full(20, 0.01))


def test_a_long_schedule_is_sampled_at_bounded_evenly_spaced_steps():
    # 10**8 epochs of 937 steps: 9.37e10 steps, far more than memory holds as a float64 array.
    steps, lr = figures.schedule_series(tutorial_config(epochs=10**8))
    total = 10**8 * STEPS_PER_EPOCH
    assert len(steps) == figures.MAX_SCHEDULE_POINTS and steps.dtype == np.int64
    assert steps[0] == 0 and steps[-1] == total - 1 and np.all(np.diff(steps) > 0)
    assert np.abs(np.diff(steps) - (total - 1) / (len(steps) - 1)).max() <= 1  # evenly spaced
    # triangular2 by hand at the sampled steps (float64): cycle c = 1 + step // 2S, height from pos.
    cycle = 1 + steps // (2 * STEP_SIZE)
    pos = steps % (2 * STEP_SIZE)
    height = np.where(pos <= STEP_SIZE, pos / STEP_SIZE, (2 * STEP_SIZE - pos) / STEP_SIZE)
    np.testing.assert_allclose(lr, LO + (HI - LO) * height * np.exp2(1.0 - cycle), rtol=1e-6, atol=1e-12)
    # A short schedule keeps every step.
    assert len(figures.schedule_series(tutorial_config(epochs=3), max_points=3 * STEPS_PER_EPOCH)[0]) == 3 * 937


def test_shared_ylim_keeps_the_tutorial_range_and_grows_only_to_fit():
    small = {"loss": [2.0, 0.5], "val_loss": [1.0, 0.3]}
    assert figures.shared_ylim([small], ("loss", "val_loss"), (0.0, 2.5)) == (0.0, 2.5)
    big = {"loss": [3.0, 1.0], "val_loss": [2.0, float("nan")]}
    # Span 0..3 gives a 5% margin of 0.15 above the largest finite value.
    assert figures.shared_ylim([small, big], ("loss", "val_loss"), (0.0, 2.5)) == pytest.approx((0.0, 3.15))


def test_history_panels_one_per_run_or_per_group():
    h1 = {"loss": [2.0, 1.0], "val_loss": [1.5, 0.9]}
    h2 = {"loss": [2.1, 1.2], "val_loss": [1.6, 1.0]}
    panels = figures.history_panels([h1, h2], ["a", "b"], "loss", "val_loss")
    assert [p.title for p in panels] == ["a", "b"]
    train, val = panels[1].lines
    assert (train.label, val.label) == ("train_loss", "val_loss")
    np.testing.assert_array_equal(train.x, [1, 2])
    np.testing.assert_array_equal(val.y, [1.6, 1.0])
    grouped = figures.history_panels([h1, h2, h1], ["a1", "b1", "a2"], "loss", "val_loss", groups=["a", "b", "a"])
    assert [p.title for p in grouped] == ["a", "b"]
    assert [line.label for line in grouped[0].lines] == [
        "train_loss (a1)",
        "val_loss (a1)",
        "train_loss (a2)",
        "val_loss (a2)",
    ]


def test_one_epoch_history_panels_show_their_points(tmp_path):
    one = figures.history_panels([{"loss": [2.0], "val_loss": [1.5]}], ["a"], "loss", "val_loss")
    two = figures.history_panels([{"loss": [2.0, 1.0], "val_loss": [1.5, 0.9]}], ["a"], "loss", "val_loss")
    axes = [
        figures.draw_panels(panels, (0.0, 2.5), "Loss", str(tmp_path / f"{i}.png")).axes[0]
        for i, panels in enumerate((one, two))
    ]
    assert [[line.get_marker() for line in ax.lines] for ax in axes] == [["o", "o"], ["None", "None"]]
    for ax in axes:  # epochs are whole numbers on the axis, also for one or two of them
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert 1 in ticks


def test_history_command_writes_three_pngs_with_shared_limits(tmp_path, capsys):
    runs = [
        write_history(tmp_path / "no_clr", [2.2, 1.3, 0.9], [1.7, 1.0, 0.8], [0.2, 0.5, 0.7], [0.4, 0.6, 0.72]),
        write_history(tmp_path / "clr", [2.3, 2.2, 1.3], [2.28, 1.7, 1.0], [0.1, 0.2, 0.5], [0.2, 0.45, 0.65]),
        write_history(tmp_path / "big", [3.5, 2.0, 1.0], [3.0, 1.8, 0.9], [0.1, 0.3, 0.6], [0.15, 0.4, 0.6]),
    ]
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.plot", "history", *runs, f"--out_dir={tmp_path / 'figs'}"])
        assert plot.main(rest) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "figs" / name) for name in figures.HISTORY_FIGURES]
    for path in printed:
        assert_png(path)
    # The limits the loss panels share cover 0..3.5 (+5%), and the overlay holds every run's val_accuracy.
    histories = [figures.load_history(r) for r in runs]
    assert figures.shared_ylim(histories, ("loss", "val_loss"), figures.TUTORIAL_LOSS_YLIM) == pytest.approx(
        (0.0, 3.675)
    )
    lines = figures.val_accuracy_lines(histories, ["no_clr", "clr", "big"])
    np.testing.assert_array_equal(lines[1].y, [0.2, 0.45, 0.65])


def test_history_figures_default_to_the_runs_common_folder(tmp_path):
    a = write_history(tmp_path / "abl" / "a", [1.0], [1.0], [0.5], [0.5])
    b = write_history(tmp_path / "abl" / "b", [1.0], [1.0], [0.5], [0.5])
    assert figures.default_out_dir([a, b]) == str(tmp_path / "abl" / "figures")
    assert figures.default_out_dir([a]) == str(tmp_path / "abl" / "a" / "figures")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no history.json"),
        ("{not json", "cannot be read as JSON"),
        ("[1, 2]", "holds a list"),
        ('{"loss": [1.0], "accuracy": [0.1], "val_loss": [1.0]}', "lacks val_accuracy"),
        ('{"loss": [1.0], "accuracy": [0.1], "val_loss": [1.0, 2.0], "val_accuracy": [0.1]}', "different lengths"),
        (
            '{"loss": ["a"], "accuracy": [0.1], "val_loss": [1.0], "val_accuracy": [0.1]}',
            "'loss' is not a list of numbers",
        ),
    ],
)
def test_bad_history_folder_is_named(tmp_path, content, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if content is not None:
        (run_dir / "history.json").write_text(content)
    with pytest.raises(figures.PlotError, match=message) as error:
        figures.plot_histories([str(run_dir)], str(tmp_path / "figs"))
    assert str(run_dir) in str(error.value)
    assert not (tmp_path / "figs").exists()


def test_an_unwritable_figure_path_is_named_and_leaves_nothing(tmp_path):
    (tmp_path / "a_file").write_text("in the way")
    blocked = str(tmp_path / "a_file" / "s.png")
    with pytest.raises(figures.PlotError, match=f"{blocked}: cannot write the figure"):
        figures.plot_schedule(tutorial_config(epochs=1), blocked)
    # The PNG is drawn to a temporary file that cannot replace a folder: it is removed.
    folder = tmp_path / "out" / "s.png"
    folder.mkdir(parents=True)
    with pytest.raises(figures.PlotError, match="s.png: cannot write the figure"):
        figures.plot_schedule(tutorial_config(epochs=1), str(folder))
    assert os.listdir(tmp_path / "out") == ["s.png"] and folder.is_dir()
    # A name without the .png extension is written as given (savefig alone would add one).
    assert_png(figures.plot_schedule(tutorial_config(epochs=1), str(tmp_path / "plain")))
    assert not (tmp_path / "plain.png").exists()


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(figures.PlotError, match=r"clr_loop\[plot\]"):
        figures.plot_schedule(tutorial_config(), str(tmp_path / "x.png"))
    # The series needs no matplotlib.
    assert len(figures.schedule_series(tutorial_config(epochs=1))[0]) == STEPS_PER_EPOCH


def run_plot_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "clr_loop.plot", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_schedule_writes_a_png(tmp_path):
    out = tmp_path / "s.png"
    result = run_plot_cli("schedule", "--flagfile=flags/triangular2.flags", "--epochs=100", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out)]
    assert_png(out)


def test_history_command_without_history_json_exits_nonzero_naming_the_folder(tmp_path, capsys):
    good = write_history(tmp_path / "good", [1.0], [1.0], [0.5], [0.5])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.plot", "history", good, str(empty)])
        assert plot.main(rest) == 1
    assert f"error: {empty}: no history.json" in capsys.readouterr().err
    assert not (tmp_path / "figures").exists()


def test_history_command_refuses_schedules_out_flag(tmp_path):
    run = write_history(tmp_path / "run", [1.0], [1.0], [0.5], [0.5])
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.plot", "history", run, f"--out={tmp_path / 'x.png'}"])
        with pytest.raises(app.UsageError, match="--out=.* is for `schedule`; history writes its PNGs into --out_dir"):
            plot.main(rest)
    assert not (tmp_path / "figures").exists() and not (tmp_path / "run" / "figures").exists()


@pytest.mark.parametrize("out", ["figs", "figs/schedule", "existing_folder.png"])
def test_schedule_out_must_name_a_png_file(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_folder.png").mkdir()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.plot", "schedule", f"--out={out}"])
        with pytest.raises(app.UsageError, match=f"--out must name a .png file .*{out}"):
            plot.main(rest)
    assert sorted(os.listdir(tmp_path)) == ["existing_folder.png"]


def test_history_out_dir_that_cannot_be_written_exits_1_naming_it(tmp_path, capsys):
    run = write_history(tmp_path / "run", [1.0], [1.0], [0.5], [0.5])
    (tmp_path / "a_file").write_text("in the way")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.plot", "history", run, f"--out_dir={tmp_path / 'a_file' / 'figs'}"])
        assert plot.main(rest) == 1
    assert f"error: {tmp_path / 'a_file' / 'figs' / 'loss.png'}: cannot write the figure" in capsys.readouterr().err


def test_history_empty_out_dir_is_refused(tmp_path):
    run = write_history(tmp_path / "run", [1.0], [1.0], [0.5], [0.5])
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.plot", "history", run, "--out_dir="])
        with pytest.raises(app.UsageError, match="--out_dir must not be empty"):
            plot.main(rest)
    assert not (tmp_path / "run" / "figures").exists()


def test_cli_usage_error_is_one_line(tmp_path):
    result = run_plot_cli("schedule", f"--out={tmp_path}")
    assert_one_line_usage_error(result, "--out must name a .png file")
