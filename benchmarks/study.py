"""Side-by-side code study: the one GPT in PyTorch, Keras 3 and Flax NNX, in the order data flows.

    python -m benchmarks.study [--out study] [--screenshot]

Writes `study/index.html` (self-contained: inline CSS, no scripts, no external assets; three columns
PyTorch | Keras 3 / TensorFlow | Flax NNX / JAX, highlighted by Pygments) and `study/index.md`.

Every code cell is cut from the live source by symbol, `module:Qualified.name` (a bare module name
means the whole file), with `ast`, so the page builds without any framework installed and cannot
drift from the code: tests/test_study.py compares each cell with `inspect.getsource` wherever the
framework imports, and fails when a section's symbol is missing in any framework. A symbol that is
missing is shown as such on the page and makes this command exit with status 1.

Checking the page in a real browser
-----------------------------------
Install Debian's Chromium (`apt-get update && apt-get install -y chromium`), then

    python -m benchmarks.study --screenshot

renders the page headless and writes `study/screenshot.png` (1600x3000, down to the first
three-column section): look at it. The test
`test_page_renders_in_headless_chromium` loads the page in the same browser with `--dump-dom` and
checks every section's columns in the DOM the browser built; it skips when Chromium is not installed,
while `test_html_structure` checks the same structure with html.parser everywhere.
"""
from __future__ import annotations

import argparse
import ast
import html
import inspect
import io
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("pytorch", "tensorflow", "jax")
TITLES = {"pytorch": "PyTorch", "tensorflow": "Keras 3 / TensorFlow", "jax": "Flax NNX / JAX",
          "common": "common/, shared by all three"}
FILES = ("model.py", "train.py", "generate.py", "backend.py", "parallel.py")  # mirrored in every framework
PYGMENTS_STYLE = "friendly"
SCREENSHOT_SIZE = "1600,3000"  # tall enough to reach the first three-column section


@dataclass(frozen=True)
class Section:
    """One step of the data flow: the code that implements it in each framework, and what differs."""
    slug: str
    title: str
    notes: tuple[str, ...]               # bullets; `code` in backticks
    shared: tuple[str, ...] = ()         # common/ symbols, shown once across all three columns
    pytorch: tuple[str, ...] = ()
    tensorflow: tuple[str, ...] = ()
    jax: tuple[str, ...] = ()
    focus: str | None = None             # regex of the lines this section is about, highlighted
    focus_on: str = ""                   # what the highlighted lines show, said under the title
    optional: bool = False               # a feature still to come: a note instead of a failure

    def symbols(self, column: str) -> tuple[str, ...]:
        return self.shared if column == "common" else getattr(self, column)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f for f in FRAMEWORKS if self.symbols(f))


