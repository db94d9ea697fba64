"""Corpora, split, prepared token files and the batch stream. Nothing here writes into the repo."""
import csv
import hashlib
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from common import data
from common.data import (Corpus, data_dir, eval_batches, get_batch, load_text, prepare, split_batches,
                         render_plays_csv, split_text)
from common.errors import UserError
from common.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer

REPO = Path(__file__).resolve().parents[1]
HEADER = ["Dataline", "Play", "PlayerLinenumber", "ActSceneLine", "Player", "PlayerLine"]


@pytest.fixture
def tmp_data(tmp_path, monkeypatch) -> Path:
    """An empty data directory for the test."""
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "data"))
    return data_dir()


@pytest.fixture
def tmp_data_with_corpus(shakespeare_path, tmp_data) -> Path:
    """A data directory holding (a link to) the real corpus, so prepared files land in tmp."""
    (tmp_data / "tinyshakespeare.txt").symlink_to(shakespeare_path)
    return tmp_data


def write_csv(path: Path, rows: list[list], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- data_dir ----------------------------------------------------------------------------------

def test_data_dir_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOGPT_DATA_DIR", raising=False)
    assert data_dir() == REPO / "data"
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "a" / "b"))
    assert data_dir() == tmp_path / "a" / "b" and data_dir().is_dir()  # created on demand


# --- Tiny Shakespeare --------------------------------------------------------------------------

def test_tiny_shakespeare_loads_and_verifies(tmp_data_with_corpus):
    corpus = load_text("tinyshakespeare")
    assert isinstance(corpus, Corpus) and corpus.name == "tinyshakespeare"
    assert len(corpus.text) == 1115394  # all ASCII: characters == bytes
    assert corpus.sha256 == data.TINY_SHAKESPEARE_SHA256
    assert corpus.text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n")


def test_tiny_shakespeare_wrong_file_is_rejected(tmp_data, monkeypatch):
    (tmp_data / "tinyshakespeare.txt").write_text("not the corpus")
    monkeypatch.setattr(data, "_download", lambda url, dest: pytest.fail("must not download"))
    with pytest.raises(UserError, match="is not Tiny Shakespeare .*14 bytes.*delete it"):
        load_text("tinyshakespeare")


@pytest.fixture
def fake_corpus(monkeypatch) -> bytes:
    """Make a small text the 'expected' Tiny Shakespeare, to test download logic without the corpus."""
    content = b"First Citizen:\nSpeak, speak.\n"
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SIZE", len(content))
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", hashlib.sha256(content).hexdigest())
    return content


def test_download_verifies_and_caches(tmp_data, fake_corpus, monkeypatch):
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        Path(dest).write_bytes(fake_corpus)

    monkeypatch.setattr(data, "_download", fake_download)
    assert load_text("tinyshakespeare").text == fake_corpus.decode()
    assert load_text("tinyshakespeare").text == fake_corpus.decode()
    assert calls == [data.TINY_SHAKESPEARE_URL]  # second load read the cached file
    assert sorted(p.name for p in tmp_data.iterdir()) == ["tinyshakespeare.txt"]  # no temp left


def test_real_download_function_copies_a_url(tmp_path):
    source = tmp_path / "source.txt"
    source.write_bytes(b"x" * 200_000)  # several read chunks
    data._download(source.as_uri(), tmp_path / "copy.txt")  # file:// needs no network
    assert (tmp_path / "copy.txt").read_bytes() == source.read_bytes()


def test_download_of_wrong_content_leaves_nothing(tmp_data, fake_corpus, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda url, dest: Path(dest).write_bytes(b"<html>rate limited</html>"))
    with pytest.raises(UserError, match="downloaded from .* is not Tiny Shakespeare.*NANOGPT_DATA_DIR"):
        load_text("tinyshakespeare")
    assert list(tmp_data.iterdir()) == []


def test_download_failure_names_the_fix(tmp_data, monkeypatch):
    def offline(url, dest):
        Path(dest).write_bytes(b"partial")
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(UserError) as e:
        load_text("tinyshakespeare")
    assert str(e.value) == (f"Tiny Shakespeare is not at {tmp_data / 'tinyshakespeare.txt'} and could not be "
                            "downloaded (<urlopen error no route to host>): put the file there or set "
                            "NANOGPT_DATA_DIR.")
    assert list(tmp_data.iterdir()) == []


# --- shakespeare-plays CSV ---------------------------------------------------------------------

