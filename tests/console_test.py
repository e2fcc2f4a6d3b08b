"""Tests of clr_loop.console: what the apps' console hides by default, and the verbosity that shows it."""

import logging
import os
import subprocess
import sys

from clr_loop import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TensorFlow 2.21's start-up lines on a CPU-only machine, as the main job printed them.
START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796541955.822807    5653 port.cc:153] oneDNN custom operations are on.\n",
    "I0000 00:00:1796541955.823158    5653 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.\n",
    "E0000 00:00:1796541981.299413    6298 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
    "W1206 07:26:21.332104 140230915070848 some_file.cc:242] a warning\n",
]


def test_requested_verbosity_reads_absls_spellings_on_the_command_line():
    assert console.requested_verbosity(["--mode=none"]) is None
    assert console.requested_verbosity(["--verbosity=1"]) == 1
    assert console.requested_verbosity(["-v", "2", "--epochs=1"]) == 2
    assert console.requested_verbosity(["--v=1", "-verbosity", "0"]) == 0  # the last one counts, as in absl
    assert console.requested_verbosity(["--", "--verbosity=1"]) is None  # not a flag after --
    assert console.requested_verbosity(["--verbosity=x"]) is None


def test_the_level_is_the_users_else_quiet_unless_verbose():
    assert console.native_level([], {}) == 3
    assert console.native_level(["-v", "1"], {}) == 0
    assert console.native_level(["-v", "1"], {"TF_CPP_MIN_LOG_LEVEL": "2"}) == 2
    assert console.native_level([], {"TF_CPP_MIN_LOG_LEVEL": "1"}) == 1


def test_start_up_lines_below_the_level_are_dropped_and_others_kept():
    kept = lambda level: [line for line in START_UP if not console.dropped(line, level)]  # noqa: E731
    assert kept(3) == []
    assert kept(2) == [START_UP[4]]  # the user's TF_CPP_MIN_LOG_LEVEL=2 keeps errors, as TensorFlow would
    assert kept(0) == START_UP
    assert not console.dropped("/path/x.py:3: UserWarning: something\n", 3)  # a Python warning is passed on


def test_the_apps_import_hides_tensorflows_start_up_and_passes_other_output_on():
    """In a fresh process without TF_CPP_MIN_LOG_LEVEL: the import of TensorFlow inside the block writes
    nothing of TensorFlow's to stderr, and what the block prints itself still arrives."""
    script = (
        "import sys\nfrom clr_loop import console\n"
        "with console.native_start_up_hidden([]):\n"
        "    import tensorflow as tf\n"
        "    print('kept line', file=sys.stderr)\n"
        "tf.config.list_physical_devices()\nprint(tf.constant(2).numpy() * 3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "6\n"
    lines = result.stderr.splitlines()
    assert "kept line" in lines
    # Nothing of TensorFlow's C++ logging (a Python warning of the machine's packages would be passed on).
    assert [line for line in lines if console.dropped(line, 3)] == [], result.stderr


def test_library_logs_of_tensorflow_are_hidden_below_verbosity_1():
    console.show_library_logs(0)
    try:
        assert logging.getLogger("tensorflow").getEffectiveLevel() == logging.WARNING
        record = logging.LogRecord(
            "absl",
            logging.INFO,
            "/x/site-packages/tensorflow/python/checkpoint/f.py",
            1,
            "Sharding callback duration",
            None,
            None,
        )
        own = logging.LogRecord(
            "absl", logging.INFO, os.path.join(REPO, "clr_loop", "data.py"), 1, "source", None, None
        )
        assert not console._FILTER.filter(record) and console._FILTER.filter(own)  # pylint: disable=protected-access
    finally:
        console.show_library_logs(1)
    assert logging.getLogger("tensorflow").getEffectiveLevel() == logging.INFO


def test_an_uncaught_ctrl_c_is_one_line_and_the_interrupted_exit_status():
    """Ctrl-C during an app's start-up printed a KeyboardInterrupt traceback."""
    script = (
        "from clr_loop import console\nconsole.report_interrupts()\n"
        "def start_up():\n    raise KeyboardInterrupt\nstart_up()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == "stopped: interrupted (SIGINT)\n"
    assert result.returncode == -2  # ended by SIGINT, as Python ends on any uncaught KeyboardInterrupt
    other = subprocess.run(
        [sys.executable, "-c", "from clr_loop import console\nconsole.report_interrupts()\n1 / 0\n"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 1 and "Traceback" in other.stderr and "ZeroDivisionError" in other.stderr
