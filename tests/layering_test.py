"""The package's layers: the library never imports the experiment or the apps, and the experiment
never imports the apps. Read two ways: from the sources (every import statement, also those inside
functions), and from what a fresh interpreter really loads when it imports the library."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parent.parent
# The apps (`python -m clr_loop.<app>`) and the modules only they use: flags, start-up, console.
APPS = frozenset(
    {
        "clr_loop.train",
        "clr_loop.ablate",
        "clr_loop.lr_range_test",
        "clr_loop.plot",
        "clr_loop.cli",
        "clr_loop.console",
        "clr_loop.process",
    }
)
EXPERIMENT = "clr_loop.experiment"


def module_name(path, root=ROOT):
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name):
    """Returns 0 for the library, 1 for the experiment, 2 for an app."""
    if name in APPS:
        return 2
    return 1 if name == EXPERIMENT or name.startswith(EXPERIMENT + ".") else 0


def modules(root=ROOT):
    return {module_name(p, root): p for p in (root / "clr_loop").rglob("*.py")}


def first_party_imports(path, name, root=ROOT):
    """Returns the clr_loop modules `path` imports anywhere in it (`from clr_loop import x` counts as clr_loop.x)."""
    known = modules(root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m == "clr_loop" or m.startswith("clr_loop.")}


def test_the_layers_are_what_the_readme_says():
    names = modules()
    assert {n for n in names if layer(n) == 2} == APPS  # each app exists
    assert {"clr_loop.experiment.config", "clr_loop.experiment.trial"} <= {n for n in names if layer(n) == 1}
    assert {"clr_loop.loop", "clr_loop.schedules", "clr_loop.steps"} <= {n for n in names if layer(n) == 0}


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for name, path in sorted(modules().items()):
        for imported in sorted(first_party_imports(path, name)):
            if layer(imported) > layer(name):
                upward.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_importing_the_whole_library_loads_no_experiment_or_app_module():
    library = sorted(n for n in modules() if layer(n) == 0)
    code = (
        "import importlib, json, sys\n"
        f"for name in {library!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('clr_loop'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "clr_loop.loop" in loaded
    assert [m for m in loaded if layer(m) > 0] == []


def test_a_layer_violation_is_caught(tmp_path):
    """The source check's own oracle: a module that imports upward, in each form, is found."""
    path = tmp_path / "clr_loop" / "bad.py"
    for module in ("clr_loop/experiment/config.py", "clr_loop/train.py", "clr_loop/cli.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    path.write_text(
        "def f():\n    from clr_loop.experiment import config\n    import clr_loop.train\nfrom clr_loop import cli\n"
    )
    imported = first_party_imports(path, "clr_loop.bad", root=tmp_path)
    assert imported == {"clr_loop.experiment.config", "clr_loop.train", "clr_loop.cli"}
    assert sorted(layer(m) for m in imported) == [1, 2, 2]
