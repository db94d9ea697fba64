"""Hugging Face GPT-2 folders in and out: config.json, model.safetensors and tokenizer.json.

The canonical parameter names are GPT-2's already, so a Hub file maps onto them almost one to one:
its `Conv1D` kernels are stored [in, out] like the canonical ones, the embeddings carry a `.weight`
suffix, and the head is tied to `wte`. Weights are read from safetensors only; a pickled
`pytorch_model.bin` can run code when loaded, so it is refused, never opened. Neither torch nor
transformers is needed: this is numpy, `safetensors`, `tokenizers` and `huggingface_hub`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, deserialize
from safetensors.numpy import load_file, save_file

from common.config import GPTConfig
from common.errors import UserError
from common.params import check_params, param_shapes
from common.spec import INIT_STD, MLP_RATIO
from common.tokenizers import EOT, AnyTokenizer, GPT2Tokenizer

PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Their shapes (the Hub's config.json of each), so that a run's memory can be planned before its
# weights are fetched: gpt2-xl's are 6.2 GB.
PRETRAINED_SHAPES = {name: GPTConfig(vocab_size=50257, block_size=1024, n_layer=layers, n_head=heads, n_embd=width,
                                     dropout=0.0, bias=True, gelu_approximate=True)
                     for name, layers, heads, width in (("gpt2", 12, 12, 768), ("gpt2-medium", 24, 16, 1024),
                                                        ("gpt2-large", 36, 20, 1280), ("gpt2-xl", 48, 25, 1600))}
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
SHARD_INDEX_FILE = "model.safetensors.index.json"  # large models may be saved in several files
# What a Hub download fetches: the model in safetensors (whole or sharded), its config and tokenizer.
HUB_FILES = [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, SHARD_INDEX_FILE, "model-*-of-*.safetensors"]

# GPT-2's `gelu_new` and its aliases are the tanh approximation; `gelu` is the exact erf form.
ACTIVATIONS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
# Non-persistent attention-mask buffers that older transformers versions saved with the weights.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
# safetensors' dtypes that numpy has; BF16 is widened to float32 by hand.
NUMPY_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "I64": "i8", "I32": "i4", "I16": "i2", "I8": "i1",
                "U64": "u8", "U32": "u4", "U16": "u2", "U8": "u1", "BOOL": "?"}
# The only names that differ: GPT-2's embeddings are modules with a `.weight`; canonical ones are arrays.
HF_EMBEDDINGS = {"wte.weight": "wte", "wpe.weight": "wpe"}


@dataclass(frozen=True)
class HFConfig:
    """A GPT-2 config.json in the project's terms."""

    # vocab_size, block_size (n_positions), n_layer, n_head, n_embd, gelu_approximate (activation_function),
    # layer_norm_eps (layer_norm_epsilon); bias on, dropout 0
    model: GPTConfig


@dataclass
class HFModel:
    """Everything a GPT-2 folder holds, ready for any framework's backend."""

    config: HFConfig
    params: dict[str, np.ndarray]  # canonical names and layouts, float32
    tokenizer: GPT2Tokenizer       # its eot_id (50256 in GPT-2) is where generation stops
    folder: Path


# --- in ----------------------------------------------------------------------------------------

