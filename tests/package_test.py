"""Tests of the package's public face: `import clr_loop` has no side effects, its names load lazily,
and the library modules leave a program's own absl flags alone."""

import json
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import clr_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The absl apps (and their `run` entry points); every other module of the package is library code.
APPS = {"ablate", "lr_range_test", "plot", "train"}


def run_python(code, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def library_modules():
    """Returns the dotted names of the package's non-app modules (the library and the experiment), sorted."""
    names = [info.name for info in pkgutil.walk_packages(clr_loop.__path__, "clr_loop.")]
    return sorted(name for name in names if name.removeprefix("clr_loop.") not in APPS)


def test_import_clr_loop_changes_nothing_outside_the_package():
    code = textwrap.dedent("""
        import gc, json, sys
        from absl import flags
        before = dict(gc=gc.isenabled(), frozen=gc.get_freeze_count(), meta_path=list(sys.meta_path),
                      flags=sorted(flags.FLAGS), modules=set(sys.modules))
        import clr_loop
        print(json.dumps(dict(
            gc=[before["gc"], gc.isenabled()],
            frozen=[before["frozen"], gc.get_freeze_count()],
            meta_path_same=sys.meta_path == before["meta_path"],
            flags_same=sorted(flags.FLAGS) == before["flags"],
            new_modules=sorted(set(sys.modules) - before["modules"]),
        )))
    """)
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["gc"] == [True, True]
    assert seen["frozen"] == [0, 0]
    assert seen["meta_path_same"] and seen["flags_same"]
    # Nothing is imported until a name is used: not TensorFlow, not a clr_loop module.
    assert seen["new_modules"] == ["clr_loop"]


def test_public_names_load_from_their_modules_on_first_use():
    from clr_loop import schedules

    assert set(clr_loop.__all__) == {
        "CyclicalLearningRate",
        "ExponentialCyclicalLearningRate",
        "OneCycle",
        "Triangular2CyclicalLearningRate",
        "TriangularCyclicalLearningRate",
        "fit",
        "Sequence",
        "Warmup",
        "WarmupStableDecay",
    }
    assert set(clr_loop.__all__) <= set(dir(clr_loop))
    assert clr_loop.OneCycle is schedules.OneCycle
    assert clr_loop.WarmupStableDecay is schedules.WarmupStableDecay
    assert clr_loop.CyclicalLearningRate is schedules.CyclicalLearningRate
    with pytest.raises(AttributeError, match="no_such_name"):
        clr_loop.no_such_name  # noqa: B018  (the attribute access is the test)


def test_library_modules_leave_a_programs_own_batch_size_flag_alone():
    """A user's absl app defines --batch_size, imports every library module and runs."""
    modules = library_modules()
    assert {"clr_loop.cli", "clr_loop.lr_finder", "clr_loop.schedules", "clr_loop.experiment.trial"} <= set(modules)
    code = textwrap.dedent("""
        import importlib, sys
        from absl import app, flags

        flags.DEFINE_integer("batch_size", 7, "The user's own flag.")
        for name in sys.argv[1].split(","):
            importlib.import_module(name)

        def main(argv):
            clr_flags = sorted(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith("clr_loop"))
            print("batch_size", flags.FLAGS.batch_size, "clr_loop modules with flags:", clr_flags)

        app.run(main, argv=["user_app", "--batch_size=3"])
    """)
    out = run_python(code, ",".join(modules))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "batch_size 3 clr_loop modules with flags: []"
