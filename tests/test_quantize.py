"""Quantization (int8 and int4 weight-only, int8-dynamic): the numpy reference, and every framework's
own tool held to it (torchao and FBGEMM, Keras' model.quantize, jax_impl/quantize.py), one test per
promise over the frameworks."""
import dataclasses
import functools

import numpy as np
import pytest

from common.errors import UserError
from common.params import init_params
from common.quantize import (INT4_GROUP, INT8_MAX, dequantize_int4, dequantize_int8, int4_error_bound,
                             int8_dynamic_error_bound, int8_dynamic_matmul, int8_error_bound, quantize_int4,
                             quantize_int8, quantize_rows_int8)
from tests.conftest import BACKENDS, SMALL_CONFIG, decisive_params, make_backend, random_batch
from tests.reference import relative_error

MODES = ("int8", "int4", "int8-dynamic")
# int4's groups need n_embd a multiple of INT4_GROUP: the tiny fixture, twice as wide.
CONFIGS = {"int8": SMALL_CONFIG, "int4": dataclasses.replace(SMALL_CONFIG, n_embd=INT4_GROUP),
           "int8-dynamic": SMALL_CONFIG}
ERROR_BOUND = {"int8": int8_error_bound, "int4": int4_error_bound, "int8-dynamic": int8_error_bound}
# Quantized logits against float32 on the tiny fixture, ‖Δ‖ / ‖float32‖: int8 rounds each weight by
# at most half a step (1/254 of its channel's largest), int4 by half of a group's span over 15, and
# the errors of a layer's inputs partly cancel in its sums. Measured: int8 0.5-0.6% in each
# framework; int4 8.6% (PyTorch, JAX) and 11.2% (Keras, whose token and position lookups are int4 too).
# int8-dynamic rounds each layer's input as well: 0.7% (JAX), 0.8% (Keras), one step a row; 1.3%
# in PyTorch, whose FBGEMM rounds a call's whole input to 128 steps of one scale.
LOGITS_BOUND = {"int8": 0.02, "int4": 0.15, "int8-dynamic": 0.03}
LOSS_BOUND = 0.02  # measured: int8 2e-4, int4 0.0017-0.0023, int8-dynamic 1e-4 to 5e-4


def test_int8_reference_rounds_each_column_to_its_own_scale():
    kernel = np.array([[1.0, -0.5, 0.0], [-2.54, 0.25, 0.0], [0.01, 0.125, 0.0]], np.float32)
    q, scale = quantize_int8(kernel)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_allclose(scale, [2.54 / 127, 0.5 / 127, 1.0])  # a zero column: scale 1, q 0
    assert q[:, 0].tolist() == [50, -127, 0] and q[:, 1].tolist() == [-127, 64, 32] and q[:, 2].tolist() == [0, 0, 0]
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((64, 48)).astype(np.float32) * np.linspace(0.01, 3, 48, dtype=np.float32)
    error = np.abs(dequantize_int8(*quantize_int8(wide)) - wide)
    assert (error <= int8_error_bound(wide)).all()
    assert error.max(axis=0).min() > 0.25 * int8_error_bound(wide).min()  # the bound is not loose by far


def test_int4_reference_rounds_each_group_to_its_own_steps():
    """Groups of INT4_GROUP inputs, each with 16 steps spanning its values and 0."""
    kernel = np.zeros((2 * INT4_GROUP, 2), np.float32)
    kernel[:INT4_GROUP, 0] = np.linspace(-1.5, 0.0, INT4_GROUP)  # 0 is a step: its span is 1.5
    kernel[INT4_GROUP:, 0] = np.linspace(0.0, 3.0, INT4_GROUP)   # only 0 and above: zero point -8
    q, scale, zero = quantize_int4(kernel)
    assert q.dtype == np.int8 and zero.dtype == np.int8 and scale.shape == zero.shape == (2, 2)
    np.testing.assert_allclose(scale, [[0.1, 1.0], [0.2, 1.0]])  # a group of zeros: scale 1
    assert zero.tolist() == [[7, -8], [-8, -8]]
    assert q[0, 0] == -8 and q[INT4_GROUP - 1, 0] == 7 and q[INT4_GROUP, 0] == -8 and q[-1, 0] == 7
    assert (q[:, 1] == zero[0, 1]).all()
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((4 * INT4_GROUP, 48)).astype(np.float32) * np.linspace(0.01, 3, 48, dtype=np.float32)
    error = np.abs(dequantize_int4(*quantize_int4(wide)) - wide)
    assert (error <= int4_error_bound(wide)).all()
    assert (error / int4_error_bound(wide)).max() > 0.9  # the bound is not loose by far


