"""Proof of fusion on a device's own compiled module: the `jit_compile=True` train step the loop runs,
as XLA optimised it for the device (`experimental_get_compiler_ir(...)(stage="optimized_hlo")`
under `tf.device(...)`), is ONE module in which the schedule reads the iteration counter, the
convolution gradients are computed and every variable is updated, with nothing leaving the device
in between.

tests/fusion_test.py reads the module before XLA's optimisation passes (the same for every
device). Here the oracle is the text XLA hands to the device's code generator: after fusion, the
schedule's arithmetic sits inside fused computations and, on a GPU, the convolutions are calls of
cuDNN. The module is read as one dataflow graph across its computations (a fused computation's
parameter k is its caller's operand k). The check runs on the CPU's optimised module everywhere,
and on the GPU's where TensorFlow sees a GPU; without one, the GPU case is skipped and says so.
"""

import os
import re

import keras
import pytest
import tensorflow as tf

from testing import CNN_BATCH, HloModule, gradients_only, jit_cnn_run

# What takes data off the device or hands control to the host: none of these may appear, nor a
# host transfer or a buffer in host memory (memory space S(5)).
LEAVING = (
    "send",
    "send-done",
    "recv",
    "recv-done",
    "infeed",
    "outfeed",
    "host-compute",
    "all-reduce",
    "all-gather",
    "collective-permute",
)
# Library calls that run on the device itself (cuDNN convolutions, cuBLAS/cuBLASLt GEMMs, Triton
# and XLA's own GPU kernels); any other custom-call could be a host callback and is refused.
DEVICE_CALLS = ("__cudnn$", "__cublas", "__triton", "__gpu$", "__onednn$")


def _first_shape_elements(shape):
    """The element count of an HLO shape's first array (`f32[5,5,1,16]{...}` or a tuple's first)."""
    m = re.search(r"[a-z]+\d*\[([\d,]*)\]", shape)
    dims = [int(d) for d in m.group(1).split(",") if d] if m else []
    count = 1
    for d in dims:
        count *= d
    return count


class Module(HloModule):
    """Every computation of an optimised HLO module's text as one dataflow graph (testing.HloModule:
    `ops[name] = (opcode, operands, line, computation, shape)`, `params`, `outputs`, `aliases`,
    `ancestors` across computations), with the instructions TensorFlow named and the convolutions."""

    def named(self, pattern):
        """The instructions whose TensorFlow op_name (in their metadata) matches `pattern`."""
        return {n for n, op in self.ops.items() if re.search(r'op_name="[^"]*' + pattern, op[2])}

    def convolutions(self):
        """{name: kind} of every convolution: an HLO `convolution` or a cuDNN call; kind is
        "filter" (a filter gradient), "input" (an input gradient) or "forward" when the cuDNN
        target or TensorFlow's op type says so, else "unknown"."""
        found = {}
        for name, (opcode, _, line, _, _) in self.ops.items():
            target = re.search(r'custom_call_target="([^"]*)"', line)
            if opcode == "convolution" or (opcode == "custom-call" and target and "conv" in target.group(1).lower()):
                text = (target.group(1) if target else "") + " " + " ".join(re.findall(r'op_type="([^"]*)"', line))
                kind = (
                    "filter"
                    if re.search(r"BackwardFilter|BackpropFilter", text)
                    else "input"
                    if re.search(r"BackwardInput|BackpropInput", text)
                    else "forward"
                    if re.search(r"Forward|\bConv2D\b", text)
                    else "unknown"
                )
                found[name] = kind
        return found


def fusion_problems(module, param_of, iterations, kernels, variables):
    """Returns what keeps `module` (a Module) from being one fused train step, as sentences (none: fused).

    `param_of(v)` is the ENTRY parameter number of variable `v`; `iterations` is the optimizer's
    step counter, `kernels` the convolution kernels, `variables` every trainable variable.
    """
    problems = []
    if module.modules != 1:
        problems.append(f"{module.modules} modules, not one")
    leaving = sorted(
        {
            op
            for op, _, line, _, shape in module.ops.values()
            if op in LEAVING or "is_host_transfer=true" in line or "S(5)" in shape
        }
    )
    calls = sorted(
        {
            t
            for op, _, line, _, _ in module.ops.values()
            if op == "custom-call"
            for t in re.findall(r'custom_call_target="([^"]*)"', line)
            if not t.startswith(DEVICE_CALLS)
        }
    )
    if leaving or calls:
        problems.append(f"instructions that leave the device: {leaving + calls}")
    step = module.params.get(param_of(iterations))
    if step is None:
        problems.append("the iteration counter is not a parameter of the module")
        return problems
    # The schedule: instructions TensorFlow named for the CLR op that are computed from the counter.
    schedule = {n for n in module.named("CyclicalLearningRate/") if step in module.ancestors(n)}
    if not schedule:
        problems.append("no schedule arithmetic on the iteration counter")
    written = {p: module.outputs[o] for o, p in module.aliases.items() if o < len(module.outputs)}
    if param_of(iterations) not in written:
        problems.append("the iteration counter is not updated in the module")
    convolutions = module.convolutions()
    for v in variables:
        out = written.get(param_of(v))
        if out is None:
            problems.append(f"{v.path} is not written by the module")
            continue
        before = module.ancestors(out) | {out}
        if module.params[param_of(v)] not in before:
            problems.append(f"{v.path}'s new value does not read its old value")
        if schedule and not schedule & before:
            problems.append(f"{v.path}'s update does not use the scheduled rate")
    filters = set()
    for k in kernels:
        out = written.get(param_of(k))
        if out is None:
            continue
        size = int(k.shape.num_elements())
        # A filter gradient: named so, or a convolution whose result has the kernel's element count
        # (cuDNN and XLA may lay it out transposed; metadata can be lost in fusion).
        grads = {
            c
            for c in module.ancestors(out) & set(convolutions)
            if convolutions[c] == "filter"
            or (convolutions[c] != "forward" and _first_shape_elements(module.ops[c][4]) == size)
        }
        if not grads:
            problems.append(f"{k.path}'s update does not read a filter-gradient convolution")
        filters |= grads
    if len(filters) < len(kernels) or "input" not in convolutions.values():
        problems.append(
            f"the convolution gradients are not in the module (convolutions: {sorted(convolutions.values())})"
        )
    return problems


