"""The one interface the harness knows of a framework, and the lazy loader that finds each one.

Each `<framework>_impl/backend.py` defines a `Backend` subclass. Nothing here imports a
deep-learning framework: a framework that is not installed only fails when it is asked for.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from common.config import GPTConfig, TrainConfig
from common.decode import DecodeConfig, DecodePlan, decode_plan
from common.errors import UserError
from common.quantize import check_quantize

# keras-jax is the Keras GPT of tensorflow_impl/ trained on Keras' JAX backend: an extra row, which
# also measures the Keras model on machines that have JAX but no TensorFlow.
FRAMEWORKS = ("pytorch", "tensorflow", "jax", "keras-jax")
ALIASES = {"torch": "pytorch", "pt": "pytorch", "keras": "tensorflow", "tf": "tensorflow",
           "flax": "jax"}
_MODULES = {"pytorch": ("torch",), "tensorflow": ("tensorflow", "keras"), "jax": ("jax", "flax", "optax"),
            "keras-jax": ("keras", "jax")}  # the Keras model, its loop and optimizer; JAX runs them
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


ACCELERATORS = ("gpu", "tpu")  # what --device auto takes, in this order, before the CPU


def visible_devices(framework: str, kind: str) -> list:
    """The devices of one kind ('cpu', 'gpu', 'tpu') that a framework's runtime sees, as its own
    device objects: [] where it sees none or never runs on that kind. The framework is imported here,
    when asked, so the launcher can ask before any Backend exists."""
    runtime = {"pytorch": _torch_devices, "tensorflow": _tensorflow_devices, "jax": _jax_devices,
               "keras-jax": _jax_devices}  # keras-jax places the Keras model on JAX's devices
    return runtime[canonical_framework(framework)](kind)


def _torch_devices(kind: str) -> list:
    import torch
    if kind == "cpu":
        return [torch.device("cpu")]
    if kind == "gpu" and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if kind == "gpu" and torch.backends.mps.is_available():  # Apple's GPU, where there is no CUDA
        return [torch.device("mps")]
    return []


def _tensorflow_devices(kind: str) -> list:
    import tensorflow as tf
    if kind not in ("cpu", "gpu"):
        return []
    return [f"/{kind.upper()}:{i}" for i in range(len(tf.config.list_physical_devices(kind.upper())))]


def _jax_devices(kind: str) -> list:
    import jax
    try:
        return jax.devices(kind)
    except RuntimeError:  # no backend for that platform
        return []


def device_memory_bytes(framework: str, device: str = "auto") -> int | None:
    """The memory of the first GPU or TPU that `--device device` gives the framework; None on a CPU,
    whose devices share the host's memory, and where the runtime does not say (TensorFlow)."""
    kinds = ACCELERATORS if device == "auto" else (device,) if device in ACCELERATORS else ()
    found = next((d for kind in kinds for d in visible_devices(framework, kind)), None)
    if found is None:
        return None
    framework = canonical_framework(framework)
    if framework == "pytorch" and found.type == "cuda":
        import torch
        return torch.cuda.get_device_properties(found).total_memory
    if framework in ("jax", "keras-jax"):
        return (found.memory_stats() or {}).get("bytes_limit")
    return None


def has_accelerator(framework: str, device: str = "auto") -> bool:
    """Whether `--device device` puts this framework on a GPU or TPU (presets differ on one)."""
    if device != "auto":
        return device in ACCELERATORS
    return any(visible_devices(framework, kind) for kind in ACCELERATORS)


def check_sampling(prompt: list[int], max_new_tokens: int, vocab_size: int, temperature: float,
                   top_k: int | None, top_p: float | None) -> None:
    """Refuse generation options no framework can honour, with the same sentence in every one."""
    if len(prompt) == 0:
        raise UserError("the prompt is empty: give at least one token to start from.")
    outside = [t for t in prompt if not 0 <= int(t) < vocab_size]
    if outside:
        raise UserError(f"prompt token {outside[0]} is outside the vocabulary: use ids from 0 to {vocab_size - 1}.")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be a whole number, 0 or more, got {max_new_tokens}.")
    if not temperature >= 0 or not math.isfinite(temperature):  # `not >=` also refuses nan
        raise UserError(f"temperature must be 0 (greedy) or a finite positive number, got {temperature}.")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise UserError(f"top_k must be a positive integer, got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be above 0 and at most 1, got {top_p}.")


