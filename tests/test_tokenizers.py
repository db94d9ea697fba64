"""Tokenizers: vocabularies, exact round trips, JSON files, and bits-per-character arithmetic."""
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from common.data import split_text
from common.errors import UserError
from common.tokenizers import (BPETokenizer, CharTokenizer, GPT2Tokenizer, bits_per_char, build_tokenizer,
                               load_tokenizer, tokenizer_from_json)

ODD_STRINGS = ["", " ", "  leading spaces", "trailing  ", "\n", "\n\n\nA:\n", " \n \n", "\t\r\n",
               "é€😀 naïve", "<|endoftext|>", "a<|endoftext|>\nb", "\x00\x01", "'tis, 'twas--O!"]


@pytest.fixture(scope="module")
def splits(shakespeare_path):
    return split_text(shakespeare_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bpe(splits):
    return BPETokenizer.train(splits[0])  # ~0.5 s, once for the module


@pytest.fixture(scope="module")
def small_bpe():
    """A BPE that needs no corpus, for the tests that only exercise the machinery."""
    return BPETokenizer.train("the quick brown fox jumps over the lazy dog\n" * 50, vocab_size=300)


# --- char --------------------------------------------------------------------------------------

def test_char_vocab_is_sorted_characters_with_known_ids():
    tok = CharTokenizer.train("hello")
    assert tok.chars == ("e", "h", "l", "o")
    assert tok.vocab_size == 4 and tok.kind == "char"
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    assert tok.decode([3, 2, 0]) == "ole"


def test_char_tiny_shakespeare_has_65_characters_and_round_trips(splits):
    train, val = splits
    tok = CharTokenizer.train(train)
    assert tok.vocab_size == 65
    assert tok.chars[:2] == ("\n", " ")
    assert tok.decode(tok.encode(val)) == val
    assert tok.chars_per_token(val) == 1.0


def test_char_unknown_characters_are_named_not_dropped():
    tok = CharTokenizer.train("abc \n")
    with pytest.raises(UserError) as e:
        tok.encode("a€bé")
    msg = str(e.value)
    assert "'€'" in msg and "'é'" in msg and "characters seen in the training text" in msg


def test_char_unknown_characters_list_is_capped():
    tok = CharTokenizer.train("a")
    with pytest.raises(UserError, match=r"and 5 more"):
        tok.encode("bcdefghijklmnop")  # 15 unknown characters: 10 shown


def test_char_decode_out_of_range_is_user_error():
    with pytest.raises(UserError, match="out of range"):
        CharTokenizer.train("ab").decode([0, 2])


def test_char_json_save_load(tmp_path):
    tok = CharTokenizer.train("To be, or not to be:\nthat is the question.")
    assert json.loads(tok.to_json())["kind"] == "char"
    path = tmp_path / "tok.json"
    tok.save(path)
    for loaded in (CharTokenizer.load(path), load_tokenizer(path), tokenizer_from_json(tok.to_json())):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.chars == tok.chars


# --- BPE ---------------------------------------------------------------------------------------

def test_bpe_on_tiny_shakespeare(bpe, splits):
    _, val = splits
    assert bpe.kind == "bpe" and bpe.vocab_size == 512
    assert bpe.eot_id == 0  # the special token is added before any merge
    assert bpe.decode(bpe.encode(val)) == val
    # 512 tokens pack ~1.9 characters per token on Shakespeare (measured 1.877 on val).
    assert 1.8 < bpe.chars_per_token(val) < 1.95


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_bpe_round_trips_odd_strings(small_bpe, text):
    assert small_bpe.decode(small_bpe.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_text(small_bpe, text):
    assert small_bpe.decode(small_bpe.encode(text)) == text


def test_bpe_vocab_stops_short_when_the_text_runs_out_of_pairs(small_bpe):
    # One repeated 44-character line has too few distinct pairs to fill 300 entries; models must
    # size their embedding from tokenizer.vocab_size, never from the requested size.
    assert small_bpe.vocab_size == 289


def test_bpe_end_of_text_token_survives_decode(small_bpe):
    ids = small_bpe.encode("a<|endoftext|>b")
    assert small_bpe.eot_id in ids
    assert small_bpe.decode([small_bpe.eot_id]) == "<|endoftext|>"


def test_bpe_json_save_load(small_bpe, tmp_path):
    assert json.loads(small_bpe.to_json())["kind"] == "bpe"
    path = tmp_path / "bpe.json"
    small_bpe.save(path)
    text = "the lazy fox\n  jumps"
    for loaded in (BPETokenizer.load(path), load_tokenizer(path), tokenizer_from_json(small_bpe.to_json())):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.vocab_size == small_bpe.vocab_size
        assert loaded.encode(text) == small_bpe.encode(text)


def test_bpe_training_is_deterministic():
    text = "so shaken as we are, so wan with care\n" * 20
    assert BPETokenizer.train(text, 280).to_json() == BPETokenizer.train(text, 280).to_json()


def test_bpe_vocab_too_small():
    with pytest.raises(UserError, match="at least 257"):
        BPETokenizer.train("abc", vocab_size=100)


def test_bpe_decode_out_of_range(small_bpe):
    with pytest.raises(UserError, match="out of range"):
        small_bpe.decode([300])


# --- dispatch, files, errors -------------------------------------------------------------------

def test_build_tokenizer_dispatch():
    assert isinstance(build_tokenizer("char", "abc", None), CharTokenizer)
    assert build_tokenizer("char", "abc", 512).vocab_size == 3  # vocab_size does not apply to char
    assert build_tokenizer("bpe", "abc abc\n" * 10, 260).vocab_size == 260
    with pytest.raises(UserError, match="choose one of char, bpe"):
        build_tokenizer("wordpiece", "abc", None)


@pytest.mark.parametrize("bad, fragment", [
    ("{not json", "corrupt"),
    ("[1, 2]", "kind None"),
    ('{"kind": "sentencepiece"}', "kind 'sentencepiece'"),
    ('{"kind": "char"}', "lacks a valid 'chars'"),
    ('{"kind": "char", "chars": "ba"}', "sorted"),
    ('{"kind": "char", "chars": ""}', "non-empty"),
    ('{"kind": "bpe", "tokenizer": {"model": 3}}', "unreadable BPE model"),
])
def test_corrupt_json_is_user_error(bad, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        tokenizer_from_json(bad)
    assert "prepare the data again" in str(e.value) or "load_tokenizer" in str(e.value)


def test_from_json_of_wrong_kind():
    with pytest.raises(UserError, match="expected bpe"):
        BPETokenizer.from_json(CharTokenizer.train("ab").to_json())


def test_load_missing_or_undecodable_file(tmp_path):
    with pytest.raises(UserError, match="No tokenizer file"):
        load_tokenizer(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="Cannot read tokenizer file"):
        load_tokenizer(bad)


# --- bits per character ------------------------------------------------------------------------

def test_bits_per_char_hand_example():
    # ln 2 nats per token is 1 bit per token; 100 tokens over 200 characters is 0.5 bit per character.
    assert bits_per_char(math.log(2), 100, 200) == pytest.approx(0.5)
    # A char tokenizer has one token per character, so BPC is the loss in bits.
    assert bits_per_char(1.5, 1000, 1000) == pytest.approx(1.5 / math.log(2))
    assert bits_per_char(0.0, 10, 10) == 0.0


def test_bits_per_char_needs_characters():
    with pytest.raises(UserError, match="positive character count"):
        bits_per_char(1.0, 10, 0)


# --- end of text and Hugging Face tokenizer.json ------------------------------------------------

def test_end_of_text_id_is_none_without_one(small_bpe):
    assert CharTokenizer.train("ab").eot_id is None
    assert small_bpe.eot_id == 0


def test_char_hf_json_gives_the_same_ids_and_unspaced_text():
    tok = CharTokenizer.train("To be, or not to be:\nthat is the question.\t é")
    theirs = Tokenizer.from_str(tok.to_hf_json())
    text = "to be\n  or not, é\t"
    assert theirs.encode(text).ids == tok.encode(text)
    assert theirs.decode(tok.encode(text)) == text
    with pytest.raises(Exception, match="UNK"):  # unknown characters fail there too, never dropped
        theirs.encode("xyz")


def test_gpt2_tokenizer_reads_a_hf_tokenizer_json(small_bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(small_bpe.to_hf_json(), encoding="utf-8")
    tok = GPT2Tokenizer.from_hf_file(path)
    assert tok.kind == "gpt2" and tok.vocab_size == 289 and tok.eot_id == 0
    for text in ODD_STRINGS:
        assert tok.encode(text) == small_bpe.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert json.loads(tok.to_json())["kind"] == "gpt2"
    for loaded in (GPT2Tokenizer.from_json(tok.to_json()), tokenizer_from_json(tok.to_json())):
        assert isinstance(loaded, GPT2Tokenizer) and loaded.encode("the fox") == tok.encode("the fox")
    with pytest.raises(UserError, match="expected gpt2"):
        GPT2Tokenizer.from_json(small_bpe.to_json())


def test_gpt2_tokenizer_unreadable_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": 3}', encoding="utf-8")
    with pytest.raises(UserError, match="not a tokenizer.json that the tokenizers library can read"):
        GPT2Tokenizer.from_hf_file(path)
