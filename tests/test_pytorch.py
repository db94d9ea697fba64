"""What only the PyTorch GPT has to show; the Backend contract is tests/test_backend.py's."""
import numpy as np
import pytest

from common.params import init_params
from common.sampling import filter_logits, stream_uniforms
from tests.conftest import SMALL_CONFIG as CONFIG, random_batch

pytestmark = pytest.mark.pytorch


def _model(dtype=None):
    from pytorch_impl.model import GPT, load_canonical
    model = GPT(CONFIG).eval()
    if dtype is not None:
        model = model.to(dtype)
    load_canonical(model, {k: v.astype(np.float64) for k, v in init_params(CONFIG, 0).items()})
    return model


def test_gradients_are_the_numerical_derivative():
    """A finite difference on one weight agrees with autograd, in float64."""
    import torch
    from pytorch_impl.model import cross_entropy
    model = _model(torch.float64)
    x, y = (torch.from_numpy(a.astype(np.int64)) for a in random_batch(CONFIG))
    cross_entropy(model(x)[0], y).backward()
    weight = model.h[0].mlp.c_fc.weight
    analytic = weight.grad[3, 5].item()
    with torch.no_grad():
        weight[3, 5] += 1e-6
        plus = cross_entropy(model(x)[0], y).item()
        weight[3, 5] -= 2e-6
        minus = cross_entropy(model(x)[0], y).item()
    assert abs((plus - minus) / 2e-6 - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_kv_cache_matches_full_forward_at_every_position():
    import torch
    from pytorch_impl.model import KVCache
    model = _model()
    x, _ = random_batch(CONFIG, batch_size=2)
    idx = torch.from_numpy(x.astype(np.int64))
    with torch.no_grad():
        full, no_cache = model(idx)
        cache = KVCache.empty(CONFIG, 2, "cpu")
        prefix, returned = model(idx[:, :5], cache=cache.window(5))
        # Each step in the smallest window of the cache that holds it: views of the same tensors.
        steps = [model(idx[:, t:t + 1], cache=cache.window(t + 1))[0] for t in range(5, CONFIG.block_size)]
    assert no_cache is None and returned is cache.window(5) and cache.length == CONFIG.block_size
    incremental = torch.cat([prefix, *steps], dim=1)
    assert torch.allclose(incremental, full, atol=1e-5, rtol=1e-5)


def test_decoding_reads_the_smallest_cache_window_that_holds_each_step(monkeypatch):
    """A one-token prompt is prefilled in the smallest window, and each step attends to the smallest
    window that holds its position, through every window in turn: no step reads empty slots past it."""
    from common.decode import cache_windows, prefill_length
    from pytorch_impl.model import KVCache
    from tests.conftest import make_backend
    seen, update = [], KVCache.update

    def spy(self, layer, k, v):  # (positions filled before this call, new positions, slots read)
        if layer == 0:
            seen.append((int(self.length), k.size(2), self.slots.numel()))
        return update(self, layer, k, v)
    monkeypatch.setattr(KVCache, "update", spy)
    backend = make_backend("pytorch", CONFIG)
    new = backend.generate([7], CONFIG.block_size - 1, temperature=0.0)
    assert len(new) == CONFIG.block_size - 1
    window = prefill_length(1, CONFIG.block_size)
    assert seen[0] == (0, window, window)
    steps = seen[1:]
    assert [length for length, _, _ in steps] == list(range(1, CONFIG.block_size - 1))
    assert all(T == 1 and slots == prefill_length(length + 1, CONFIG.block_size) for length, T, slots in steps)
    assert sorted({slots for _, _, slots in seen}) == cache_windows(CONFIG.block_size)


def test_sampling_filter_matches_common_rules():
    import torch
    from pytorch_impl.generate import sample_next
    logits = np.random.default_rng(0).normal(size=(4, 65)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 10, 0.5)]:
        allowed = np.isfinite(filter_logits(logits, temperature, top_k, top_p))
        draws = np.concatenate([sample_next(torch.from_numpy(logits), temperature, top_k, top_p,
                                            torch.from_numpy(stream_uniforms(range(4), i))).numpy()
                                for i in range(300)], axis=1)
        for row in range(4):
            assert allowed[row, draws[row]].all()
            if top_k:
                assert len(set(draws[row])) <= top_k
    greedy = sample_next(torch.from_numpy(logits), 0.0, None, None, None).numpy()[:, 0]
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


def test_draws_follow_the_filtered_distribution():
    """Inverting each row's distribution at its stream's uniform number samples it: 20,000 draws over
    positions land on each allowed token as often as its probability says (within 4 standard errors)."""
    import torch
    from pytorch_impl.generate import sample_next
    logits = np.random.default_rng(3).normal(size=(1, 65)).astype(np.float32)
    filtered = filter_logits(logits, 0.9, 8, None)[0]
    probs = np.exp(filtered - filtered.max())
    probs /= probs.sum()
    n = 20_000
    uniforms = np.stack([stream_uniforms([11], position) for position in range(n)])  # (n, 1)
    draws = sample_next(torch.from_numpy(np.repeat(logits, n, axis=0)), 0.9, 8, None,
                        torch.from_numpy(uniforms[:, 0])).numpy()[:, 0]
    counts = np.bincount(draws, minlength=65) / n
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(probs))
    assert np.all(np.abs(counts - probs) <= 4 * np.sqrt(probs * (1 - probs) / n) + 1e-12)


def test_top_k_past_its_bound_keeps_exactly_the_k_most_likely():
    """top-k takes the k-th largest logit among torch.topk's power-of-two bound (top_k_bound): for a k
    of 100 in 300 tokens (bound 128) and one past the vocabulary, near-uniform draws at a high
    temperature reach exactly the tokens the common rules allow."""
    import torch
    from pytorch_impl.generate import sample_next, top_k_bound
    logits = np.random.default_rng(5).normal(size=(1, 300)).astype(np.float32)
    n = 6000
    uniforms = torch.from_numpy(stream_uniforms([3], np.arange(n)[:, None])[:, 0])
    for top_k, bound in ((100, 128), (1000, 300)):
        assert top_k_bound(top_k, 300) == bound
        allowed = np.flatnonzero(np.isfinite(filter_logits(logits, 100.0, top_k, None)[0]))
        draws = sample_next(torch.from_numpy(np.repeat(logits, n, axis=0)), torch.tensor(100.0), torch.tensor(top_k),
                            None, uniforms, bound).numpy()[:, 0]
        assert set(draws) == set(allowed) and len(allowed) == min(top_k, 300)
