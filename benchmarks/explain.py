"""Look inside a model: attention maps, the next-token distribution, embeddings and the residual stream.

    python -m benchmarks.explain runs/<name> --prompt "ROMEO:"              # a run of benchmarks.run
    python -m benchmarks.explain --init-from gpt2 --prompt "Hello, my" --framework all

Writes index.html, one self-contained page (every image embedded in it), and the same images as PNGs
beside it, into --out (by default explain/ in the run folder). With --framework all the prompt goes
through every installed framework with the same weights, and each plot says how far they are apart.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import multiprocessing
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.quiet import native_logs_filtered, quiet_third_party
from benchmarks.sample import Model, load_model, load_pretrained
from common.backend import FRAMEWORKS, canonical_framework, check_prompt, check_sampling, is_installed, load_backend
from common.config import GPTConfig, TrainConfig
from common.errors import OneLineParser, UserError, command_line
from common.sampling import filter_logits
from common.tokenizers import AnyTokenizer

TOP_TOKENS = 20        # bars in the next-token chart
LABELLED_TOKENS = 256  # a larger vocabulary's embedding plot labels only the prompt's tokens
SECTIONS = {           # the page's sections, in order: id -> heading
    "attention": "Attention, layer by layer and head by head",
    "next-token": "The next token",
    "embeddings": "Token embeddings",
    "positions": "Position embeddings",
    "residual": "The residual stream",
}


# --- Looking: one forward pass in one framework ------------------------------------------------------

def look(framework: str, config: GPTConfig, params: dict[str, np.ndarray], prompt_ids: list[int],
         device: str = "auto", verbose: bool = False) -> dict[str, np.ndarray]:
    """Backend.inspect on the prompt, with the embedding tables as the framework holds them."""
    quiet_third_party(verbose)
    with native_logs_filtered():
        backend = load_backend(framework)(config, TrainConfig(), params, device=device)
    seen = backend.inspect(prompt_ids)
    weights = backend.export_params()
    return {**seen, "wte": weights["wte"], "wpe": weights["wpe"]}


def look_in_each(frameworks: list[str], model: Model, prompt_ids: list[int], device: str = "auto",
                 verbose: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """look() in every framework. keras-jax runs in a process of its own: Keras picks its backend once
    per process, and the Keras model on TensorFlow may already have it (benchmarks.run does the same)."""
    looks = {}
    for framework in frameworks:
        args = (framework, model.config, model.params, prompt_ids, device, verbose)
        if framework == "keras-jax" and len(frameworks) > 1:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as own_process:
                looks[framework] = own_process.submit(look, *args).result()
        else:
            looks[framework] = look(*args)
    return looks


# --- What the plots show, in numpy ----------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def sampling_probabilities(logits: np.ndarray, temperature: float, top_k: int | None,
                           top_p: float | None) -> np.ndarray:
    """The distribution the samplers draw the next token from: common.sampling's rules applied
    (temperature, then top-k, then top-p); temperature 0 is greedy, all of it on the likeliest."""
    if temperature == 0:
        return np.eye(len(logits))[np.argmax(logits)]
    return softmax(filter_logits(logits, temperature, top_k, top_p))


def pca_2d(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on their two principal axes (numpy's SVD of the centred table), and the share
    of the variance each axis holds."""
    centred = table - table.mean(0)
    _, singular, axes = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    variance = singular ** 2
    return centred @ axes[:2].T, variance[:2] / variance.sum()


def cosine_similarity(table: np.ndarray) -> np.ndarray:
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    return unit @ unit.T


def largest_difference(looks: dict[str, dict[str, np.ndarray]], key: str,
                       transform=lambda a: a) -> tuple[float, str]:
    """The largest absolute difference in one array between any two frameworks, and which two."""
    names = list(looks)
    pairs = [(float(np.max(np.abs(transform(looks[a][key]) - transform(looks[b][key])))), f"{a} vs {b}")
             for i, a in enumerate(names) for b in names[i + 1:]]
    return max(pairs, key=lambda pair: pair[0], default=(0.0, ""))


def token_label(tokenizer: AnyTokenizer, token_id: int) -> str:
    """A token's text as an axis label: spaces and control characters made visible."""
    text = tokenizer.decode([token_id])
    shown = "".join("␣" if c == " " else repr(c)[1:-1] if not c.isprintable() else c for c in text)
    return shown or "∅"


def character_class(text: str) -> str:
    """What a token's text starts with, leading spaces aside, for colouring the embedding plot:
    vowel, consonant, digit, punctuation or space."""
    c = text.lstrip(" ")[:1] or " "
    if c in "aeiouAEIOU":
        return "vowel"
    if c.isalpha():
        return "consonant"
    if c.isdigit():
        return "digit"
    return "punctuation" if unicodedata.category(c).startswith(("P", "S")) else "space"


