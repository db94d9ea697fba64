"""The PyTorch GPT against the float64 numpy reference, and its training, generation and state."""
import numpy as np
import pytest

from common.config import GPTConfig, TrainConfig
from common.params import init_params
from common.sampling import filter_logits
from tests import reference
from tests.reference import relative_error

pytestmark = pytest.mark.pytorch

CONFIG = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
TRAIN = TrainConfig(batch_size=4, max_iters=10, lr=1e-2, min_lr=1e-3, warmup_iters=3, lr_decay_iters=10,
                    weight_decay=0.1, grad_clip=0.5, eval_interval=5, eval_iters=1)


def _backend(config=CONFIG, train=TRAIN, seed=0):
    from pytorch_impl.backend import Backend
    return Backend(config, train, init_params(config, seed), device="cpu")


def _batch(config, seed=0, batch_size=3):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, config.vocab_size, (batch_size, config.block_size), dtype=np.int32),
            rng.integers(0, config.vocab_size, (batch_size, config.block_size), dtype=np.int32))


@pytest.mark.parity
@pytest.mark.parametrize("bias", [True, False])
def test_logits_match_numpy_reference(bias):
    config = GPTConfig(**{**CONFIG.__dict__, "bias": bias})
    backend = _backend(config)
    x, y = _batch(config)
    expected = reference.forward(init_params(config, 0), config, x)
    assert relative_error(backend.logits(x), expected) <= 1e-5
    assert abs(backend.eval_loss(x, y) - reference.cross_entropy(expected, y)) <= 1e-5


@pytest.mark.parity
@pytest.mark.parametrize("bias", [True, False])
def test_one_optimizer_step_matches_numpy_reference(bias):
    config = GPTConfig(**{**CONFIG.__dict__, "bias": bias})
    backend = _backend(config)
    x, y = _batch(config, seed=1)
    params = init_params(config, 0)
    _, grads = backend.loss_and_grads(x, y)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert norm > TRAIN.grad_clip, "the step under test should clip"
    zeros = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
    expected, _, _, _ = reference.adamw_step(params, grads, zeros, dict(zeros), 0, 4e-3, TRAIN)
    backend.train_step(x, y, lr=4e-3)
    actual = backend.export_params()
    for name in params:
        assert relative_error(actual[name], expected[name]) <= 1e-5, name


def test_canonical_params_round_trip():
    params = init_params(CONFIG, 3)
    exported = _backend(CONFIG, seed=3).export_params()
    assert exported.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(exported[name], params[name])


def test_gradients_are_the_numerical_derivative():
    """A finite difference on one weight agrees with autograd, in float64."""
    import torch
    from pytorch_impl.model import GPT, load_canonical
    model = GPT(CONFIG).double()
    load_canonical(model, {k: v.astype(np.float64) for k, v in init_params(CONFIG, 0).items()})
    x, y = (torch.from_numpy(a.astype(np.int64)) for a in _batch(CONFIG))
    _, loss = model(x, y)
    loss.backward()
    weight = model.h[0].mlp.c_fc.weight
    analytic = weight.grad[3, 5].item()
    with torch.no_grad():
        weight[3, 5] += 1e-6
        plus = model(x, y)[1].item()
        weight[3, 5] -= 2e-6
        minus = model(x, y)[1].item()
    assert abs((plus - minus) / 2e-6 - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_training_lowers_the_loss():
    backend = _backend()
    x, y = _batch(CONFIG, seed=2)
    first = backend.train_step(x, y, 1e-2)
    for _ in range(20):
        last = backend.train_step(x, y, 1e-2)
    assert last < first - 1.0


def test_kv_cache_matches_full_forward_at_every_position():
    import torch
    backend = _backend()
    from pytorch_impl.model import KVCache
    x, _ = _batch(CONFIG, batch_size=2)
    idx = torch.from_numpy(x.astype(np.int64))
    model = backend.model.eval()
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(CONFIG, 2, "cpu")
        prefix, _ = model(idx[:, :5], cache=cache)
        steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, CONFIG.block_size)]
    incremental = torch.cat([prefix, *steps], dim=1)
    assert torch.allclose(incremental, full, atol=1e-5, rtol=1e-5)


def test_sampling_filter_matches_common_rules():
    import torch
    from pytorch_impl.generate import sample_next
    logits = np.random.default_rng(0).normal(size=(4, 65)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 10, 0.5)]:
        allowed = np.isfinite(filter_logits(logits, temperature, top_k, top_p))
        generator = torch.Generator().manual_seed(0)
        draws = np.concatenate([sample_next(torch.from_numpy(logits), temperature, top_k, top_p,
                                            generator).numpy() for _ in range(300)], axis=1)
        for row in range(4):
            assert allowed[row, draws[row]].all()
            if top_k:
                assert len(set(draws[row])) <= top_k
    greedy = sample_next(torch.from_numpy(logits), 0.0, None, None, None).numpy()[:, 0]
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


def test_generation_is_seeded_and_runs_past_block_size():
    backend = _backend()
    a = backend.generate([1, 2, 3], 40, temperature=1.0, top_k=10, seed=5)
    b = backend.generate([1, 2, 3], 40, temperature=1.0, top_k=10, seed=5)
    c = backend.generate([1, 2, 3], 40, temperature=1.0, top_k=10, seed=6)
    assert len(a) == 40 and a == b and a != c
    assert all(0 <= t < CONFIG.vocab_size for t in a)


def test_optimizer_state_round_trips():
    backend = _backend()
    x, y = _batch(CONFIG)
    for _ in range(3):
        backend.train_step(x, y, 1e-3)
    state = backend.optimizer_state()
    assert int(state["adam_count"]) == 3
    assert state["adam_m.h.0.mlp.c_fc.weight"].shape == (32, 128)  # canonical [in, out]
    fresh = _backend()
    fresh.load_optimizer_state(state)
    from pytorch_impl.model import load_canonical
    load_canonical(fresh.model, backend.export_params())
    assert fresh.train_step(x, y, 1e-3) == pytest.approx(backend.train_step(x, y, 1e-3), abs=1e-6)
    for name, value in backend.export_params().items():
        np.testing.assert_allclose(fresh.export_params()[name], value, rtol=1e-6, atol=1e-7)


def test_dropout_is_active_only_in_training():
    import torch
    config = GPTConfig(**{**CONFIG.__dict__, "dropout": 0.3})
    backend = _backend(config)
    x, _ = _batch(config)
    np.testing.assert_array_equal(backend.logits(x), backend.logits(x))
    backend.model.train()
    idx = torch.from_numpy(x.astype(np.int64))
    assert not torch.equal(backend.model(idx)[0], backend.model(idx)[0])
