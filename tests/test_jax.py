"""The Flax NNX GPT against the float64 numpy reference, and the JAX-specific behaviour."""
import contextlib
import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.jax

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nnx = pytest.importorskip("flax.nnx")

from common.config import GPTConfig, TrainConfig  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.params import init_params  # noqa: E402
from common.sampling import filter_logits as reference_filter_logits  # noqa: E402
from common.schedule import learning_rate  # noqa: E402
from jax_impl.backend import Backend  # noqa: E402
from jax_impl.generate import filter_logits  # noqa: E402
from jax_impl.model import GPT, KVCache, load_canonical  # noqa: E402
from jax_impl.train import train_step  # noqa: E402
from tests.reference import adamw_step, cross_entropy, forward, relative_error  # noqa: E402

CONFIG = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
TRAIN = TrainConfig(batch_size=4, max_iters=20, lr=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=20,
                    beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=10, eval_iters=2)


def _batch(config=CONFIG, batch_size=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, config.vocab_size, size=(batch_size, config.block_size), dtype=np.int32)
    y = rng.integers(0, config.vocab_size, size=(batch_size, config.block_size), dtype=np.int32)
    return x, y


def _model(config=CONFIG, params=None, seed=0):
    model = GPT(config, rngs=nnx.Rngs(params=0, dropout=seed))
    load_canonical(model, params if params is not None else init_params(config, 0))
    return model


def _decisive_params(config=CONFIG):
    """Random weights scaled up so greedy decoding has clear winners (no float near-ties)."""
    params = init_params(config, 1)
    return {n: v * 8 if n in ("wte", "wpe") or n.endswith("c_fc.weight") else v for n, v in params.items()}


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations (of anything) inside the block."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# --- the model ------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_loss_match_numpy_reference(bias):
    config = dataclasses.replace(CONFIG, bias=bias)
    params = init_params(config, 0)
    x, y = _batch(config)
    y[0, :5] = -1  # LOSS_IGNORE_INDEX: left out of the mean
    logits, loss = _model(config, params)(jnp.asarray(x), jnp.asarray(y))
    expected = forward(params, config, x)
    assert logits.shape == (3, config.block_size, config.vocab_size)
    assert relative_error(np.asarray(logits), expected) <= 1e-5
    valid = y != -1
    assert abs(float(loss) - cross_entropy(expected[valid], y[valid])) <= 1e-5


def test_params_round_trip_in_canonical_names_and_layouts():
    params = init_params(CONFIG, 3)
    exported = Backend(CONFIG, TRAIN, params, device="cpu").export_params()
    assert sorted(exported) == sorted(params)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and np.array_equal(exported[name], value), name


def test_kv_cache_logits_equal_full_forward():
    model = _model()
    x, _ = _batch()
    full, _ = model(jnp.asarray(x))
    cache = KVCache.empty(CONFIG, batch_size=3)
    prefix, cache = model(jnp.asarray(x[:, :9]), cache=cache)
    steps = [prefix]
    for t in range(9, CONFIG.block_size):
        logits, cache = model(jnp.asarray(x[:, t:t + 1]), cache=cache)
        steps.append(logits)
    assert int(cache.length) == CONFIG.block_size
    assert relative_error(np.concatenate(steps, axis=1), np.asarray(full)) <= 1e-5


def test_dropout_is_random_in_training_and_off_in_eval():
    config = dataclasses.replace(CONFIG, dropout=0.3)
    params = init_params(config, 0)
    model = _model(config, params)
    x = jnp.asarray(_batch(config)[0])
    model.train()
    first, second = model(x)[0], model(x)[0]
    assert not np.allclose(first, second)  # the dropout stream advanced between calls
    model.eval()
    once, again = model(x)[0], model(x)[0]
    assert np.array_equal(once, again)
    assert relative_error(np.asarray(once), forward(params, config, np.asarray(x))) <= 1e-5


def test_dropout_changes_the_training_step_only():
    config = dataclasses.replace(CONFIG, dropout=0.3)
    params = init_params(config, 0)
    x, y = _batch(config)
    with_dropout = Backend(config, TRAIN, params, device="cpu")
    without = Backend(CONFIG, TRAIN, params, device="cpu")
    assert with_dropout.eval_loss(x, y) == pytest.approx(without.eval_loss(x, y), abs=1e-6)
    assert abs(with_dropout.train_step(x, y, 1e-3) - without.train_step(x, y, 1e-3)) > 1e-4


