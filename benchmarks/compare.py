"""Speed ratios a reader can trust: paired by round, with a 95% interval, and noisy rounds flagged.

A comparison runs in rounds (benchmarks.run --rounds N): each round trains every framework once,
one after another, so the runs of a round share the machine's minutes. A framework's speed against
the baseline is then taken round by round, never across rounds:

- a round's ratio is the framework's tokens/s over the baseline's in that round, each at its median
  step (warm-up steps left out, as in summary.json);
- the figure shown is the median of the rounds' ratios;
- its 95% interval is a two-level bootstrap (rounds resampled, then each run's steps resampled, the
  median ratio recomputed; 2.5th and 97.5th percentiles of RESAMPLES such medians). The outer level
  carries the run-to-run drift that moves one framework by up to a third between runs on these
  machines; the inner level the step-to-step noise. With one round only the inner level is left,
  which says nothing of the drift, so reports show no interval for it;
- "tied" where the interval holds 1.0.

Every step's time stays in metrics.jsonl (and in a packed run set), so any interval can be recomputed.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from benchmarks.summary import WARMUP_STEPS

RESAMPLES = 2000
CONFIDENCE = 0.95
# A round is flagged when its step-time spread ((p90 - p10) / median) is more than SPREAD_FACTOR
# times the comparison's typical spread and SPREAD_FLOOR above it; when the hypervisor took over
# STEAL_FLOOR of the CPU time and STEAL_FACTOR times the typical share; or when other processes used
# over OTHERS_FLOOR of the machine while it trained.
SPREAD_FACTOR, SPREAD_FLOOR = 2.0, 0.05
STEAL_FACTOR, STEAL_FLOOR = 3.0, 0.02
OTHERS_FLOOR = 0.10


@dataclass(frozen=True)
class Ratio:
    """A framework's tokens/s over the baseline's: the median over paired rounds and its interval."""
    median: float
    low: float
    high: float
    rounds: int

    @property
    def tied(self) -> bool:
        return self.low <= 1.0 <= self.high

    def text(self) -> str:
        return f"{self.median:.2f}× [{self.low:.2f}–{self.high:.2f}]" + (", tied" if self.tied else "")


def steady(step_times) -> np.ndarray:
    """The step times the figures are taken over: warm-up (compilation) left out."""
    times = np.asarray(step_times, dtype=np.float64)
    return times[WARMUP_STEPS:] if len(times) > WARMUP_STEPS else times


def paired_ratio(baseline: list, other: list, tokens_ratio: float = 1.0, resamples: int = RESAMPLES,
                 seed: int = 0) -> Ratio:
    """`other`'s tokens/s over `baseline`'s, round by round.

    baseline[i] and other[i] are the step times (seconds) of round i's two runs, warm-up excluded;
    tokens_ratio is other's tokens per step over baseline's (1 for runs of one comparison).
    """
    if not baseline or len(baseline) != len(other):
        raise ValueError(f"paired rounds need as many baseline runs as others, got {len(baseline)} and {len(other)}")
    baseline = [np.asarray(t, dtype=np.float64) for t in baseline]
    other = [np.asarray(t, dtype=np.float64) for t in other]
    rng = np.random.default_rng(seed)

    def resampled_medians(times: np.ndarray) -> np.ndarray:
        return np.median(times[rng.integers(0, len(times), (resamples, len(times)))], axis=1)

    observed = [float(np.median(b) / np.median(o)) * tokens_ratio for b, o in zip(baseline, other)]
    # per_round[r, k]: round r's ratio in the k-th resample of its steps.
    per_round = np.stack([resampled_medians(b) / resampled_medians(o) * tokens_ratio
                          for b, o in zip(baseline, other)])
    rounds = len(baseline)
    picks = rng.integers(0, rounds, (resamples, rounds))
    medians = np.median(per_round[picks, np.arange(resamples)[:, None]], axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return Ratio(statistics.median(observed), float(low), float(high), rounds)


def step_spread(summary: dict) -> float | None:
    """(p90 - p10) / median of a run's steady step times."""
    p10, median, p90 = (summary.get(k) for k in ("p10_step_ms", "median_step_ms", "p90_step_ms"))
    return (p90 - p10) / median if None not in (p10, median, p90) and median else None


def noise_flags(summaries: list[dict]) -> list[list[str]]:
    """For each run of one comparison, what makes its round stand out from the others ([] for none).

    Spread and steal are judged against the comparison's typical (median) run, so a machine that is
    noisy throughout flags nothing but is seen in the intervals; a round worse than its neighbours
    is named.
    """
    spreads = [step_spread(s) for s in summaries]
    steals = [(s.get("noise") or {}).get("steal_frac") for s in summaries]
    others = [(s.get("noise") or {}).get("others_cpu_frac") for s in summaries]
    typical_spread = statistics.median([v for v in spreads if v is not None] or [0.0])
    typical_steal = statistics.median([v for v in steals if v is not None] or [0.0])
    flags = []
    for summary, spread, steal, other in zip(summaries, spreads, steals, others):
        found = []
        if spread is not None and spread > SPREAD_FACTOR * typical_spread and spread > typical_spread + SPREAD_FLOOR:
            found.append(f"step spread {spread:.0%} (typical {typical_spread:.0%})")
        if steal is not None and steal > STEAL_FLOOR and steal > STEAL_FACTOR * typical_steal:
            found.append(f"steal {steal:.1%} (typical {typical_steal:.1%})")
        # Under torchrun the other ranks are other processes: only single-process runs are judged.
        torchrun = summary.get("framework") == "pytorch" and summary.get("replicas", 1) > 1
        if other is not None and other > OTHERS_FLOOR and not torchrun:
            found.append(f"other processes used {other:.0%} of the CPUs")
        flags.append(found)
    return flags
