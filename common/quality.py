"""Cheap, model-free measures of how Shakespeare-like a generated sample is.

Loss says how well a model predicts; these say what its samples look like: real words, the
corpus's character statistics, variety, memorisation, and the play-script layout.

When there is nothing to measure (no words, no bigrams, text shorter than a window, no non-empty
lines) a share is 0.0. The one exception is `char4_jsd`, which is NaN when either text has no
4-gram: a divergence from an empty distribution is undefined, and 0 or 1 would both mislead.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

import numpy as np

WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")
SPEAKER_RE = re.compile(r"^[A-Z][A-Za-z' ]*[A-Za-z]:$")
COPY_WINDOW = 32


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


@lru_cache(maxsize=4)  # the same train/val texts are passed at every evaluation
def _word_set(text: str) -> frozenset[str]:
    return frozenset(words(text))


@lru_cache(maxsize=4)
def _char4_counts(text: str) -> Counter:
    return Counter(text[i:i + 4] for i in range(len(text) - 3))


def word_validity(generated: str, train_text: str) -> float:
    """Share of generated words that occur in the training text."""
    ws = words(generated)
    if not ws:
        return 0.0
    vocab = _word_set(train_text)
    return sum(w in vocab for w in ws) / len(ws)


def jensen_shannon(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint supports)."""
    keys = list(p.keys() | q.keys())
    pa = np.array([p.get(k, 0) for k in keys], dtype=np.float64)
    qa = np.array([q.get(k, 0) for k in keys], dtype=np.float64)
    pa, qa = pa / pa.sum(), qa / qa.sum()
    m = (pa + qa) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(pa) + kl(qa)) / 2))  # clip rounding error just outside [0, 1]


def char4_jsd(generated: str, val_text: str) -> float:
    p, q = _char4_counts(generated), _char4_counts(val_text)
    if not p or not q:
        return math.nan
    return jensen_shannon(p, q)


def distinct_2(generated: str) -> float:
    """Distinct word bigrams over all word bigrams: low means the sample repeats itself."""
    ws = words(generated)
    bigrams = list(zip(ws, ws[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def copy_rate(generated: str, train_text: str, window: int = COPY_WINDOW) -> float:
    """Share of the generated text's `window`-character windows (stride 1) found verbatim in train.

    A substring search per distinct window takes ~0.3 s for 2k characters against the 1 MB corpus,
    about as long as building a set of all 1M training windows, without the ~150 MB that set costs.
    """
    n = len(generated) - window + 1
    if n <= 0:
        return 0.0
    windows = [generated[i:i + window] for i in range(n)]
    found = {w: w in train_text for w in set(windows)}
    return sum(found[w] for w in windows) / n


def speaker_line_share(generated: str) -> float:
    """Share of non-empty lines that are speaker headings such as 'ROMEO:' or 'First Citizen:'."""
    lines = [line.strip() for line in generated.splitlines() if line.strip()]
    if not lines:
        return 0.0
    return sum(bool(SPEAKER_RE.match(line)) for line in lines) / len(lines)


def sample_quality(generated: str, train_text: str, val_text: str) -> dict[str, float]:
    return {
        "word_validity": word_validity(generated, train_text),
        "char4_jsd": char4_jsd(generated, val_text),
        "distinct_2": distinct_2(generated),
        "copy_rate": copy_rate(generated, train_text),
        "speaker_line_share": speaker_line_share(generated),
    }