# --- training -------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_clip", [0.5, 0.0])
def test_optimizer_steps_match_reference_adamw(grad_clip):
    """Two steps (so bias correction and moments carry over), clipped or not, decayed where it should."""
    train = dataclasses.replace(TRAIN, grad_clip=grad_clip)
    params = init_params(CONFIG, 0)
    backend = Backend(CONFIG, train, params, device="cpu")
    p = {n: v.astype(np.float64) for n, v in params.items()}
    m = {n: np.zeros_like(v) for n, v in p.items()}
    v = {n: np.zeros_like(v) for n, v in p.items()}
    count = 0
    for step in range(2):
        x, y = _batch(seed=step)
        _, grads = backend.loss_and_grads(x, y)
        if grad_clip:
            assert np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())) > grad_clip
        lr = learning_rate(step, train)
        backend.train_step(x, y, lr)
        p, m, v, count = adamw_step(p, grads, m, v, count, lr, train)
    actual, state = backend.export_params(), backend.optimizer_state()
    assert int(state["adam_count"]) == 2 and state["adam_count"].dtype == np.int64
    for name in params:
        assert relative_error(actual[name], p[name]) <= 1e-5, name
        assert relative_error(state[f"adam_m.{name}"], m[name]) <= 1e-5, name
        assert relative_error(state[f"adam_v.{name}"], v[name]) <= 1e-4, name


def test_optimizer_state_round_trips_and_resumes_identically():
    x, y = _batch()
    first = Backend(CONFIG, TRAIN, init_params(CONFIG, 0), device="cpu")
    for step in range(3):
        first.train_step(*_batch(seed=step), learning_rate(step, TRAIN))
    second = Backend(CONFIG, TRAIN, first.export_params(), device="cpu")
    second.load_optimizer_state(first.optimizer_state())
    assert int(second.optimizer_state()["adam_count"]) == 3
    assert first.train_step(x, y, 1e-3) == second.train_step(x, y, 1e-3)
    for name, value in first.export_params().items():
        assert np.array_equal(second.export_params()[name], value), name


def test_train_step_compiles_once_whatever_the_learning_rate():
    # A config no other test uses, so the first step compiles here (backends with equal configs share).
    train = dataclasses.replace(TRAIN, weight_decay=0.05)
    backend = Backend(CONFIG, train, init_params(CONFIG, 0), device="cpu")
    x, y = _batch()
    before = train_step._cache_size()
    with count_compiles() as first_call:
        backend.train_step(x, y, learning_rate(0, train))
    assert "jit(train_step)" in first_call and train_step._cache_size() == before + 1
    with count_compiles() as compiles:
        losses = [backend.train_step(*_batch(seed=s), learning_rate(s, train)) for s in range(1, 6)]
        backend.train_step(x, y, 0.5)
    assert compiles == [] and train_step._cache_size() == before + 1
    assert len(set(losses)) == 5


def test_bfloat16_compute_trains_close_to_float32():
    params = init_params(CONFIG, 0)
    f32 = Backend(CONFIG, TRAIN, params, device="cpu")
    bf16 = Backend(CONFIG, dataclasses.replace(TRAIN, dtype="bfloat16"), params, device="cpu")
    x, _ = _batch()
    difference = relative_error(bf16.logits(x), f32.logits(x))
    assert 1e-5 < difference < 2e-2  # bf16 did the arithmetic, and did it right
    for step in range(4):
        batch = _batch(seed=step)
        lr = learning_rate(step, TRAIN)
        loss32, loss16 = f32.train_step(*batch, lr), bf16.train_step(*batch, lr)
        assert np.isfinite(loss16) and abs(loss16 - loss32) <= 2e-2, (step, loss16, loss32)
    assert all(v.dtype == np.float32 for v in bf16.export_params().values())
    assert abs(bf16.eval_loss(*_batch(seed=9)) - f32.eval_loss(*_batch(seed=9))) <= 3e-2


# --- sampling and generation ----------------------------------------------------------------

