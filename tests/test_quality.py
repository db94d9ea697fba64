"""Sample-quality metrics on texts small enough to work out by hand."""
import math
import random
import string
import time
from collections import Counter

import pytest

from common.data import split_text
from common.quality import (char4_jsd, copy_rate, distinct_2, jensen_shannon, sample_quality,
                            speaker_line_share, word_validity, words)


def test_words_keep_inner_apostrophes():
    assert words("Don't, 'tis O'er-the ROMEO's 42 x'") == ["don't", "tis", "o'er", "the", "romeo's", "x"]


def test_word_validity_counts_known_words():
    # the, cat, ran, the, dog's, bone: "the" twice and "cat" are in train, so 3 of 6.
    assert word_validity("The cat ran; the dog's bone", "the cat sat") == 0.5
    assert word_validity("don't", "I don't know") == 1.0
    assert word_validity("123 ...", "anything") == 0.0


def test_char4_jsd_identical_disjoint_and_partial():
    assert char4_jsd("abcdabcd", "abcdabcd") == 0.0
    assert char4_jsd("aaaaaa", "bbbbbb") == 1.0
    # p = {abcd: 1}, q = {abcd: 1/2, bcde: 1/2}, m = {abcd: 3/4, bcde: 1/4}
    expected = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert char4_jsd("abcd", "abcde") == pytest.approx(expected)
    assert expected == pytest.approx(0.3113, abs=1e-4)


def test_jensen_shannon_is_symmetric():
    p, q = Counter(a=3, b=1), Counter(b=2, c=2)
    assert jensen_shannon(p, q) == pytest.approx(jensen_shannon(q, p))
    assert 0 < jensen_shannon(p, q) < 1


def test_char4_jsd_undefined_without_4grams():
    assert math.isnan(char4_jsd("abc", "abcdef"))
    assert math.isnan(char4_jsd("abcdef", ""))


def test_distinct_2():
    assert distinct_2("a b a b a") == 0.5  # (a,b) (b,a) (a,b) (b,a): 2 distinct of 4
    assert distinct_2("to be or not to be") == 4 / 5  # (to, be) comes twice
    assert distinct_2("to be to be") == 2 / 3
    assert distinct_2("alone") == 0.0


def test_copy_rate():
    train = string.ascii_letters  # 52 distinct characters
    assert copy_rate(train[10:50], train) == 1.0
    assert copy_rate("0123456789" * 5, train) == 0.0
    # 44 characters give 13 windows; the 9 that end by position 40 lie inside the copied prefix.
    assert copy_rate(train[:40] + "!!!!", train) == 9 / 13
    assert copy_rate(train[:31], train) == 0.0  # shorter than one window


def test_speaker_line_share():
    text = "ROMEO:\nO, she doth teach\n\nFirst Citizen:\nSpeak.\nnot a heading:\nKING HENRY IV:\n"
    # 6 non-empty lines, 3 of them headings ('not a heading:' starts lower-case; numerals end in a letter).
    assert speaker_line_share(text) == 0.5
    assert speaker_line_share("ROMEO: but also a speech") == 0.0
    assert speaker_line_share("\n  \n") == 0.0


def test_sample_quality_empty_input():
    q = sample_quality("", "the train text", "the val text")
    assert set(q) == {"word_validity", "char4_jsd", "distinct_2", "copy_rate", "speaker_line_share"}
    assert math.isnan(q.pop("char4_jsd"))
    assert q == {"word_validity": 0.0, "distinct_2": 0.0, "copy_rate": 0.0, "speaker_line_share": 0.0}


def test_sample_quality_on_tiny_shakespeare_is_fast_and_sensible(shakespeare_path):
    train, val = split_text(shakespeare_path.read_text(encoding="utf-8"))
    rng = random.Random(0)
    noise = "".join(rng.choice(string.ascii_lowercase + " \n") for _ in range(2000))
    start = time.perf_counter()
    q_noise = sample_quality(noise, train, val)
    assert time.perf_counter() - start < 3.0  # includes building the cached word set and val 4-grams
    copied = sample_quality(train[5000:7000], train, val)
    held_out = sample_quality(val[:2000], train, val)
    assert copied["copy_rate"] == 1.0 and copied["word_validity"] == 1.0
    assert held_out["copy_rate"] < 0.05 < 0.9 < held_out["word_validity"]
    assert q_noise["copy_rate"] == 0.0 and q_noise["char4_jsd"] > 0.95 > held_out["char4_jsd"]
    assert q_noise["speaker_line_share"] == 0.0 < held_out["speaker_line_share"]
