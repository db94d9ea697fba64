"""int8 weight-only quantization: the numpy reference, and every framework's own tool held to it
(torchao, Keras' model.quantize, jax_impl/quantize.py), one test per promise over the frameworks."""
import functools

import numpy as np
import pytest

from common.errors import UserError
from common.params import init_params
from common.quantize import dequantize_int8, int8_error_bound, quantize_int8
from tests.conftest import BACKENDS, SMALL_CONFIG, decisive_params, make_backend, random_batch
from tests.reference import relative_error

# Quantized logits against float32 on the tiny fixture, ‖Δ‖ / ‖float32‖: int8 rounds each weight by
# at most half a step (1/254 of its channel's largest), and the errors of a layer's inputs partly
# cancel in its sums; measured 0.5-0.6% in each framework.
LOGITS_BOUND = 0.02


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


def needs_tool(framework: str) -> None:
    """PyTorch quantizes with torchao, an optional library: without it its int8 tests skip."""
    if framework == "pytorch":
        pytest.importorskip("torchao", reason="PyTorch's int8 weights need torchao (pip install torchao)")


@functools.cache
def quantized_backend(framework: str):
    needs_tool(framework)
    backend = make_backend(framework)
    backend.quantize("int8")
    return backend


@pytest.mark.parametrize("framework", BACKENDS)
def test_int8_weights_dequantize_within_half_a_step(framework):
    """Every matrix the model computes with is its float32 self rounded per output channel: kernels by
    column, embedding tables (Keras quantizes them) by row; biases and LayerNorm stay float."""
    before, after = init_params(SMALL_CONFIG, 0), quantized_backend(framework).export_params()
    assert after.keys() == before.keys()
    kernels = [n for n in before if n.endswith(".weight") and before[n].ndim == 2]
    assert len(kernels) == 4 * SMALL_CONFIG.n_layer
    for name, value in before.items():
        if name in kernels:
            assert (np.abs(after[name] - value) <= int8_error_bound(value)).all(), name
            assert not np.array_equal(after[name], value), f"{name} was not quantized"
        elif name in ("wte", "wpe"):
            assert (np.abs(after[name] - value).T <= int8_error_bound(value.T)).all(), name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)


@pytest.mark.parametrize("framework", BACKENDS)
def test_int8_logits_and_loss_stay_near_float32(framework):
    x, y = random_batch(SMALL_CONFIG, seed=3)
    float32, int8 = make_backend(framework), quantized_backend(framework)
    assert relative_error(int8.logits(x), float32.logits(x)) < LOGITS_BOUND
    assert relative_error(int8.logits(x), float32.logits(x)) > 0  # the int8 weights are the ones used
    assert abs(int8.eval_loss(x, y) - float32.eval_loss(x, y)) < 0.02


@pytest.mark.parametrize("framework", BACKENDS)
def test_int8_greedy_decoding_keeps_decisive_tokens(framework):
    """With clear winners (decisive weights), int8 weights pick float32's greedy tokens, cache or not."""
    needs_tool(framework)
    float32 = make_backend(framework, params=decisive_params(SMALL_CONFIG))
    int8 = make_backend(framework, params=decisive_params(SMALL_CONFIG))
    int8.quantize("int8")
    prompts, n = [[1, 2, 3], [4, 5, 6]], SMALL_CONFIG.block_size + 4  # past the window too
    expected = float32.generate_batch(prompts, n, temperature=0.0)
    assert int8.generate_batch(prompts, n, temperature=0.0) == expected
    assert int8.generate_batch(prompts, n, temperature=0.0, use_cache=False) == expected


@pytest.mark.parametrize("framework", BACKENDS)
def test_quantize_refuses_unknown_modes_and_a_second_pass(framework):
    backend = quantized_backend(framework)
    with pytest.raises(UserError, match="unknown quantization 'int3': use int8"):
        backend.quantize("int3")
    with pytest.raises(UserError, match="already quantized"):
        backend.quantize("int8")
