"""What only the Flax NNX GPT has to show; the Backend contract is tests/test_backend.py's."""
import contextlib
import dataclasses
import functools

import numpy as np
import pytest

pytestmark = pytest.mark.jax

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nnx = pytest.importorskip("flax.nnx")

from common.decode import filter_logits  # noqa: E402
from common.params import init_params  # noqa: E402
from common.sampling import filter_logits as reference_filter_logits, top_k_bound  # noqa: E402
from common.schedule import learning_rate  # noqa: E402
from jax_impl.backend import Backend  # noqa: E402
from jax_impl.generate import FILTER_OPS  # noqa: E402
from jax_impl.model import GPT, KVCache, load_canonical  # noqa: E402
from jax_impl.train import train_step  # noqa: E402
from tests.conftest import SMALL_CONFIG as CONFIG, SMALL_TRAIN as TRAIN, decisive_params, random_batch  # noqa: E402
from tests.reference import forward, relative_error  # noqa: E402


def _model(config=CONFIG, params=None, seed=0):
    model = GPT(config, rngs=nnx.Rngs(params=0, dropout=seed))
    load_canonical(model, params if params is not None else init_params(config, 0))
    return model


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

def test_kv_cache_logits_equal_full_forward():
    model = _model()
    x, _ = random_batch(CONFIG)
    full, no_cache = model(jnp.asarray(x))
    assert no_cache is None
    cache = KVCache.empty(CONFIG, batch_size=3, slots=5)  # grown as it fills, as a decode grows it
    prefix, cache = model(jnp.asarray(x[:, :5]), cache=cache)
    steps = [prefix]
    for t in range(5, CONFIG.block_size):
        if t == cache.keys[0].shape[1]:
            cache = cache.grown(6 if t == 5 else CONFIG.block_size)
        logits, cache = model(jnp.asarray(x[:, t:t + 1]), cache=cache)
        steps.append(logits)
    assert int(cache.length) == CONFIG.block_size
    assert relative_error(np.concatenate(steps, axis=1), np.asarray(full)) <= 1e-5


def test_dropout_is_random_in_training_and_off_in_eval():
    config = dataclasses.replace(CONFIG, dropout=0.3)
    params = init_params(config, 0)
    model = _model(config, params)
    x = jnp.asarray(random_batch(config)[0])
    model.train()
    first, second = model(x)[0], model(x)[0]
    assert not np.allclose(first, second)  # the dropout stream advanced between calls
    model.eval()
    once, again = model(x)[0], model(x)[0]
    assert np.array_equal(once, again)
    assert relative_error(np.asarray(once), forward(params, config, np.asarray(x))) <= 1e-5


# --- training -------------------------------------------------------------------------------

def test_train_step_compiles_once_whatever_the_learning_rate():
    # A config no other test uses, so the first step compiles here (backends with equal configs share).
    train = dataclasses.replace(TRAIN, weight_decay=0.05)
    backend = Backend(CONFIG, train, init_params(CONFIG, 0), device="cpu")
    x, y = random_batch(CONFIG)
    before = train_step._cache_size()
    with count_compiles() as first_call:
        backend.train_step(x, y, learning_rate(0, train))
    assert "jit(train_step)" in first_call and train_step._cache_size() == before + 1
    with count_compiles() as compiles:
        losses = [backend.train_step(*random_batch(CONFIG, seed=s), learning_rate(s, train)) for s in range(1, 6)]
        backend.train_step(x, y, 0.5)
    assert compiles == [] and train_step._cache_size() == before + 1
    assert len(set(losses)) == 5


# --- sampling and generation ----------------------------------------------------------------

@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, None), (0.7, 5, None), (1.3, None, 0.9), (0.8, 10, 0.5), (1.0, 1, None),
    (1.0, 100, None), (1.0, None, 1.0), (2.0, 65, 0.99), (0.5, None, 1e-6)])
def test_filter_logits_matches_the_common_rules(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(0, 3, size=(4, 65)).astype(np.float32)
    logits[1, :3] = logits[1, 3]  # ties at the top-k boundary break by index, as in numpy
    expected = reference_filter_logits(logits, temperature, top_k, top_p)
    actual = np.asarray(filter_logits(FILTER_OPS, jnp.asarray(logits), temperature,
                                      None if top_k is None else jnp.int32(top_k),
                                      None if top_p is None else jnp.float32(top_p)))
    assert np.array_equal(np.isinf(actual), np.isinf(expected))
    kept = np.isfinite(expected)
    assert np.allclose(actual[kept], expected[kept], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("top_k", [100, 1000])
def test_traced_top_k_past_its_bound_matches_the_common_rules(top_k):
    """Under jit top_k is traced and the top-k op's k_bound static: for 100 of 300 tokens (bound 128)
    and a k past the vocabulary, the filter keeps what numpy's keeps."""
    logits = np.random.default_rng(1).normal(0, 3, size=(2, 300)).astype(np.float32)
    expected = reference_filter_logits(logits, 1.0, top_k, None)
    run = jax.jit(functools.partial(filter_logits, FILTER_OPS), static_argnums=4)
    filtered = run(jnp.asarray(logits), 1.0, jnp.int32(top_k), None, top_k_bound(top_k, 300))
    assert np.array_equal(np.isinf(np.asarray(filtered)), np.isinf(expected))
    assert np.isfinite(expected).sum(axis=-1).tolist() == [min(top_k, 300)] * 2


def test_generation_compiles_once_for_repeated_calls():
    backend = Backend(CONFIG, TRAIN, decisive_params(CONFIG), device="cpu")
    with count_compiles() as first_call:
        backend.generate([1, 2, 3], 10, temperature=0.9, top_k=5, top_p=0.9, seed=0)
    assert "jit(generate)" in first_call
    with count_compiles() as compiles:  # prompts of the first one's prefill window (block_size / 2)
        for seed, prompt in enumerate(([1, 2, 3], [4, 5, 6, 7], [8, 9, 10])):
            backend.generate(prompt, 10, temperature=0.5 + seed / 4, top_k=3 + seed, top_p=0.8, seed=seed)
    assert compiles == []
    with count_compiles() as another_window:
        backend.generate(list(range(1, CONFIG.block_size)), 10, temperature=0.9, top_k=5, top_p=0.9, seed=0)
    assert another_window == ["jit(generate)"]
