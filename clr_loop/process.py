"""Start-up and shut-down costs of a clr_loop process that are not training.

Importing TensorFlow and Keras creates about a million long-lived Python objects (modules,
functions, op wrappers). CPython's cyclic garbage collector walks all of them in each full
collection: several times while they are imported, during `tf.function` tracing, and once more
when the interpreter exits, although none of them is ever garbage. On the 2-core machine of
docs/performance.md this costs about 0.7 s of the import and about 1 s at exit, a fifth of a
one-epoch run. Two standard remedies (the `gc` module's documentation describes both):

- `gc_paused()`: no collection while the heavy modules are imported (each app imports its
  modules, and with them TensorFlow, inside it at the top of its module; the collector's previous
  state is restored), and the imported objects moved to the oldest generation afterwards instead
  of being walked by the next young collection (0.9 s of import time in all).
- `freeze_heap()`: moves every object alive now into the collector's permanent generation,
  which later collections skip. The apps call it once everything is imported and again before
  they return, so tracing and the exit no longer walk TensorFlow's objects. Frozen objects are
  never collected, so this is for a process's long-lived objects, which is why only the apps'
  `main` call it and the library never does.

And one import that a training run never uses: importing TensorFlow imports Keras, whose
`keras.visualization` module imports `matplotlib.pyplot` when matplotlib is installed (0.35 s of
a plain `import tensorflow`, 0.15 s of an app's imports with the collector paused).
`deferred_imports()` makes such a module load lazily (`importlib.util.LazyLoader`): whoever
imports it inside the block gets the module object at once, and its code runs on first use, so
`clr_loop.plot` and Keras's own plotting work unchanged.

`app_main` also gives an app's usage errors absl's one-line form (the message and a pointer to
`--helpshort`) instead of the whole help text before the message, and keeps an app running when
its standard output cannot be written (`GuardedOutput`).

All of this is start-up tuning for a process that clr_loop runs: the apps (`clr_loop.train`,
`ablate`, `plot`, `lr_range_test`) and the benchmark use it, the library never does, and
`import clr_loop` touches neither the collector nor the import system.
"""

import contextlib
import functools
import gc
import importlib.abc
import importlib.util
import os
import sys

# Imported by Keras at import time, used only for plotting (see the module docstring).
DEFERRED_MODULES = ("matplotlib.pyplot",)


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


class _DeferredFinder(importlib.abc.MetaPathFinder):
    """A meta-path finder that hands out the other finders' specs for `names` with a LazyLoader."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            # Another deferring finder (a nested block) would ask this one back: skip them all.
            if isinstance(finder, _DeferredFinder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                    return spec  # e.g. a namespace package: load it as usual
                spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None  # not installed: the import raises ImportError as usual


@contextlib.contextmanager
def deferred_imports(names=DEFERRED_MODULES):
    """Inside the block, importing one of the modules `names` (full dotted names) is lazy.

    The import returns at once with a module object whose code runs on the first attribute
    access, wherever that happens later; the module's parent packages are imported as usual. A
    module that is missing still raises ImportError at the import, and one imported before the
    block is left as it is. Outside the block imports are unaffected.
    """
    finder = _DeferredFinder(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def freeze_heap():
    """Moves every object the collector tracks into its permanent generation (`gc.freeze`).

    Later collections skip them, including the one at interpreter exit. Returns how many objects
    are frozen in all.
    """
    gc.freeze()
    return gc.get_freeze_count()


HELP_HINT = "Pass --helpshort or --helpfull to see help on flags."


class GuardedOutput:
    """A stand-in for `sys.stdout` whose failed writes (stdout on a full disk, `> /dev/full`) do not
    stop the program: the first OSError is kept in `error`, the stream's file descriptor is pointed
    at /dev/null (so later writes, and the interpreter's final flush, succeed), and everything else
    is the wrapped stream's."""

    def __init__(self, stream):
        self.stream = stream
        self.error = None

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError as e:
            self._lost(e)
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except OSError as e:
            self._lost(e)

    def _lost(self, error):
        if self.error is None:
            self.error = error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
            self.stream.flush()  # what was buffered goes to /dev/null
        except (OSError, ValueError, AttributeError):
            pass  # not a real file (a test's capture): the later writes just fail again, quietly

    def __getattr__(self, name):
        return getattr(self.stream, name)


def app_main(main):
    """Wraps an absl app's `main(argv)`: `freeze_heap()` before it runs (everything is imported by
    then) and again when it returns or raises (so the exit's collection skips the run's objects).

    The wrapped main returns `main`'s exit status; for an `app.UsageError` it prints `error: <the
    message>` and a pointer to `--helpshort` to stderr and returns the error's exit code (absl's 1)
    instead of letting `app.run` print the whole help before the message. Standard output is a
    `GuardedOutput` while `main` runs: if it cannot be written, the app still runs to its end (a
    training run keeps its epochs) and then exits 1 saying so on stderr.
    """
    from absl import app  # pylint: disable=import-outside-toplevel  (imported by every app already)

    @functools.wraps(main)
    def wrapped(argv):
        freeze_heap()
        output = sys.stdout = GuardedOutput(sys.stdout)
        try:
            status = main(argv)
        except app.UsageError as e:
            print(f"error: {e}\n{HELP_HINT}", file=sys.stderr)
            return e.exitcode
        finally:
            sys.stdout = output.stream
            freeze_heap()
        if output.error is not None:
            print(
                f"error: could not write the output to stdout ({output.error}); the run went on to its end without it",
                file=sys.stderr,
            )
            return status or 1
        return status

    return wrapped