PLAYS_ROWS = [
    [1, "Henry IV", "", "", "", "ACT I"],
    [2, "Henry IV", "", "", "", "SCENE I. London. The palace."],
    [3, "Henry IV", 1, "", "KING HENRY IV", "Enter KING HENRY, LORD JOHN OF LANCASTER, and others"],
    [4, "Henry IV", 1, "1.1.1", "KING HENRY IV", "So shaken as we are, so wan with care,"],
    [5, "Henry IV", 1, "1.1.2", "KING HENRY IV", "Find we a time for frighted peace to pant,"],
    [6, "Henry IV", 2, "1.1.3", "WESTMORELAND", "My liege, this haste was hot in question,"],
    [7, "Henry IV", 2, "", "WESTMORELAND", "Exit"],
    [8, "Henry IV", 3, "1.1.4", "first citizen", '  "Speak, speak."  '],
    [9, "Hamlet", "", "", "", "ACT I"],
    [10, "Hamlet", 1, "1.1.1", "first citizen", "Who's there?"],
]
PLAYS_TEXT = ("KING HENRY IV:\nSo shaken as we are, so wan with care,\nFind we a time for frighted peace to pant,\n\n"
              "WESTMORELAND:\nMy liege, this haste was hot in question,\n\n"
              'First Citizen:\n"Speak, speak."\n\n'
              "First Citizen:\nWho's there?\n")


def test_plays_csv_renders_like_tiny_shakespeare(tmp_path):
    path = write_csv(tmp_path / "plays.csv", PLAYS_ROWS)
    assert '"So shaken as we are, so wan with care,"' in path.read_text()  # the comma forced quoting
    assert render_plays_csv(path) == PLAYS_TEXT


def test_plays_csv_by_name_and_by_path(tmp_data, tmp_path):
    write_csv(tmp_data / "Shakespeare_data.csv", PLAYS_ROWS)
    corpus = load_text("shakespeare-plays")
    assert corpus.name == "shakespeare-plays" and corpus.text == PLAYS_TEXT
    assert corpus.sha256 == hashlib.sha256(PLAYS_TEXT.encode()).hexdigest()
    other = write_csv(tmp_path / "mine.csv", PLAYS_ROWS)
    assert load_text(str(other)) == Corpus("mine", PLAYS_TEXT, corpus.sha256)


def test_plays_csv_missing(tmp_data, tmp_path):
    with pytest.raises(UserError, match=f"not at {tmp_data / 'Shakespeare_data.csv'}: download .* Kaggle"):
        load_text("shakespeare-plays")
    with pytest.raises(UserError, match="No CSV file at"):
        load_text(str(tmp_path / "nope.csv"))


def test_plays_csv_bad_contents(tmp_path):
    no_columns = write_csv(tmp_path / "a.csv", [[1, "x"]], header=["Dataline", "Play"])
    with pytest.raises(UserError, match="lacks the column.*ActSceneLine.*PlayerLine: give the Kaggle"):
        load_text(str(no_columns))
    empty = tmp_path / "b.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        load_text(str(empty))
    header_only = write_csv(tmp_path / "c.csv", [])
    with pytest.raises(UserError, match="no spoken lines"):
        load_text(str(header_only))
    latin1 = tmp_path / "d.csv"
    latin1.write_bytes(",".join(HEADER).encode() + b"\n1,P,1,1.1.1,A,caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8.*convert it"):
        load_text(str(latin1))


# --- plain text files --------------------------------------------------------------------------

def test_text_file_corpus(tmp_path):
    path = tmp_path / "sonnets.txt"
    path.write_text("Shall I compare thee to a summer's day?\n", encoding="utf-8")
    corpus = load_text(str(path))
    assert corpus.name == "sonnets" and corpus.text == path.read_text()


@pytest.mark.parametrize("content, fragment", [
    (None, "No dataset or file named .*: use 'tinyshakespeare', 'shakespeare-plays', or a path"),
    (b"\xff\xfeabc", "not UTF-8 text \\(bad byte at offset 0\\): convert it to UTF-8"),
    (b"", "is empty"),
    (b" \n\n ", "is empty"),
])
def test_bad_text_files(tmp_path, content, fragment):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        load_text(str(path))


# --- split -------------------------------------------------------------------------------------

def test_split_text():
    assert split_text("abcdefghij") == ("abcdefghi", "j")
    assert split_text("") == ("", "")


def test_split_tiny_shakespeare(shakespeare_path):
    train, val = split_text(shakespeare_path.read_text(encoding="utf-8"))
    assert (len(train), len(val)) == (1003854, 111540)
    assert val.startswith("?\n\nGREMIO:\nGood morrow, neighbour Baptista.\n")


# --- prepared data -----------------------------------------------------------------------------