# --- Plots ----------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    """The figure as a PNG of 256 colours (Pillow, which matplotlib requires): these plots hold few
    colours, and the page embeds every image, at a third of the size of a full-colour PNG."""
    from PIL import Image
    drawn, small = io.BytesIO(), io.BytesIO()
    fig.savefig(drawn, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    Image.open(drawn).convert("RGB").quantize(256).save(small, format="png", optimize=True)
    return small.getvalue()


def _tick_labels(ax, labels: list[str]) -> None:
    step = max(1, len(labels) // 48)  # every token up to 48, then every step-th
    ticks = range(0, len(labels), step)
    ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=7, rotation=90)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)


def plot_attention(attention: np.ndarray, labels: list[str], title: str) -> bytes:
    """(n_layer, n_head, T, T) weights as a grid of heatmaps, query rows over key columns; the cells
    above the diagonal, which no query may see, in grey."""
    plt = _pyplot()
    n_layer, n_head, T, _ = attention.shape
    side = 1.2 + 0.12 * min(T, 48)  # inches a head; a longer prompt shares them, its labels thinned
    fig, axes = plt.subplots(n_layer, n_head, figsize=(side * n_head, side * n_layer + 0.4), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#dddddd")
    future = np.triu(np.ones((T, T), dtype=bool), 1)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            ax.imshow(np.ma.masked_where(future, attention[layer, head]), cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {head}", fontsize=9)
            _tick_labels(ax, labels)
            if head == 0:
                ax.set_ylabel("query", fontsize=8)
            if layer == n_layer - 1:
                ax.set_xlabel("key", fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def plot_next_token(logits: np.ndarray, tokenizer: AnyTokenizer, temperature: float, top_k: int | None,
                    top_p: float | None, title: str) -> bytes:
    """The model's probabilities of the likeliest TOP_TOKENS next tokens, and beside each what the
    sampler draws it with after temperature, top-k and top-p."""
    plt = _pyplot()
    model_p = softmax(logits.astype(np.float64))
    drawn_p = sampling_probabilities(logits, temperature, top_k, top_p)
    top = np.argsort(-model_p, kind="stable")[:TOP_TOKENS]
    x = np.arange(len(top))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    kept = drawn_p[top] > 0
    ax.bar(x - 0.2, model_p[top], 0.4, color=np.where(kept, "#3b6fb6", "#bbbbbb"), label="model (temperature 1)")
    ax.bar(x + 0.2, drawn_p[top], 0.4, color="#e08a2c", label="sampled from")
    ax.set_xticks(x, [token_label(tokenizer, int(t)) for t in top], fontsize=9)
    ax.set_ylabel("probability")
    rules = f"temperature {temperature:g}, top-k {top_k or 'off'}, top-p {top_p or 'off'}"
    ax.set_title(f"{title}\n{rules}: {int((drawn_p > 0).sum())} of {len(logits)} tokens kept (grey: dropped)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_embeddings(wte: np.ndarray, tokenizer: AnyTokenizer, prompt_ids: list[int]) -> bytes:
    """The token embedding table on its two principal axes, each token labelled by its text."""
    plt = _pyplot()
    points, share = pca_2d(wte)
    labelled = range(len(wte)) if len(wte) <= LABELLED_TOKENS else sorted(set(prompt_ids))
    colours = {"vowel": "#d62728", "consonant": "#1f77b4", "digit": "#2ca02c", "punctuation": "#9467bd",
               "space": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(points[:, 0], points[:, 1], s=4, color="#cccccc")
    for i in labelled:
        ax.annotate(token_label(tokenizer, i), points[i], fontsize=8, ha="center", va="center",
                    color=colours[character_class(tokenizer.decode([i]))])
    for kind, colour in colours.items():
        ax.scatter([], [], color=colour, label=kind)
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(f"first principal axis ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"second principal axis ({share[1]:.0%})")
    ax.set_title(f"wte: {wte.shape[0]} tokens x {wte.shape[1]} dimensions, projected to 2")
    return _png(fig)


def plot_positions(wpe: np.ndarray) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(cosine_similarity(wpe), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    ax.set_title(f"wpe: cosine similarity of the {len(wpe)} position vectors")
    return _png(fig)


def plot_norms(norms: np.ndarray, title: str) -> bytes:
    """(n_layer, 3, T) norms, the mean over the prompt's positions per layer."""
    plt = _pyplot()
    mean = norms.mean(-1)
    layers = np.arange(len(mean))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for row, (name, marker) in enumerate((("residual stream entering the block", "o"),
                                          ("attention update", "s"), ("MLP update", "^"))):
        ax.plot(layers, mean[:, row], marker=marker, label=name)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("L2 norm (mean over positions)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


# --- The page -------------------------------------------------------------------------------------

@dataclass
class Figure:
    name: str      # the PNG's file name, without .png
    caption: str
    png: bytes


EXPLANATIONS = {
    "attention": "Each square is one head of one layer: row i is query position i, and its colours are how "
                 "much of each earlier position (column) it takes in; every row sums to 1. The grey triangle "
                 "is the causal mask, the future no position may see.",
    "next-token": "Blue bars: the model's probability for the likeliest next tokens. Orange bars: what "
                  "sampling draws from once temperature, top-k and top-p (common/sampling.py) are applied; "
                  "grey bars are tokens those rules drop.",
    "embeddings": "Every row of the token embedding table, projected on its two directions of largest "
                  "variance (PCA): tokens the model treats alike lie close together.",
    "positions": "How alike the learned position vectors are: neighbouring positions are similar in a "
                 "trained model.",
    "residual": "The size of the residual stream entering each block, and of what attention and the MLP add "
                "to it: each block adds a small update to a stream that carries everything before it.",
}


def last_position_probabilities(logits: np.ndarray) -> np.ndarray:
    return softmax(logits[-1].astype(np.float64))


def _difference_note(looks: dict, key: str, transform=lambda a: a, what: str = "") -> str:
    if len(looks) < 2:
        return ""
    value, pair = largest_difference(looks, key, transform)
    return f"Largest difference between frameworks{what}: {value:.2e} ({pair})."


def build_figures(looks: dict[str, dict[str, np.ndarray]], tokenizer: AnyTokenizer, prompt_ids: list[int],
                  temperature: float, top_k: int | None, top_p: float | None) -> dict[str, tuple[str, list[Figure]]]:
    """Section id -> (the note on how far the frameworks are apart, its figures). The embedding
    tables are drawn once: every framework holds the same ones, as their note shows."""
    labels = [token_label(tokenizer, t) for t in prompt_ids]
    first, tables = next(iter(looks.items()))
    shared = "every framework" if len(looks) > 1 else first
    return {
        "attention": (_difference_note(looks, "attention", what=" in any weight"),
                      [Figure(f"attention-{f}", f, plot_attention(seen["attention"], labels, f))
                       for f, seen in looks.items()]),
        "next-token": (_difference_note(looks, "logits", last_position_probabilities, " in any probability"),
                       [Figure(f"next-token-{f}", f, plot_next_token(seen["logits"][-1], tokenizer, temperature,
                                                                     top_k, top_p, f"after {labels[-1]!r}: {f}"))
                        for f, seen in looks.items()]),
        "embeddings": (_difference_note(looks, "wte", what=" in the table"),
                       [Figure("embeddings", shared, plot_embeddings(tables["wte"], tokenizer, prompt_ids))]),
        "positions": (_difference_note(looks, "wpe", what=" in the table"),
                      [Figure("positions", shared, plot_positions(tables["wpe"]))]),
        "residual": (_difference_note(looks, "norms", what=" in any norm"),
                     [Figure(f"residual-{f}", f, plot_norms(seen["norms"], f)) for f, seen in looks.items()]),
    }


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 110rem; padding: 0 1rem; color: #222; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { text-align: center; font-size: 0.9rem; color: #555; }
.difference { font-family: ui-monospace, monospace; background: #eef6ee; padding: 0.2rem 0.5rem;
              display: inline-block; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def render_page(figures: dict, *, prompt: str, source: str, frameworks: list[str], config: GPTConfig) -> str:
    """One HTML page holding every figure as a base64 data URI: nothing outside it is fetched."""
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Inside the model: {e(prompt[:40])}</title><style>{STYLE}</style></head><body>",
             f"<h1>Inside the model, on the prompt <code>{e(prompt)}</code></h1>",
             f"<p>Weights: <code>{e(source)}</code> ({config.n_layer} layers, {config.n_head} heads, "
             f"{config.n_embd} dimensions, context {config.block_size}, vocabulary {config.vocab_size}). "
             f"Framework{'s' if len(frameworks) > 1 else ''}: {e(', '.join(frameworks))}. Written by "
             "<code>python -m benchmarks.explain</code>; the attention weights come from each model's own "
             "attention module (its <code>record</code> option).</p>"]
    for section, heading in SECTIONS.items():
        note, section_figures = figures[section]
        parts.append(f'<section id="{section}"><h2>{e(heading)}</h2><p>{e(EXPLANATIONS[section])}</p>')
        if note:
            parts.append(f'<p class="difference">{e(note)}</p>')
        parts.append('<div class="row">')
        for figure in section_figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(figure.name)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(figure.caption)}</figcaption></figure>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_page(out: Path, figures: dict, **page) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        for _, section_figures in figures.values():
            for figure in section_figures:
                (out / f"{figure.name}.png").write_bytes(figure.png)
        (out / "index.html").write_text(render_page(figures, **page), encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the page to {out} ({e.strerror}): choose another --out.") from None
    return out / "index.html"


# --- The command ----------------------------------------------------------------------------------

def run_weights(run_dir: Path, framework: str) -> Path:
    """The run folder whose weights to read: run_dir itself, or for the folder of a --framework all
    run (one run per framework inside) that framework's run, else the first of them."""
    if not run_dir.is_dir():
        raise UserError(f"no run folder at {run_dir}: pass the folder benchmarks.run wrote (runs/<name>), "
                        f"--checkpoint FILE.safetensors or --init-from NAME|DIR.")
    if (run_dir / "model.safetensors").is_file() or (run_dir / "checkpoints").is_dir():
        return run_dir
    runs = [run_dir / f for f in FRAMEWORKS if (run_dir / f).is_dir()]
    if not runs:
        raise UserError(f"{run_dir} holds no run: pass the folder benchmarks.run wrote (runs/<name>) or one "
                        f"framework's run inside it (runs/<name>/pytorch).")
    return next((r for r in runs if r.name == framework), runs[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.explain", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a folder benchmarks.run wrote: runs/<name> "
                   "(the --framework's run inside it, else the first) or runs/<name>/<framework>")
    p.add_argument("--checkpoint", metavar="RUN_DIR|FILE", help="as benchmarks.sample: a run folder or a "
                   ".safetensors file a run wrote")
    p.add_argument("--init-from", metavar="NAME|DIR", help="a Hugging Face GPT-2 folder, or gpt2, gpt2-medium, "
                   "gpt2-large, gpt2-xl or owner/name from the Hub's cache")
    p.add_argument("--prompt", required=True, help="the text to look at, at most block_size tokens")
    p.add_argument("--framework", default="pytorch", help=f"{' | '.join(FRAMEWORKS)} | all (aliases: torch, "
                   "keras, tf, flax); all puts the prompt through every installed framework, side by side")
    p.add_argument("--out", metavar="DIR", help="where index.html and the PNGs go (default: explain/ in the run "
                   "folder, or explain/<name> for --init-from)")
    p.add_argument("--temperature", type=float, default=0.8, help="for the next-token chart; 0 is greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
    p.add_argument("--verbose", action="store_true", help="show the frameworks' own log lines and warnings")
    args = p.parse_args(argv)
    if sum(x is not None for x in (args.run_dir, args.checkpoint, args.init_from)) != 1:
        raise UserError("name the weights, once: RUN_DIR, --checkpoint RUN_DIR|FILE.safetensors or "
                        "--init-from NAME|DIR.")
    return args


def _frameworks(name: str) -> list[str]:
    if name.strip().lower() != "all":
        return [canonical_framework(name)]
    installed = [f for f in FRAMEWORKS if is_installed(f)]
    if not installed:
        raise UserError("no framework is installed: pip install -e \".[all]\".")
    return installed


def _load(args) -> tuple[Model, Path]:
    """The weights, and where the page goes unless --out says: beside the run (runs/ is the place for
    what runs produce), or explain/<name> for a GPT-2 folder, which may be a read-only cache."""
    if args.init_from:
        return load_pretrained(args.init_from), Path("explain") / Path(args.init_from).name
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.exists():
            raise UserError(f"no run folder or checkpoint at {path}: pass the folder benchmarks.run wrote or a "
                            ".safetensors file in it.")
        return load_model(path), (path if path.is_dir() else path.parent) / "explain"
    run_dir = Path(args.run_dir)
    return load_model(run_weights(run_dir, _frameworks(args.framework)[0])), run_dir / "explain"


@command_line
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quiet_third_party(args.verbose)
    frameworks = _frameworks(args.framework)
    model, default_out = _load(args)
    prompt_ids = model.tokenizer.encode(args.prompt)
    check_prompt(prompt_ids, model.config)  # before any framework is imported
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    check_sampling(prompt_ids, 0, model.config.vocab_size, **options)
    looks = look_in_each(frameworks, model, prompt_ids, args.device, args.verbose)
    figures = build_figures(looks, model.tokenizer, prompt_ids, **options)
    page = write_page(Path(args.out) if args.out else default_out, figures, prompt=args.prompt,
                      source=model.source, frameworks=frameworks, config=model.config)
    print(f"wrote {page}")
    for section, (note, _) in figures.items():
        if note:
            print(f"  {section}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
