"""Decoding as the inference benchmark and the harness time it: compiled once per (batch, bucket)
shape, in every framework, and PyTorch's torch.compile decode giving eager PyTorch's tokens.

That batched rows equal their own decode, and cached decoding the no-cache one, is the Backend
contract's (tests/test_backend.py); here the compiled PyTorch decode is held to the same.
"""
import contextlib
import dataclasses
import functools

import numpy as np
import pytest

from common.decode import DecodeConfig, cache_windows, prefill_length, token_buffer_length
from tests.conftest import KERAS_ROW, SMALL_CONFIG, decisive_params, framework_param, make_backend

# A model of its own: compiled programs are cached per process by shape (JAX's jit, torch.compile's
# code objects), so one another test had compiled first would make the first count here 0.
CONFIG = dataclasses.replace(SMALL_CONFIG, n_layer=1)
# PyTorch decodes eagerly unless DecodeConfig.compile; its compiled decode is the one that compiles.
COMPILED = DecodeConfig(compile=True)
PAST_WINDOW = CONFIG.block_size + 4  # new tokens: prefill, cached steps, then the sliding window


@functools.cache
def compiled_backend(framework: str):
    return make_backend(framework, CONFIG, params=decisive_params(CONFIG), decode=COMPILED)


@contextlib.contextmanager
def compilations(framework: str, backend):
    """Yields a list that holds, once the block ends, how many programs the framework compiled in it:
    graphs torch.compile captured, XLA compilations of anything under JAX, traces of TensorFlow's
    decode function."""
    counted = []
    if framework == "pytorch":
        from torch._dynamo.utils import counters
        before = counters["stats"]["unique_graphs"]
        yield counted
        counted.append(counters["stats"]["unique_graphs"] - before)
    elif framework == "tensorflow":
        before = backend._compiled_generate.experimental_get_tracing_count()
        yield counted
        counted.append(backend._compiled_generate.experimental_get_tracing_count() - before)
    else:  # jax, keras-jax
        from tests.test_jax import count_compiles
        with count_compiles() as events:
            yield counted
        counted.append(len(events))


@pytest.mark.parametrize("framework", [framework_param(f) for f in ("pytorch", "jax", KERAS_ROW)])
def test_decode_compiles_once_per_batch_and_bucket(framework):
    """A second decode with the same shapes (batch, token buffer, prefill window) compiles nothing,
    whatever the prompt length within the window, token count (within the buffer's bucket), seeds or
    sampling values. A new prefill window compiles one program (PyTorch's prefill, JAX's and
    TensorFlow's whole loop), once; a new batch size its own programs, once."""
    backend = compiled_backend(framework)
    sampled = dict(temperature=0.9, top_k=5, top_p=0.9)
    assert prefill_length(3, CONFIG.block_size) == prefill_length(4, CONFIG.block_size) < CONFIG.block_size
    with compilations(framework, backend) as first:
        backend.generate_batch([[1, 2, 3]], PAST_WINDOW, seeds=[0], **sampled)
    assert first[0] >= 1
    with compilations(framework, backend) as again:
        backend.generate_batch([[4, 5, 6, 7]], PAST_WINDOW, seeds=[7], **sampled)
        backend.generate_batch([[4, 5, 6, 7]], 2 * CONFIG.block_size, seeds=[7], **sampled)
        backend.generate_batch([[6, 7, 8]], PAST_WINDOW, seeds=[8], temperature=0.5, top_k=3, top_p=0.5)
    assert again == [0]
    with compilations(framework, backend) as new_window:
        backend.generate_batch([[6] * CONFIG.block_size], PAST_WINDOW, seeds=[8], **sampled)
        backend.generate_batch([[5] * (CONFIG.block_size - 1)], PAST_WINDOW, seeds=[9], **sampled)
    assert new_window == [1]
    with compilations(framework, backend) as batch_of_two:
        backend.generate_batch([[1, 2, 3], [4, 5, 6]], PAST_WINDOW, seeds=[0, 1], **sampled)
    assert batch_of_two == first  # the same programs, at the new batch size
    with compilations(framework, backend) as again:
        backend.generate_batch([[7, 8, 9], [9, 10, 11]], PAST_WINDOW, seeds=[2, 3], **sampled)
    assert again == [0]


def test_prefill_windows_hold_the_prompt_in_four_lengths():
    """Every prompt up to block_size is prefilled in the first of block_size / 8, / 4, / 2 and
    block_size that holds it."""
    windows = {n: prefill_length(n, 256) for n in range(1, 257)}
    assert all(n <= window <= 256 for n, window in windows.items())
    assert sorted(set(windows.values())) == [32, 64, 128, 256]
    assert (windows[1], windows[32], windows[33], windows[129], windows[256]) == (32, 32, 64, 256, 256)
    assert {prefill_length(n, 100) for n in range(1, 101)} == {12, 25, 50, 100}
    assert {prefill_length(n, 4) for n in range(1, 5)} == {1, 2, 4}  # block_size // 8 is 0: no window


