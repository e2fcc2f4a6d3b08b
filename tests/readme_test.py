"""The README's commands and the documentation's examples are the ones that really run."""

import glob
import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def code_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def markdown_files():
    """README.md and docs/*.md, repo-relative."""
    return ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))


def find_block(marker):
    """Returns (path, block): the one ```python block of README.md and docs/*.md holding `marker`."""
    found = [
        (path, block) for path in markdown_files() for block in code_blocks(read(path), "python") if marker in block
    ]
    assert len(found) == 1, f"{marker!r} is in {len(found)} ```python blocks of README.md and docs/*.md, not 1"
    return found[0]


def section(text, heading):
    """Returns a Markdown section: from its `## heading` line to the next `## ` heading."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_ci_runs_the_readme_install_and_test_commands():
    readme, ci = read("README.md"), read(".ci/run")
    setup = [line for block in code_blocks(section(readme, "Set up"), "sh") for line in block.splitlines()]
    install_main, install_tests = 'python -m pip install -e ".[plot]"', 'python -m pip install -e ".[dev,plot]"'
    assert any(
        line.startswith(install_main) and "python -m clr_loop.train --mode=triangular2" in line for line in setup
    )
    assert f"{install_tests} && python -m pytest" in setup
    assert "apt-get install -y dataset-fashion-mnist" in setup
    # CI runs the same commands, only quieter (-q).
    assert install_main.replace("install -e", "install -q -e") in ci
    assert install_tests.replace("install -e", "install -q -e") in ci
    assert re.search(r"^python -m pytest$", ci, flags=re.M)
    assert "dataset-fashion-mnist" in ci


def test_schedule_example_runs_and_prints_the_documented_values():
    path, example = find_block("steps_per_epoch = 60000 // 64")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    documented = re.search(r"```\n\nprints `([^`]*)`", read(path).split("steps_per_epoch = 60000 // 64")[1]).group(1)
    assert (
        result.stdout.strip() == documented == "step 0: 0.000100, peak of cycle 1: 0.010000, peak of cycle 2: 0.005050"
    )


def test_composition_example_prints_the_documented_values():
    path, example = find_block("WarmupStableDecay(0.1")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, env=env, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    documented = re.search(r"```\n\nprints `([^`]*)`", read(path).split("WarmupStableDecay(0.1")[1]).group(1)
    assert result.stdout.strip() == documented == "0.050 0.100 0.0040 0.100 0.000"


def test_readme_fit_example_runs_as_written(tmp_path):
    """The "Use it with your own model" example, unchanged, on small random data in place of the
    user's arrays: clr_loop.fit returns model.fit's history keys plus lr, and writes its workdir."""
    path, example = find_block("clr_loop.fit(model")
    assert path == "README.md"  # the front door's example
    prelude = textwrap.dedent(
        """
        import json, numpy as np
        rng = np.random.default_rng(0)
        x_train = rng.integers(0, 256, (192, 28, 28, 1), dtype=np.uint8); y_train = rng.integers(0, 10, 192)
        x_test = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8); y_test = rng.integers(0, 10, 50)
        """
    )
    check = 'print(json.dumps(sorted(history.history)), len(history.history["loss"]))'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", prelude + example + "\n" + check],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    keys = '["accuracy", "loss", "lr", "val_accuracy", "val_loss"] 10'
    assert result.stdout.strip().splitlines()[-1] == keys
    assert (tmp_path / "runs" / "mine" / "history.json").is_file()


STUDY = "which_schedule"  # flags/which_schedule/: the flagfiles of one ablation (docs/results.md)
STUDY_COMMAND = (
    "# python -m clr_loop.ablate flags/no_clr.flags flags/triangular2.flags flags/schedule_free_sgd.flags "
    "flags/which_schedule/*.flags --seeds=1,2,3 --workdir=runs/which_schedule"
)


def test_every_flagfile_opens_with_the_command_that_runs_it():
    names = sorted(os.listdir(os.path.join(REPO, "flags")))
    assert STUDY in names
    for name in names:
        if name == STUDY:
            continue
        first = read(os.path.join("flags", name)).splitlines()[0]
        assert first == f"# python -m clr_loop.train --flagfile=flags/{name}", name
    study = sorted(os.listdir(os.path.join(REPO, "flags", STUDY)))
    assert len(study) == 9
    for name in study:
        assert read(os.path.join("flags", STUDY, name)).splitlines()[0] == STUDY_COMMAND, name


def test_the_study_flagfiles_are_valid_runs_with_the_stated_peak_rates():
    """Each flags/which_schedule/ file parses to a valid Config whose optimizer and schedule build."""
    from absl import flags

    from clr_loop import cli
    from clr_loop.experiment import config as config_lib
    from clr_loop.experiment import trial as trainer

    for name in sorted(os.listdir(os.path.join(REPO, "flags", STUDY))):
        flag_values = flags.FlagValues()
        cli.define_training_flags(flag_values)
        flag_values(["clr_loop.train", f"--flagfile={os.path.join(REPO, 'flags', STUDY, name)}"])
        config = cli.config_from_flags(flag_values)
        assert config.epochs == 10 and config.batch_size == 64, name
        optimizer = trainer.make_optimizer(config, config_lib.plan_steps(config, 60000))
        # The peak the range test suggested: max_lr for the schedules, lr for the constant rate.
        peak = config.lr if config.mode == "none" else config.max_lr
        assert peak in (0.048, 0.016, 0.015, 0.0016), name
        assert optimizer is not None
