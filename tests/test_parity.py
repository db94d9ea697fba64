"""Cross-framework parity: the same canonical weights must compute the same thing everywhere.

Each framework is compared with PyTorch (and every one with the float64 numpy reference in
test_backend.py), and on a Hugging Face GPT-2 folder every framework with transformers itself.
Bounds are the issues' and are not to be widened: a miss has a cause.
"""
import numpy as np
import pytest

from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import GPTConfig, TrainConfig
from common.schedule import learning_rate
from tests.conftest import (KERAS_ROW, PARITY_CONFIG as CONFIG, PARITY_TRAIN as TRAIN, framework_param,
                            make_backend, random_batch)
from tests import reference
from tests.reference import assert_trained_params_match, relative_error

OTHERS = [framework_param("jax"), framework_param(KERAS_ROW)]  # each compared with PyTorch
pytestmark = [pytest.mark.parity, pytest.mark.pytorch]


def _pair(framework, config=CONFIG, train=TRAIN, params=None):
    return make_backend("pytorch", config, train, params), make_backend(framework, config, train, params)


@pytest.mark.parametrize("framework", OTHERS)
@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_loss_match_pytorch(framework, bias):
    config = GPTConfig(**{**CONFIG.__dict__, "bias": bias})
    reference, other = _pair(framework, config)
    x, y = random_batch(config, 4)
    expected, actual = reference.logits(x), other.logits(x)
    assert actual.shape == expected.shape == (4, config.block_size, config.vocab_size)
    assert relative_error(actual, expected) <= 1e-5
    assert np.abs(actual - expected).max() <= 1e-4
    assert abs(other.eval_loss(x, y) - reference.eval_loss(x, y)) <= 1e-5


@pytest.mark.parametrize("framework", OTHERS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_pytorch(framework, bias):
    config = GPTConfig(**{**CONFIG.__dict__, "bias": bias})
    reference, other = _pair(framework, config)
    x, y = random_batch(config, 4)
    ref_loss, ref_grads = reference.loss_and_grads(x, y)
    loss, grads = other.loss_and_grads(x, y)
    assert abs(loss - ref_loss) <= 1e-5
    assert sorted(grads) == sorted(ref_grads)
    for name, expected in ref_grads.items():
        assert grads[name].shape == expected.shape, name
        assert relative_error(grads[name], expected) <= 1e-4, name


def _global_grad_norm(backend, x, y) -> float:
    _, grads = backend.loss_and_grads(x, y)
    return float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())))