@pytest.mark.parametrize("framework", [framework_param(f) for f in ("jax", KERAS_ROW)])
def test_compiled_loop_grows_its_cache_through_every_window(framework, monkeypatch):
    """A one-token prompt is prefilled in the smallest cache window; the loop's steps then attend to
    each larger window in turn, never to slots past the window that holds them (PyTorch's eager loop
    is checked step by step in tests/test_pytorch.py)."""
    import importlib
    module = importlib.import_module("jax_impl.model" if framework == "jax" else "tensorflow_impl.model")
    seen, update = set(), module.KVCache.update

    def spy(cache, layer, k, v):  # runs while the loop is traced: (new positions, slots attended to)
        if layer == 0:
            seen.add((k.shape[-2], cache.keys[layer].shape[-2]))
        return update(cache, layer, k, v)
    monkeypatch.setattr(module.KVCache, "update", spy)
    config = dataclasses.replace(CONFIG, block_size=16)  # a shape no other test compiles
    backend = make_backend(framework, config, params=decisive_params(config), decode=COMPILED)
    assert len(backend.generate([7], config.block_size - 1, temperature=0.0)) == config.block_size - 1
    assert cache_windows(config.block_size) == [2, 4, 8, 16]
    assert seen == {(2, 2), (1, 2), (1, 4), (1, 8), (1, 16)}


def test_window_schedule_known_answers():
    """Token 0 comes from the prefill; token i (stored at position prompt_len + i - 1) is decoded in
    the smallest cache window that holds it; past block_size the tokens go uncached."""
    from common.decode import window_schedule
    # A one-token prompt at block 64: windows 8, 16, 32, 64 each take the tokens that fit, then 36 uncached.
    assert window_schedule(1, 100, 64, 8) == ([(8, 1, 8), (16, 8, 16), (32, 16, 32), (64, 32, 64)], 64)
    # 10 tokens of prompt in the 16 window; 5 new tokens all fit in it, the larger windows take none.
    assert window_schedule(10, 5, 64, 16) == ([(16, 1, 5), (32, 5, 5), (64, 5, 5)], 5)
    # A full prompt: one cached token (the prefill's), every later one uncached.
    assert window_schedule(64, 10, 64, 64) == ([(64, 1, 1)], 1)
    # 33 tokens of prompt: window 64 holds tokens 1..31 (positions 33..63).
    assert window_schedule(33, 40, 64, 64) == ([(64, 1, 32)], 32)
    # block 4 has no block_size / 8 window: windows 1, 2, 4.
    assert window_schedule(1, 3, 4, 1) == ([(1, 1, 1), (2, 1, 2), (4, 2, 3)], 3)


def test_decode_plan_is_made_once_from_the_options():
    from common.decode import DecodeProgram, SamplingForm, decode_plan
    greedy = decode_plan(3, 20, 64, 65, 0.0, top_k=10, top_p=0.5, use_cache=True)
    assert greedy.program == DecodeProgram(64, 8, SamplingForm(greedy=True))  # greedy: no sampling values
    assert (greedy.temperature, greedy.top_k, greedy.top_p, greedy.buffer_len) == (None, None, None, 128)
    sampled = decode_plan(3, 20, 64, 65, 0.8, top_k=10, top_p=0.9, use_cache=True)
    assert sampled.program.sampling == SamplingForm(greedy=False, k_bound=64, top_p=True)
    assert (sampled.temperature, sampled.top_k, sampled.top_p) == (0.8, 10, 0.9)
    # Filters that keep every token are off; a prompt longer than block_size decodes without a cache.
    wide = decode_plan(70, 5, 64, 65, 1.0, top_k=65, top_p=1.0, use_cache=True)
    assert wide.program == DecodeProgram(64, None, SamplingForm(greedy=False)) and not wide.program.use_cache
    assert (wide.top_k, wide.top_p) == (None, None)
    assert hash(sampled.program) == hash(decode_plan(5, 90, 64, 65, 0.3, 7, 0.5, True).program)  # one program
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampled.prompt_len = 4


