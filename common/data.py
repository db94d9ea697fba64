"""Corpora, the train/val split, token arrays prepared once on disk, and the batch stream.

Every framework trains on exactly the same batches: batch `step` of run `seed` is a pure function
of (seed, step), so runs can be compared, resumed and replayed without saving RNG state.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import UserError
from common.spec import LOSS_IGNORE_INDEX
from common.tokenizers import (AnyTokenizer, build_tokenizer, check_kind, load_tokenizer,
                               resolve_vocab_size)

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SIZE = 1115394
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
PLAYS_CSV = "Shakespeare_data.csv"
PLAYS_COLUMNS = ("Dataline", "Play", "PlayerLinenumber", "ActSceneLine", "Player", "PlayerLine")
# Bump when the prepared files' layout or the tokenization changes, so old caches are not reused.
FORMAT_VERSION = 1
TRAIN_FRACTION_TENTHS = 9
_EVAL_STREAM = 0xE7A1
_U32 = 2**32


def data_dir() -> Path:
    env = os.environ.get("NANOGPT_DATA_DIR")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str
    sha256: str  # of text.encode("utf-8"): identifies the text itself, whatever file it came from


def _corpus(name: str, text: str) -> Corpus:
    return Corpus(name, text, hashlib.sha256(text.encode("utf-8")).hexdigest())


def load_text(dataset: str = "tinyshakespeare") -> Corpus:
    """'tinyshakespeare', 'shakespeare-plays', a path to the plays CSV, or a path to a UTF-8 text file."""
    if dataset == "tinyshakespeare":
        return _corpus("tinyshakespeare", _tiny_shakespeare())
    if dataset == "shakespeare-plays":
        path = data_dir() / PLAYS_CSV
        if not path.is_file():
            raise UserError(f"The shakespeare-plays corpus is not at {path}: download {PLAYS_CSV} from "
                            "Kaggle's 'shakespeare-plays' dataset and put it there, or set NANOGPT_DATA_DIR.")
        return _corpus("shakespeare-plays", render_plays_csv(path))
    path = Path(dataset).expanduser()
    if dataset.lower().endswith(".csv"):
        if not path.is_file():
            raise UserError(f"No CSV file at {path}: check the path to the shakespeare-plays CSV.")
        return _corpus(path.stem, render_plays_csv(path))
    return _corpus(path.stem, _read_text_file(path))


# --- Tiny Shakespeare: verified cache, downloaded on first use ---------------------------------

def _download(url: str, dest: Path) -> None:
    """Fetch url into dest. Module level so tests can replace it and never touch the network."""
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as f:
        while chunk := response.read(1 << 16):
            f.write(chunk)


def _check_tiny_shakespeare(data: bytes, where: str, fix: str) -> None:
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != TINY_SHAKESPEARE_SIZE or sha != TINY_SHAKESPEARE_SHA256:
        raise UserError(f"{where} is not Tiny Shakespeare ({len(data)} bytes, sha256 {sha[:12]}…; expected "
                        f"{TINY_SHAKESPEARE_SIZE} bytes, sha256 {TINY_SHAKESPEARE_SHA256[:12]}…): {fix}.")


def _tiny_shakespeare() -> str:
    path = data_dir() / "tinyshakespeare.txt"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            _download(TINY_SHAKESPEARE_URL, tmp)
            _check_tiny_shakespeare(tmp.read_bytes(), f"The file downloaded from {TINY_SHAKESPEARE_URL}",
                                    f"put the original file at {path} or set NANOGPT_DATA_DIR")
            os.replace(tmp, path)  # only a verified file ever appears under the real name
        except UserError:
            raise
        except Exception as e:  # URLError, timeouts, HTTP errors, disk errors: all mean "not here"
            raise UserError(f"Tiny Shakespeare is not at {path} and could not be downloaded ({e}): "
                            "put the file there or set NANOGPT_DATA_DIR.") from None
        finally:
            tmp.unlink(missing_ok=True)
    data = path.read_bytes()
    _check_tiny_shakespeare(data, str(path), "delete it so it is downloaded again, or replace it with the original file")
    return data.decode("utf-8")


# --- Other corpora -----------------------------------------------------------------------------

def _read_text_file(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"No dataset or file named {str(path)!r}: use 'tinyshakespeare', "
                        "'shakespeare-plays', or a path to an existing UTF-8 text file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}): "
                        "convert it to UTF-8 first.") from None
    if not text.strip():
        raise UserError(f"{path} is empty: give a text file with some text in it.")
    return text


def _speaker(name: str) -> str:
    """Tiny Shakespeare style: 'ROMEO', 'First Citizen'. Names are kept as given (capitals included,
    so 'KING HENRY IV' keeps its numeral); only all-lowercase names are title-cased."""
    name = " ".join(name.split())
    return name.title() if name.islower() else name


def render_plays_csv(path: Path) -> str:
    """Render the Kaggle shakespeare-plays CSV as Tiny Shakespeare-like text.

    Each run of consecutive spoken lines by one player within one play becomes a block
    'PLAYER:' + its lines; blocks are separated by a blank line. Rows without a Player or without an
    ActSceneLine are headings and stage directions, not speech, and are left out.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise UserError(f"{path} is empty: give the shakespeare-plays CSV with its header row "
                                f"({', '.join(PLAYS_COLUMNS)}).")
            missing = [c for c in PLAYS_COLUMNS if c not in reader.fieldnames]
            if missing:
                raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: give the Kaggle "
                                f"shakespeare-plays CSV, whose header is {', '.join(PLAYS_COLUMNS)}.")
            blocks: list[str] = []
            current: tuple[str, str] | None = None
            lines: list[str] = []
            for row in reader:
                player = _speaker(row["Player"] or "")
                line = (row["PlayerLine"] or "").strip()
                if not player or not (row["ActSceneLine"] or "").strip() or not line:
                    continue
                if (row["Play"], player) != current:
                    if lines:
                        blocks.append("\n".join(lines))
                    current, lines = (row["Play"], player), [f"{player}:"]
                lines.append(line)
            if lines:
                blocks.append("\n".join(lines))
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 (bad byte at offset {e.start}): convert it to UTF-8 first.") from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV ({e}): give the Kaggle shakespeare-plays CSV.") from None
    except OSError as e:
        raise UserError(f"Cannot read {path} ({e}): check the file and its permissions.") from None
    if not blocks:
        raise UserError(f"{path} has no spoken lines (rows with Player, ActSceneLine and PlayerLine): "
                        "give the Kaggle shakespeare-plays CSV.")
    return "\n\n".join(blocks) + "\n"


