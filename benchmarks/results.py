"""Runs on disk: a harness run folder, or a run set packed into one file under results/.

A run folder (what `benchmarks.run` writes) holds config.json, env.json, summary.json, metrics.jsonl
and samples.txt. A run set is results/<name>/ with NOTES.md and runs.jsonl: one line per run, holding
the same config, env, summary and samples, every non-training row of metrics.jsonl (the evaluations
the loss curves are drawn from), the per-step training rows of every TRAIN_EVERY-th step (and the
last) as columns, and every step's time (to the microsecond), from which the report's intervals are
recomputed; 2000 whole training rows a run would make the logs most of the repository.

    python -m benchmarks.report RUN_DIR [RUN_DIR ...] --pack results/NAME
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import machine_name
from common.errors import UserError

RUNS_FILE = "runs.jsonl"
TRAIN_EVERY = 10


@dataclass
class Run:
    folder: Path  # the run folder, or results/<set>/<name> for a packed run
    summary: dict
    config: dict
    env: dict
    evals: list[dict]
    steps: list[dict]
    samples: str
    rows: list[dict] | None = None  # every non-training row of metrics.jsonl, evaluations included
    step_times: list[float] | None = None  # every training step's seconds, in step order

    def __post_init__(self):
        if self.rows is None:
            self.rows = list(self.evals)
        if self.step_times is None:
            self.step_times = [r["step_time"] for r in sorted(self.steps, key=lambda r: r["step"]) if "step_time" in r]

    @property
    def round(self) -> int:
        return self.config.get("round", 1)

    @property
    def name(self) -> str:
        return self.folder.name


# --- a harness run folder --------------------------------------------------------------------------

def load_run(folder: Path) -> Run:
    def read_json(name):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{folder} is not a complete run folder ({name}: {e}); rerun it or leave it out.") from None
    records = []
    try:
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}/metrics.jsonl is unreadable ({e}).") from None
    samples = (folder / "samples.txt").read_text(encoding="utf-8") if (folder / "samples.txt").exists() else ""
    rows = [r for r in records if r.get("type") != "train"]
    return Run(folder, read_json("summary.json"), read_json("config.json"), read_json("env.json"),
               [r for r in rows if r.get("type") == "eval"], [r for r in records if r.get("type") == "train"],
               samples, rows)


# --- a packed run set ------------------------------------------------------------------------------

def is_run_set(path: Path) -> bool:
    return (path / RUNS_FILE).is_file()


def _thin(steps: list[dict]) -> dict:
    """Every TRAIN_EVERY-th training row and the last, as one list per field (a missing field is null)."""
    kept = [r for i, r in enumerate(steps) if r["step"] % TRAIN_EVERY == 0 or i == len(steps) - 1]
    keys = dict.fromkeys(key for r in kept for key in r if key != "type")
    return {"every": TRAIN_EVERY, **{key: [r.get(key) for r in kept] for key in keys}}


def _unthin(columns: dict) -> list[dict]:
    keys = [key for key in columns if key != "every"]
    return [{"type": "train", **{k: v for k, v in zip(keys, values) if v is not None}}
            for values in zip(*(columns[key] for key in keys))]


def packed(run: Run) -> dict:
    return {"name": run.name, "config": run.config, "env": run.env, "summary": run.summary, "rows": run.rows,
            "train": _thin(run.steps), "step_times": [round(t, 6) for t in run.step_times], "samples": run.samples}


def load_run_set(folder: Path) -> list[Run]:
    runs = []
    path = folder / RUNS_FILE
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                rows = record["rows"]
                runs.append(Run(folder / record["name"], record["summary"], record["config"], record["env"],
                                [r for r in rows if r.get("type") == "eval"], _unthin(record["train"]),
                                record["samples"], rows, record.get("step_times")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}: {e}); pack the run set again.") from None
    return runs


def _version(run: Run) -> str:
    version, framework = str(run.env.get("framework_version")), run.summary.get("framework", "")
    return version if version.startswith(framework.split("-")[0]) else f"{framework} {version}"


def notes_skeleton(name: str, runs: list[Run]) -> str:
    """The facts a run set's NOTES.md starts from; whoever made the runs adds what they show."""
    env = runs[0].env
    machine = env.get("device_name") if env.get("device") not in (None, "cpu") else machine_name(env)
    settings = {r.summary.get("framework", "?"): r.env["settings"] for r in runs if r.env.get("settings")}
    lines = [f"# {name}", "", "(One sentence: what this set was made for and what it shows.)", "",
             f"- machine: {machine}, {env.get('platform')}, Python {env.get('python')}",
             *([f"- host malloc: {env['host_malloc']}"] if env.get("host_malloc") else []),
             *([f"- settings: {json.dumps(settings)}"] if settings else []),
             "- versions: " + ", ".join(dict.fromkeys(_version(r) for r in runs)),
             "- commits: " + ", ".join(dict.fromkeys(str(r.env.get("git_commit")) for r in runs)),
             "- dates: " + " to ".join(dict.fromkeys(sorted({r.env.get("date", "?")[:10] for r in runs}))),
             "- commands:",
             *[f"  - `{command}`" for command in dict.fromkeys(r.env.get("command") for r in runs)],
             "", "## Findings", "", "- (What the numbers show, short; a superseded figure is removed, not annotated.)", ""]
    return "\n".join(lines)


def pack(run_dirs: list[Path], into: Path) -> Path:
    """Add run folders to the run set `into` (made if new; a packed run of the same name is replaced).

    Returns runs.jsonl. A new set gets a NOTES.md with the runs' facts, for its findings to be added.
    """
    from benchmarks.report import find_runs  # a folder of run folders is expanded as the report does
    runs = find_runs(run_dirs)
    names = [run.name for run in runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"two runs are named {twice[0]}; pack them one at a time into sets of their own, "
                        f"or rename one folder (e.g. {twice[0]}-seed{runs[names.index(twice[0])].summary.get('seed')}).")
    if into.exists() and not into.is_dir():
        raise UserError(f"--pack {into} is a file; name a folder for the run set, e.g. results/my-machine.")
    kept = [run for run in (load_run_set(into) if is_run_set(into) else []) if run.name not in names]
    into.mkdir(parents=True, exist_ok=True)
    records = [packed(run) for run in sorted([*kept, *runs], key=lambda r: r.name)]
    path = into / RUNS_FILE
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    notes = into / "NOTES.md"
    if not notes.exists():
        notes.write_text(notes_skeleton(into.name, runs), encoding="utf-8")
    return path
