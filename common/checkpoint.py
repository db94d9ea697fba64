"""The framework-neutral checkpoint: canonical float32 tensors in safetensors, metadata alongside.

`model.safetensors` holds the canonical parameters, with the model config, tokenizer and step in
its metadata, so any framework can load what any other wrote. Optimizer state for resuming goes in
a second file, `optimizer.safetensors`, in the same canonical names (AdamW moments per parameter).
Every write goes to a temporary file first and is renamed into place, so a crash never leaves a
half-written checkpoint where a good one was; a checksum of the tensors in the metadata catches a
file damaged afterwards, which safetensors alone would load as silently wrong weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from common.config import GPTConfig
from common.errors import UserError
from common.params import check_params

FORMAT = "nanogpt-compare/1"


def _checksum(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


def _atomic_save(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**metadata, "sha256": _checksum(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path: str | Path, params: dict[str, np.ndarray], config: GPTConfig, *,
                    step: int, tokenizer_json: str, framework: str, extra: dict | None = None) -> Path:
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(asdict(config)),
        "tokenizer": tokenizer_json,
        "step": str(step),
        "framework": framework,
        "extra": json.dumps(extra or {}),
    }
    _atomic_save({k: np.asarray(v, dtype=np.float32) for k, v in params.items()}, path, metadata)
    return path


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: pass the path of a model.safetensors written by a run.")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({e}); use an earlier checkpoint "
                        f"or retrain.") from None
    if "sha256" in metadata and _checksum(tensors) != metadata["sha256"]:  # older files have none
        raise UserError(f"checkpoint {path} is corrupt (its tensors do not match their checksum); use an "
                        f"earlier checkpoint or retrain.")
    return tensors, metadata


def load_checkpoint(path: str | Path, expect_config: GPTConfig | None = None,
                    expect_tokenizer_json: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Returns (params, info) with info = {config, tokenizer, step, framework, extra}."""
    path = Path(path)
    tensors, metadata = _read(path)
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not a nanogpt-compare checkpoint (format {metadata.get('format')!r}).")
    config = GPTConfig(**json.loads(metadata["config"]))
    if expect_config is not None and config != expect_config:
        raise UserError(f"checkpoint {path} was written for a different model config ({config}); "
                        f"use the same preset and overrides as the run that wrote it.")
    if expect_tokenizer_json is not None and metadata["tokenizer"] != expect_tokenizer_json:
        raise UserError(f"checkpoint {path} was trained with a different tokenizer; use the same "
                        f"dataset and --tokenizer as the run that wrote it.")
    try:
        check_params(tensors, config)
    except ValueError as e:
        raise UserError(f"checkpoint {path} does not hold a complete model: {e}.") from None
    info = {"config": config, "tokenizer": metadata["tokenizer"], "step": int(metadata["step"]),
            "framework": metadata["framework"], "extra": json.loads(metadata.get("extra", "{}"))}
    return tensors, info


def save_optimizer_state(path: str | Path, state: dict[str, np.ndarray], *, step: int, framework: str) -> Path:
    path = Path(path)
    state = {k: np.atleast_1d(v) for k, v in state.items()}
    _atomic_save(state, path, {"format": FORMAT, "kind": "optimizer", "step": str(step),
                               "framework": framework})
    return path


def load_optimizer_state(path: str | Path) -> tuple[dict[str, np.ndarray], int]:
    path = Path(path)
    tensors, metadata = _read(path)
    if metadata.get("format") != FORMAT or metadata.get("kind") != "optimizer":
        raise UserError(f"{path} is not a nanogpt-compare optimizer state file.")
    if "adam_count" in tensors:  # safetensors keeps no 0-d arrays
        tensors["adam_count"] = tensors["adam_count"].reshape(())
    return tensors, int(metadata["step"])


# --- training state for resuming: checkpoints/step_NNNNNNN/{model,optimizer}.safetensors ----------
# A step folder counts only once `checkpoints/latest` names it, and that pointer is replaced
# atomically after both files are complete: a run killed mid-write resumes from the previous one.

KEEP_CHECKPOINTS = 2


def save_training_state(run_dir: str | Path, params: dict[str, np.ndarray], optimizer: dict[str, np.ndarray],
                        config: GPTConfig, *, step: int, tokenizer_json: str, framework: str) -> Path:
    root = Path(run_dir) / "checkpoints"
    folder = root / f"step_{step:07d}"
    save_checkpoint(folder / "model.safetensors", params, config, step=step, tokenizer_json=tokenizer_json,
                    framework=framework)
    save_optimizer_state(folder / "optimizer.safetensors", optimizer, step=step, framework=framework)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".latest.")
    with os.fdopen(fd, "w") as f:
        f.write(folder.name)
    os.replace(tmp, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    return folder


@dataclass
class TrainingState:
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    step: int
    skipped: list[str]  # "step_NNNNNNN (why)" for each newer checkpoint that could not be read


def load_training_state(run_dir: str | Path, expect_config: GPTConfig | None = None,
                        expect_tokenizer_json: str | None = None) -> TrainingState | None:
    """The newest readable complete checkpoint in run_dir, or None if the run never wrote one.

    A step folder newer than `latest` names was being written when the run stopped and is passed
    over silently; an unreadable one `latest` names (a truncated or corrupted file) is skipped for
    the one before it, and the reason is kept in `skipped` for the caller to report.
    """
    root = Path(run_dir) / "checkpoints"
    folders = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    try:
        latest = (root / "latest").read_text().strip()
        folders = [f for f in folders if f.name <= latest]
    except OSError:
        pass  # no pointer (or an unreadable one): every folder is a candidate, newest first
    skipped = []
    for folder in folders:
        try:
            params, info = load_checkpoint(folder / "model.safetensors", expect_config, expect_tokenizer_json)
            optimizer, step = load_optimizer_state(folder / "optimizer.safetensors")
            if step != info["step"]:
                raise UserError("its model and optimizer state are of different steps")
        except UserError as e:
            skipped.append(f"{folder.name} ({str(e).rstrip('.')})")
            continue
        return TrainingState(params, optimizer, step, skipped)
    if skipped:
        raise UserError(f"no checkpoint in {root} can be read ({'; '.join(skipped)}): start a new run instead.")
    return None
