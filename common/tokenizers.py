"""Character, byte-level BPE and GPT-2 tokenizers with one interface and one JSON file format.

Each serialises to JSON tagged with its `kind`, so a checkpoint or a prepared-data folder can
carry its tokenizer and anyone can load it back with `load_tokenizer` without knowing the kind.
Each also writes the `tokenizer.json` of a Hugging Face folder (`to_hf_json`), and `eot_id` is the
end-of-text id a sampler stops at, None where the vocabulary has none.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from common.errors import UserError

TOKENIZER_KINDS = ("char", "bpe")  # the kinds trained on a corpus; "gpt2" comes with a model's folder
DEFAULT_BPE_VOCAB = 512
EOT = "<|endoftext|>"
# 256 byte tokens plus the end-of-text token: a smaller BPE vocabulary could not encode every text.
MIN_BPE_VOCAB = 257


class _Common:
    """Methods that are the same for every kind once encode/to_json exist."""

    def chars_per_token(self, text: str) -> float:
        ids = self.encode(text)
        return len(text) / len(ids) if ids else 0.0

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)  # a reader never sees half a tokenizer


@dataclass(eq=False)
class CharTokenizer(_Common):
    """One token per character; the vocabulary is the sorted set of characters seen in training."""

    chars: tuple[str, ...]
    kind: str = field(default="char", init=False)

    def __post_init__(self) -> None:
        chars = list(self.chars)
        if not chars or any(len(c) != 1 for c in chars) or chars != sorted(set(chars)):
            raise UserError("A character vocabulary must be non-empty, sorted, unique single characters: "
                            "delete the tokenizer file and prepare the data again.")
        # Python sorts strings by code point, so the code points are sorted too and
        # `np.searchsorted` maps a whole text to ids in one vectorised step.
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        if not text:
            raise UserError("Cannot build a character vocabulary from empty text: give a non-empty corpus.")
        return cls(tuple(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> None:
        return None  # a character vocabulary has no end-of-text token

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes).clip(max=len(self._codes) - 1)
        unknown = self._codes[ids] != codes
        if unknown.any():
            # Dropping or replacing unknown characters would silently change the prompt.
            bad = sorted({chr(c) for c in codes[unknown]})
            shown = ", ".join(repr(c) for c in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise UserError(f"Text contains characters not in the tokenizer's vocabulary ({shown}): "
                            "the prompt must use only characters seen in the training text.")
        return ids.tolist()

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self.chars[i] for i in ids)
        except IndexError:
            raise UserError(f"Token id out of range for a {self.vocab_size}-character vocabulary: "
                            "decode ids produced by this same tokenizer.") from None

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> CharTokenizer:
        return cls(tuple(_parse(s, "char")["chars"]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        return cls.from_json(_read(path))

    def to_hf_json(self) -> str:
        """The same ids as a `tokenizers` model: every character a word of its own, decoded unspaced."""
        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(self.chars)}, unk_token=None))
        # [\s\S] (not ".") so that newlines are characters too; an unknown character is an error, as here.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok.to_str()


@dataclass(eq=False)
class BPETokenizer(_Common):
    """Byte-level BPE (GPT-2 style) from the `tokenizers` library: any text encodes, and decodes back exactly."""

    tokenizer: Tokenizer
    kind: str = field(default="bpe", init=False)

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None) -> BPETokenizer:
        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        if vocab_size < MIN_BPE_VOCAB:
            raise UserError(f"BPE vocab_size {vocab_size} is too small: use at least {MIN_BPE_VOCAB} "
                            "(256 bytes plus the end-of-text token).")
        if not text:
            raise UserError("Cannot train BPE on empty text: give a non-empty corpus.")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator([text], trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def eot_id(self) -> int:
        return self.tokenizer.token_to_id(EOT)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise UserError(f"Token id out of range for a {self.vocab_size}-token BPE vocabulary: "
                            "decode ids produced by this same tokenizer.")
        # Keeping special tokens makes decode(encode(t)) == t even when t contains "<|endoftext|>".
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": json.loads(self.tokenizer.to_str())},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> BPETokenizer:
        payload = _parse(s, cls.kind)["tokenizer"]
        try:
            return cls(Tokenizer.from_str(json.dumps(payload)))
        except Exception as e:  # the library raises a bare Exception on a malformed model
            raise UserError(f"Tokenizer JSON holds an unreadable BPE model ({e}): "
                            "delete the file and prepare the data again.") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        return cls.from_json(_read(path))

    def to_hf_json(self) -> str:
        return self.tokenizer.to_str()


@dataclass(eq=False)
class GPT2Tokenizer(BPETokenizer):
    """A pretrained model's byte-level BPE, read from its Hugging Face tokenizer.json (GPT-2's: 50,257
    tokens, `<|endoftext|>` the last).

    It encodes and decodes exactly as a trained BPE does; its own kind records that it came with a
    model, so it is never retrained on a corpus.
    """

    kind: str = field(default="gpt2", init=False)

    @classmethod
    def from_hf_file(cls, path: str | os.PathLike) -> GPT2Tokenizer:
        try:
            return cls(Tokenizer.from_str(_read(path)))
        except UserError:
            raise
        except Exception as e:  # the library raises a bare Exception on a malformed file
            raise UserError(f"{path} is not a tokenizer.json that the tokenizers library can read ({e}): "
                            "download the model folder again.") from None


AnyTokenizer = CharTokenizer | BPETokenizer | GPT2Tokenizer
_CLASSES: dict[str, type[AnyTokenizer]] = {"char": CharTokenizer, "bpe": BPETokenizer, "gpt2": GPT2Tokenizer}


def check_kind(kind: str) -> str:
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"Unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZER_KINDS)}.")
    return kind


def resolve_vocab_size(kind: str, vocab_size: int | None) -> int | None:
    """The vocab_size a build will actually ask for; None for char, whose size comes from the text."""
    check_kind(kind)
    if kind == "char":
        return None  # a character vocabulary is whatever the text contains; a requested size is ignored
    return DEFAULT_BPE_VOCAB if vocab_size is None else int(vocab_size)


def build_tokenizer(kind: str, train_text: str, vocab_size: int | None = None) -> AnyTokenizer:
    if check_kind(kind) == "char":
        return CharTokenizer.train(train_text)
    return BPETokenizer.train(train_text, resolve_vocab_size(kind, vocab_size))


def tokenizer_from_json(s: str) -> AnyTokenizer:
    return _CLASSES[_parse(s, None)["kind"]].from_json(s)


def load_tokenizer(path: str | os.PathLike) -> AnyTokenizer:
    return tokenizer_from_json(_read(path))


def bits_per_char(loss_nats_per_token: float, n_tokens: int, n_chars: int) -> float:
    """Convert mean cross-entropy per token (nats) to bits per character of the same text.

    Tokenizers that pack more characters per token have a higher loss per token, so only
    per-character figures compare a char model with a BPE model.
    """
    if n_chars <= 0:
        raise UserError(f"bits_per_char needs a positive character count, got {n_chars}: "
                        "pass the length of the text that was scored.")
    return loss_nats_per_token * n_tokens / n_chars / math.log(2)


def _read(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"No tokenizer file at {path}: check the path or prepare the data again.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"Cannot read tokenizer file {path} ({e}): delete it and prepare the data again.") from None


def _parse(s: str, expected_kind: str | None) -> dict:
    """Parse our tagged JSON; every way it can be wrong becomes one UserError."""
    try:
        obj = json.loads(s)
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"Tokenizer JSON is corrupt ({e}): delete the file and prepare the data again.") from None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind not in _CLASSES or (expected_kind is not None and kind != expected_kind):
        want = expected_kind or " or ".join(_CLASSES)
        raise UserError(f"Tokenizer JSON has kind {kind!r}, expected {want}: "
                        "load it with load_tokenizer or prepare the data again.")
    body = "chars" if kind == "char" else "tokenizer"
    if not isinstance(obj.get(body), str if kind == "char" else dict):
        raise UserError(f"Tokenizer JSON of kind {kind!r} lacks a valid {body!r} field: "
                        "delete the file and prepare the data again.")
    return obj
