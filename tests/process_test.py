"""Tests for clr_loop.process: the collector is paused and restored, frozen objects stay frozen."""

import gc
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
    assert sum(gc.get_count()) <= 1  # the young generations were emptied into the frozen one


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


def test_importing_the_package_leaves_the_collector_on_and_nothing_frozen():
    code = "import gc, clr_loop; print(gc.isenabled(), gc.get_freeze_count())"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "0"]