@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, None), (0.7, 5, None), (1.3, None, 0.9), (0.8, 10, 0.5), (1.0, 1, None),
    (1.0, 100, None), (1.0, None, 1.0), (2.0, 65, 0.99), (0.5, None, 1e-6)])
def test_filter_logits_matches_the_common_rules(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(0, 3, size=(4, 65)).astype(np.float32)
    logits[1, :3] = logits[1, 3]  # ties at the top-k boundary break by index, as in numpy
    expected = reference_filter_logits(logits, temperature, top_k, top_p)
    actual = np.asarray(filter_logits(jnp.asarray(logits), temperature,
                                      None if top_k is None else jnp.int32(top_k),
                                      None if top_p is None else jnp.float32(top_p)))
    assert np.array_equal(np.isinf(actual), np.isinf(expected))
    kept = np.isfinite(expected)
    assert np.allclose(actual[kept], expected[kept], rtol=1e-6, atol=1e-6)


def test_sampling_is_reproducible_by_seed_and_greedy_at_temperature_zero():
    backend = Backend(CONFIG, TRAIN, _decisive_params(), device="cpu")
    prompt = [1, 2, 3]
    first = backend.generate(prompt, 12, temperature=1.0, top_k=20, seed=5)
    assert first == backend.generate(prompt, 12, temperature=1.0, top_k=20, seed=5)
    assert first != backend.generate(prompt, 12, temperature=1.0, top_k=20, seed=6)
    greedy = backend.generate(prompt, 6, temperature=0.0, seed=1)
    assert greedy == backend.generate(prompt, 6, temperature=0.0, seed=2)
    sequence = list(prompt)
    for _ in range(6):  # argmax of the full forward pass, one token at a time
        sequence.append(int(backend.logits(np.asarray([sequence], np.int32))[0, -1].argmax()))
    assert greedy == sequence[len(prompt):]
    assert all(0 <= t < CONFIG.vocab_size for t in first)


@pytest.mark.parametrize("prompt_len", [3, CONFIG.block_size, CONFIG.block_size + 5])
def test_generation_past_block_size_with_and_without_cache(prompt_len):
    backend = Backend(CONFIG, TRAIN, _decisive_params(), device="cpu")
    prompt = list(np.random.default_rng(prompt_len).integers(0, CONFIG.vocab_size, prompt_len))
    n = 2 * CONFIG.block_size + 3  # well past block_size: the window slides
    cached = backend.generate(prompt, n, temperature=0.0, use_cache=True)
    uncached = backend.generate(prompt, n, temperature=0.0, use_cache=False)
    assert len(cached) == len(uncached) == n and cached == uncached
    sampled = backend.generate(prompt, n, temperature=0.8, top_p=0.9, seed=3)
    assert len(sampled) == n and sampled == backend.generate(prompt, n, temperature=0.8, top_p=0.9, seed=3,
                                                             use_cache=False)
    assert backend.generate(prompt, 0) == []


def test_generation_compiles_once_for_repeated_calls():
    backend = Backend(CONFIG, TRAIN, _decisive_params(), device="cpu")
    with count_compiles() as first_call:
        backend.generate([1, 2, 3], 10, temperature=0.9, top_k=5, top_p=0.9, seed=0)
    assert "jit(generate)" in first_call
    with count_compiles() as compiles:
        for seed, prompt in enumerate(([1, 2, 3], [4, 5], list(range(12)))):
            backend.generate(prompt, 10, temperature=0.5 + seed / 4, top_k=3 + seed, top_p=0.8, seed=seed)
    assert compiles == []


# --- environment ----------------------------------------------------------------------------

def test_devices_and_info():
    assert Backend.resolve_device("cpu").platform == "cpu"
    if not jax.default_backend() == "gpu":
        with pytest.raises(UserError, match="--device cpu"):
            Backend.resolve_device("gpu")
    with pytest.raises(UserError):
        Backend.resolve_device("mps")
    backend = Backend(CONFIG, TRAIN, init_params(CONFIG, 0), device="cpu")
    info = backend.device_info()
    assert info["framework_version"].startswith("jax ") and "/ flax " in info["framework_version"]
    assert info["device"] == "cpu" and info["device_count"] >= 1 and info["device_name"]
    assert backend.peak_memory_bytes() is None
