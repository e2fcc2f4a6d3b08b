"""Proof of fusion: the `jit_compile=True` train step the loop runs is ONE XLA module holding the
schedule's arithmetic on the iteration counter, the convolution gradients and the variable updates,
with nothing leaving the module in between.

The oracle is XLA's own HLO text of the step (`experimental_get_compiler_ir(...)(stage="hlo")` on
`runner.Run(...).steps.train_step`, the tf.function the compiled loop calls once per step), read
as a dataflow graph: which instruction reads which. TensorFlow names every instruction's source op
in its metadata (`op_type`, `op_name`), and the module's `input_output_alias` says which output
overwrites which parameter (a resource variable written by the step). Runs on CPU.
"""

import re

import keras
import numpy as np
import pytest

from testing import HloModule, gradients_only, jit_cnn_run

# What leaves a module for the host or another device: none of these may appear.
LEAVING = (
    "send",
    "send-done",
    "recv",
    "recv-done",
    "infeed",
    "outfeed",
    "custom-call",
    "host-compute",
    "all-reduce",
    "all-gather",
    "collective-permute",
    "async-start",
    "copy-start",
)
BACKPROP_FILTER = "f01b_i01o->01bf"  # a Conv2D's filter gradient: batch and features swap roles
BACKPROP_INPUT = "b01f_01oi->b01f"  # a Conv2D's input gradient: the kernel's in/out dims swapped


class Hlo:
    """The ENTRY computation of an HLO module's text (as testing.HloModule reads it) as instructions:
    name -> (opcode, operands, line), plus the parameters by number, the ROOT's outputs and the
    output -> parameter aliases."""

    def __init__(self, text):
        module = HloModule(text)
        self.modules, self.aliases, self.params = module.modules, module.aliases, module.params
        self.ops = {
            name: (opcode, operands, line)
            for name, (opcode, operands, line, computation, _) in module.ops.items()
            if computation == module.entry
        }
        root = module.roots.get(module.entry)
        self.outputs = self.ops[root][1] if root else []

    def ancestors(self, name):
        """Every instruction `name` reads, directly or not (the names)."""
        seen, todo = set(), [name]
        while todo:
            for operand in self.ops[todo.pop()][1]:
                if operand in self.ops and operand not in seen:
                    seen.add(operand)
                    todo.append(operand)
        return seen

    def named(self, pattern, opcode=None):
        """The instructions whose TensorFlow op_name matches `pattern` (and whose opcode is `opcode`)."""
        return {
            n
            for n, (op, _, line) in self.ops.items()
            if re.search(r'op_name="[^"]*' + pattern, line) and (opcode is None or op == opcode)
        }

    def convolutions(self, dim_labels):
        return {
            n for n, (op, _, line) in self.ops.items() if op == "convolution" and f"dim_labels={dim_labels}" in line
        }