SECTIONS: tuple[Section, ...] = (
    Section(
        "config", "Config and presets",
        shared=("common.spec", "common.config:GPTConfig", "common.config:_tiny", "common.config:_cpu_baby",
                "common.config:_shakespeare_char"),
        notes=(
            "One frozen dataclass configures all three models; every framework reads the same field "
            "names (`n_layer`, `n_head`, `n_embd`, `bias`, ...), so a preset means the same network everywhere.",
            "`common/spec.py` pins every default on which the frameworks disagree: LayerNorm epsilon "
            "(torch 1e-5, Keras 1e-3, Flax NNX 1e-6), GELU (torch exact, `jax.nn.gelu` and "
            "`keras.ops.gelu` tanh by default) and Adam's epsilon (torch and Optax 1e-8, Keras 1e-7). "
            "The models read `config.layer_norm_eps` and `config.gelu_approximate`, whose defaults are the spec's "
            "(`LAYER_NORM_EPS`, `GELU_APPROXIMATE`; GPT-2's own folders set the tanh form), rather than trust a "
            "library default; "
            "Adam's epsilon reaches every optimizer explicitly as `TrainConfig.eps`.",
            "Keras alone needs the config to round-trip through JSON: its layers implement `get_config` and "
            "turn the dict back into a `GPTConfig` (`_gpt_config`), so a saved `.keras` model can be rebuilt.",
        )),
    Section(
        "data", "Data and tokenizer",
        shared=("common.data:split_text", "common.tokenizers:CharTokenizer.train",
                "common.tokenizers:CharTokenizer.encode", "common.data:get_batch", "common.data:_batch"),
        notes=(
            "Nothing here imports a deep-learning framework: text becomes numpy `int32` arrays of shape "
            "(B, T), and batch `step` of run `seed` is a pure function of the two, so every framework trains "
            "on exactly the same batches and a run can be replayed without saving RNG state.",
            "`y` is `x` shifted by one token: position t is trained to predict token t+1.",
            "Each backend converts the arrays at its boundary: PyTorch casts to `int64` because "
            "`F.cross_entropy` rejects `int32` targets; Keras and JAX take `int32` as is.",
        )),
    Section(
        "embedding", "Token and position embedding",
        pytorch=("pytorch_impl.model:GPT.__init__",),
        tensorflow=("tensorflow_impl.model:GPT.__init__", "tensorflow_impl.model:GPT.build"),
        jax=("jax_impl.model:GPT.__init__",),
        focus=r"\b(wte|wpe)\b", focus_on="the token and position tables",
        notes=(
            "Two lookup tables of shape (vocab_size, C) and (block_size, C) in every framework "
            "(`nn.Embedding.weight`, Keras `Embedding.embeddings`, `nnx.Embed.embedding`); the model adds "
            "`wte[idx] + wpe[pos]`, see the full model below.",
            "The token table doubles as the output layer (weight tying), each framework in its own idiom: "
            "torch keeps no `lm_head` and calls `F.linear(x, wte.weight)`, Keras uses "
            "`ReversibleEmbedding(tie_weights=True)` and `wte(x, reverse=True)`, Flax calls `wte.attend(x)`.",
            "Randomness at construction: torch and Keras draw initial weights from global or layer-owned "
            "seeds, Flax NNX takes an explicit `rngs=nnx.Rngs(...)` argument that every submodule draws from. "
            "Here all three initialisations are thrown away: `load_canonical` overwrites them with "
            "`common.params.init_params`, so the frameworks start from identical weights.",
            "Keras creates weights lazily on the first call (shape inference); `GPT.build` creates them "
            "up front so canonical weights can be assigned before the model ever runs. torch and NNX "
            "allocate in the constructor, so they need no `build`.",
        )),
    Section(
        "attention", "Causal self-attention",
        pytorch=("pytorch_impl.model:CausalSelfAttention",),
        tensorflow=("tensorflow_impl.model:CausalSelfAttention",),
        jax=("jax_impl.model:CausalSelfAttention",),
        focus=r"scaled_dot_product_attention|softmax|\bmask\b|visible", focus_on="masking and softmax",
        notes=(
            "Same dataflow everywhere: one `c_attn` projection to q, k, v (C wide each), heads split "
            "(B, T, C) -> (B, nh, T, hs), scores `q @ k.T / sqrt(hs)`, causal mask, softmax, dropout on the "
            "weights, heads merged, `c_proj`.",
            "Keras applies both projections to the tokens as rows of one (B*T, C) matrix, as its and JAX's MLPs "
            "do: a layout choice for XLA:CPU, whose backward otherwise computed the weight "
            "gradients from transposed copies (the comment in `call` has the measurement).",
            "PyTorch calls the fused `F.scaled_dot_product_attention` (causal, or the cache's mask), which may pick a "
            "flash or memory-efficient kernel; Keras and JAX write the softmax out, because neither "
            "`keras.ops.dot_product_attention` nor `jax.nn.dot_product_attention` applies dropout to the "
            "attention weights.",
            "The mask: all three attend over the whole fixed-size cache and mask by absolute position "
            "(`key_pos <= query_pos`), which is the causal mask without a cache and also hides the slots "
            "not written yet; one shape at every step is what lets a decode step compile once.",
            "Asked to record (`record = True`, for benchmarks/explain.py), each attention writes its weights "
            "out as softmax(q k^T / sqrt(hs)) and keeps them: NNX sows them as an `nnx.Intermediate`, torch "
            "and Keras keep an attribute; the fused torch call cannot return them.",
            "Train/eval mode: torch reads `self.training` (set by `model.train()`/`eval()`), Keras passes "
            "`training=` down every `call`, NNX's `Dropout` holds a `deterministic` flag and its own fork of "
            "the `dropout` RNG stream of the `nnx.Rngs` it was built with.",
            "`nn.Linear` stores its weight [out, in]; Keras `Dense` and `nnx.Linear` store [in, out], the "
            "canonical layout. Only the torch loader transposes (see the loading section).",
        )),
    Section(
        "mlp", "MLP (feed-forward)",
        pytorch=("pytorch_impl.model:MLP",),
        tensorflow=("tensorflow_impl.model:gelu", "tensorflow_impl.model:MLP"),
        jax=("jax_impl.model:gelu", "jax_impl.model:MLP"),
        focus=r"gelu|GELU", focus_on="the GELU and its approximation flag",
        notes=(
            "Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout, applied to every position independently.",
            "GELU defaults differ: `nn.GELU()` is the exact erf form, `keras.ops.gelu` and `jax.nn.gelu` "
            "(`nnx.gelu`) default to the tanh approximation. The two differ by up to 4.7e-4 (at x = 2.7), far "
            "more than the 1e-5 parity bound, so every model follows `config.gelu_approximate` (False by "
            "default, True for GPT-2's `gelu_new`): torch passes it to its GELU, and the Keras and JAX models write the exact form with `erf` themselves (their "
            "`gelu` docstrings say why: the libraries' exact paths go through `erfc`, slower on XLA:CPU).",
            "Keras needs an explicit `build` with the hidden width, and `get_config` for serialisation: "
            "the price of its lazy shapes and saving format, visible in the line counts.",
        )),
    Section(
        "block", "Transformer block",
        pytorch=("pytorch_impl.model:Block",),
        tensorflow=("tensorflow_impl.model:_layer_norm", "tensorflow_impl.model:Block"),
        jax=("jax_impl.model:Block",),
        focus=r"LayerNorm|LAYER_NORM_EPS|epsilon", focus_on="LayerNorm and its epsilon",
        notes=(
            "Pre-LayerNorm residual block: `x = x + attn(ln_1(x))`, then `x = x + mlp(ln_2(x))`.",
            "LayerNorm epsilon defaults are 1e-5 (torch), 1e-3 (Keras) and 1e-6 (Flax NNX). The difference is "
            "not academic: at initialisation the embeddings have variance about 2 x 0.02² = 8e-4, smaller than "
            "Keras' 1e-3, so a default Keras LayerNorm would scale its output by sqrt(8e-4 / 1.8e-3) ≈ 0.67 "
            "where torch gives 0.99. All three pass `config.layer_norm_eps` (the spec's 1e-5 unless a GPT-2 "
            "folder says otherwise).",
            "The optional bias is `bias=` in torch, `center=` in Keras (whose gain and bias are `gamma` and "
            "`beta`) and `use_bias=` in NNX (`scale` and `bias`).",
            "The Keras and JAX blocks always return `(x, cache)`: their cache is an immutable value that "
            "must come back, `None` when there is none. torch's cache is filled in place, so its block "
            "returns just `x`.",
        )),
    Section(
        "model", "The full model and the loss",
        pytorch=("pytorch_impl.model:GPT.forward", "pytorch_impl.model:cross_entropy"),
        tensorflow=("tensorflow_impl.model:GPT.call", "tensorflow_impl.model:GPT.compute_loss",
                    "tensorflow_impl.model:cross_entropy"),
        jax=("jax_impl.model:GPT.__call__", "jax_impl.model:embed_tokens", "jax_impl.model:cross_entropy"),
        focus=r"cross_entropy|Crossentropy|ignore|IGNORE", focus_on="the loss",
        notes=(
            "Embeddings, `n_layer` blocks, final LayerNorm, then logits through the tied token table: "
            "(B, T) ids -> (B, T, vocab_size) logits.",
            "One calling contract everywhere: `GPT(idx, cache=None) -> (logits, cache)` serves training, "
            "prefill and decoding, and the loss is a separate `cross_entropy(logits, targets)`: the mean over "
            "targets that are not `LOSS_IGNORE_INDEX`. Keras' own compiled train step hands the model's whole "
            "result to `compute_loss`, which the Keras GPT overrides to take the logits out of the pair; its "
            "`cross_entropy` is a Keras loss object (`SparseCategoricalCrossentropy(from_logits=True, "
            "ignore_class=-1)`), which scales each replica's share under `tf.distribute`.",
            "Optax's loss takes no ignore index and returns one value per position, so the JAX "
            "`cross_entropy` masks and divides by the number of valid targets itself; it also computes in "
            "float32 whatever the compute dtype, as Keras does with "
            "`dtype=\"float32\"` and torch's autocast does for `cross_entropy`.",
            "The JAX model looks up a small vocabulary's tokens as `one_hot(idx) @ wte` (`embed_tokens`): the "
            "same values, but a gradient that is a dense matmul instead of `jnp.take`'s scatter-add, which on "
            "a GPU serialised on the most frequent characters (31 ms a shakespeare-char step on an H100, "
            "9.3 ms one-hot); torch's embedding backward shows no such cost there (11.5 ms a step, eager). "
            "The Keras model keeps its lookup: on the 2-core CPU the one-hot form slowed keras-jax's step "
            "from 48 to 56 ms, and its GPU gain was measured for JAX only.",
        )),
    Section(
        "weights", "Loading canonical weights",
        shared=("common.params:param_shapes", "common.params:init_params"),
        pytorch=("pytorch_impl.model:_canonical_name", "pytorch_impl.model:_is_linear_kernel",
                 "pytorch_impl.model:load_canonical", "pytorch_impl.model:to_canonical"),
        tensorflow=("tensorflow_impl.model:_canonical_name", "tensorflow_impl.model:canonical_variables",
                    "tensorflow_impl.model:load_canonical",
                    "tensorflow_impl.model:to_canonical"),
        jax=("jax_impl.model:canonical_name", "jax_impl.model:to_canonical",
             "jax_impl.model:from_canonical_like", "jax_impl.model:load_canonical"),
        focus=r"\.T\b", focus_on="the transpose only PyTorch needs",
        notes=(
            "Parity starts here: one numpy initialisation (`init_params`) under GPT-2 names with dense "
            "kernels stored [in, out]; each framework maps its own names onto it. Gradients, Adam moments and "
            "checkpoints cross the same bridge, so they compare array for array.",
            "torch's parameter names already are the canonical ones (less `.weight` on the embeddings); its "
            "only real work is the transpose, because `nn.Linear.weight` is [out, in]. Keras and NNX "
            "store [in, out] and only rename: Keras `kernel`/`gamma`/`beta`, NNX `kernel`/`scale`/`embedding`.",
            "Writing into a live model is also a style marker: torch copies into parameters under "
            "`torch.no_grad()`, Keras `assign`s into variables, NNX builds a new state pytree and "
            "`nnx.update`s the model with it.",
        )),
    Section(
        "optimizer", "Optimizer and learning-rate schedule",
        shared=("common.config:TrainConfig", "common.schedule:learning_rate", "common.params:decays"),
        pytorch=("pytorch_impl.train:configure_optimizer",),
        tensorflow=("tensorflow_impl.train:AdamW", "tensorflow_impl.train:configure_optimizer"),
        jax=("jax_impl.train:_decay_mask", "jax_impl.train:clip_by_global_norm", "jax_impl.train:transformation",
             "jax_impl.train:configure_optimizer"),
        focus=r"\beps\b|epsilon|weight_decay|decays\(", focus_on="Adam's epsilon and the weight-decay selection",
        notes=(
            "AdamW with decoupled weight decay on matrices and embeddings only, global-norm clipping, and "
            "the schedule computed in Python by `common.schedule.learning_rate` and handed in every step.",
            "Stateful vs functional: `torch.optim.AdamW` keeps moments in `optimizer.state[param]` and "
            "updates `.grad`-carrying tensors in place; Keras' optimizer owns moment variables and `assign`s "
            "into the model's variables; Optax is pure — `tx.update(grads, state, params)` returns new updates "
            "and a new state — and `nnx.Optimizer` wraps it so it looks stateful again.",
            "Weight decay selection: torch uses two parameter groups, Keras "
            "`exclude_from_weight_decay(var_list=...)`, Optax a `mask=` tree of booleans (`_decay_mask`).",
            "Adam's epsilon: Keras defaults to 1e-7 and, more subtly, adds it before the bias correction "
            "(it folds sqrt(1 - beta2^t) into the step size), which acts like an epsilon 1/sqrt(1 - beta2^t) "
            "times larger: 10x at step 1 with beta2 = 0.99. The Keras `AdamW` here overrides `update_step` to "
            "add epsilon where torch and Optax do.",
            "Clipping: torch scales by max_norm / (norm + 1e-6), Keras' `global_clipnorm` by max_norm / norm "
            "(a difference below 1e-6 relative). The JAX row writes its clip as torch's product "
            "(`optax.stateless`) rather than Optax's `clip_by_global_norm`, whose select between each "
            "gradient and its scaled copy XLA:CPU writes out as a pass of its own.",
            "Changing the rate without recompiling: torch writes `group[\"lr\"]`, Keras assigns "
            "`optimizer.learning_rate` (a variable the compiled step reads), Optax needs "
            "`inject_hyperparams` to turn the rate into optimizer state.",
        )),
    Section(
        "train-step", "One training step",
        pytorch=("pytorch_impl.train:train_step", "pytorch_impl.backend:Backend.train_step",
                 "pytorch_impl.backend:Backend.loss_and_grads"),
        tensorflow=("tensorflow_impl.train:compile_model", "tensorflow_impl.train:train_step",
                    "tensorflow_impl.backend:Backend.train_step",
                    "tensorflow_impl.backend:Backend._loss_and_grads_fn"),
        jax=("jax_impl.train:loss_fn", "jax_impl.train:StaticGraph", "jax_impl.train:train_step",
             "jax_impl.backend:Backend.train_step", "jax_impl.backend:_loss_and_grads"),
        focus=r"backward|GradientTape|tape\.|value_and_grad|train_on_batch",
        focus_on="where the gradients are computed",
        notes=(
            "Autograd tape vs functional gradients: torch records the forward pass as it runs and "
            "`loss.backward()` leaves a gradient in each parameter's `.grad`; TensorFlow records on an explicit "
            "`tf.GradientTape` and `tape.gradient` returns a list (Keras' `train_on_batch` does this inside); "
            "JAX transforms a function: `nnx.value_and_grad(loss_fn)(model, x, y)` returns the gradients as a "
            "new state pytree shaped like the parameters, and nothing is stored on the model.",
            "Compilation: PyTorch runs eagerly, op by op, unless `--compile` wraps the model in "
            "`torch.compile` (the optimizer step stays eager). Keras compiles its own train step into one XLA "
            "program with `model.compile(jit_compile=True)`. JAX traces `train_step` once per input shape with "
            "`jax.jit`; the model and optimizer enter it split into a static graph and a flat list of arrays "
            "(`StaticGraph`), and the optimizer update is inside the compiled program too.",
            "Who owns the state: torch and Keras mutate the model and optimizer in place; the JAX backend "
            "keeps them split and gets a new state back from every step (`donate_argnums` lets XLA reuse the "
            "old buffers). `train_step`'s docstring gives the reason: `nnx.jit` on the objects cost 10-20 ms "
            "of Python a step on 2 CPU cores.",
            "Each step returns the loss before the update; reading it (`.item()`, `float()`) is what waits for "
            "the device.",
        )),
    Section(
        "generation", "KV-cache generation and sampling",
        shared=("common.sampling:filter_logits", "common.sampling:cut_at_stop", "common.backend:Backend.generate_batch",
                "common.decode:DecodePlan", "common.decode:window_schedule", "common.decode:decode_loop",
                "common.decode:filter_logits"),
        pytorch=("pytorch_impl.model:KVCache", "pytorch_impl.generate:sample_next", "pytorch_impl.generate:prefill",
                 "pytorch_impl.generate:decode_one_token", "pytorch_impl.generate:compile_options",
                 "pytorch_impl.generate:compiled_steps",
                 "pytorch_impl.generate:generate", "pytorch_impl.backend:Backend._generate"),
        tensorflow=("tensorflow_impl.model:KVCache", "tensorflow_impl.generate:sample_next",
                    "tensorflow_impl.generate:compiled_generate", "tensorflow_impl.backend:Backend._generate"),
        jax=("jax_impl.model:KVCache", "jax_impl.generate:sample_next",
             "jax_impl.generate:generate", "jax_impl.backend:Backend._generate"),
        focus=r"\bseed\b|\bkey\b|Generator|stateless|fold_in|multinomial|categorical",
        focus_on="where randomness enters",
        notes=(
            "The cache keeps every layer's keys and values so each new token costs one position, not a "
            "full forward pass. torch's `KVCache` is a mutable object of fixed-size (block_size) tensors "
            "written in place at a position held in a tensor, as in gpt-fast, so `torch.compile` (with "
            "`--compile`) compiles each decode step once; Keras' and JAX's are immutable NamedTuples of "
            "fixed-size arrays that come back updated, so the whole loop compiles (`keras.ops.fori_loop`, "
            "`jax.lax.fori_loop`) with static shapes. That loop is written once, `common.decode:decode_loop`, "
            "over a few primitives each hands in (`LOOP_OPS`, in `jax.lax` or `keras.ops`); the Keras one serves both "
            "of Keras' backends, and only the random draw is the backend's own.",
            "Past block_size all three drop the cache and run the last block_size tokens: with learned "
            "absolute positions every token's position changes when the window slides.",
            "Explicit RNG: torch draws from a seeded `torch.Generator` object that advances as it is used; "
            "Keras and JAX derive a fresh key per token from the seed and the position "
            "(`tf.random.experimental.stateless_fold_in`, `jax.random.fold_in`) and sample statelessly "
            "(`tf.random.stateless_categorical`, `jax.random.categorical`). The same seed therefore gives "
            "different samples in each framework; the parity tests compare greedy decoding (temperature 0).",
            "PyTorch's loop is plain Python, one eager model call per token, appending with `torch.cat`; "
            "Keras and JAX write into a preallocated token buffer so the loop has one shape to compile.",
            "Temperature, top-k and top-p follow the numpy reference `common.sampling.filter_logits` in each "
            "framework: Keras and JAX share `common.decode:filter_logits` (over `FILTER_OPS`), PyTorch filters "
            "inside its own `sample_next`; stop strings are applied to decoded text afterwards (`cut_at_stop`), "
            "outside the compiled loop.",
            "What is the same in every framework is written once, in `common.backend:Backend.generate_batch`: "
            "the options are checked there with one message each, and a frozen `DecodePlan` made there (prompt "
            "length, token buffer, prefill window, sampling form) is passed down; each framework fills only "
            "`_generate`, for a batch of prompts each with its own seed.",
        )),
    Section(
        "data-parallel", "Data-parallel training",
        pytorch=("pytorch_impl.parallel",), tensorflow=("tensorflow_impl.parallel",), jax=("jax_impl.parallel",),
        optional=True,
        notes=(
            "Each replica computes gradients on its slice of the batch; the gradients are averaged across "
            "replicas before one identical optimizer step everywhere, so the result is the single-device "
            "step on the whole batch.",
            "PyTorch: `torchrun` starts one process per replica (`benchmarks.run --replicas N`); every "
            "process draws the same global batch from the common stream and keeps its own rows (`shard`), "
            "and `DistributedDataParallel` all-reduces the gradients during `backward()`, over NCCL "
            "between GPUs or gloo between CPU processes.",
        )),
)


