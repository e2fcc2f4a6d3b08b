"""Start-up and shut-down costs of a clr_loop process that are not training: the garbage collector.

Importing TensorFlow and Keras creates about a million long-lived Python objects (modules,
functions, op wrappers). CPython's cyclic garbage collector walks all of them in each full
collection: several times while they are imported, during `tf.function` tracing, and once more
when the interpreter exits, although none of them is ever garbage. On the 2-core machine of
docs/performance.md this costs about 0.7 s of the import and about 1 s at exit, a fifth of a
one-epoch run. Two standard remedies (the `gc` module's documentation describes both):

- `gc_paused()`: no collection while the heavy modules are imported (the package's
  `__init__` imports TensorFlow inside it; the collector's previous state is restored), and the
  imported objects moved to the oldest generation afterwards instead of being walked by the next
  young collection (0.9 s of import time in all).
- `freeze_heap()`: moves every object alive now into the collector's permanent generation,
  which later collections skip. The apps call it once everything is imported and again before
  they return, so tracing and the exit no longer walk TensorFlow's objects. Frozen objects are
  never collected, so this is for a process's long-lived objects, which is why only the apps'
  `main` call it and the library never does.
"""

import contextlib
import functools
import gc


@contextlib.contextmanager
def gc_paused():
    """Disables automatic garbage collection inside the block; restores the previous state after.

    The objects created inside the block are moved to the oldest generation on the way out
    (`gc.freeze()` then `gc.unfreeze()`, which collects nothing): otherwise the first allocation
    after the block would trigger a collection of the young generation that walks all of them
    (0.2 s after importing TensorFlow). They stay collectable. Skipped when something is frozen
    already, since unfreezing would release another owner's frozen objects.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def freeze_heap():
    """Moves every object the collector tracks into its permanent generation (`gc.freeze`).

    Later collections skip them, including the one at interpreter exit. Returns how many objects
    are frozen in all.
    """
    gc.freeze()
    return gc.get_freeze_count()


def app_main(main):
    """Wraps an absl app's `main(argv)`: `freeze_heap()` before it runs (everything is imported by
    then) and again when it returns or raises (so the exit's collection skips the run's objects)."""

    @functools.wraps(main)
    def wrapped(argv):
        freeze_heap()
        try:
            return main(argv)
        finally:
            freeze_heap()

    return wrapped