def fusion_problems(hlo, param_of, iterations, kernels, variables):
    """Returns what keeps `hlo` (an Hlo) from being one fused train step, as sentences (none: fused).

    `param_of(v)` is the module parameter number of variable `v`; `iterations` is the optimizer's
    step counter, `kernels` the convolution kernels, `variables` every trainable variable.
    """
    problems = []
    if hlo.modules != 1:
        problems.append(f"{hlo.modules} modules, not one")
    leaving = sorted({op for op, _, line in hlo.ops.values() if op in LEAVING or "is_host_transfer=true" in line})
    if leaving:
        problems.append(f"instructions that leave the module: {leaving}")
    step = hlo.params.get(param_of(iterations))
    # The schedule: the CLR's floor-division and remainder of the step counter by the cycle length,
    # and its triangular2 scale exp(-(cycle - 1) ln 2), computed from that counter.
    schedule = hlo.named("CyclicalLearningRate/")
    reads_step = {n for n in schedule if step in hlo.ops[n][1] and hlo.ops[n][0] in ("divide", "remainder")}
    scale = {n for n in hlo.named("CyclicalLearningRate/Exp", "exponential") if step in hlo.ancestors(n)}
    if not reads_step or not scale:
        problems.append(
            "no schedule arithmetic on the iteration counter "
            f"(floordiv/floormod of it: {len(reads_step)}, exp scale from it: {len(scale)})"
        )
    written = {p: hlo.outputs[o] for o, p in hlo.aliases.items() if o < len(hlo.outputs)}
    if step not in hlo.ops or param_of(iterations) not in written:
        problems.append("the iteration counter is not updated in the module")
    for v in variables:
        out = written.get(param_of(v))
        if out is None:
            problems.append(f"{v.path} is not written by the module")
            continue
        before = hlo.ancestors(out)
        if hlo.params[param_of(v)] not in before:
            problems.append(f"{v.path}'s new value does not read its old value")
        if not scale & before:
            problems.append(f"{v.path}'s update does not use the scheduled rate")
    for k in kernels:
        out = written.get(param_of(k))
        if out is not None and not hlo.convolutions(BACKPROP_FILTER) & hlo.ancestors(out):
            problems.append(f"{k.path}'s update does not read a filter-gradient convolution")
    if len(hlo.convolutions(BACKPROP_FILTER)) < len(kernels) or not hlo.convolutions(BACKPROP_INPUT):
        problems.append("the convolution gradients are not in the module")
    return problems


def _check(run, compiled, x, y):
    model = run.model
    hlo = Hlo(compiled.experimental_get_compiler_ir(x, y)(stage="hlo"))
    captured = compiled.get_concrete_function(x, y).captured_inputs
    handles = [id(h) for h in captured]

    def param_of(variable):
        # The module's parameters are the function's inputs: x, y, then the captured variables.
        handle = variable.handle
        return 2 + handles.index(id(handle)) if id(handle) in handles else -1

    kernels = [layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return hlo, fusion_problems(hlo, param_of, run.optimizer.iterations, kernels, model.trainable_variables)


@pytest.fixture(scope="module")
def scheduled():
    return jit_cnn_run()


def test_the_jit_train_step_is_one_module_with_schedule_gradients_and_updates(scheduled):
    run, x, y = scheduled
    assert run.jit_compile and run.splits == 1
    hlo, problems = _check(run, run.steps.train_step, x, y)
    assert problems == []
    # Each kernel's filter gradient is its own convolution of the layer's input with its output gradient.
    assert len(hlo.convolutions(BACKPROP_FILTER)) == 2 and len(hlo.convolutions(BACKPROP_INPUT)) == 2
    # The batch enters as the module's first two parameters, as the step's arguments.
    assert "u8[8,16,16,1]" in hlo.ops[hlo.params[0]][2] and "s32[8]" in hlo.ops[hlo.params[1]][2]
    # One step of the loop still trains (the module is the step the loop runs).
    before = run.model.get_weights()
    run.run_steps(1)
    assert run.step == 1 and not all(np.array_equal(a, b) for a, b in zip(before, run.model.get_weights()))


def test_the_check_fails_when_the_schedule_and_update_are_outside_the_compiled_function(scheduled):
    """The mutation: only the forward and backward pass compiled, the schedule and the update left
    to run outside XLA."""
    run, x, y = scheduled
    _, problems = _check(run, gradients_only(run.model), x, y)
    assert any("schedule arithmetic" in p for p in problems), problems
    assert any("is not written by the module" in p for p in problems), problems


def test_the_check_fails_when_the_rate_is_computed_outside_and_fed_in():
    """The mutation: the same fused step, but the optimizer's rate a plain variable that Python would
    set from the schedule before each step: the module no longer holds the schedule."""
    run, x, y = jit_cnn_run(scheduled=False)
    _, problems = _check(run, run.steps.train_step, x, y)
    assert any("schedule arithmetic" in p for p in problems), problems
    assert any("does not use the scheduled rate" in p for p in problems), problems