def test_token_buffers_come_in_few_lengths():
    """Every length holds the prompt (a whole block at least) and the new tokens; a 3-token prompt
    streamed to 1000 tokens in chunks of 32 needs 6 lengths, where one per chunk would be 32."""
    block_size = 64
    for prompt_len, max_new_tokens in [(1, 1), (3, 61), (64, 1), (65, 64), (3, 1000), (1000, 24)]:
        length = token_buffer_length(prompt_len, max_new_tokens, block_size)
        assert length >= max(block_size, -(-prompt_len // block_size) * block_size) + max_new_tokens
    # One block of prompt, one of new tokens: every prompt within block_size, every count up to it.
    assert {token_buffer_length(p, n, block_size) for p in (1, 3, 64) for n in (1, 50, 64)} == {128}
    assert token_buffer_length(65, 64, block_size) == 256  # 3 blocks, rounded up to a power of two
    assert token_buffer_length(3, 200, block_size) == 512  # 5 blocks
    chunks = {token_buffer_length(3 + done, 32, block_size) for done in range(0, 1000, 32)}
    assert sorted(chunks) == [128, 256, 512, 1024, 2048]


@pytest.mark.pytorch
def test_compiled_pytorch_decode_gives_eager_tokens():
    """torch.compile's decode steps give eager PyTorch's tokens, greedy and seeded, cache or not,
    batched, past block_size, and after a longer prompt has been through the same cache."""
    eager, compiled = make_backend("pytorch", CONFIG, params=decisive_params(CONFIG)), compiled_backend("pytorch")
    long_prompt, prompts = [[5] * CONFIG.block_size], [[1, 2, 3], [4, 5, 6]]
    for options in (dict(temperature=0.0), dict(temperature=1.0, top_k=20, seeds=[7, 8]),
                    dict(temperature=0.8, top_p=0.9, seeds=[3, 4]), dict(temperature=0.0, use_cache=False)):
        one = {k: v[:1] if k == "seeds" else v for k, v in options.items()}
        assert compiled.generate_batch(long_prompt, PAST_WINDOW, **one) == eager.generate_batch(long_prompt,
                                                                                                 PAST_WINDOW, **one)
        assert compiled.generate_batch(prompts, PAST_WINDOW, **options) == eager.generate_batch(prompts, PAST_WINDOW,
                                                                                                **options)


@pytest.mark.pytorch
def test_compiled_pytorch_decode_compiles_once_per_batch_size():
    """PyTorch's steps see fixed-shape copies of the token buffer, not views whose strides hold its
    length: other token counts and prompt lengths (in one prefill window) reuse the programs of their
    batch size."""
    backend = compiled_backend("pytorch")
    backend.generate_batch([[1, 2, 3]], PAST_WINDOW, temperature=0.0)
    with compilations("pytorch", backend) as counted:
        for n, prompt in ((1, [1, 2, 3, 4]), (5, [2, 3, 4]), (3 * CONFIG.block_size, [4, 5, 6, 7])):
            backend.generate_batch([prompt], n, temperature=0.0)
    assert counted == [0]


@pytest.mark.pytorch
def test_compiled_pytorch_steps_serve_their_own_model_and_batch_size():
    """The compiled steps check no guards, so each model and batch size has steps of its own: a model
    of another vocabulary, decoding between the first model's calls at the same batch size, never
    runs the first one's programs (nor they its)."""
    other_config = dataclasses.replace(CONFIG, vocab_size=CONFIG.vocab_size + 7)
    other = make_backend("pytorch", other_config, params=decisive_params(other_config), decode=COMPILED)
    other_eager = make_backend("pytorch", other_config, params=decisive_params(other_config))
    first, first_eager = compiled_backend("pytorch"), make_backend("pytorch", CONFIG, params=decisive_params(CONFIG))
    for prompts in ([[1, 2, 3]], [[4, 5], [6, 7]], [[1, 2, 3]]):
        for compiled, eager in ((first, first_eager), (other, other_eager)):
            assert compiled.generate_batch(prompts, PAST_WINDOW, temperature=0.0) == eager.generate_batch(
                prompts, PAST_WINDOW, temperature=0.0)


@pytest.mark.pytorch
def test_compiled_pytorch_steps_decode_with_the_weights_of_the_moment():
    """With no guards, compiled steps still read the model's weights at every call: after a
    training step the compiled decode gives what an eager model with the same weights gives."""
    compiled = make_backend("pytorch", CONFIG, params=decisive_params(CONFIG), decode=COMPILED)
    eager = make_backend("pytorch", CONFIG, params=decisive_params(CONFIG))
    before = compiled.generate_batch([[1, 2, 3]], PAST_WINDOW, temperature=0.0)
    x = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (4, CONFIG.block_size)).astype(np.int32)
    for backend in (compiled, eager):
        backend.train_step(x, np.roll(x, -1, axis=1), 0.5)
    after = compiled.generate_batch([[1, 2, 3]], PAST_WINDOW, temperature=0.0)
    assert after == eager.generate_batch([[1, 2, 3]], PAST_WINDOW, temperature=0.0)
    assert after != before  # the step changed the weights enough to change the tokens


@pytest.mark.pytorch
def test_compiled_pytorch_decode_reads_the_sampling_values_at_every_call():
    """The compiled steps check no guards, so the sampling values reach them as tensors, read at every
    call: top_k 1 leaves the most likely token alone and decodes the greedy tokens; other values then
    draw what eager PyTorch draws, with nothing compiled in between."""
    compiled, eager = compiled_backend("pytorch"), make_backend("pytorch", CONFIG, params=decisive_params(CONFIG))
    prompts = [[1, 2, 3], [4, 5, 6]]
    greedy = eager.generate_batch(prompts, PAST_WINDOW, temperature=0.0)
    assert compiled.generate_batch(prompts, PAST_WINDOW, temperature=1.0, top_k=1, seeds=[5, 6]) == greedy
    with compilations("pytorch", compiled) as counted:
        for options in (dict(temperature=1.5, top_k=40, seeds=[5, 6]), dict(temperature=0.7, top_k=3, seeds=[5, 6])):
            drawn = compiled.generate_batch(prompts, PAST_WINDOW, **options)
            assert drawn == eager.generate_batch(prompts, PAST_WINDOW, **options)
            assert drawn != greedy
    assert counted == [0]
