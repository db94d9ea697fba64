"""The memory planner (common/memory.py): what a device holds, and the one-line refusals."""
from dataclasses import replace

import pytest

from common.config import GPTConfig, TrainConfig, apply_overrides, get_preset
from common.errors import UserError
from common.hf_gpt2 import PRETRAINED_SHAPES
from common.memory import GiB, check_fits, parameter_counts, plan_training, shard_axis
from common.params import num_params

GPT2_XL = PRETRAINED_SHAPES["gpt2-xl"]


def test_the_pretrained_shapes_have_gpt2s_parameter_counts():
    # GPT-2's published sizes, wpe included: 124M, 355M, 774M and 1558M; counted as the planner counts.
    assert all(parameter_counts(shape)[1] == num_params(shape) for shape in PRETRAINED_SHAPES.values())
    counts = {name: num_params(shape) for name, shape in PRETRAINED_SHAPES.items()}
    assert counts == {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                      "gpt2-xl": 1_557_611_200}


def test_a_plan_counts_four_float32_copies_and_a_layers_activations():
    model = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=2, dropout=0.0, bias=True)
    train = TrainConfig(batch_size=3)
    params = num_params(model)  # 10*2 + 4*2 + one block + ln_f
    plan = plan_training(model, train, "pytorch")
    assert (plan.params, plan.grads, plan.adam, plan.gathered) == (4 * params, 4 * params, 8 * params, 0)
    assert plan.activations == 3 * (17 * 4 * 2 * 4 + 2 * 4 * 10 * 4)  # 17 (T, C) a layer; logits and their gradient
    # Written-out attention keeps its (nh, T, T) weights as well.
    assert plan_training(model, train, "jax").activations == plan.activations + 3 * 1 * 4 * 4 * 4


def test_two_shards_hold_half_the_state_and_two_gathered_blocks():
    model, train = get_preset("shakespeare-char")
    one, two = (plan_training(model, train, "jax", n) for n in (1, 2))
    assert two.state == pytest.approx(one.state / 2, abs=16)
    assert two.gathered == 2 * 4 * parameter_counts(model)[0]
    assert two.activations == pytest.approx(one.activations / 2)  # each device trains on half the rows


def test_gpt2_xl_fine_tuning_is_refused_on_one_24_gib_device_with_the_shard_that_fits():
    model, train = apply_overrides(GPT2_XL, get_preset("finetune-shakespeare")[1], {})
    with pytest.raises(UserError) as refused:
        check_fits(model, train, "pytorch", 1, 24 * GiB, host=False)
    message = str(refused.value)
    assert message.startswith("this run needs 28.6 GiB a device (23.2 of weights, gradients and Adam moments")
    assert "--shard 2 --set batch_size=2 --set grad_accum=16 fits, 17.2 GiB a device" in message
    regrouped = replace(train, batch_size=2, grad_accum=16)
    assert check_fits(model, regrouped, "pytorch", 2, 24 * GiB, host=False).total / GiB == pytest.approx(17.2, abs=0.05)


def test_on_one_host_shards_share_its_memory():
    model, train = get_preset("cpu-baby")
    plan = check_fits(model, train, "jax", 2, 1 * GiB, host=True)
    need = plan.total * 2 + plan.eval_batches
    with pytest.raises(UserError, match=r"of this host's memory are usable: lower block_size"):
        check_fits(model, train, "jax", 2, int(need / 0.9) - 2**10, host=True)


def test_absurd_sizes_are_refused_by_their_size_not_by_listing_them():
    model, train = apply_overrides(*get_preset("tiny"), {"n_layer": str(10**12), "eval_iters": str(10**12)})
    with pytest.raises(UserError, match="GiB to train"):
        check_fits(model, train, "pytorch", 1, 24 * GiB, host=True)


def test_no_shard_fits_says_so():
    model, train = apply_overrides(GPT2_XL, get_preset("finetune-shakespeare")[1], {})
    with pytest.raises(UserError, match="no --shard fits: lower batch_size or block_size"):
        check_fits(model, train, "pytorch", 1, 4 * GiB, host=False)  # activations alone take more


@pytest.mark.parametrize("shape, devices, axis", [
    ((65, 32), 2, 1),     # the vocabulary does not split; the width does
    ((128, 32), 2, 0),    # the longest axis
    ((32, 32), 2, 0),     # of equals, the first
    ((7,), 2, None),      # nothing divides: whole on every device
    ((), 2, None),        # a count
])
def test_each_tensor_splits_along_its_longest_divisible_axis(shape, devices, axis):
    assert shard_axis(shape, devices) == axis