# --- extraction -----------------------------------------------------------------------------

class SymbolNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Snippet:
    symbol: str       # "pytorch_impl.model:GPT.forward", or a bare module for the whole file
    path: str         # relative to the repository root, with forward slashes
    first_line: int   # 1-based, in the file
    last_line: int
    code: str         # dedented: a method reads like a function

    @property
    def name(self) -> str:
        return self.symbol.partition(":")[2] or Path(self.path).name

    @property
    def lines(self) -> int:
        return code_lines(self.code)


def module_path(module: str) -> Path:
    return REPO / (module.replace(".", "/") + ".py")


def _find(body: list[ast.stmt], name: str) -> ast.AST | None:
    # The last definition wins, as at import time.
    found = None
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            found = node
    return found


def extract(symbol: str) -> Snippet:
    """The source of `module:Qualified.name` as inspect.getsource gives it (decorators included)."""
    module, _, qualname = symbol.partition(":")
    path = module_path(module)
    if not path.is_file():
        raise SymbolNotFound(f"{symbol}: no file {path.relative_to(REPO)}")
    text = path.read_text(encoding="utf-8")
    relative = path.relative_to(REPO).as_posix()
    lines = text.splitlines(keepends=True)
    if not qualname:
        return Snippet(symbol, relative, 1, len(lines), textwrap.dedent(text))
    node: ast.AST = ast.parse(text, filename=relative)
    for part in qualname.split("."):
        node = _find(getattr(node, "body", []), part)
        if node is None:
            raise SymbolNotFound(f"{symbol}: no {part!r} in {relative}")
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    # inspect's own block finder, not node.end_lineno: it also takes the comments that close a body.
    block = inspect.getblock(lines[first - 1:])
    return Snippet(symbol, relative, first, first + len(block) - 1, textwrap.dedent("".join(block)))


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, and not part of a docstring."""
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    code: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


@dataclass(frozen=True)
class Cell:
    column: str                        # "common" or a framework
    snippets: tuple[Snippet, ...]
    missing: tuple[str, ...]           # symbols not found, each with the reason

    @property
    def lines(self) -> int:
        return sum(s.lines for s in self.snippets)


def build_cells(section: Section) -> dict[str, Cell]:
    cells = {}
    for column in ("common", *FRAMEWORKS):
        snippets, missing = [], []
        for symbol in section.symbols(column):
            try:
                snippets.append(extract(symbol))
            except SymbolNotFound as e:
                missing.append(str(e))
        if snippets or missing:
            cells[column] = Cell(column, tuple(snippets), tuple(missing))
    return cells


def implemented(section: Section, cells: dict[str, Cell]) -> bool:
    """An optional section shows once any framework has its symbols; a required one always does."""
    return not section.optional or any(cells[f].snippets for f in section.columns)


def file_lines() -> dict[str, dict[str, int | None]]:
    """Code lines of each mirrored file per framework; None where the file does not exist."""
    table: dict[str, dict[str, int | None]] = {}
    for name in FILES:
        table[name] = {}
        for framework in FRAMEWORKS:
            path = REPO / f"{framework}_impl" / name
            table[name][framework] = code_lines(path.read_text(encoding="utf-8")) if path.is_file() else None
    return table


def common_lines() -> int:
    return sum(code_lines(p.read_text(encoding="utf-8")) for p in sorted((REPO / "common").glob("*.py")))


# --- HTML -----------------------------------------------------------------------------------

CSS = """
:root { --border: #d8dde3; --muted: #5b6670; --focus: #fff4c2; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; }
header.page, main { padding: 0 20px; }
h1 { font-size: 26px; margin: 18px 0 6px; }
h2 { font-size: 21px; margin: 0; padding: 10px 0 6px; border-bottom: 2px solid #1f2328; }
h2 .num { color: var(--muted); margin-right: 6px; }
p, li { max-width: 1100px; }
code { font: 13px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; background: var(--bg); padding: 0 3px;
       border-radius: 3px; }
a { color: #0b5cad; }
table.counts { border-collapse: collapse; margin: 8px 24px 8px 0; display: inline-table; vertical-align: top; }
table.counts th, table.counts td { border: 1px solid var(--border); padding: 2px 10px; text-align: right; }
table.counts th:first-child, table.counts td:first-child { text-align: left; }
table.counts thead th { background: var(--bg); }
.colheads, .columns { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 12px; }
.colheads { position: sticky; top: 0; z-index: 2; background: #fff; padding: 6px 20px;
            border-bottom: 1px solid var(--border); font-weight: 600; }
.colheads div { padding: 2px 8px; border-radius: 4px; color: #fff; }
.c-pytorch { background: #c63c1f; } .c-tensorflow { background: #b35f00; } .c-jax { background: #2f6fd6; }
section.study { margin: 26px 0 10px; }
.shared { margin: 10px 0; }
/* Shared code spans the page: two columns of snippets rather than one narrow one. */
.shared .figs { columns: 2; column-gap: 0; column-rule: 1px solid var(--border); }
.shared figure { break-inside: avoid; }
.columns { margin: 10px 0; align-items: start; }
.cell { border: 1px solid var(--border); border-radius: 6px; overflow: hidden; min-width: 0; }
.cell > h3 { margin: 0; font-size: 14px; padding: 4px 10px; color: #fff; display: flex;
             justify-content: space-between; }
.cell.common > h3 { background: #4b5563; }
figure { margin: 0; border-top: 1px solid var(--border); }
figcaption { font-size: 12.5px; padding: 3px 10px; background: var(--bg); color: var(--muted);
             display: flex; justify-content: space-between; gap: 8px; }
figcaption code { background: none; padding: 0; color: #1f2328; font-weight: 600; }
.highlight pre { margin: 0; padding: 6px 0; font: 12.5px/1.45 "DejaVu Sans Mono", Menlo, Consolas, monospace; }
/* One block per source line. A long line wraps with a hanging indent: 4 columns deeper than its own
   indentation (--i), past the 5-column gutter of line numbers. */
.highlight pre > .ln { display: block; white-space: pre-wrap; overflow-wrap: anywhere; padding-right: 8px;
                       padding-left: calc((var(--i, 0) + 9) * 1ch); text-indent: calc((var(--i, 0) + 9) * -1ch); }
.highlight pre > .ln::before { content: attr(data-n); display: inline-block; width: 4ch; margin-right: 1ch;
                               text-indent: 0; text-align: right; color: #9aa4ad; }
.highlight pre > .ln.focus { background: var(--focus); }
.missing { color: #a40e26; background: #ffebe9; padding: 6px 10px; margin: 0; font-size: 13px; }
.notes { margin: 8px 0 0; padding-left: 22px; }
.notes li { margin: 4px 0; }
.todo { color: var(--muted); font-style: italic; }
.legend { margin: 6px 0 0; font-size: 13px; color: var(--muted); }
.swatch { display: inline-block; width: 12px; height: 12px; background: var(--focus); border: 1px solid #e0c96b;
          vertical-align: -1px; margin-right: 6px; }
table.counts td.span { text-align: center; color: var(--muted); }
nav.toc { margin: 0 0 12px; max-width: 1100px; }
#counts { margin: 26px 0 40px; }
"""


def _inline(text: str) -> str:
    """A note's text as HTML: escaped, with `backticks` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _highlight(snippet: Snippet, focus: str | None) -> str:
    # nowrap gives bare highlighted lines (Pygments closes its spans at each newline), which are
    # wrapped here one per line so that lines can carry their file line number and the focus mark.
    body = highlight(snippet.code, PythonLexer(stripnl=False), HtmlFormatter(nowrap=True, style=PYGMENTS_STYLE))
    rows = []
    for number, (line, source) in enumerate(zip(body.rstrip("\n").split("\n"), snippet.code.splitlines()),
                                            snippet.first_line):
        marked = " focus" if focus and re.search(focus, source) else ""
        # Capped, or a deeply aligned continuation line would leave no room for its own wrapped tail.
        indent = min(len(source) - len(source.lstrip(" ")), 16)
        rows.append(f'<span class="ln{marked}" data-n="{number}" style="--i:{indent}">{line}</span>')
    return f'<div class="highlight"><pre>{"".join(rows)}</pre></div>'


def _range(s: Snippet) -> str:
    return f"L{s.first_line}–{s.last_line}"


def _cell_html(cell: Cell, focus: str | None, optional: bool = False) -> str:
    title = TITLES[cell.column]
    parts = [f'<div class="cell {cell.column}" data-framework="{cell.column}">',
             f'<h3 class="c-{cell.column}"><span>{html.escape(title)}</span>'
             f"<span>{f'{cell.lines} lines' if cell.snippets else '—'}</span></h3>", '<div class="figs">']
    for s in cell.snippets:
        parts.append(
            f'<figure data-symbol="{html.escape(s.symbol)}">'
            f'<figcaption><span><a href="../{s.path}">{s.path}</a> · <code>{html.escape(s.name)}</code></span>'
            f"<span>{_range(s)} · {s.lines} lines</span></figcaption>{_highlight(s, focus)}</figure>")
    parts.append("</div>")
    for reason in cell.missing:
        parts.append(f'<p class="todo">Not yet implemented in {html.escape(title)}.</p>' if optional
                     else f'<p class="missing">missing: {html.escape(reason)}</p>')
    parts.append("</div>")
    return "".join(parts)


def _count(cells: dict[str, Cell], framework: str) -> str:
    cell = cells.get(framework)
    return str(cell.lines) if cell and cell.snippets else "—"


def section_counts(section: Section, cells: dict[str, Cell]) -> list[str] | str:
    """Code lines of a section per framework, or one phrase where the frameworks have no columns."""
    if not implemented(section, cells):
        return "not yet implemented"
    if not section.columns:
        return f"shared: {cells['common'].lines} lines of common/"
    return [_count(cells, f) for f in FRAMEWORKS]


def file_counts() -> list[tuple[str, list[str]]]:
    """Rows of the per-file table, the totals last."""
    rows, totals = [], dict.fromkeys(FRAMEWORKS, 0)
    for name, counts in file_lines().items():
        rows.append((name, ["—" if counts[f] is None else str(counts[f]) for f in FRAMEWORKS]))
        for f in FRAMEWORKS:
            totals[f] += counts[f] or 0
    return [*rows, ("total", [str(totals[f]) for f in FRAMEWORKS])]


def _counts_tables(built: list[tuple[Section, dict[str, Cell]]]) -> str:
    """The table of contents with each section's line counts, and the per-file totals beside it."""
    head = "".join(f"<th>{html.escape(TITLES[f])}</th>" for f in FRAMEWORKS)
    rows = []
    for number, (section, cells) in enumerate(built, 1):
        counts = section_counts(section, cells)
        tds = (f'<td colspan="{len(FRAMEWORKS)}" class="span">{counts}</td>' if isinstance(counts, str)
               else "".join(f"<td>{c}</td>" for c in counts))
        rows.append(f'<tr><td><a href="#{section.slug}">{number}. {html.escape(section.title)}</a></td>{tds}</tr>')
    files = [f"<tr><td>{name}</td>" + "".join(f"<td>{c}</td>" for c in counts) + "</tr>"
             for name, counts in file_counts()]
    files[-1] = files[-1].replace("td>", "th>")
    return (f'<table class="counts" id="counts-sections"><thead><tr><th>section</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            f'<table class="counts" id="counts-files"><thead><tr><th>file</th>{head}</tr></thead>'
            f'<tbody>{"".join(files)}</tbody></table>')


INTRO = ("The same GPT written three times, cut from the live source symbol by symbol, in the order data "
         "flows through it. Read across a row to see one idea in three frameworks; the notes under each "
         "section say what differs and why it matters for parity. The concepts themselves are explained in "
         "<a href=\"../docs/transformer.md\">docs/transformer.md</a>; the architecture every model follows "
         "is <a href=\"../common/spec.py\">common/spec.py</a>. What a trained model's attention heads actually "
         "do, every layer and head over one prompt and every framework side by side, is on "
         "<a href=\"../docs/explain/index.html\">docs/explain/index.html</a>.")
COUNT_NOTE = ("What each framework's style costs, in code lines: not blank, not only a comment, not "
              "docstring. Per section, the lines of the symbols shown; per file, the whole file. The shared "
              "<code>common/</code> package, which no framework has to repeat, is {common} lines.")


def render_html(built: list[tuple[Section, dict[str, Cell]]]) -> str:
    colheads = "".join(f'<div class="c-{f}">{html.escape(TITLES[f])}</div>' for f in FRAMEWORKS)
    toc = " · ".join(f'<a href="#{s.slug}">{n}. {html.escape(s.title)}</a>' for n, (s, _) in enumerate(built, 1))
    body = []
    for number, (section, cells) in enumerate(built, 1):
        parts = [f'<section class="study" id="{section.slug}" data-section="{section.slug}">',
                 f'<h2><span class="num">{number}.</span>{html.escape(section.title)}</h2>']
        if section.focus_on and implemented(section, cells):
            parts.append(f'<p class="legend"><span class="swatch"></span>'
                         f"Highlighted: {html.escape(section.focus_on)}.</p>")
        if not implemented(section, cells):
            parts.append('<p class="todo">Not yet implemented in any framework.</p>')
        else:
            if "common" in cells:
                parts.append(f'<div class="shared">{_cell_html(cells["common"], section.focus)}</div>')
            if section.columns:
                parts.append('<div class="columns">' + "".join(
                    _cell_html(cells[f], section.focus, section.optional) for f in section.columns) + "</div>")
            parts.append('<ul class="notes">' + "".join(f"<li>{_inline(n)}</li>" for n in section.notes) + "</ul>")
        parts.append("</section>")
        body.append("".join(parts))
    style = CSS + HtmlFormatter(style=PYGMENTS_STYLE).get_style_defs(".highlight")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>nanogpt-compare: the GPT side by side</title><style>{style}</style></head><body>"
            f'<header class="page"><h1>One GPT, three frameworks, side by side</h1><p>{INTRO}</p>'
            f'<nav class="toc">{toc} · <a href="#counts">Lines of code</a></nav></header>'
            f'<div class="colheads">{colheads}</div><main>{"".join(body)}'
            f'<section id="counts"><h2>Lines of code</h2><p>{COUNT_NOTE.format(common=common_lines())}</p>'
            f"{_counts_tables(built)}</section></main></body></html>\n")


# --- Markdown -------------------------------------------------------------------------------

def render_markdown(built: list[tuple[Section, dict[str, Cell]]]) -> str:
    out = ["# One GPT, three frameworks, side by side", "",
           re.sub(r'<a href="([^"]+)">([^<]+)</a>', r"[\2](\1)", INTRO), "",
           "The HTML version ([index.html](index.html)) puts the three frameworks in columns.", "",
           "| section | " + " | ".join(TITLES[f] for f in FRAMEWORKS) + " |",
           "|---|" + "---:|" * len(FRAMEWORKS)]
    for number, (section, cells) in enumerate(built, 1):
        counts = section_counts(section, cells)
        counts = [f"*{counts}*", "", ""] if isinstance(counts, str) else counts
        out.append(f"| [{number}. {section.title}](#{section.slug}) | " + " | ".join(counts) + " |")
    out += ["", "| file | " + " | ".join(TITLES[f] for f in FRAMEWORKS) + " |", "|---|" + "---:|" * len(FRAMEWORKS)]
    out += [f"| {name} | " + " | ".join(counts) + " |" for name, counts in file_counts()]
    out[-1] = re.sub(r"[^ |]+", lambda m: f"**{m.group()}**", out[-1])
    out += ["",
            re.sub(r"</?code>", "`", COUNT_NOTE.format(common=common_lines())), ""]
    for number, (section, cells) in enumerate(built, 1):
        out += [f'<a id="{section.slug}"></a>', "", f"## {number}. {section.title}", ""]
        if not implemented(section, cells):
            out += ["*Not yet implemented in any framework.*", ""]
            continue
        for column in ("common", *section.columns):
            if column not in cells:
                continue
            cell = cells[column]
            out += [f"### {TITLES[column]}" + (f" ({cell.lines} lines)" if cell.snippets else ""), ""]
            for s in cell.snippets:
                link = f"../{s.path}#L{s.first_line}-L{s.last_line}"
                out += [f"`{s.symbol}` — [{s.path} {_range(s)}]({link}), {s.lines} lines", "",
                        "```python", s.code.rstrip("\n"), "```", ""]
            out += [f"*Not yet implemented in {TITLES[column]}.*\n" if section.optional else f"**missing:** {reason}\n"
                    for reason in cell.missing]
        out += ["**What differs**", ""] + [f"- {note}" for note in section.notes] + [""]
    return "\n".join(out)


# --- building and the browser check ---------------------------------------------------------

def build() -> list[tuple[Section, dict[str, Cell]]]:
    return [(section, build_cells(section)) for section in SECTIONS]


def missing_symbols(built: list[tuple[Section, dict[str, Cell]]]) -> list[str]:
    """The symbols required sections lack; an optional section's gaps are shown as still to come."""
    return [reason for section, cells in built if not section.optional
            for cell in cells.values() for reason in cell.missing]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def run_chromium(page: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Headless Chromium on a local page, isolated from any profile and from the network."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("Chromium is not installed: apt-get update && apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)


def write(out: Path, screenshot: bool = False) -> list[str]:
    """Write index.html and index.md (and screenshot.png if asked); return the missing symbols."""
    built = build()
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(render_html(built), encoding="utf-8")
    (out / "index.md").write_text(render_markdown(built), encoding="utf-8")
    if screenshot:
        run_chromium(out / "index.html", f"--screenshot={(out / 'screenshot.png').resolve()}",
                     f"--window-size={SCREENSHOT_SIZE}", "--hide-scrollbars")
    return missing_symbols(built)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "study", help="output folder")
    parser.add_argument("--screenshot", action="store_true",
                        help="also render the page in headless Chromium to OUT/screenshot.png")
    args = parser.parse_args(argv)
    missing = write(args.out, args.screenshot)
    for reason in missing:
        print(f"missing symbol: {reason}", file=sys.stderr)
    print(f"wrote {args.out / 'index.html'} and {args.out / 'index.md'}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
