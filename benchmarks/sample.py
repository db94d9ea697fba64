"""Sample from a trained model or a GPT-2 folder in any framework: nanoGPT's sample.py for all of them.

    python -m benchmarks.sample --checkpoint runs/<name>/jax --framework tensorflow --prompt "ROMEO:"
    python -m benchmarks.sample --init-from gpt2 --num-samples 4 --max-new-tokens 100 --json

The weights are the framework-neutral checkpoint, so any framework samples what any other trained.
Several samples are decoded together as one batch, each row from its own seed (seed, seed + 1, ...);
each ends at the tokenizer's end-of-text token, at a stop string, or after --max-new-tokens. One
sample on a terminal is printed as it is produced.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.quiet import native_logs_filtered, quiet_third_party
from common.backend import FRAMEWORKS, SEED_LIMIT, canonical_framework, check_sampling, load_backend
from common.checkpoint import load_checkpoint
from common.config import GPTConfig, TrainConfig
from common.errors import OneLineParser, UserError, command_line
from common.quantize import QUANTIZE_MODES
from common.tokenizers import AnyTokenizer, tokenizer_from_json

MODEL_FILE = "model.safetensors"
CHUNK_TOKENS = 32  # tokens per decoding call: how often a streamed sample is printed and stops are checked


@dataclass
class Model:
    """Weights ready for any framework's Backend, and the tokenizer they were trained with."""
    config: GPTConfig
    params: dict[str, np.ndarray]
    tokenizer: AnyTokenizer
    source: str  # the file or folder, for messages


def load_model(checkpoint: str | Path) -> Model:
    """A run folder's model.safetensors (or its newest checkpoint, if training was cut short), or one
    .safetensors file written by a run."""
    path = Path(checkpoint)
    if path.is_dir():
        path = _newest_model_file(path)
    params, info = load_checkpoint(path)
    return Model(info["config"], params, tokenizer_from_json(info["tokenizer"]), str(path))


def _newest_model_file(run_dir: Path) -> Path:
    if (run_dir / MODEL_FILE).is_file():
        return run_dir / MODEL_FILE
    steps = sorted((p for p in (run_dir / "checkpoints").glob("step_*") if (p / MODEL_FILE).is_file()), reverse=True)
    try:  # a step folder newer than `latest` was being written when the run stopped
        latest = (run_dir / "checkpoints" / "latest").read_text().strip()
        steps = [p for p in steps if p.name <= latest]
    except OSError:
        pass
    if not steps:
        raise UserError(f"{run_dir} holds no {MODEL_FILE} and no checkpoints/: pass the folder of one "
                        f"framework's run (e.g. runs/<name>/pytorch) or a .safetensors file it wrote.")
    return steps[0] / MODEL_FILE


def load_pretrained(name_or_dir: str) -> Model:
    from common.hf_gpt2 import load_gpt2
    hf = load_gpt2(name_or_dir)
    return Model(hf.config.model, hf.params, hf.tokenizer, str(hf.folder))


# --- Ending each sample ----------------------------------------------------------------------------

@dataclass
class Sample:
    """One row of the batch: its new tokens so far, and whether (and why) it has ended."""
    ids: list[int]
    end: str | None = None  # "eot", "stop" or "length" once ended
    text: str = ""          # the new text, up to (not including) end-of-text or the earliest stop string
    used: int = 0           # how many of ids the text covers

    def extend(self, new: list[int], tokenizer: AnyTokenizer, stop: list[str]) -> None:
        if self.end:
            return
        eot = tokenizer.eot_id
        if eot is not None and eot in new:
            new, self.end = new[:new.index(eot)], "eot"
        self.ids += new
        self.text, self.used = tokenizer.decode(self.ids), len(self.ids)
        cuts = [i for i in (self.text.find(s) for s in stop) if i >= 0]
        if cuts:
            self.text, self.end = self.text[:min(cuts)], "stop"
            # The tokens that reach the text's end; the last may run into the stop string (never for
            # characters, one token each).
            self.used = next(k for k in range(len(self.ids) + 1)
                             if len(tokenizer.decode(self.ids[:k])) >= len(self.text))

    def to_json(self, prompt_ids: list[int]) -> str:
        return json.dumps({"text": self.text, "token_ids": self.ids[:self.used], "prompt_ids": prompt_ids,
                           "end": self.end or "length"}, ensure_ascii=False)


