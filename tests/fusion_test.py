"""Proof of fusion: the `jit_compile=True` train step the loop runs is ONE XLA module holding the
schedule's arithmetic on the iteration counter, the convolution gradients and the variable updates,
with nothing leaving the module in between.

The oracle is XLA's own HLO text of the step (`experimental_get_compiler_ir(...)(stage="hlo")` on
`loop.Run(...).steps.train_step`, the tf.function the compiled loop calls once per step), read
as a dataflow graph: which instruction reads which. TensorFlow names every instruction's source op
in its metadata (`op_type`, `op_name`), and the module's `input_output_alias` says which output
overwrites which parameter (a resource variable written by the step). Runs on CPU.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import loop
from clr_loop import inputs
from clr_loop.experiment import models
from clr_loop import schedules

IMAGE = (16, 16, 1)  # the smallest image the tutorial CNN's two 5x5 convolutions and pools take
BATCH = 8
# What leaves a module for the host or another device: none of these may appear.
LEAVING = ("send", "send-done", "recv", "recv-done", "infeed", "outfeed", "custom-call", "host-compute",
           "all-reduce", "all-gather", "collective-permute", "async-start", "copy-start")
BACKPROP_FILTER = "f01b_i01o->01bf"  # a Conv2D's filter gradient: batch and features swap roles
BACKPROP_INPUT = "b01f_01oi->b01f"  # a Conv2D's input gradient: the kernel's in/out dims swapped


def _balanced(text, start):
    """Returns the index just after the bracket group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced: {text[start:start + 80]}")


class Hlo:
    """The ENTRY computation of an HLO module's text as instructions: name -> (opcode, operands,
    line), plus the parameters by number, the ROOT's outputs and the output -> parameter aliases."""

    def __init__(self, text):
        text = re.sub(r"/\*.*?\*/", "", text)
        self.modules = len(re.findall(r"^HloModule ", text, re.M))
        header = text.splitlines()[0]
        self.aliases = {int(o): int(p) for o, p in re.findall(r"\{(\d+)\}: \((\d+), \{\}", header)}
        entry = text[text.index("\nENTRY "):]
        self.ops, self.params, self.outputs = {}, {}, []
        for line in entry.splitlines()[1:]:
            m = re.match(r"\s*(ROOT\s+)?%(\S+)\s*=\s*", line)
            if not m:
                continue
            rest = line[m.end():]
            shape_end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
            body = rest[shape_end:].lstrip()
            opcode = re.match(r"[\w\-]+", body).group(0)
            args_end = _balanced(body, len(opcode))
            operands = re.findall(r"%([\w.\-]+)", body[len(opcode):args_end])
            self.ops[m.group(2)] = (opcode, operands, line)
            if opcode == "parameter":
                self.params[int(re.search(r"parameter\((\d+)\)", body).group(1))] = m.group(2)
            if m.group(1):
                self.outputs = operands

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
        return {n for n, (op, _, line) in self.ops.items()
                if re.search(r'op_name="[^"]*' + pattern, line) and (opcode is None or op == opcode)}

    def convolutions(self, dim_labels):
        return {n for n, (op, _, line) in self.ops.items() if op == "convolution" and f"dim_labels={dim_labels}" in line}


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
        problems.append("no schedule arithmetic on the iteration counter "
                        f"(floordiv/floormod of it: {len(reads_step)}, exp scale from it: {len(scale)})")
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


def _run(scheduled=True, **fit_args):
    """Returns (Run, x, y): a jit-compiled loop.Run of the tutorial CNN under a triangular2 CLR on
    random uint8 images, and one batch of them; without `scheduled` the optimizer's rate is a
    plain variable (for code that would set it from the schedule in Python)."""
    keras.utils.set_random_seed(0)
    model = models.create_model(seed=1, input_shape=IMAGE)
    clr = schedules.Triangular2CyclicalLearningRate(1e-3, 1e-2, step_size=4)
    model.compile(keras.optimizers.SGD(clr if scheduled else 1e-3, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4 * BATCH,) + IMAGE, dtype=np.uint8)
    y = rng.integers(0, 10, size=(4 * BATCH,), dtype=np.int32)
    run = loop.Run(
        model, inputs.make_train_input(x, y, BATCH, drop_remainder=True), (None, None), seed=3, epochs=1,
        steps_per_loop=2, jit_compile=True, batch_splits=0, workdir=None, checkpoint_every_steps=0,
        keep_checkpoints=1, log_every_steps=100, profile_steps=None, max_steps=None,
        validation_batch_size=BATCH, **fit_args,
    )
    return run, tf.constant(x[:BATCH]), tf.constant(y[:BATCH])


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
    return _run()


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


def _gradients_only(model):
    """The mutation of the fused step: a compiled function of the forward and backward pass only,
    with the schedule and the update left outside XLA."""

    def gradients(a, b):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(a, b, model(a, training=True))
        return tape.gradient(loss, model.trainable_variables)

    return tf.function(gradients, jit_compile=True, autograph=False)


def test_the_check_fails_when_the_schedule_and_update_are_outside_the_compiled_function(scheduled):
    """The mutation: only the forward and backward pass compiled, the schedule and the update left
    to run outside XLA."""
    run, x, y = scheduled
    _, problems = _check(run, _gradients_only(run.model), x, y)
    assert any("schedule arithmetic" in p for p in problems), problems
    assert any("is not written by the module" in p for p in problems), problems


def test_the_check_fails_when_the_rate_is_computed_outside_and_fed_in():
    """The mutation: the same fused step, but the optimizer's rate a plain variable that Python would
    set from the schedule before each step: the module no longer holds the schedule."""
    run, x, y = _run(scheduled=False)
    _, problems = _check(run, run.steps.train_step, x, y)
    assert any("schedule arithmetic" in p for p in problems), problems
    assert any("does not use the scheduled rate" in p for p in problems), problems