def split_text(text: str) -> tuple[str, str]:
    """First 90% of characters train, last 10% validate (the split nanoGPT uses)."""
    n = len(text) * TRAIN_FRACTION_TENTHS // 10
    return text[:n], text[n:]


# --- Prepared token arrays ---------------------------------------------------------------------

@dataclass
class Prepared:
    train: np.ndarray  # uint16, memory-mapped
    val: np.ndarray
    tokenizer: AnyTokenizer
    train_chars: int
    val_chars: int
    train_text: str
    val_text: str
    corpus_name: str


def prepare(dataset: str = "tinyshakespeare", tokenizer: str | AnyTokenizer = "char",
            vocab_size: int | None = None) -> Prepared:
    """Tokenize a corpus once and reuse the result: with a tokenizer of the kind named, trained on
    the train split only, or with the one given (a pretrained model's own, e.g. GPT-2's)."""
    if isinstance(tokenizer, str):
        check_kind(tokenizer)
        vocab_size = resolve_vocab_size(tokenizer, vocab_size)
        if vocab_size is not None and vocab_size > 65535:
            raise UserError(f"vocab_size {vocab_size} does not fit the uint16 token files: use at most 65535.")
        identity = f"{tokenizer}|{vocab_size}"
    else:  # the same files for the same vocabulary, whichever folder it came from
        identity = f"{tokenizer.kind}|{hashlib.sha256(tokenizer.to_json().encode()).hexdigest()}"
    corpus = load_text(dataset)
    train_text, val_text = split_text(corpus.text)
    key = hashlib.sha256(f"{FORMAT_VERSION}|{corpus.sha256}|{identity}".encode()).hexdigest()[:16]
    folder = data_dir() / "prepared" / key
    meta = _load_meta(folder, key)
    if meta is None:
        meta = _build(folder, key, corpus, train_text, val_text, tokenizer, vocab_size)
    return Prepared(
        train=np.load(folder / "train.npy", mmap_mode="r"),
        val=np.load(folder / "val.npy", mmap_mode="r"),
        tokenizer=load_tokenizer(folder / "tokenizer.json"),
        train_chars=len(train_text), val_chars=len(val_text),
        train_text=train_text, val_text=val_text, corpus_name=corpus.name)


