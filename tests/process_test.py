"""Tests for clr_loop.process: the collector is paused and restored, frozen objects stay frozen,
deferred imports run their module on first use, and the apps' imports use both."""

import gc
import importlib
import os
import subprocess
import sys
import weakref

import pytest

from clr_loop import process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Node:
    """An instance that can hold a reference to itself."""


@pytest.fixture
def unfreeze():
    """Gives the frozen objects back to the collector after the test (freezing is process-wide)."""
    yield
    gc.unfreeze()


@pytest.mark.parametrize("enabled_before", [True, False])
def test_gc_paused_restores_the_previous_state(enabled_before):
    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        with process.gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled_before
        with pytest.raises(KeyError):
            with process.gc_paused():
                raise KeyError("inside")
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()


def test_gc_paused_leaves_the_new_objects_collectable_in_the_oldest_generation():
    assert gc.get_freeze_count() == 0
    with process.gc_paused():
        made = [[] for _ in range(5000)]
        node = Node()
        node.self = node  # a reference cycle: only the collector can free it
        probe = weakref.ref(node)
    assert gc.get_freeze_count() == 0  # nothing stays frozen
    assert gc.get_count()[0] < 100  # the young generation was emptied without a collection
    assert all(gc.is_tracked(item) for item in made)
    del node
    gc.collect()
    assert probe() is None  # still collected


def test_gc_paused_keeps_another_owners_frozen_objects_frozen(unfreeze):
    kept = [[] for _ in range(100)]
    gc.freeze()
    frozen = gc.get_freeze_count()
    with process.gc_paused():
        made = [[] for _ in range(100)]
    assert gc.get_freeze_count() == frozen  # not unfrozen by the pause
    del kept, made


def test_freeze_heap_moves_live_objects_out_of_collections(unfreeze):
    before = gc.get_freeze_count()
    kept = [[] for _ in range(1000)]  # tracked containers, alive
    frozen = process.freeze_heap()
    assert frozen == gc.get_freeze_count() >= before + 1000
    assert all(gc.is_tracked(item) for item in kept)
    # None of them is left in a generation a collection walks (other threads may allocate meanwhile,
    # so the generations' counters are no oracle; their member lists are).
    kept_ids = {id(item) for item in kept}
    for generation in range(3):
        assert not kept_ids & {id(obj) for obj in gc.get_objects(generation)}


def test_app_main_freezes_before_and_after_and_passes_through(unfreeze):
    seen = {}

    def main(argv):
        seen["argv"] = argv
        seen["frozen_at_start"] = gc.get_freeze_count()
        seen["made"] = [[] for _ in range(500)]
        return 3

    wrapped = process.app_main(main)
    assert wrapped.__name__ == "main"
    assert wrapped(["prog", "x"]) == 3
    assert seen["argv"] == ["prog", "x"] and seen["frozen_at_start"] > 0
    assert gc.get_freeze_count() >= seen["frozen_at_start"] + 500


def test_app_main_freezes_after_an_exception_too(unfreeze):
    def main(argv):
        del argv
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        process.app_main(main)([])
    assert gc.get_freeze_count() > 0


def test_app_main_prints_a_usage_error_in_one_line_and_returns_its_exit_code(unfreeze, capsys):
    from absl import app

    def main(argv):
        del argv
        raise app.UsageError("--thing must be positive, got 0")

    assert process.app_main(main)(["prog"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err == "error: --thing must be positive, got 0\nPass --helpshort or --helpfull to see help on flags.\n"
    )


def test_app_main_runs_to_the_end_when_stdout_cannot_be_written_then_exits_1(unfreeze, tmp_path, monkeypatch, capsys):
    """stdout on /dev/full: every write fails with ENOSPC (the kernel's own), yet main runs to its end."""
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "stdout", full)
    done = []

    def main(argv):
        del argv
        for k in range(3):
            print(f"epoch {k}", flush=True)
            done.append(k)
        sys.stdout.write("x" * 100_000)  # more than the buffer holds
        return 0

    assert process.app_main(main)(["prog"]) == 1
    assert done == [0, 1, 2] and sys.stdout is full
    full.write("after")  # the descriptor now discards: the interpreter's last flush cannot fail
    full.flush()
    assert capsys.readouterr().err == (
        "error: could not write the output to stdout ([Errno 28] No space left on "
        "device); the run went on to its end without it\n"
    )


# A child process's collector probe: `during` lists the generation of every collection that starts
# while TensorFlow's module is executing (the import system's own mark, `__spec__._initializing`).
_IMPORT_PROBE = (
    "import gc, sys\n"
    "during = []\n"
    "def importing(name):\n"
    "    spec = getattr(sys.modules.get(name), '__spec__', None)\n"
    "    return bool(getattr(spec, '_initializing', False))\n"
    "gc.callbacks.append(lambda phase, info: during.append(info['generation'])\n"
    "                    if phase == 'start' and importing('tensorflow') else None)\n"
)


