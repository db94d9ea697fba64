"""Sampling semantics shared by all three generators, as a numpy reference, and stop strings."""
from __future__ import annotations

import numpy as np


def filter_logits(logits: np.ndarray, temperature: float, top_k: int | None,
                  top_p: float | None) -> np.ndarray:
    """Scaled logits with everything outside top-k, then outside the top-p nucleus, set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the most
    likely token always stays. Each framework's generator applies exactly these rules.
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = np.sort(scaled, axis=-1)[..., -top_k][..., None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-scaled, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(scaled, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[..., :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        mass_before = np.cumsum(probs, axis=-1) - probs
        sorted_logits = np.where(mass_before >= top_p, -np.inf, sorted_logits)
        scaled = np.full_like(scaled, -np.inf)
        np.put_along_axis(scaled, order, sorted_logits, axis=-1)
    return scaled


def top_k_bound(top_k: int, vocab_size: int) -> int:
    """The static k of the top-k op that serves a top-k filter of this size: a power of two, at least
    64, at most the vocabulary, so that nearby values share one compiled program. The k-th largest
    logit is read from those, where sorting the whole vocabulary cost, for GPT-2's 50,257 logits on 2
    CPU cores, 2.7 ms (torch.sort) and 8.6 ms (jnp.sort) against 0.13-0.14 ms for the 256 largest."""
    return min(vocab_size, max(64, 1 << (int(top_k) - 1).bit_length()))


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Text up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop or [] if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def stream_uniforms(seeds, position) -> np.ndarray:
    """(B,) uniform numbers in [0, 1), one per sampling stream, each a pure function of (seed, position);
    positions as an (N, 1) array give the (N, B) numbers of N positions at once.

    A row's draw at a position depends on nothing else: not on the rows decoded beside it, nor on
    where decoding was cut into chunks. splitmix64's finaliser mixes the two words of the key.
    """
    z = (np.asarray(seeds, dtype=np.uint64) << np.uint64(32)) | np.uint64(position)
    z = z + np.uint64(0x9E3779B97F4A7C15)  # uint64 arithmetic wraps, as the hash needs
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
