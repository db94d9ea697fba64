"""Export a run's model as a Hugging Face GPT-2 folder, whichever framework trained it.

    python -m benchmarks.export runs/<name>/jax --hf out/shakespeare-gpt2

The folder (config.json, model.safetensors under GPT-2's names, tokenizer.json) loads unchanged with
transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained, and can be pushed to
the Hub as it is. A character-level model's tokenizer.json maps each character to its id.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.sample import load_model
from common.errors import OneLineParser, UserError, one_line
from common.hf_gpt2 import write_gpt2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (its model.safetensors, or its newest checkpoint "
                   "if training was cut short) or a .safetensors file a run wrote")
    p.add_argument("--hf", metavar="OUT_DIR", required=True, help="the Hugging Face folder to write")
    p.add_argument("--force", action="store_true", help="write into OUT_DIR even if it already holds files")
    return p.parse_args(argv)


def export(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    source, out = Path(run_dir), Path(out_dir)
    if not source.exists():
        raise UserError(f"{source} does not exist: pass the folder of one framework's run, e.g. runs/<name>/pytorch.")
    if out.exists() and not out.is_dir():
        raise UserError(f"--hf {out} is a file: name a folder (it is made if it does not exist).")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already holds files: choose an empty or new folder, or pass --force to write "
                        f"into it.")
    model = load_model(source)
    try:
        return write_gpt2(out, model.params, model.config, model.tokenizer)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}): choose a folder you can write to.") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        out = export(args.run_dir, args.hf, args.force)
        print(f"wrote {out}: load it with transformers' GPT2LMHeadModel.from_pretrained and "
              f"AutoTokenizer.from_pretrained.", file=sys.stderr)
        return 0
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
