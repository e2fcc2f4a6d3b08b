"""The documentation (README.md and docs/*.md) stays true: every ```python block runs, every
`python -m clr_loop.<app>` command uses only flags that app defines, and every relative link lands."""

import glob
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
from absl import app as absl_app
from absl import flags

from clr_loop import ablate
from clr_loop import lr_range_test
from clr_loop import plot
from clr_loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```", flags=re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (\S[^>]*?) -->\s*\Z")


def markdown_files():
    """README.md and docs/*.md, repo-relative, sorted."""
    return ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))


def read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def python_blocks():
    """(path, line, text before the block, code) for every ```python block of the documentation."""
    blocks = []
    for path in markdown_files():
        text = read(path)
        for match in FENCE.finditer(text):
            if match.group(1) == "python":
                line = text.count("\n", 0, match.start()) + 1
                blocks.append((path, line, text[: match.start()], match.group(2)))
    return blocks


# Blocks that tests/readme_test.py runs and whose printed values it checks: a marker string that picks
# the block out, and the test that runs it.
CHECKED_BY = {
    "steps_per_epoch = 60000 // 64": "test_schedule_example_runs_and_prints_the_documented_values",
    "WarmupStableDecay(0.1": "test_composition_example_prints_the_documented_values",
    "clr_loop.fit(model": "test_readme_fit_example_runs_as_written",
}

# What the reader already has before a block (their data, their model, their schedule), by a marker
# string that picks the block out; and a check run after it. The block itself runs as written.
DATA = """
import numpy as np
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (128, 28, 28, 1), dtype=np.uint8); y = rng.integers(0, 10, 128)
x_val = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8); y_val = rng.integers(0, 10, 40)
"""
CONTEXT = {
    # docs/training.md: Fashion-MNIST as a .npz, from Debian's raw files.
    "load_idx_dir(": (
        "",
        'import numpy as np\nwith np.load("fm.npz") as f:\n'
        '    print(f["x_train"].shape, f["y_train"].shape, f["x_test"].shape, f["y_test"].shape)',
    ),
    # docs/training.md: a `--model=module.path:function`.
    "def build(input_shape, num_classes):": (
        "import keras\n",
        "model = build((28, 28, 1), 10)\nassert isinstance(model, keras.Model) and model.output_shape == (None, 10)\n"
        "print(build.outputs)",
    ),
    # docs/training.md: cyclical beta_1 for AdamW.
    "opt = CyclicalMomentumAdamW(": (
        "from clr_loop.optimizers import CyclicalMomentum, CyclicalMomentumAdamW\n"
        "from clr_loop.schedules import OneCycle\nschedule = OneCycle(0.01, total_steps=100)\n",
        "import numpy as np\nprint(float(opt.beta_1(np.int64(0))), float(opt.beta_1(np.int64(30))))",
    ),
    # docs/schedules.md: schedule-free AdamW through clr_loop.fit.
    "ScheduleFreeAdamW(0.0025": (
        DATA + "import keras\nmodel = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255),\n"
        "    keras.layers.Flatten(), keras.layers.Dense(10, activation='softmax')])\n",
        "print(sorted(history.history), len(history.history['loss']))",
    ),
    # docs/results.md: the mean-and-band figure of an ablation's runs, on a small ablation's files.
    'c = json.load(open(os.path.join(work, "comparison.json")))': (
        """
        import json, os, sys
        groups = [{"name": n, "seeds": [1, 2], "final": {"val_accuracy": {"mean": m}}} for n, m in (("a", 0.8), ("b", 0.7))]
        for g in groups:
            for s in g["seeds"]:
                os.makedirs(f"work/{g['name']}_seed{s}")
                json.dump({"val_accuracy": [0.65, 0.7 + s / 100, 0.75]}, open(f"work/{g['name']}_seed{s}/history.json", "w"))
        json.dump({"by_flagfile": groups}, open("work/comparison.json", "w"))
        sys.argv = ["fig.py", "work", "out.png"]
        """,
        "print(os.path.getsize('out.png') > 0)",
    ),
}
EXPECTED_OUTPUT = {
    'c = json.load(open(os.path.join(work, "comparison.json")))': "True",
    "load_idx_dir(": "(60000, 28, 28, 1) (60000,) (10000, 28, 28, 1) (10000,)",
    "def build(input_shape, num_classes):": "logits",
    "ScheduleFreeAdamW(0.0025": "['accuracy', 'loss', 'lr', 'val_accuracy', 'val_loss'] 10",
}


def marker_of(code, markers):
    found = [m for m in markers if m in code]
    assert len(found) <= 1, f"the markers {found} pick out the same block"
    return found[0] if found else None


def test_every_marker_picks_out_exactly_one_block():
    codes = [code for _, _, _, code in python_blocks()]
    for marker in list(CHECKED_BY) + list(CONTEXT):
        hits = [c for c in codes if marker in c]
        assert len(hits) == 1, f"{marker!r} is in {len(hits)} ```python blocks of README.md and docs/*.md, not 1"


def test_the_not_run_marker_must_say_why_and_sit_just_before_its_block():
    assert NOT_RUN.search("Text.\n\n<!-- not run: needs a GPU -->\n").group(1) == "needs a GPU"
    assert not NOT_RUN.search("<!-- not run:  -->\n")
    assert not NOT_RUN.search("<!-- not run: needs a GPU -->\nMore text.\n\n")


def test_the_blocks_checked_elsewhere_are_run_by_their_tests():
    source = read(os.path.join("tests", "readme_test.py"))
    for marker, test in CHECKED_BY.items():
        body = source.split(f"def {test}(")[1].split("\ndef ")[0] if f"def {test}(" in source else ""
        assert body, f"tests/readme_test.py has no {test}"
        assert repr(marker)[1:-1] in body, f"{test} does not pick out its block by {marker!r}"


@pytest.mark.parametrize("path,line,before,code", python_blocks(), ids=lambda v: v if isinstance(v, (str, int)) else "")
def test_every_python_block_runs_as_written(path, line, before, code, tmp_path):
    """Each ```python block runs as written in a fresh interpreter, after only what its reader has
    (CONTEXT: their arrays, their model), unless a test checks its output (CHECKED_BY) or the
    Markdown marks it `<!-- not run: reason -->` just before it."""
    where = f"{path}:{line}"
    if marker_of(code, CHECKED_BY):
        pytest.skip(f"{where}: run by tests/readme_test.py::{CHECKED_BY[marker_of(code, CHECKED_BY)]}")
    not_run = NOT_RUN.search(before)
    if not_run:
        pytest.skip(f"{where}: not run: {not_run.group(1)}")
    marker = marker_of(code, CONTEXT)
    prelude, check = CONTEXT.get(marker, ("", ""))
    if marker == "load_idx_dir(" and not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([REPO] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
    )
    program = textwrap.dedent(prelude) + code + "\n" + check
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path
    )
    assert result.returncode == 0, f"{where} fails:\n{result.stderr[-3000:]}"
    if marker in EXPECTED_OUTPUT:
        assert result.stdout.strip().splitlines()[-1] == EXPECTED_OUTPUT[marker], where


APPS = {"train": train, "ablate": ablate, "lr_range_test": lr_range_test, "plot": plot}
# Parsed by absl itself, not registered as flags.
ABSL_PARSER_FLAGS = {"flagfile", "undefok"}


def app_flags(name):
    """The flags `python -m clr_loop.<name>` accepts, from absl's registry: those its module defines,
    the training flags of clr_loop.cli (each app defines them), and absl's own (help, logging).
    Returns {flag name: whether it is a boolean}."""
    absl_app.define_help_flags()
    modules = {APPS[name].__name__, "clr_loop.cli"}
    accepted = {}
    for flag_name in flags.FLAGS:
        module = flags.FLAGS.find_module_defining_flag(flag_name)
        if module in modules or (module or "").startswith("absl."):
            accepted[flag_name] = flags.FLAGS[flag_name].boolean
    return accepted


def documented_commands():
    """(path, app, command) for every `clr_loop.<app> ...` command in the documentation's code: the
    lines of its fenced blocks (with `\\` continuations joined) and its inline code spans."""
    commands = []
    app_re = re.compile(r"(?:python -m )?\bclr_loop\.(" + "|".join(APPS) + r")(?=\s|$)(.*)")
    for path in markdown_files():
        text = read(path)
        snippets = []
        for match in FENCE.finditer(text):
            if match.group(1) != "python":
                snippets += match.group(2).replace("\\\n", " ").splitlines()
        prose = FENCE.sub("", text)
        snippets += re.findall(r"`([^`\n]+)`", prose)
        for snippet in snippets:
            for match in app_re.finditer(snippet):
                commands.append((path, match.group(1), match.group(0)))
    return commands


def command_flags(command):
    """The flag names a command line passes (`--name`, `--name=value`, `-v 1`), up to the end of the command."""
    tokens = shlex.split(command.replace("<", "'<").replace(">", ">'"), comments=True)
    start = next(i for i, token in enumerate(tokens) if token.startswith("clr_loop.")) + 1
    names = []
    for token in tokens[start:]:
        if token in ("&&", "||", "|", ";") or token.startswith((">", "2>")):
            break
        if re.match(r"^--?[A-Za-z]", token):
            names.append(token.lstrip("-").split("=")[0])
    return names


def test_documentation_has_commands_of_every_app():
    apps = {app for _, app, _ in documented_commands()}
    assert apps == set(APPS)


def test_every_documented_command_uses_only_flags_its_app_defines():
    problems = []
    accepted = {name: app_flags(name) for name in APPS}
    for path, app, command in documented_commands():
        for name in command_flags(command):
            known = accepted[app]
            if name in known or name in ABSL_PARSER_FLAGS:
                continue
            if name.startswith("no") and known.get(name[2:]):
                continue  # --noflag for a boolean
            problems.append(f"{path}: `{command}` passes --{name}, which clr_loop.{app} does not define")
    assert not problems, "\n".join(problems)


def test_every_flag_in_the_main_flags_table_is_a_train_flag():
    table = read(os.path.join("docs", "training.md")).split("\n## Main flags\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    assert len(rows) > 20
    accepted = app_flags("train")
    named = {name for row in rows for name in re.findall(r"`--(\w+)", row.split(" | ")[0])}
    assert named and not named - set(accepted), sorted(named - set(accepted))


def test_the_flag_check_catches_unknown_flags():
    accepted = app_flags("train")
    assert "mode" in accepted and accepted["cycle_momentum"] and "helpfull" in accepted and "verbosity" in accepted
    assert "nofigures" not in accepted and "figures" not in accepted and "figures" in app_flags("ablate")
    assert command_flags(
        "python -m clr_loop.train --mode=x --nocycle_momentum -v 1 --flagfile=<f> <other flags>  # --z"
    ) == ["mode", "nocycle_momentum", "v", "flagfile"]


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", read(path)), flags=re.M):
        anchor = github_anchor(heading)
        found.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return found


def test_relative_links_and_images_resolve():
    problems = []
    for path in markdown_files():
        prose = FENCE.sub("", read(path))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(os.path.join(REPO, resolved)):
                problems.append(f"{path}: ({target}): {resolved} does not exist")
            elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
                problems.append(f"{path}: ({target}): {resolved} has no heading with the anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_docs_speak_of_the_project_not_of_how_it_was_built():
    wording = re.compile(
        r"\bstop \d+\b|\bat this stop\b|\bissue \d+\b|\bthe issue's\b|\bthis session\b|"
        r"\bearlier trainer\b|\btutorial-only trainer\b",
        flags=re.I,
    )
    problems = [f"{path}: {m.group(0)!r}" for path in markdown_files() for m in wording.finditer(read(path))]
    assert not problems, "\n".join(problems)


# Names that are meant to be gone: the measured commit's module a page names to reproduce it.
FORMER_NAMES = {"clr_loop.bench": "docs/performance.md: where the benchmark lived at the measured commit"}


def is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent that is a module, not a package
        return False


def test_every_clr_loop_name_in_the_docs_exists():
    """Each dotted `clr_loop.x.y` in the documentation's code is a module, or an attribute of one."""
    names = set()
    for path in markdown_files():
        text = read(path)
        for snippet in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) + [m.group(2) for m in FENCE.finditer(text)]:
            names.update((path, name) for name in re.findall(r"\bclr_loop(?:\.\w+)+", snippet))
    problems = []
    for path, name in sorted(names):
        if name in FORMER_NAMES:
            continue
        parts = name.split(".")
        # The longest prefix that is a module (found, not imported: its own imports may be an extra's).
        i = next(i for i in range(len(parts), 0, -1) if is_module(".".join(parts[:i])))
        if i == len(parts):
            continue
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:  # an optional dependency (tf_keras): the module is there
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                problems.append(f"{path}: {name}: {'.'.join(parts[:i])} has no {'.'.join(parts[i:])}")
                break
            obj = getattr(obj, attribute)
    assert not problems, "\n".join(problems)