def test_int8_dynamic_reference_rounds_each_input_row_to_its_own_scale():
    x = np.array([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0]], np.float32)
    q, scale = quantize_rows_int8(x)
    assert q.tolist() == [[50, -127, 0], [0, 0, 0]] and scale[:, 0].tolist() == pytest.approx([0.01, 1.0])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64)).astype(np.float32) * np.array([[0.01], [0.1], [1], [3], [30]], np.float32)
    kernel = rng.standard_normal((64, 48)).astype(np.float32) * np.linspace(0.01, 3, 48, dtype=np.float32)
    error = np.abs(int8_dynamic_matmul(x, kernel) - x @ kernel)
    bound = int8_dynamic_error_bound(x, kernel)
    assert (error <= bound).all()
    assert (error / bound).max() > 0.05  # random roundings cancel in the sums, far from the worst case
    # Both roundings count: each row errs by more than the weight-only product (the two errors are
    # independent, so their variances add; measured 1.15-1.61× the root mean square).
    weight_only = np.abs(x @ dequantize_int8(*quantize_int8(kernel)) - x @ kernel)
    assert (np.sqrt((error ** 2).mean(axis=-1)) > 1.1 * np.sqrt((weight_only ** 2).mean(axis=-1))).all()


@pytest.mark.jax
def test_jax_int8_dynamic_linear_is_the_reference_product():
    import jax.numpy as jnp
    from jax_impl.quantize import Int8DynamicLinear
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    kernel = rng.standard_normal((64, 48)).astype(np.float32) * 0.1
    y = np.asarray(Int8DynamicLinear(kernel)(jnp.asarray(x)))
    np.testing.assert_allclose(y, int8_dynamic_matmul(x, kernel), rtol=1e-6, atol=1e-6)