DEVICES = [
    "CPU:0",
    pytest.param(
        "GPU:0",
        marks=pytest.mark.skipif(
            not tf.config.list_physical_devices("GPU"), reason="no GPU: TensorFlow lists no GPU device on this machine"
        ),
    ),
]


def _check(run, compiled, x, y, device, keep_as=None):
    """Returns (Module, fusion_problems) of `compiled`'s optimised module for `device`; with
    `keep_as` and $GPU_CHECK_HLO_DIR set (benchmarks/gpu_check.sh), the module's text is also
    written there as `<device>_<keep_as>.txt`, the record of what was read."""
    with tf.device(device):  # the compiler IR is that of the device in scope
        text = compiled.experimental_get_compiler_ir(x, y)(stage="optimized_hlo")
    if keep_as and os.environ.get("GPU_CHECK_HLO_DIR"):
        with open(os.path.join(os.environ["GPU_CHECK_HLO_DIR"], f"{device.replace(':', '')}_{keep_as}.txt"), "w") as f:
            f.write(text)
    module = Module(text)
    handles = [id(h) for h in compiled.get_concrete_function(x, y).captured_inputs]

    def param_of(variable):
        # The module's parameters are the function's inputs: x, y, then the captured variables.
        handle = variable.handle
        return 2 + handles.index(id(handle)) if id(handle) in handles else -1

    kernels = [layer.kernel for layer in run.model.layers if isinstance(layer, keras.layers.Conv2D)]
    return module, fusion_problems(module, param_of, run.optimizer.iterations, kernels, run.model.trainable_variables)


@pytest.fixture(scope="module")
def scheduled():
    return jit_cnn_run()


@pytest.mark.parametrize("device", DEVICES)
def test_the_devices_compiled_step_is_one_module_with_schedule_gradients_and_updates(scheduled, device):
    run, x, y = scheduled
    assert run.jit_compile and run.splits == 1
    module, problems = _check(run, run.steps.train_step, x, y, device, keep_as="train_step_optimized_hlo")
    assert problems == [], "\n".join(problems)
    assert f"[{CNN_BATCH},16,16,1]" in module.ops[module.params[0]][4]
    if device.startswith("GPU"):
        # Every variable the step reads lives on the GPU: nothing is copied from the host around it either.
        variables = run.model.trainable_variables + list(run.optimizer.variables)
        assert [v.path for v in variables if "GPU" not in v.handle.device.upper()] == []
        # The module is the GPU's: its convolutions are calls of cuDNN.
        assert any('custom_call_target="__cudnn$conv' in module.ops[c][2] for c in module.convolutions())


@pytest.mark.parametrize("device", DEVICES)
def test_the_check_fails_when_the_schedule_and_update_are_outside_the_compiled_function(scheduled, device):
    """The mutation: only the forward and backward pass compiled, the schedule and the update left
    to run outside XLA."""
    run, x, y = scheduled
    compiled = gradients_only(run.model)
    _, problems = _check(run, compiled, x, y, device)
    assert any("iteration counter" in p for p in problems), problems


@pytest.mark.parametrize("device", DEVICES)
def test_the_check_fails_when_the_rate_is_computed_outside_and_fed_in(device):
    """The mutation: the fused step with the optimizer's rate a plain variable that Python would set."""
    run, x, y = jit_cnn_run(scheduled=False)
    _, problems = _check(run, run.steps.train_step, x, y, device)
    assert any("schedule arithmetic" in p for p in problems), problems


def test_a_host_callback_or_transfer_in_the_module_is_reported():
    text = (
        "HloModule m, input_output_alias={ {0}: (0, {}, may-alias) }\n\n"
        "ENTRY %e (p0: s64[]) -> (s64[]) {\n"
        "  %p0 = s64[] parameter(0)\n"
        "  %cb = s64[] custom-call(%p0), custom_call_target=\"xla_ffi_python_gpu_callback\"\n"
        "  %s = (s64[], u32[], token[]) send(%cb, %t), channel_id=1, is_host_transfer=true\n"
        "  %h = s64[]{:S(5)} copy(%p0)\n"
        "  ROOT %r = (s64[]) tuple(%cb)\n}\n"
    )
    module = Module(text)

    class Counter:
        path = "iterations"

    problems = fusion_problems(module, lambda v: 0, Counter(), [], [])
    assert any(
        "leave the device" in p and "xla_ffi_python_gpu_callback" in p and "send" in p and "copy" in p for p in problems
    ), problems
    assert any("schedule arithmetic" in p for p in problems), problems
