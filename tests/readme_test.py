"""The README's commands and example are the ones that really run."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def code_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands():
    readme, ci = read("README.md"), read(".ci/run")
    setup = [line for block in code_blocks(readme.split("## The schedules")[0], "sh") for line in block.splitlines()]
    install_main, install_tests = 'python -m pip install -e ".[plot]"', 'python -m pip install -e ".[dev,plot]"'
    assert any(line.startswith(install_main) and "python -m clr_loop.train --mode=triangular2" in line for line in setup)
    assert f"{install_tests} && python -m pytest" in setup
    assert "apt-get install -y dataset-fashion-mnist" in setup
    # CI runs the same commands, only quieter (-q).
    assert install_main.replace("install -e", "install -q -e") in ci
    assert install_tests.replace("install -e", "install -q -e") in ci
    assert re.search(r"^python -m pytest$", ci, flags=re.M)
    assert "dataset-fashion-mnist" in ci


def test_readme_schedule_example_runs_and_prints_the_documented_values():
    (example,) = code_blocks(read("README.md"), "python")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "step 0: 0.000100, peak of cycle 1: 0.010000, peak of cycle 2: 0.005050"


def test_every_flagfile_opens_with_the_command_that_runs_it():
    for name in sorted(os.listdir(os.path.join(REPO, "flags"))):
        first = read(os.path.join("flags", name)).splitlines()[0]
        assert first == f"# python -m clr_loop.train --flagfile=flags/{name}", name