def test_prepare_char_tiny_shakespeare(tmp_data_with_corpus):
    p = prepare()
    assert isinstance(p.tokenizer, CharTokenizer) and p.tokenizer.vocab_size == 65
    assert p.corpus_name == "tinyshakespeare"
    assert (len(p.train), len(p.val)) == (p.train_chars, p.val_chars) == (1003854, 111540)
    assert p.train.dtype == np.uint16 and isinstance(p.train, np.memmap)
    assert p.tokenizer.decode(p.train[:14].tolist()) == "First Citizen:"
    assert p.tokenizer.decode(p.val.tolist()) == p.val_text
    assert p.train_text + p.val_text == load_text().text


def test_prepare_second_call_loads_instead_of_tokenizing(tmp_data, tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("It is the east, and Juliet is the sun.\n" * 200)
    first = prepare(str(corpus))
    [folder] = (tmp_data / "prepared").iterdir()
    assert sorted(f.name for f in folder.iterdir()) == ["meta.json", "tokenizer.json", "train.npy", "val.npy"]
    mtimes = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    monkeypatch.setattr(data, "build_tokenizer", lambda *a: pytest.fail("re-tokenized a cached corpus"))
    second = prepare(str(corpus))
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == mtimes
    np.testing.assert_array_equal(first.train, second.train)
    assert second.tokenizer.chars == first.tokenizer.chars


def test_prepare_cache_misses_on_new_corpus_or_tokenizer(tmp_data, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Now is the winter of our discontent\n" * 100)
    folders = lambda: {f.name for f in (tmp_data / "prepared").iterdir()}  # noqa: E731
    prepare(str(corpus))
    prepare(str(corpus), "bpe", 300)
    prepare(str(corpus), "bpe", 300)  # hit
    assert len(folders()) == 2
    bpe = prepare(str(corpus), "bpe", 280)
    assert isinstance(bpe.tokenizer, BPETokenizer) and bpe.tokenizer.vocab_size == 280
    assert bpe.tokenizer.decode(bpe.train.tolist()) == bpe.train_text
    assert len(folders()) == 3
    corpus.write_text("Made glorious summer by this sun of York\n" * 100)
    assert "summer" in prepare(str(corpus)).train_text
    assert len(folders()) == 4


def test_prepare_rebuilds_damaged_cache(tmp_data, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("A horse! a horse! my kingdom for a horse!\n" * 50)
    good = np.array(prepare(str(corpus)).train)
    [folder] = (tmp_data / "prepared").iterdir()
    np.save(folder / "train.npy", good[:10])  # as if a run were killed mid-write without atomic files
    np.testing.assert_array_equal(prepare(str(corpus)).train, good)


def test_prepare_rejects_oversized_vocab_and_unknown_tokenizer(tmp_data, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\n" * 100)
    with pytest.raises(UserError, match="uint16 .* at most 65535"):
        prepare(str(corpus), "bpe", 70000)
    with pytest.raises(UserError, match="choose one of char, bpe"):
        prepare(str(corpus), "words")


def test_prepare_with_a_given_tokenizer_caches_its_tokens(tmp_data, tmp_path):
    """A pretrained model's tokenizer (here a small BPE read back as a Hugging Face tokenizer.json),
    used as it is, never retrained on the corpus."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be, that is the question:\n" * 100)
    (tmp_path / "tokenizer.json").write_text(BPETokenizer.train("the lazy dog\n" * 50, 300).to_hf_json())
    given = GPT2Tokenizer.from_hf_file(tmp_path / "tokenizer.json")
    p = prepare(str(corpus), given)
    assert p.tokenizer.kind == "gpt2" and p.tokenizer.to_json() == given.to_json()
    assert p.train.dtype == np.uint16 and p.train.tolist() == given.encode(p.train_text)
    assert p.val.tolist() == given.encode(p.val_text)
    [folder] = (tmp_data / "prepared").iterdir()
    mtimes = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    prepare(str(corpus), GPT2Tokenizer.from_hf_file(tmp_path / "tokenizer.json"))  # the same vocabulary: a hit
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == mtimes
    other = BPETokenizer.train("a horse, a horse\n" * 50, 300)
    assert prepare(str(corpus), other).train.tolist() == other.encode(p.train_text)
    assert len(list((tmp_data / "prepared").iterdir())) == 2


def test_prepare_char_with_characters_only_in_val(tmp_data, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a" * 90 + "é" * 10)
    with pytest.raises(UserError, match="use tokenizer 'bpe'"):
        prepare(str(corpus))
    bpe = prepare(str(corpus), "bpe", 260)  # byte-level BPE encodes characters it never saw
    assert bpe.tokenizer.decode(bpe.val.tolist()) == "é" * 10


# --- batches -----------------------------------------------------------------------------------

TOKENS = np.arange(1000, dtype=np.uint16)  # token i at position i: x[b, 0] is the batch's offset


def test_get_batch_shapes_and_shift():
    x, y = get_batch(TOKENS, 8, 16, seed=1, step=0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(16))  # contiguous windows of the corpus
    np.testing.assert_array_equal(y, x + 1)  # y is x shifted by one position
    assert x.min() >= 0 and y.max() <= 999


def test_get_batch_offsets_are_the_documented_function_of_seed_and_step():
    offsets = np.random.default_rng([3, 7]).integers(0, 1000 - 16, size=4)
    x, _ = get_batch(TOKENS, 4, 16, seed=3, step=7)
    np.testing.assert_array_equal(x[:, 0], offsets)


def test_get_batch_is_deterministic_per_seed_and_step():
    a = get_batch(TOKENS, 8, 16, seed=1, step=5)
    b = get_batch(TOKENS, 8, 16, seed=1, step=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], get_batch(TOKENS, 8, 16, seed=1, step=6)[0])
    assert not np.array_equal(a[0], get_batch(TOKENS, 8, 16, seed=2, step=5)[0])


def test_get_batch_last_offset_reaches_the_end():
    tokens = np.arange(5, dtype=np.uint16)
    x, y = get_batch(tokens, 64, 4, seed=0, step=0)  # only offset 0 fits
    np.testing.assert_array_equal(x, np.tile([0, 1, 2, 3], (64, 1)))
    np.testing.assert_array_equal(y, np.tile([1, 2, 3, 4], (64, 1)))


def test_get_batch_on_memmap_matches_corpus(tmp_path):
    path = tmp_path / "t.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 65, size=100_000).astype(np.uint16))
    tokens = np.load(path, mmap_mode="r")
    x, y = get_batch(tokens, 4, 32, seed=9, step=3)
    offsets = np.random.default_rng([9, 3]).integers(0, len(tokens) - 32, size=4)
    for b, o in enumerate(offsets):
        np.testing.assert_array_equal(x[b], tokens[o:o + 32])
        np.testing.assert_array_equal(y[b], tokens[o + 1:o + 33])


def test_get_batch_is_fast_on_a_memmap(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros(1_000_000, dtype=np.uint16))
    tokens = np.load(tmp_path / "t.npy", mmap_mode="r")
    start = time.perf_counter()
    for step in range(100):
        get_batch(tokens, 64, 256, seed=0, step=step)
    assert time.perf_counter() - start < 2.0  # ~0.1 ms a batch measured; generous for slow CI


@pytest.mark.parametrize("n_tokens, block_size", [(16, 16), (10, 16)])
def test_block_size_too_large(n_tokens, block_size):
    with pytest.raises(UserError, match="lower block_size or use a bigger corpus"):
        get_batch(np.zeros(n_tokens, np.uint16), 2, block_size, seed=0, step=0)


def test_bad_batch_arguments():
    with pytest.raises(UserError, match="seed"):
        get_batch(TOKENS, 2, 4, seed=-1, step=0)
    with pytest.raises(UserError, match="step"):
        get_batch(TOKENS, 2, 4, seed=0, step=2**32)
    with pytest.raises(UserError, match="at least 1"):
        get_batch(TOKENS, 0, 4, seed=0, step=0)


def test_eval_batches_fixed_and_apart_from_training():
    first = eval_batches(TOKENS, 4, 8, seed=1, n=3)
    again = eval_batches(TOKENS, 4, 8, seed=1, n=3)
    assert len(first) == 3
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(y1, x1 + 1)
    assert not np.array_equal(first[0][0], first[1][0])
    # A plain default_rng([seed, 0xE7A1, 0]) would repeat training step 0xE7A1 exactly.
    for step in (0, 1, 2, 0xE7A1):
        assert not np.array_equal(first[0][0], get_batch(TOKENS, 4, 8, seed=1, step=step)[0])
    assert not np.array_equal(first[0][0], eval_batches(TOKENS, 4, 8, seed=2, n=1)[0][0])


def test_split_batches_cover_every_position_once_with_ignored_padding():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = split_batches(tokens, batch_size=4, block_size=16)
    assert all(x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int32 for x, y in batches)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    real = y != -1
    # 999 targets make 62 whole windows; the 63rd and 64th windows of the last batch are padding.
    assert len(x) == 64 and real[:62].all() and not real[62:].any()
    assert np.array_equal(y[real], np.arange(1, 62 * 16 + 1))  # each target exactly once, in order
    assert np.array_equal(x[:62].ravel() + 1, y[:62].ravel())  # x shifted by one