def resolve_folder(name_or_dir: str | os.PathLike) -> Path:
    """A local GPT-2 folder as given (a folder wins over a Hub id of the same name), or a Hub id
    (gpt2, gpt2-medium, ..., owner/name) fetched into huggingface_hub's cache or found there offline."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    where = (f"put the model's folder ({CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_FILE}) on this machine "
             f"and pass its path")
    try:
        return Path(snapshot_download(str(name_or_dir), allow_patterns=HUB_FILES))
    except HFValidationError:
        raise UserError(f"{str(name_or_dir)!r} is neither a folder nor a Hugging Face model id: {where}, "
                        f"or name one of {', '.join(PRETRAINED)} or owner/name.") from None
    except Exception as e:  # offline, no such repository, no network: huggingface_hub has many kinds
        raise UserError(f"cannot fetch {str(name_or_dir)!r} from the Hugging Face Hub and it is not in its cache "
                        f"({type(e).__name__}): {where}, or fill the cache (HF_HOME) on a connected machine "
                        f"with `hf download {name_or_dir}`.") from None


def read_config(folder: str | os.PathLike) -> HFConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no {CONFIG_FILE} in {folder}: pass a Hugging Face GPT-2 folder.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}): download the model folder again.") from None
    if not isinstance(raw, dict) or raw.get("model_type", "gpt2") != "gpt2":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise UserError(f"{path} describes a {kind!r} model, not GPT-2: only GPT-2 folders load here.")
    sizes = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")
    bad = [k for k in sizes if not isinstance(raw.get(k), int) or isinstance(raw.get(k), bool)]
    if bad:
        raise UserError(f"{path} lacks {', '.join(bad)} as whole numbers: it is not a complete GPT-2 config.")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise UserError(f"{path} asks for activation {activation!r}: the models here run "
                        f"{', '.join(ACTIVATIONS)} only.")
    # Variants of GPT-2 whose arithmetic the three models do not have; loading them would be wrong quietly.
    n_inner = raw.get("n_inner")
    unsupported = [name for name, ok in [
        ("n_inner", n_inner is None or n_inner == MLP_RATIO * raw["n_embd"]),
        ("scale_attn_weights", raw.get("scale_attn_weights", True)),
        ("scale_attn_by_inverse_layer_idx", not raw.get("scale_attn_by_inverse_layer_idx", False)),
        ("add_cross_attention", not raw.get("add_cross_attention", False)),
        # Every model here ties its head to wte: an independent head cannot be represented.
        ("tie_word_embeddings", raw.get("tie_word_embeddings", True)),
    ] if not ok]
    if unsupported:
        raise UserError(f"{path} sets {', '.join(unsupported)} to values GPT-2 does not use: "
                        f"only the standard GPT-2 architecture loads here.")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise UserError(f"{path} has layer_norm_epsilon {eps!r}: it must be a positive number.")
    # Dropout is a training choice, not part of the weights: 0 for inference, as nanoGPT's fine-tuning.
    model = GPTConfig(vocab_size=raw["vocab_size"], block_size=raw["n_positions"], n_layer=raw["n_layer"],
                      n_head=raw["n_head"], n_embd=raw["n_embd"], dropout=0.0, bias=True,
                      gelu_approximate=ACTIVATIONS[activation], layer_norm_eps=float(eps))
    return HFConfig(model)


def read_params(folder: str | os.PathLike, config: GPTConfig) -> dict[str, np.ndarray]:
    """The folder's weights under canonical names, float32, checked against `config`'s shapes."""
    folder = Path(folder)
    tensors = {}
    for file in _weight_files(folder):
        try:
            tensors.update(_load_safetensors(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{file} is corrupt or truncated ({e}): download the model folder again.") from None
    params = {}
    head = None
    for name, value in tensors.items():
        name = name.removeprefix("transformer.")  # save_pretrained writes it; the Hub's GPT-2 files do not
        if name == "lm_head.weight":
            head = value
        elif not name.endswith(MASK_BUFFERS):
            params[HF_EMBEDDINGS.get(name, name)] = value.astype(np.float32, copy=False)
    try:
        check_params(params, config)
    except ValueError as e:
        raise UserError(f"the weights in {folder} do not match its {CONFIG_FILE}: {e}.") from None
    if head is not None and not np.array_equal(head.astype(np.float32, copy=False), params["wte"]):
        raise UserError(f"{folder} has an lm_head different from its token embedding (wte): only GPT-2 "
                        f"models with a tied head load here.")
    return params


def load_gpt2(name_or_dir: str | os.PathLike) -> HFModel:
    """Config, canonical weights and tokenizer of a GPT-2 folder or Hub id."""
    folder = resolve_folder(name_or_dir)
    config = read_config(folder)
    params = read_params(folder, config.model)
    if not (folder / TOKENIZER_FILE).is_file():
        raise UserError(f"no {TOKENIZER_FILE} in {folder}: put the model's tokenizer.json (the `tokenizers` "
                        f"format, not vocab.json and merges.txt) beside its weights.")
    tokenizer = GPT2Tokenizer.from_hf_file(folder / TOKENIZER_FILE)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(f"{folder}'s tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{config.model.vocab_size}: the tokenizer.json belongs to another model.")
    return HFModel(config, params, tokenizer, folder)


def _load_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor in the file, bfloat16 ones widened to float32 (numpy has no bfloat16)."""
    try:
        return load_file(str(file))
    except TypeError:  # safetensors.numpy cannot load a file that holds bfloat16
        pass
    tensors = {}
    for name, tensor in deserialize(file.read_bytes()):
        if tensor["dtype"] == "BF16":
            # A bfloat16 is the upper half of a float32: widening is exact.
            bits = np.frombuffer(tensor["data"], dtype="<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(tensor["shape"])
        elif tensor["dtype"] not in NUMPY_DTYPES:
            raise UserError(f"{file} holds {tensor['dtype']} tensors ({name}): save the model in float32, "
                            f"float16 or bfloat16.")
        else:
            dtype = np.dtype(NUMPY_DTYPES[tensor["dtype"]]).newbyteorder("<")
            tensors[name] = np.frombuffer(tensor["data"], dtype=dtype).reshape(tensor["shape"])
    return tensors


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    if (folder / SHARD_INDEX_FILE).is_file():
        try:
            shards = sorted(set(json.loads((folder / SHARD_INDEX_FILE).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"cannot read {folder / SHARD_INDEX_FILE} ({e}): download the model folder "
                            f"again.") from None
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            raise UserError(f"{folder} lacks the weight files {', '.join(absent[:3])}: download the model "
                            f"folder again.")
        return [folder / s for s in shards]
    if any(folder.glob("*.bin")):
        raise UserError(f"{folder} holds only pickled PyTorch weights (.bin), which can run code when loaded "
                        f"and are never opened here: convert them with transformers' "
                        f"`GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR)`, which writes "
                        f"{WEIGHTS_FILE}.")
    raise UserError(f"no {WEIGHTS_FILE} in {folder}: pass a Hugging Face GPT-2 folder.")


# --- out ---------------------------------------------------------------------------------------

def write_gpt2(out_dir: str | os.PathLike, params: dict[str, np.ndarray], config: GPTConfig,
               tokenizer: AnyTokenizer) -> Path:
    """A folder that transformers' GPT2LMHeadModel and AutoTokenizer load unchanged, computing what
    `config` says (its GELU form and LayerNorm epsilon included)."""
    check_params(params, config)
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{config.vocab_size}: export the tokenizer the model was trained with.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eot = tokenizer.eot_id
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # n_positions' older name, which older readers still look for
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new" if config.gelu_approximate else "gelu",
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": INIT_STD,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        # GPT2Config's defaults are GPT-2's own 50256; a vocabulary without end-of-text must say so.
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": "float32",
    }
    _write_text(out / CONFIG_FILE, json.dumps(hf_config, indent=2) + "\n")
    _save_weights(out / WEIGHTS_FILE, _hf_tensors(params, config))
    _write_text(out / TOKENIZER_FILE, tokenizer.to_hf_json())
    # AutoTokenizer would otherwise take model_type gpt2 to mean GPT-2's own byte-level tokenizer
    # class; this makes it use tokenizer.json exactly as written, whatever the kind.
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT} if eot is not None else {}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.block_size,
                        "clean_up_tokenization_spaces": False, **special}
    _write_text(out / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")
    return out


def _hf_tensors(params: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    """GPT-2's names as save_pretrained writes them: `transformer.` prefixed, the tied head left out."""
    tensors = {}
    hf_names = {canonical: hf for hf, canonical in HF_EMBEDDINGS.items()}
    for name, shape in param_shapes(replace(config, bias=True)).items():
        hf_name = "transformer." + hf_names.get(name, name)
        # GPT-2 always has biases; a model trained without them computes exactly what zero biases do.
        value = params[name] if name in params else np.zeros(shape)
        tensors[hf_name] = np.ascontiguousarray(value, dtype=np.float32)
    return tensors


def _save_weights(path: Path, tensors: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # transformers reads a file's framework from this metadata.
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