def check_prompt(prompt: list[int], config: GPTConfig) -> None:
    """Refuse a prompt the model cannot read in one pass: empty, outside the vocabulary, or longer
    than its context."""
    if len(prompt) == 0:
        raise UserError("the prompt is empty: give at least one token.")
    outside = [t for t in prompt if not 0 <= int(t) < config.vocab_size]
    if outside:
        raise UserError(f"prompt token {outside[0]} is outside the vocabulary: use ids from 0 to "
                        f"{config.vocab_size - 1}.")
    if len(prompt) > config.block_size:
        raise UserError(f"the prompt has {len(prompt)} tokens, more than block_size {config.block_size}: "
                        f"shorten it.")


# XLA options for the decode loops compiled by jax.jit (JAX and keras-jax). Copy insertion with region
# analysis proves that the loop may write each layer's cache in place, where by default it copied
# the carried buffers at every step. Given to those programs alone: a training step does not change.
XLA_DECODE_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}

# Environment variables that change how fast the same code runs on the same machine: a run records
# those that are set (Backend.settings, in env.json), so that its figures say what they ran under.
TUNING_VARIABLES = ("XLA_FLAGS", "TF_XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TORCHINDUCTOR_FREEZING",
                    "TORCHINDUCTOR_MAX_AUTOTUNE")

SEED_LIMIT = 2**32  # a seed is one uint32 word of each framework's random key


def check_batch(prompts: list[list[int]], seeds: list[int]) -> None:
    """A batch decodes prompts of one length, each with a seed of its own."""
    if not prompts:
        raise UserError("no prompts to decode: give at least one.")
    if len({len(p) for p in prompts}) > 1:
        raise UserError("the prompts of one batch must have the same number of tokens: decode prompts of "
                        "different lengths in separate calls.")
    if len(seeds) != len(prompts):
        raise UserError(f"{len(prompts)} prompts need {len(prompts)} seeds, got {len(seeds)}.")
    outside = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if outside:
        raise UserError(f"seed {outside[0]} is out of range: use a whole number from 0 to {SEED_LIMIT - 1}.")


# The frameworks whose engine shards parameters, gradients and Adam's moments (--shard): FSDP2,
# jax.sharding, keras.distribution.ModelParallel.
SHARDING_FRAMEWORKS = ("pytorch", "jax", "keras-jax")


def check_shard(framework: str, shard: int, replicas: int = 1) -> None:
    """Refuse a --shard the framework's engine cannot run, in one line, before anything starts."""
    if shard < 1:
        raise UserError(f"--shard must be at least 1, got {shard}.")
    if shard > 1 and framework not in SHARDING_FRAMEWORKS:
        raise UserError(f"{framework} cannot shard a model: Keras 3 on TensorFlow has no parameter sharding "
                        f"(MirroredStrategy copies the model to every device), so use --replicas there, or "
                        f"--shard with pytorch, jax or keras-jax (the same Keras model).")
    if shard > 1 and replicas > 1:
        raise UserError(f"--shard {shard} already trains data-parallel over its {shard} devices: drop --replicas.")


def check_replica_split(batch_size: int, replicas: int) -> None:
    if batch_size % replicas:
        raise UserError(f"batch_size {batch_size} does not split over {replicas} devices: "
                        f"use a multiple of {replicas}.")