@pytest.mark.parametrize("framework", OTHERS)
@pytest.mark.parametrize("grad_accum", [1, 2])  # 2: the same steps, each as two micro-batches of half the rows
def test_fifty_training_steps_match_pytorch(framework, grad_accum, shakespeare_tokens):
    from common.data import get_batch
    train = TrainConfig(**{**TRAIN.__dict__, "batch_size": TRAIN.batch_size // grad_accum, "grad_accum": grad_accum})
    reference, other = _pair(framework, train=train)
    clipped = False
    for step in range(TRAIN.max_iters):
        x, y = get_batch(shakespeare_tokens, TRAIN.batch_size, CONFIG.block_size, TRAIN.seed, step)
        clipped = clipped or _global_grad_norm(reference, x, y) > TRAIN.grad_clip  # one clipped step is enough
        lr = learning_rate(step, TRAIN)
        ref_loss, loss = reference.train_step(x, y, lr), other.train_step(x, y, lr)
        assert abs(loss - ref_loss) <= 1e-3, f"step {step}: {loss} vs {ref_loss}"
    assert clipped, "the test must exercise gradient clipping"
    assert_trained_params_match(other.export_params(), reference.export_params(), 1e-3, CONFIG.n_embd)


@pytest.fixture(scope="module")
def float32_losses(shakespeare_tokens):
    """PyTorch's float32 losses over the fifty parity steps: the reference of the bfloat16 bound."""
    from common.data import get_batch
    reference = make_backend("pytorch", CONFIG, TRAIN)
    return [reference.train_step(*get_batch(shakespeare_tokens, TRAIN.batch_size, CONFIG.block_size, TRAIN.seed, step),
                                 learning_rate(step, TRAIN)) for step in range(TRAIN.max_iters)]


# The bfloat16 bounds: every framework computing in bfloat16 (float32 weights, Adam state and loss)
# follows float32 over the fifty parity steps. bfloat16 keeps 8 bits of mantissa, a relative 4e-3
# a rounding: for the first steps the losses differ by that rounding alone (measured on the 2-core
# Xeon with AMX: at most 3e-3 up to step 18). Then the runs part, as any two runs whose
# arithmetic differs do: around step 22, where the loss drops fastest, one run drops a step before
# the other (0.08 to 0.16 apart in that one step), and the last ten steps' mean is 0.007 to 0.018
# off float32's. A wrong bfloat16 path (a float32 loss or master weight lost, a cast in the wrong
# place) misses these by tenths.
BF16_EARLY_STEPS, BF16_EARLY_BOUND, BF16_LATE_MEAN_BOUND = 16, 1e-2, 5e-2


@pytest.mark.parametrize("framework", [framework_param("pytorch"), *OTHERS])
def test_bfloat16_training_follows_float32(framework, float32_losses, shakespeare_tokens):
    from dataclasses import replace
    from common.data import get_batch
    bf16 = make_backend(framework, CONFIG, replace(TRAIN, dtype="bfloat16"))
    x, _ = random_batch(CONFIG)
    assert relative_error(bf16.logits(x), make_backend(framework, CONFIG, TRAIN).logits(x)) > 1e-4  # bf16 ran
    losses = np.array([bf16.train_step(*get_batch(shakespeare_tokens, TRAIN.batch_size, CONFIG.block_size,
                                                  TRAIN.seed, step), learning_rate(step, TRAIN))
                       for step in range(TRAIN.max_iters)])
    difference = losses - np.array(float32_losses)
    assert np.abs(difference[:BF16_EARLY_STEPS]).max() <= BF16_EARLY_BOUND, difference.round(4)
    assert abs(difference[-10:].mean()) <= BF16_LATE_MEAN_BOUND, difference.round(4)
    assert all(v.dtype == np.float32 for v in bf16.export_params().values())


@pytest.mark.parametrize("framework", OTHERS)
def test_optimizer_state_carries_over_from_pytorch(framework, shakespeare_tokens):
    """Resume in another framework: PyTorch trains 5 steps, the other continues from its state."""
    from common.data import get_batch
    reference = make_backend("pytorch", CONFIG, TRAIN)
    batches = [get_batch(shakespeare_tokens, TRAIN.batch_size, CONFIG.block_size, 7, s) for s in range(10)]
    for step in range(5):
        reference.train_step(*batches[step], learning_rate(step, TRAIN))
    other = make_backend(framework, CONFIG, TRAIN, reference.export_params())
    other.load_optimizer_state(reference.optimizer_state())
    assert int(other.optimizer_state()["adam_count"]) == 5
    for step in range(5, 10):
        lr = learning_rate(step, TRAIN)
        assert abs(other.train_step(*batches[step], lr) - reference.train_step(*batches[step], lr)) <= 1e-5
    assert_trained_params_match(other.export_params(), reference.export_params(), 1e-5, CONFIG.n_embd)


def _greedy_margins(backend, prompt, tokens, block_size):
    """Top-1 minus top-2 logit at every generated position, from the no-cache forward pass."""
    sequence = list(prompt) + list(tokens)
    margins = []
    for i in range(len(tokens)):
        end = len(prompt) + i
        window = np.asarray(sequence[max(0, end - block_size):end], dtype=np.int32)[None]
        top2 = np.sort(backend.logits(window)[0, -1])[-2:]
        margins.append(float(top2[1] - top2[0]))
    return margins


@pytest.mark.parametrize("framework", OTHERS)
def test_greedy_generation_matches_pytorch(framework, trained_params):
    reference, other = _pair(framework, params=trained_params)
    prompt = [0, 18, 47, 56, 57, 58]  # "\nFirst" in the Tiny Shakespeare char vocabulary
    expected = reference.generate(prompt, 200, temperature=0.0)
    actual = other.generate(prompt, 200, temperature=0.0)
    margins = _greedy_margins(reference, prompt, expected, CONFIG.block_size)
    ambiguous = next((i for i, m in enumerate(margins) if m < 1e-4), len(margins))
    if ambiguous < len(margins):
        print(f"PyTorch's top-2 logits tie within 1e-4 at generated token {ambiguous}: compared up to there")
    assert ambiguous > 100, "the trained test model should be decisive for most of the text"
    assert actual[:ambiguous] == expected[:ambiguous]


@pytest.mark.parametrize("framework", OTHERS)
def test_checkpoints_cross_over(framework, trained_params, tmp_path):
    """A checkpoint written by either side loads in the other and gives the same val loss."""
    x, y = random_batch(CONFIG, 4, seed=3)
    reference, other = _pair(framework, params=trained_params)
    for writer, reader_name in ((other, "pytorch"), (reference, framework)):
        path = save_checkpoint(tmp_path / f"{writer.name}.safetensors", writer.export_params(), CONFIG,
                               step=50, tokenizer_json="{}", framework=writer.name)
        params, info = load_checkpoint(path, expect_config=CONFIG)
        assert info["framework"] == writer.name and info["step"] == 50
        reader = make_backend(reader_name, CONFIG, TRAIN, params)
        assert abs(reader.eval_loss(x, y) - writer.eval_loss(x, y)) <= 1e-5


# --- GPT-2 folders: every framework against transformers' GPT2LMHeadModel -------------------------

@pytest.fixture(scope="module", params=[dict(), dict(vocab_size=1031, layer_norm_epsilon=1e-6)],
                ids=["vocab289-eps1e-5", "vocab1031-eps1e-6"])
def gpt2(request, tmp_path_factory):
    """A tiny random GPT-2 (gelu_new) as a folder, its transformers model and a full context of ids.

    Vocabularies not a multiple of anything, on both sides of the JAX model's one-hot embedding
    threshold (jax_impl.model.ONE_HOT_MAX_VOCAB); the 1031-token model keeps the 289-token tokenizer.
    """
    pytest.importorskip("transformers", reason="the tests build their GPT-2 with transformers")
    import torch
    from common.hf_gpt2 import load_gpt2
    from tests.test_hf_gpt2 import save_gpt2_folder, tiny_bpe, tiny_gpt2
    tokenizer = tiny_bpe()
    hf_model = tiny_gpt2(tokenizer, **request.param)
    loaded = load_gpt2(save_gpt2_folder(hf_model, tokenizer, tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"))
    config = loaded.config.model
    assert config.gelu_approximate and config.layer_norm_eps == hf_model.config.layer_norm_epsilon
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, config.block_size), dtype=np.int32)
    with torch.no_grad():
        want = hf_model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    return loaded, ids, want


@pytest.mark.parametrize("framework", [framework_param("pytorch"), *OTHERS])
def test_gpt2_folder_logits_match_transformers(framework, gpt2):
    loaded, ids, want = gpt2
    got = make_backend(framework, loaded.config.model, TRAIN, loaded.params).logits(ids)
    assert got.shape == want.shape == (*ids.shape, loaded.config.model.vocab_size)
    assert relative_error(got, want) <= 1e-5
    assert np.abs(got - want).max() <= 1e-4


def test_gpt2_folder_reference_matches_transformers(gpt2):
    loaded, ids, want = gpt2
    assert relative_error(reference.forward(loaded.params, loaded.config.model, ids), want) <= 1e-5