def sample(backend, tokenizer: AnyTokenizer, prompt_ids: list[int], *, num_samples: int, max_new_tokens: int,
           stop: list[str], seed: int, on_text=None, **options) -> list[Sample]:
    """num_samples rows decoded as one batch, each from its own seed, until every row has ended.

    on_text(new_text) is called with each piece of the first row's text as it becomes final, for
    streaming; text that could still turn out to be the start of a stop string is held back.
    """
    samples = [Sample([]) for _ in range(num_samples)]
    shown, hold = 0, max((len(s) for s in stop), default=1) - 1
    chunks = backend.generate_chunks([prompt_ids] * num_samples, max_new_tokens, CHUNK_TOKENS,
                                     seeds=[seed + i for i in range(num_samples)], **options)
    for chunk in chunks:
        for row, new in zip(samples, chunk.tolist()):
            row.extend(new, tokenizer, stop)
        if on_text:
            first = samples[0]
            final = len(first.text) if first.end else max(shown, len(first.text) - hold)
            # A byte-level token may end inside a character: hold back the replacement character.
            while final > shown and not first.end and first.text[final - 1] == "\ufffd":
                final -= 1
            on_text(first.text[shown:final])
            shown = final
        if all(row.end for row in samples):
            break
    if on_text and shown < len(samples[0].text):
        on_text(samples[0].text[shown:])
    return samples


# --- The command ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.sample", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="RUN_DIR|FILE", help="a run folder (its model.safetensors, or its "
                        "newest checkpoint if training was cut short) or a .safetensors file a run wrote")
    source.add_argument("--init-from", metavar="NAME|DIR", help="a Hugging Face GPT-2 folder, or gpt2, gpt2-medium, "
                        "gpt2-large, gpt2-xl or owner/name from the Hub's cache")
    p.add_argument("--framework", default="pytorch", help=f"{' | '.join(FRAMEWORKS)} (aliases: torch, keras, tf, flax)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="\n", help="the text to continue")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from this UTF-8 file")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--stop", action="append", default=[], help="end a sample at this string (repeatable)")
    p.add_argument("--seed", type=int, default=1337, help="the first sample's seed; sample i uses seed + i")
    p.add_argument("--num-samples", type=int, default=1, help="samples decoded together as one batch")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="decode with the KV cache (--no-cache recomputes every step: the same tokens, slower)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, help="decode with quantized weights, int8 (one scale "
                   "per output channel) or int4 (groups of inputs), activations float, or int8-dynamic (int8 "
                   "weights, each layer's input rounded to int8 at every call); quantized by the framework's own tool")
    p.add_argument("--json", action="store_true", help="one JSON object per sample on stdout: text, token_ids "
                   "(the new tokens), prompt_ids and end (eot, stop or length)")
    p.add_argument("--verbose", action="store_true", help="show the frameworks' own log lines and warnings")
    args = p.parse_args(argv)
    if not args.checkpoint and not args.init_from:
        raise UserError("name the weights: --checkpoint RUN_DIR|FILE.safetensors or --init-from NAME|DIR.")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}.")
    if not 0 <= args.seed or args.seed + args.num_samples > SEED_LIMIT:
        raise UserError(f"--seed must be from 0 to {SEED_LIMIT - args.num_samples} (sample i uses seed + i).")
    if "" in args.stop:
        raise UserError("--stop takes a non-empty string.")
    return args


def _prompt_text(args) -> str:
    if args.prompt_file is None:
        return args.prompt
    try:
        return Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --prompt-file {args.prompt_file} ({e.__class__.__name__}): pass a UTF-8 "
                        f"text file.") from None


@command_line
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quiet_third_party(args.verbose)
    framework = canonical_framework(args.framework)
    model = load_model(args.checkpoint) if args.checkpoint else load_pretrained(args.init_from)
    prompt_ids = model.tokenizer.encode(_prompt_text(args))
    if not prompt_ids:
        raise UserError("the prompt is empty after tokenization: pass a non-empty --prompt.")
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    check_sampling(prompt_ids, args.max_new_tokens, model.config.vocab_size, **options)  # before any import
    with native_logs_filtered():  # the framework is imported here
        Backend = load_backend(framework)
        backend = Backend(model.config, TrainConfig(dtype=args.dtype), model.params, device=args.device)
        if args.quantize:
            backend.quantize(args.quantize)
    stream = args.num_samples == 1 and not args.json and sys.stdout.isatty()
    if stream:
        sys.stdout.write(model.tokenizer.decode(prompt_ids))
    samples = sample(backend, model.tokenizer, prompt_ids, num_samples=args.num_samples,
                     max_new_tokens=args.max_new_tokens, stop=args.stop, seed=args.seed,
                     on_text=(lambda text: (sys.stdout.write(text), sys.stdout.flush())) if stream else None,
                     use_cache=args.cache, **options)
    if stream:
        print()
    for i, row in enumerate(samples):
        if args.json:
            print(row.to_json(prompt_ids))
        elif not stream:
            print(("" if i == 0 else "-" * 72 + "\n") + model.tokenizer.decode(prompt_ids) + row.text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