def micro_batches(x: np.ndarray, y: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A step's batch as its k micro-batches, consecutive equal slices of rows: micro-batch i of
    step s is a pure function of (seed, s, i), and with k = 1 the batch itself."""
    rows = len(x) // k
    return [(x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows]) for i in range(k)]


class Backend(ABC):
    """One GPT in one framework: built from canonical parameters, trained on numpy batches.

    Batches are numpy int32 arrays (B, T); parameters and gradients cross this boundary as
    dicts of float32 numpy arrays under the canonical names and layouts of common/params.py.
    What is the same in every framework (checking input, choosing the device, naming the optimizer
    state, the generation buffer) is written here once; a framework fills in the abstract methods.
    """

    name: ClassVar[str]
    runtime: ClassVar[str]                # the runtime as users know it, for messages: "PyTorch"
    device_kinds: ClassVar[dict[str, str]]  # the --device kinds it runs on -> how to get one
    rank: int = 0          # this process among the data-parallel processes; 0 writes the results
    world_size: int = 1    # data-parallel processes (PyTorch's DDP runs one per replica)
    compiles_decode: bool = True  # generate runs compiled programs (XLA always; PyTorch as it is told)
    quantized: str | None = None  # the weights' quantization (common/quantize.py); None: float32

    def __init__(self, config: GPTConfig, train: TrainConfig, params: dict[str, np.ndarray],
                 device: str = "auto", replicas: int = 1, shard: int = 1, decode: DecodeConfig | None = None):
        """`replicas` > 1 trains data-parallel: every replica gets an equal slice of each global batch;
        `shard` > 1 does too, and splits the parameters, gradients and Adam moments over those devices;
        `decode` says how generation runs (DecodeConfig: compiled or not), apart from training."""
        self.config = config
        self.train_config = train
        self.decode_config = decode or DecodeConfig()
        self.replicas = replicas
        self.shard = shard
        check_shard(self.name, shard, replicas)
        check_replica_split(train.batch_size, max(replicas, shard))
        self.device = self.resolve_device(device)
        self._build(params)

    @abstractmethod
    def _build(self, params: dict[str, np.ndarray]) -> None:
        """Build the model from canonical parameters, and its optimizer, on self.device."""

    @classmethod
    def resolve_device(cls, device: str):
        """The framework's device for --device: auto takes the first GPU or TPU it sees, else the CPU."""
        if device == "auto":
            found = [d for kind in ACCELERATORS if kind in cls.device_kinds for d in visible_devices(cls.name, kind)]
            return (found or visible_devices(cls.name, "cpu"))[0]
        if device not in cls.device_kinds:
            *others, last = ("auto", *cls.device_kinds)
            raise UserError(f"{cls.runtime} cannot run on device {device!r}: use --device {', '.join(others)} "
                            f"or {last}.")
        found = visible_devices(cls.name, device)
        if not found:
            raise UserError(f"no {device.upper()} is visible to {cls.runtime}: use --device cpu, or "
                            f"{cls.device_kinds[device]}.")
        return found[0]

    # --- training ---------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One AdamW update at learning rate `lr` (clipping, weight decay); returns the loss before it.

        x and y are the step's whole batch, grad_accum * batch_size rows: the update is the one a
        single batch of them makes (the gradient of their mean loss, clipped once), computed one
        micro-batch of batch_size rows at a time (micro_batches); the loss is their mean.
        """

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

    def inspect(self, prompt: list[int]) -> dict[str, np.ndarray]:
        """What the model computes on one prompt, layer by layer (benchmarks/explain.py), no dropout:
        float32 arrays `logits` (T, vocab_size), `attention` (n_layer, n_head, T, T), the weights of
        each query (row) over the keys (columns), and `norms` (n_layer, 3, T): per position, the L2
        norm of the residual stream entering each block and of the block's attention and MLP updates.
        The weights come from each model's own attention (its `record` option)."""
        check_prompt(prompt, self.config)
        logits, attention, norms = self._inspect(np.asarray([prompt], dtype=np.int32))
        return {"logits": np.asarray(logits, np.float32)[0], "attention": np.asarray(attention, np.float32)[:, 0],
                "norms": np.asarray(norms, np.float32)[:, :, 0]}

    def _inspect(self, ids: np.ndarray) -> tuple:
        """(1, T) int32 ids -> logits (1, T, vocab_size), attention (n_layer, 1, nh, T, T) and norms
        (n_layer, 3, 1, T), as the framework's arrays: the model file's `inspect` on the eval model."""
        raise NotImplementedError(f"{self.runtime} cannot inspect its model yet.")

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW state in canonical names: `adam_m.<param>`, `adam_v.<param>`, and `adam_count`."""
        m, v, count = self._adam_moments()
        return {**{f"adam_m.{n}": a for n, a in m.items()}, **{f"adam_v.{n}": a for n, a in v.items()},
                "adam_count": np.array(int(count), dtype=np.int64)}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `optimizer_state` returned (possibly from another framework)."""
        m, v = ({k.split(".", 1)[1]: a for k, a in state.items() if k.startswith(f"{prefix}.")}
                for prefix in ("adam_m", "adam_v"))
        self._load_adam_moments(m, v, int(state["adam_count"]))

    @abstractmethod
    def _adam_moments(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """Adam's first and second moments as float32 arrays under canonical names and layouts
        (zeros before the first step), and its step count."""

    @abstractmethod
    def _load_adam_moments(self, m: dict[str, np.ndarray], v: dict[str, np.ndarray], count: int) -> None:
        """Set what `_adam_moments` returns; the count drives Adam's bias correction."""

    # --- generation --------------------------------------------------------------------------
    def generate(self, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 use_cache: bool = True) -> list[int]:
        """New token ids after `prompt`; greedy when temperature is 0. The batch of one.

        Past block_size the context is cropped to the last block_size tokens, as with no cache.
        """
        return self.generate_batch([prompt], max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                   seeds=[seed], use_cache=use_cache)[0]

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, seeds: list[int] | None = None,
                       use_cache: bool = True) -> list[list[int]]:
        """New token ids after each of several prompts of one length, decoded together as one batch.

        Row i samples from its own stream, seeds[i] (default i), keyed by position: its tokens are
        the same whether it is decoded alone or beside others, in one call or continued in pieces.
        """
        seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
        check_batch(prompts, seeds)
        for prompt in prompts:
            check_sampling(prompt, max_new_tokens, self.config.vocab_size, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return [[] for _ in prompts]
        plan = decode_plan(len(prompts[0]), int(max_new_tokens), self.config.block_size, self.config.vocab_size,
                           float(temperature), top_k, top_p, use_cache)
        new = self._generate(self._token_buffer(np.asarray(prompts, dtype=np.int32), plan),
                             np.asarray(seeds, dtype=np.uint32), plan)
        return np.asarray(new)[:, plan.prompt_len:plan.prompt_len + plan.max_new_tokens].tolist()

    def generate_chunks(self, prompts: list[list[int]], max_new_tokens: int, chunk_tokens: int = 32, **options):
        """`generate_batch` in pieces of chunk_tokens, each call continuing from the last, yielding each
        piece as a (B, n) array: for streaming and for stopping early. The tokens are those of one call."""
        context = np.asarray(prompts, dtype=np.int32)
        for done in range(0, max_new_tokens, chunk_tokens):
            new = np.asarray(self.generate_batch(context.tolist(), min(chunk_tokens, max_new_tokens - done),
                                                 **options), dtype=np.int32)
            context = np.concatenate([context, new], axis=1)
            yield new

    @abstractmethod
    def _generate(self, tokens: np.ndarray, seeds: np.ndarray, plan: DecodePlan):
        """Fill the (B, plan.buffer_len) int32 token buffer after its prompts (tokens[:, :plan.prompt_len])
        with plan.max_new_tokens new ids, as the plan says, row b from the stream of seeds[b] (uint32);
        returns the buffer, in any array type numpy reads."""

    @staticmethod
    def _token_buffer(prompts: np.ndarray, plan: DecodePlan) -> np.ndarray:
        """A (B, plan.buffer_len) int32 buffer holding the prompts, for a compiled loop to fill in place;
        its length is the only one the loop compiles for (with the batch size)."""
        tokens = np.zeros((len(prompts), plan.buffer_len), dtype=np.int32)
        tokens[:, :plan.prompt_len] = prompts
        return tokens

    # --- quantized inference ---------------------------------------------------------------
    def quantize(self, mode: str) -> None:
        """Quantize the model's weights in place with the framework's own tool, for inference: generate,
        logits and eval_loss then compute with them, and export_params gives them dequantized. Weight-only
        (common/quantize.py): activations stay in float. Once only; a quantized model does not train."""
        check_quantize(mode, self.config.n_embd)
        if self.quantized:
            raise UserError(f"the model is already quantized ({self.quantized}): build a new backend from "
                            f"float weights to quantize it another way.")
        if self.replicas > 1 or self.shard > 1:
            raise UserError("quantized inference runs on one device: use --replicas 1 and --shard 1.")
        self._quantize(mode)
        self.quantized = mode

    def _quantize(self, mode: str) -> None:
        raise UserError(f"{self.runtime} cannot quantize its model yet: leave --quantize out.")

    def state_bytes(self) -> dict[str, int] | None:
        """What one device holds of the training state, measured from its arrays (its shards, when
        sharded): {"params", "grads", "adam"} in bytes; None where a backend does not measure it."""
        return None

    def serve(self) -> None:
        """Another process of a sharded model: make rank 0's calls with it until it closes."""
        raise NotImplementedError(f"{self.runtime} shards within one process.")

    # --- environment -------------------------------------------------------------------------
    @abstractmethod
    def device_info(self) -> dict:
        """{'framework_version', 'device' (cpu|gpu|tpu|mps), 'device_name', 'device_count'}."""

    def settings(self) -> dict:
        """What this backend runs under, beyond its config, that changes its speed: the tuning
        variables set in the environment, and the options each framework compiles with."""
        return {name: os.environ[name] for name in TUNING_VARIABLES if name in os.environ}

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