def _probe(code):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE + code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("app", ["train", "ablate", "plot", "lr_range_test"])
def test_an_apps_imports_run_with_the_collector_paused_and_leave_it_as_it_was(app):
    """An app imports TensorFlow inside `gc_paused()` and `deferred_imports()` (`import clr_loop`
    alone does neither: tests/package_test.py).

    No collection starts while TensorFlow's module is executing (a plain import of it runs about
    800). How many young collections run after the block, as the app's own code is created, depends
    on the machine (allocation counts differ with the CPU's kernels) and is not asserted. Then the
    collector is on, nothing is frozen, and the import system is as it was."""
    out = _probe(
        f"import clr_loop.{app}\n"
        "print(len(during), gc.isenabled(), gc.get_freeze_count(), 'tensorflow' in sys.modules,\n"
        "      any(type(f).__name__ == '_DeferredFinder' for f in sys.meta_path))"
    )
    assert out == ["0", "True", "0", "True", "False"]


def test_the_import_probe_sees_the_collections_of_a_plain_tensorflow_import():
    """The probe above is not vacuous: without the pause, collections do start while TensorFlow's
    module is executing."""
    assert int(_probe("import tensorflow\nprint(len(during))")[-1]) > 10


def _write_probe(tmp_path, name):
    """A module whose code counts its runs in `sys._probe_runs[name]`."""
    (tmp_path / f"{name}.py").write_text(
        "import sys\n"
        "sys._probe_runs = getattr(sys, '_probe_runs', {})\n"
        f"sys._probe_runs[{name!r}] = sys._probe_runs.get({name!r}, 0) + 1\n"
        "VALUE = 42\n"
    )


@pytest.fixture
def probe_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("probe_")]:
        del sys.modules[name]
    if hasattr(sys, "_probe_runs"):
        del sys._probe_runs


def test_deferred_imports_run_the_module_on_first_use(probe_path):
    _write_probe(probe_path, "probe_lazy")
    _write_probe(probe_path, "probe_eager")
    finders = list(sys.meta_path)
    with process.deferred_imports(["probe_lazy"]):
        probe_lazy = importlib.import_module("probe_lazy")
        probe_eager = importlib.import_module("probe_eager")
        runs = dict(getattr(sys, "_probe_runs", {}))
    assert sys.meta_path == finders  # the finder is gone after the block
    assert runs == {"probe_eager": 1}  # the deferred one has not run yet
    assert probe_lazy.VALUE == 42  # first use runs it, once
    assert sys._probe_runs == {"probe_eager": 1, "probe_lazy": 1}
    assert probe_eager.VALUE == 42 and sys._probe_runs["probe_lazy"] == 1


def test_deferred_imports_of_a_missing_module_raise_at_the_import(probe_path):
    del probe_path
    with process.deferred_imports(["probe_missing"]):
        with pytest.raises(ModuleNotFoundError, match="probe_missing"):
            importlib.import_module("probe_missing")


def test_deferred_imports_leave_an_imported_module_alone(probe_path):
    _write_probe(probe_path, "probe_done")
    probe_done = importlib.import_module("probe_done")
    with process.deferred_imports(["probe_done"]):
        again = importlib.import_module("probe_done")
    assert again is probe_done and type(again).__name__ == "module"
    assert sys._probe_runs == {"probe_done": 1}


def test_an_apps_import_defers_pyplot_and_plotting_still_works():
    pytest.importorskip("matplotlib")
    code = (
        "import sys, clr_loop.train\n"
        "lazy = sys.modules['matplotlib.pyplot']\n"
        "print('figure' in object.__getattribute__(lazy, '__dict__'))\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "from keras.src.visualization import plot_image_gallery\n"
        "fig = plt.figure()\n"
        "print(plt is lazy, plot_image_gallery.plt is plt, type(fig).__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "Figure"]


def test_nested_deferred_imports_defer_once_without_recursing(probe_path):
    """An app's block around a module that opens its own block (the benchmark does): the inner
    finder must not ask the outer one back, which asked the inner one, forever."""
    _write_probe(probe_path, "probe_nested")
    with process.deferred_imports(["probe_nested"]):
        with process.deferred_imports(["probe_nested"]):
            probe_nested = importlib.import_module("probe_nested")
        assert getattr(sys, "_probe_runs", {}) == {}
    assert probe_nested.VALUE == 42 and sys._probe_runs == {"probe_nested": 1}
