"""Facts about the machine a benchmark ran on: the CPU, its features, the device, thread pools, versions, kernels.

What the report records beside the measurements: the CPU model and the /proc/cpuinfo flags that
say whether bf16 arithmetic has its own units (`cpu_features`), where TensorFlow runs
(`device_description`), the thread pools a worker set (`thread_pools`), its resident memory
(`rss_mb`), the library versions (`versions`) and which oneDNN kernels ran (`onednn_kernels`).
TensorFlow, Keras and psutil are imported inside the functions that use them.
"""

import os
import platform


def rss_mb():
    """Returns this process's resident memory now, in MiB (NaN without psutil).

    Returns:
      The resident set size in MiB, a float.
    """
    try:
        import psutil  # pylint: disable=import-outside-toplevel

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


def thread_pools():
    """Returns TensorFlow's thread-pool sizes as set in this process.

    Returns:
      (inter-op, intra-op) pool sizes; 0 means TensorFlow's default (one per core).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return (
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    )


def versions():
    """Returns the versions the benchmark ran with.

    Returns:
      {"python", "tensorflow", "keras", "numpy"}: version strings.
    """
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def device_description():
    """Returns a one-line description of where TensorFlow runs: GPU names, else the CPU model and cores.

    Returns:
      "GPU: <names>" or "CPU: <model> (<n> logical cores)".
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return "GPU: " + ", ".join(names)
    return f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)"


def cpu_model():
    """Returns the CPU model name from /proc/cpuinfo (or `platform.processor()` elsewhere).

    Returns:
      The model name, or "unknown".
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The /proc/cpuinfo flags that say whether bf16 arithmetic has its own units (AVX-512 BF16's dot
# products, AMX's bf16 tiles), and AVX-VNNI (int8 dot products on AVX2 registers), reported beside them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "avx512_fp16",
)


def cpu_features(cpuinfo_text=None):
    """Returns {"flags": {flag: present} for REPORTED_FLAGS, "bf16_units": bool, "line": text}.

    Read from the first "flags" line of `cpuinfo_text` (default: /proc/cpuinfo; empty when it
    cannot be read). `bf16_units` is whether any of BF16_FLAGS is there; "line" is one sentence
    for the report.

    Args:
      cpuinfo_text: the text of /proc/cpuinfo (None: read it).

    Returns:
      {"flags", "bf16_units", "line"}.
    """
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ""
    present = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            present = set(value.split())
            break
    flags_ = {flag: flag in present for flag in REPORTED_FLAGS}
    bf16 = any(flags_[flag] for flag in BF16_FLAGS)
    have = [flag for flag, on in flags_.items() if on]
    lacking = [flag for flag in ("avx512_bf16", "amx_bf16", "avx_vnni") if not flags_[flag]]
    line = (
        f"CPU features: {', '.join(have) or 'none of ' + ', '.join(REPORTED_FLAGS)}"
        + (f"; no {', '.join(lacking)}" if lacking else "")
        + ("; bf16 units: yes" if bf16 else f"; bf16 units: no (neither {' nor '.join(BF16_FLAGS)})")
    )
    return {"flags": flags_, "bf16_units": bf16, "line": line}


def onednn_kernels(verbose_text):
    """Returns {"<primitive kind> <implementation> <source dtype>": executions} from ONEDNN_VERBOSE output.

    Counts the primitive executions oneDNN prints with ONEDNN_VERBOSE=1 (lines such as
    `onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx_bf16,
    forward_training,src_bf16::blocked:acdb::f0 wei_bf16:...,...`; oneDNN 2's `dnnl_verbose,exec,
    cpu,...` too), most frequent first. The implementation names the ISA it was built for
    (`jit:avx2`, `brg:avx512_core_amx`, ...); "-" where oneDNN prints none (gemm_api calls).

    Args:
      verbose_text: a process's output with ONEDNN_VERBOSE=1.

    Returns:
      {key: executions}, most frequent first.
    """
    counts = {}
    for line in verbose_text.splitlines():
        fields = line.strip().split(",")
        if not fields[0].endswith("_verbose") or "exec" not in fields:
            continue
        i = fields.index("exec")
        if fields[i - 1] not in ("primitive", fields[0]) or len(fields) < i + 6:
            continue  # graph-API partitions and other non-primitive lines
        kind, impl, descriptors = fields[i + 2], fields[i + 3], fields[i + 5]
        dtype = "?"
        for descriptor in descriptors.split():
            if descriptor.startswith("src_"):
                dtype = descriptor[4:].split(":", 1)[0]
                break
        key = f"{kind} {impl or '-'} {dtype}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