def _load_meta(folder: Path, key: str) -> dict | None:
    """The cached metadata if the folder holds a complete, matching preparation, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in ("train", "val")}
    except (OSError, ValueError):
        return None
    complete = (meta.get("key") == key and (folder / "tokenizer.json").is_file()
                and all(arrays[s].dtype == np.uint16 and len(arrays[s]) == meta.get(f"{s}_tokens")
                        for s in arrays))
    return meta if complete else None


def _build(folder: Path, key: str, corpus: Corpus, train_text: str, val_text: str,
           tokenizer: str | AnyTokenizer, vocab_size: int | None) -> dict:
    tok = build_tokenizer(tokenizer, train_text, vocab_size) if isinstance(tokenizer, str) else tokenizer
    if tok.vocab_size > 65535:
        raise UserError(f"The {tok.kind} vocabulary has {tok.vocab_size} tokens, more than the uint16 token "
                        "files hold: use a vocabulary of at most 65535 (the bpe tokenizer's vocab_size).")
    try:
        val_ids = tok.encode(val_text)
    except UserError:
        raise UserError(f"The validation split of {corpus.name} has characters the training split lacks: "
                        "use tokenizer 'bpe', which encodes any text.") from None
    arrays = {"train": np.asarray(tok.encode(train_text), dtype=np.uint16),
              "val": np.asarray(val_ids, dtype=np.uint16)}
    folder.mkdir(parents=True, exist_ok=True)
    for split, arr in arrays.items():
        _atomic_write(folder / f"{split}.npy", lambda f, a=arr: np.save(f, a))
    tok.save(folder / "tokenizer.json")
    meta = {"key": key, "format_version": FORMAT_VERSION, "corpus": corpus.name,
            "corpus_sha256": corpus.sha256, "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
            "requested_vocab_size": vocab_size, "train_tokens": len(arrays["train"]),
            "val_tokens": len(arrays["val"]), "train_chars": len(train_text), "val_chars": len(val_text)}
    # meta.json goes last: its presence marks the other files as complete.
    _atomic_write(folder / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return meta


def _atomic_write(path: Path, write: Callable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- Batch stream ------------------------------------------------------------------------------

def _check_batch_args(tokens: np.ndarray, batch_size: int, block_size: int, seed: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise UserError(f"batch_size and block_size must be at least 1 (got {batch_size}, {block_size}).")
    if not 0 <= seed < _U32:
        # Larger seeds become several RNG words and could collide with another (seed, step) pair.
        raise UserError(f"seed {seed} is out of range: use a seed from 0 to {_U32 - 1}.")
    if len(tokens) <= block_size:
        raise UserError(f"block_size {block_size} is larger than the data ({len(tokens)} tokens): "
                        "lower block_size or use a bigger corpus.")


def _batch(tokens: np.ndarray, batch_size: int, block_size: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    offsets = rng.integers(0, len(tokens) - block_size, size=batch_size)
    # One fancy-indexing read gathers every window, so a memmap is touched only where needed.
    windows = np.asarray(tokens[offsets[:, None] + np.arange(block_size + 1)], dtype=np.int32)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int, seed: int,
              step: int) -> tuple[np.ndarray, np.ndarray]:
    """Training batch number `step` of run `seed`: x and y (x shifted by one), int32, shape (B, T)."""
    _check_batch_args(tokens, batch_size, block_size, seed)
    if not 0 <= step < _U32:
        raise UserError(f"step {step} is out of range: steps run from 0 to {_U32 - 1}.")
    return _batch(tokens, batch_size, block_size, np.random.default_rng([seed, step]))


def eval_batches(tokens: np.ndarray, batch_size: int, block_size: int, seed: int,
                 n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same n evaluation batches on every call, drawn from a stream no training step uses."""
    _check_batch_args(tokens, batch_size, block_size, seed)
    # A spawn key keeps these apart from the training seeds [seed, step]; a plain [seed, 0xE7A1, i]
    # would not, because SeedSequence treats [seed, 0xE7A1, 0] like [seed, 0xE7A1] (training step 59297).
    return [_batch(tokens, batch_size, block_size,
                   np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_EVAL_STREAM, i))))
            for i in range(n)]


def split_batches(tokens: np.ndarray, batch_size: int,
                  block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A whole split as consecutive, non-overlapping windows, batch_size at a time.

    eval_batches samples a split (nanoGPT's estimate, noisy by a few hundredths at eval_iters=20);
    these batches cover every position but the last partial window, so their loss is exact. The
    last batch is filled up with windows whose targets are all LOSS_IGNORE_INDEX, keeping the
    training shape (one compiled program) while counting for nothing: weight each batch's mean
    loss by its number of real targets, as evaluate_split in benchmarks/loop.py does.
    """
    _check_batch_args(tokens, batch_size, block_size, seed=0)
    n_windows = (len(tokens) - 1) // block_size
    ids = np.asarray(tokens[:n_windows * block_size + 1], dtype=np.int32)
    x = ids[:-1].reshape(n_windows, block_size)
    y = ids[1:].reshape(n_windows, block_size)
    padding = -n_windows % batch_size
    x = np.concatenate([x, np.zeros((padding, block_size), np.int32)])
    y = np.concatenate([y, np.full((padding, block_size), LOSS_IGNORE_INDEX, np.int32)])
    return [(np.ascontiguousarray(x[i:i + batch_size]), np.ascontiguousarray(y[i:i + batch_size]))
            for i in range(0, len(x), batch_size)]
