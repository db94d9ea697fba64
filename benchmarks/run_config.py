"""What one run is, resolved once by the launcher and written to the run folder as config.json.

The process that trains reads everything from there: a fresh run, a subprocess of `all`, a
torchrun worker and `--resume` all start from the same file, so nothing about a run has to travel
on command lines or in environment variables.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from common.config import GPTConfig, TrainConfig
from common.errors import UserError

CONFIG_FILE = "config.json"


@dataclass
class RunConfig:
    framework: str                 # canonical name (common.backend.FRAMEWORKS)
    preset: str                    # as asked for: "auto" stays "auto", model and train say what it became
    dataset: str
    corpus: str                    # the corpus' own name, e.g. the file stem of a text file
    tokenizer: str                 # char | bpe, or gpt2 for the tokenizer of the folder in init_from
    vocab_size: int | None         # the BPE size asked for; the model's vocab_size is the one used
    device: str                    # auto | cpu | gpu | tpu
    replicas: int
    model: GPTConfig
    train: TrainConfig
    command: str = ""              # the command line that started the run (or the whole comparison)
    cpu_peak_flops: float | None = None  # measured by the launcher when several processes share it
    checkpoint_every: int | None = None  # default: the eval interval
    profile: bool = False
    prompt: str = "\n"
    num_samples: int = 3
    sample_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    stop: list[str] | None = None
    init_from: str | None = None   # the GPT-2 folder whose weights step 0 starts from (a Hub id's, in its cache)
    round: int = 1                 # which of the comparison's interleaved rounds this run is (--rounds)
    compiled_decode: bool = False  # in a comparison, an eager decode is timed compiled too (like with like)
    busy_cores: int = 0            # processes keeping a core busy beside the run (--busy-cores)
    shard: int = 1                 # devices the parameters, gradients and Adam moments are split over

    def save(self, run_dir: Path) -> None:
        # Whole or not at all: under a torchrun of several nodes every process writes it, and another
        # may be reading it already.
        tmp = run_dir / f"{CONFIG_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, run_dir / CONFIG_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        """The run's config; runs written before a field existed get its default."""
        try:
            saved = json.loads((run_dir / CONFIG_FILE).read_text())
            known = {f.name for f in fields(cls)}
            saved = {k: v for k, v in saved.items() if k in known}
            return cls(**{**saved, "model": GPTConfig(**saved["model"]), "train": TrainConfig(**saved["train"])})
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{run_dir} is not a run folder (no readable {CONFIG_FILE}): pass the folder of "
                            f"one framework's run, e.g. runs/<name>/pytorch.") from None
