"""python -m benchmarks.breakdown: each framework's profiler, its ops sorted into the parts of a step."""
import json

import pytest

from benchmarks import breakdown
from common.backend import is_installed

HLO = """HloModule jit_train_step

FileNames
1 "/repo/jax_impl/model.py"
2 "/site-packages/flax/nnx/nn/linear.py"
3 "/site-packages/flax/nnx/training/optimizer.py"

FunctionNames
1 "CausalSelfAttention.__call__"
2 "Linear.__call__"
3 "Optimizer.update"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=20 end_line=20 column=1 end_column=2}
3 {file_name_id=3 function_name_id=3 line=30 end_line=30 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=0}
2 {file_location_id=2 parent_frame_id=1}
3 {file_location_id=3 parent_frame_id=0}

%fused_computation.1 (param_0: f32[4,4], param_1: f32[4,4]) -> f32[4,4] {
  %param_0 = f32[4,4]{1,0} parameter(0)
  %param_1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.9 = f32[4,4]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.1 (a: f32[4,4], b: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %b = f32[4,4]{1,0} parameter(1)
  %projection = f32[4,4]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_computation.1, metadata={op_name="jit(train_step)/dot_general" stack_frame_id=2}
  %scores = f32[4,4]{1,0} dot(%a, %projection), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/dot_general" stack_frame_id=1}
  %softmax = f32[4,4]{1,0} exponential(%scores), metadata={op_name="jit(train_step)/exp" stack_frame_id=1}
  %adam = f32[4,4]{1,0} multiply(%a, %b), metadata={op_name="jit(train_step)/mul" stack_frame_id=3}
  ROOT %gelu = f32[4,4]{1,0} tanh(%adam), metadata={op_name="jit(train_step)/tanh"}
}
"""


def test_hlo_instructions_take_their_part_from_the_functions_that_traced_them():
    contexts = breakdown.hlo_contexts(HLO)
    parts = {name: breakdown.part_of(*contexts[name][:2]) for name in ("projection", "scores", "softmax", "adam", "gelu")}
    assert parts == {"projection": "matmul", "scores": "attention", "softmax": "attention", "adam": "optimizer",
                     "gelu": "elementwise & norms"}
    assert contexts["projection"][1] and contexts["scores"][1] and not contexts["softmax"][1]
    # The kernel is named by opcode, output shape and the op that made it, as the report lists it.
    assert contexts["projection"][2] == "projection f32[4,4] dot_general"
    assert contexts["softmax"][2] == "softmax f32[4,4] exp" and contexts["gelu"][2] == "gelu f32[4,4] tanh"


def test_the_heaviest_kernels_sum_every_call_per_step_heaviest_first():
    ops = [("matmul", 0.0, 0.004, "dot f32[8,8]"), ("attention", 0.0, 0.001, "fusion f32[2,2] exp"),
           ("matmul", 0.0, 0.004, "dot f32[8,8]"), ("attention", 0.0, 0.003, "fusion f32[2,2] exp"),
           ("optimizer", 0.0, 0.0005, "multiply f32[8]")]
    kernels = breakdown.heaviest_kernels(ops, steps=2, count=2)
    assert kernels == [{"kernel": "dot f32[8,8]", "part": "matmul", "ms": pytest.approx(4.0)},
                       {"kernel": "fusion f32[2,2] exp", "part": "attention", "ms": pytest.approx(2.0)}]


@pytest.mark.parametrize("context, matmul, part", [
    ("gradient_tape/gpt_1/h.2_1/attn_1/c_attn_1/matmul/matmul_1", True, "matmul"),  # TensorFlow op names
    ("gpt_1/h.0_1/attn_1/softmax", False, "attention"),
    ("adam_w/mul_3", False, "optimizer"),
    ("gpt_1/h.0_1/ln_1_1/moments/mean", False, "elementwise & norms"),
    ("aten::mm autogradengine aten::linear", True, "matmul"),  # PyTorch ops and their callers
    ("aten::bmm aten::_scaled_dot_product_flash_attention_for_cpu", True, "attention"),
    ("aten::_foreach_mul_ optimizer.step#adamw.step", False, "optimizer"),
    ("aten::linalg_vector_norm aten::_foreach_norm", False, "optimizer"),  # clip_grad_norm_
    # JAX ops with the stack that traced them: optax's transformations update, its losses do not
    ("jit(train_step)/mul /venv/site-packages/optax/_src/transform.py:update_moment", False, "optimizer"),
    ("jit(train_step)/exp /venv/site-packages/optax/losses/_classification.py:softmax_cross_entropy_with_"
     "integer_labels /repo/jax_impl/model.py:cross_entropy", False, "elementwise & norms"),
])
def test_every_framework_s_names_sort_into_the_same_parts(context, matmul, part):
    assert breakdown.part_of(context, matmul) == part


def test_a_step_splits_into_busy_parts_and_the_idle_rest():
    # Two threads: 0-4 ms matmul beside 1-3 ms attention, then 6-7 ms optimizer, over 10 ms and one step.
    ops = [("matmul", 0.000, 0.004), ("attention", 0.001, 0.002), ("optimizer", 0.006, 0.001)]
    assert breakdown.busy_time([(s, s + d) for _, s, d in ops]) == pytest.approx(0.005)
    parts = breakdown.split_step(ops, wall=0.010, steps=1)
    assert parts == pytest.approx({"matmul": 5 * 4 / 7, "attention": 5 * 2 / 7, "elementwise & norms": 0.0,
                                   "optimizer": 5 / 7, "overhead": 5.0})


def test_two_frameworks_profile_a_step_each_into_a_table_and_a_bar(tmp_path, capsys):
    frameworks = [f for f in ("pytorch", "jax") if is_installed(f)] or pytest.skip("needs pytorch or jax")
    out = tmp_path / "out"
    assert breakdown.main(["--framework", ",".join(frameworks), "--size", "tiny", "--batch", "3", "--steps", "2",
                           "--out", str(out)]) == 0, capsys.readouterr().err
    results = json.loads((out / "breakdown.json").read_text())
    assert [r["framework"] for r in results] == frameworks and {r["batch_size"] for r in results} == {3}
    for r in results:
        parts = r["parts_ms"]
        assert sum(parts.values()) == pytest.approx(r["step_ms"], rel=1e-6)
        assert parts["matmul"] > 0 and parts["attention"] > 0 and parts["optimizer"] > 0, r
    report = (out / "report.md").read_text()
    assert all(f"| {f} |" in report for f in frameworks) and "breakdown.png" in report
    for r in results:  # each framework names its heaviest kernels, heaviest first, within its own step
        ms = [k["ms"] for k in r["kernels"]]
        assert len(ms) == 8 and ms == sorted(ms, reverse=True) and 0 < ms[0] < r["step_ms"], r["kernels"]
        assert all(k["kernel"] and k["part"] in breakdown.PARTS[:-1] for k in r["kernels"]), r["kernels"]
        assert f"| {r['framework']} | `{r['kernels'][0]['kernel']}` |" in report
        assert "--xla_dump_to=" in r["settings"]["XLA_FLAGS"]  # what the profile ran under, its own dump included
    assert (out / "breakdown.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--size", "huge"], "unknown --size 'huge'"), (["--steps", "0"], "--steps must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--framework", "mxnet"], "unknown framework 'mxnet'")])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert breakdown.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
