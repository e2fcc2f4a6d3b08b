"""What an app's console shows: by default the data source, the run's plan, the epochs and the result.

TensorFlow writes its C++ start-up lines (the oneDNN note from `port.cc`, `cudart_stub.cc`'s "Could not
find cuda drivers", the `cuda_platform.cc` cuInit error; twice, once per shared library) before its
logging honours `TF_CPP_MIN_LOG_LEVEL`, and its Python checkpointing logs a line per save ("Sharding
callback duration"). The apps hide them unless asked, with absl's own verbosity flag on the command
line (`--verbosity=1`, `-v 1`) or `TF_CPP_MIN_LOG_LEVEL` set by the user:

- `native_start_up_hidden(argv)` wraps an app's imports of TensorFlow: `TF_CPP_MIN_LOG_LEVEL` becomes
  3 (errors too: the cuInit one is an error) unless the user set it, and TensorFlow's C++ lines
  written during the imports below that level are dropped (every other line written then, a Python
  warning say, is passed on).
- `show_library_logs()`, called by an app's `main` once the flags are parsed, leaves TensorFlow's
  Python INFO lines out below verbosity 1. clr_loop's own per-checkpoint and per-evaluation lines are
  absl DEBUG lines, which absl shows from verbosity 1.

`report_interrupts()` makes a Ctrl-C that no handler took (during the imports, the data loading, or
after the work) end the program with one line, `stopped: interrupted (SIGINT)`, instead of a
KeyboardInterrupt traceback; the exit status stays the interrupted one.

Only the apps call these (they change the process's environment, file descriptors and loggers);
importing this module changes nothing, and it imports nothing but the standard library, so an app
can use it before TensorFlow is imported.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

ENV = "TF_CPP_MIN_LOG_LEVEL"
# The level the apps set when the user did not: no INFO, WARNING or ERROR line of TensorFlow's C++.
QUIET_LEVEL = 3
# A line of TensorFlow's C++ logging (absl's format): severity letter, date or 0000, time, thread, file:line].
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.-]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# absl's banner before its logging is initialised, and the second line of cpu_feature_guard.cc's note.
_NATIVE_EXTRAS = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",
)


def requested_verbosity(argv):
    """Returns the absl verbosity (`--verbosity=N`, `-v N`, `--v=N`, ...) that the arguments `argv` give
    last before any `--`, or None when they give none (or not an integer). Flagfiles are not read."""
    found = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in ("verbosity", "v"):
            continue
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        try:
            found = int(value)
        except ValueError:
            pass
    return found


def native_level(argv, environ=None):
    """Returns the TF_CPP_MIN_LOG_LEVEL the start-up keeps to: the user's (`environ`, default os.environ),
    0 (everything) when `argv` asks for verbosity 1 or more, else QUIET_LEVEL."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV, "").strip():
        try:
            return int(environ[ENV])
        except ValueError:
            return 0
    verbosity = requested_verbosity(argv)
    return 0 if verbosity is not None and verbosity >= 1 else QUIET_LEVEL


def dropped(line, level):
    """True when `line` (written while TensorFlow was imported) is a TensorFlow C++ log line below `level`."""
    match = _NATIVE_LINE.match(line)
    if match:
        return _SEVERITY[match.group(1)] < level
    return level > 0 and line.startswith(_NATIVE_EXTRAS)


@contextlib.contextmanager
def native_start_up_hidden(argv):
    """For an app's imports of TensorFlow: sets TF_CPP_MIN_LOG_LEVEL to `native_level(argv)` unless the
    user set it, and drops the C++ lines below that level written to stderr inside the block (which
    TensorFlow writes before it honours the variable); the block's other stderr output is written back
    after it, also when the block raises. Does nothing when TensorFlow is imported already or the level
    is 0."""
    level = native_level(argv)
    if "tensorflow" in sys.modules or level <= 0:
        yield
        return
    os.environ.setdefault(ENV, str(level))
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (a test's capture): nothing to hide
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not dropped(line, level)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


# Where the Python INFO lines and warnings that a user does not need come from: TensorFlow's and TFDS's
# own modules (a checkpoint's "Sharding callback duration", "Using MirroredStrategy with devices", a
# tf.data UserWarning about its options), whichever logger they use.
_THIRD_PARTY_PATH = re.compile(
    r"[/\\]site-packages[/\\]tensorflow(_datasets)?[/\\]|[/\\]tensorflow(_datasets)?[/\\]python[/\\]"
)
_THIRD_PARTY_MODULE = r"tensorflow(_datasets)?\."


class _ThirdPartyInfo(logging.Filter):
    """Passes a log record unless it is below WARNING and written by TensorFlow's or TFDS's own code."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or not _THIRD_PARTY_PATH.search(record.pathname or "")


_FILTER = _ThirdPartyInfo()


def show_library_logs(verbosity=None):
    """Below absl verbosity 1 (`verbosity`, default absl's current one), leaves TensorFlow's and TFDS's own
    Python INFO lines (one per checkpoint save, the strategy's devices, ...) and warnings out of the
    console; at 1 or more lets them through. Returns None."""
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    import warnings  # pylint: disable=import-outside-toplevel

    if verbosity is None:
        verbosity = absl_logging.get_verbosity()
    quiet = verbosity < 1
    logging.getLogger("tensorflow").setLevel(logging.WARNING if quiet else logging.INFO)
    handler = absl_logging.get_absl_handler()
    if quiet and _FILTER not in handler.filters:
        handler.addFilter(_FILTER)
    elif not quiet:
        handler.removeFilter(_FILTER)
    if quiet:
        warnings.filterwarnings("ignore", module=_THIRD_PARTY_MODULE)


INTERRUPTED = "stopped: interrupted (SIGINT)"


def report_interrupts():
    """Makes an uncaught KeyboardInterrupt print `INTERRUPTED` to stderr instead of its traceback (other
    exceptions are reported as before). Python then ends the process by SIGINT, as it does for any
    uncaught KeyboardInterrupt (exit status 130 in a shell). Returns None."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            try:
                sys.stderr.write(INTERRUPTED + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