@pytest.mark.pytorch
def test_pytorch_int8_dynamic_runs_fbgemm_within_the_bound_of_its_own_rounding():
    """On a CPU, FBGEMM rounds a call's whole input to one scale, 128 steps across its span and 0:
    within the reference bound for that step. A product off by more than it would fail."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from pytorch_impl.quantize import FbgemmLinear, dynamic_int8
    backend = make_backend("pytorch")
    dynamic_int8(backend.model)
    linear = backend.model.h[0].mlp.c_fc
    assert isinstance(linear, FbgemmLinear) and isinstance(linear.dynamic, DynamicLinear)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, SMALL_CONFIG.n_embd)) * [[0.1], [1], [2], [4]]).astype(np.float32)
    kernel = init_params(SMALL_CONFIG, 0)["h.0.mlp.c_fc.weight"]  # canonical [in, out]
    bias = init_params(SMALL_CONFIG, 0)["h.0.mlp.c_fc.bias"]
    with torch.no_grad():
        y = linear(torch.from_numpy(x)).numpy()
    step = (max(x.max(), 0) - min(x.min(), 0)) / INT8_MAX
    error = np.abs(y - (x @ kernel + bias))
    assert (error <= int8_dynamic_error_bound(x, kernel, activation_step=np.float32(step))).all()
    assert (error > 0).any()


def needs_tool(framework: str) -> None:
    """PyTorch quantizes with torchao, an optional library: without it its quantized tests skip."""
    if framework == "pytorch":
        pytest.importorskip("torchao", reason="PyTorch's quantized weights need torchao (pip install torchao)")


@functools.cache
def quantized_backend(framework: str, mode: str = "int8"):
    needs_tool(framework)
    backend = make_backend(framework, config=CONFIGS[mode])
    backend.quantize(mode)
    return backend


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("framework", BACKENDS)
def test_weights_dequantize_within_half_a_step(framework, mode):
    """Every matrix the model computes with is its float32 self rounded per output channel (int8), or
    per group of its inputs (int4): kernels by column, embedding tables (Keras quantizes them) by row;
    biases and LayerNorm stay float."""
    config, bound = CONFIGS[mode], ERROR_BOUND[mode]
    before, after = init_params(config, 0), quantized_backend(framework, mode).export_params()
    assert after.keys() == before.keys()
    kernels = [n for n in before if n.endswith(".weight") and before[n].ndim == 2]
    assert len(kernels) == 4 * config.n_layer
    for name, value in before.items():
        if name in kernels:
            assert (np.abs(after[name] - value) <= bound(value)).all(), name
            assert not np.array_equal(after[name], value), f"{name} was not quantized"
        elif name in ("wte", "wpe"):
            assert (np.abs(after[name] - value).T <= bound(value.T)).all(), name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("framework", BACKENDS)
def test_logits_and_loss_stay_near_float32(framework, mode):
    x, y = random_batch(CONFIGS[mode], seed=3)
    float32, quantized = make_backend(framework, config=CONFIGS[mode]), quantized_backend(framework, mode)
    assert relative_error(quantized.logits(x), float32.logits(x)) < LOGITS_BOUND[mode]
    assert relative_error(quantized.logits(x), float32.logits(x)) > 0  # the quantized weights are the ones used
    assert abs(quantized.eval_loss(x, y) - float32.eval_loss(x, y)) < LOSS_BOUND


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
@pytest.mark.parametrize("framework", BACKENDS)
def test_int8_greedy_decoding_keeps_decisive_tokens(framework, mode):
    """With clear winners (decisive weights), int8 weights pick float32's greedy tokens, cache or not.
    Not int4: its steps move the fixture's closest calls (a 0.06 margin) in Keras, whose token lookups
    are int4 too; its quality is held by the logits bound."""
    needs_tool(framework)
    float32 = make_backend(framework, params=decisive_params(SMALL_CONFIG))
    int8 = make_backend(framework, params=decisive_params(SMALL_CONFIG))
    int8.quantize(mode)
    prompts, n = [[1, 2, 3], [4, 5, 6]], SMALL_CONFIG.block_size + 4  # past the window too
    expected = float32.generate_batch(prompts, n, temperature=0.0)
    assert int8.generate_batch(prompts, n, temperature=0.0) == expected
    assert int8.generate_batch(prompts, n, temperature=0.0, use_cache=False) == expected


@pytest.mark.parametrize("framework", BACKENDS)
def test_quantize_refuses_unknown_modes_and_a_second_pass(framework):
    backend = quantized_backend(framework)
    with pytest.raises(UserError, match="unknown quantization 'int3': use int8, int4, int8-dynamic"):
        backend.quantize("int3")
    with pytest.raises(UserError, match="already quantized"):
        backend.quantize("int8")


@pytest.mark.parametrize("framework", BACKENDS)
def test_int4_refuses_a_width_of_partial_groups(framework):
    needs_tool(framework)
    message = "groups of 32 inputs, and n_embd 16 is not a multiple of 32: use --quantize int8"
    with pytest.raises(UserError, match=message):
        make_backend(framework).quantize("int4")


@pytest.mark.pytorch
def test_compiled_pytorch_int8_sums_one_row_over_the_int8_bytes():
    """Compiled, an int8 Linear multiplies one row as a sum over its int8 bytes, many rows as torchao
    does: both give the dequantized weight's product, and a compiled int8 decode eager int8's tokens."""
    import torch
    from common.decode import DecodeConfig
    from pytorch_impl.quantize import Int8Linear
    needs_tool("pytorch")
    backend = quantized_backend("pytorch")
    linear = backend.model.h[0].mlp.c_fc
    assert isinstance(linear, Int8Linear) and isinstance(backend.model.lm_head, Int8Linear)
    weight = torch.from_numpy(backend.export_params()["h.0.mlp.c_fc.weight"]).T  # dequantized, (N, K)
    for rows in ((1, 1), (2, 3)):
        x, graphs = torch.randn(*rows, SMALL_CONFIG.n_embd), []
        with torch.no_grad():
            expected = torch.nn.functional.linear(x, weight, linear.bias)
            torch.testing.assert_close(torch.compile(linear)(x), expected, rtol=1e-5, atol=1e-6)
            torch.compile(linear, backend=lambda gm, _: graphs.append(str(gm.graph)) or gm.forward)(x)
        assert ("linear" in graphs[0]) == (rows != (1, 1)), graphs[0]
    params = decisive_params(SMALL_CONFIG)
    eager, compiled = make_backend("pytorch", params=params), make_backend("pytorch", params=params,
                                                                           decode=DecodeConfig(compile=True))
    eager.quantize("int8")
    compiled.quantize("int8")
    prompts, n = [[1, 2, 3], [4, 5, 6]], SMALL_CONFIG.block_size + 4  # past the window too
    assert compiled.generate_batch(prompts[:1], n, temperature=0.0) == eager.generate_batch(prompts[:1], n,
                                                                                            temperature=0.0)
    assert compiled.generate_batch(prompts, n, temperature=0.0) == eager.generate_batch(prompts, n, temperature=0.0)
