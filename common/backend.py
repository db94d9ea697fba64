"""The one interface the harness knows of a framework, and the lazy loader that finds each one.

Each `<framework>_impl/backend.py` defines a `Backend` subclass. Nothing here imports a
deep-learning framework: a framework that is not installed only fails when it is asked for.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from common.config import GPTConfig, TrainConfig
from common.errors import UserError

# keras-jax is the Keras GPT of tensorflow_impl/ trained on Keras' JAX backend: an extra row, which
# also measures the Keras model on machines that have JAX but no TensorFlow.
FRAMEWORKS = ("pytorch", "tensorflow", "jax", "keras-jax")
ALIASES = {"torch": "pytorch", "pt": "pytorch", "keras": "tensorflow", "tf": "tensorflow",
           "flax": "jax"}
_MODULES = {"pytorch": ("torch",), "tensorflow": ("tensorflow", "keras"), "jax": ("jax", "flax", "optax"),
            "keras-jax": ("keras", "jax", "flax", "optax")}  # it shares jax_impl's devices and sampling
_EXTRAS = {"pytorch": "pytorch", "tensorflow": "tensorflow", "jax": "jax", "keras-jax": "keras-jax"}
_BACKEND_MODULES = {"keras-jax": "tensorflow_impl.keras_jax"}
_KERAS_BACKENDS = {"tensorflow": "tensorflow", "keras-jax": "jax"}


def canonical_framework(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in FRAMEWORKS:
        raise UserError(f"unknown framework {name!r}: choose one of {', '.join(FRAMEWORKS)} or all "
                        f"(aliases: {', '.join(ALIASES)}).")
    return key


def missing_modules(framework: str) -> list[str]:
    return [m for m in _MODULES[framework] if importlib.util.find_spec(m) is None]


def is_installed(framework: str) -> bool:
    return not missing_modules(canonical_framework(framework))


def load_backend(framework: str) -> type["Backend"]:
    framework = canonical_framework(framework)
    missing = missing_modules(framework)
    if missing:
        raise UserError(f"{framework} is not installed (missing {', '.join(missing)}): "
                        f"pip install -e \".[{_EXTRAS[framework]}]\".")
    if framework in _KERAS_BACKENDS:
        _choose_keras_backend(_KERAS_BACKENDS[framework], framework)
    name = backend_module(framework)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise UserError(f"the {framework} implementation is not implemented yet.") from None
        raise
    return module.Backend


def backend_module(framework: str) -> str:
    """The module that defines a framework's Backend class."""
    return _BACKEND_MODULES.get(framework, f"{framework}_impl.backend")


def _choose_keras_backend(backend: str, framework: str) -> None:
    """Keras reads KERAS_BACKEND once, when it is first imported, for the whole process."""
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = backend
    elif keras.backend.backend() != backend:
        raise UserError(f"Keras is already running on {keras.backend.backend()} in this process, and {framework} "
                        f"needs {backend}: run {framework} in a process of its own (benchmarks.run does).")


class Backend(ABC):
    """One GPT in one framework: built from canonical parameters, trained on numpy batches.

    Batches are numpy int32 arrays (B, T); parameters and gradients cross this boundary as
    dicts of float32 numpy arrays under the canonical names and layouts of common/params.py.
    """

    name: ClassVar[str]
    rank: int = 0          # this process among the data-parallel processes; 0 writes the results
    world_size: int = 1    # data-parallel processes (PyTorch's DDP runs one per replica)

    def __init__(self, config: GPTConfig, train: TrainConfig, params: dict[str, np.ndarray],
                 device: str = "auto", replicas: int = 1):
        """`replicas` > 1 trains data-parallel: every replica gets an equal slice of each global batch."""
        self.config = config
        self.train_config = train
        self.replicas = replicas

    # --- training ---------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One AdamW update at learning rate `lr` (clipping, weight decay); returns the loss before it."""

    @abstractmethod
    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy in nats per token, no dropout, no update."""

    # --- inspection, for parity tests and checkpoints ----------------------------------------
    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """(B, T, vocab_size) float32 logits, no dropout."""

    @abstractmethod
    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and its gradient for every canonical parameter, in canonical layout, no update."""

    @abstractmethod
    def export_params(self) -> dict[str, np.ndarray]:
        """The current weights in canonical names and layouts."""

    @abstractmethod
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW state in canonical names: `adam_m.<param>`, `adam_v.<param>`, and `adam_count`."""

    @abstractmethod
    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `optimizer_state` returned (possibly from another framework)."""

    # --- generation --------------------------------------------------------------------------
    @abstractmethod
    def generate(self, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 use_cache: bool = True) -> list[int]:
        """New token ids after `prompt`; greedy when temperature is 0.

        Past block_size the context is cropped to the last block_size tokens, as with no cache.
        """

    # --- environment -------------------------------------------------------------------------
    @abstractmethod
    def device_info(self) -> dict:
        """{'framework_version', 'device' (cpu|gpu|tpu|mps), 'device_name', 'device_count'}."""

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory since the last reset; None where only host RSS applies (CPU)."""
        return None

    def reset_peak_memory(self) -> None:
        pass

    def close(self) -> None:
        """Release what outlives the object (a data-parallel process group); every process calls it."""

    def profile(self, log_dir: str):
        """A context manager writing the framework's own trace to log_dir."""
        import contextlib
        return contextlib.nullcontext()
