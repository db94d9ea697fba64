"""benchmarks/compare.py and the rounds of benchmarks.run: interleaving, paired intervals, noisy rounds."""
import numpy as np
import pytest

from benchmarks.compare import WARMUP_STEPS, Ratio, noise_flags, paired_ratio, steady, step_spread
from benchmarks.run import interleaved, run_name


def test_rounds_take_every_framework_once_before_any_runs_again():
    order = interleaved(2, range(7, 9), ["pytorch", "jax"])
    assert order == [(1, 7, "pytorch"), (1, 7, "jax"), (1, 8, "pytorch"), (1, 8, "jax"),
                     (2, 7, "pytorch"), (2, 7, "jax"), (2, 8, "pytorch"), (2, 8, "jax")]
    assert [run_name("jax", 7, 2, repeat, rounds) for repeat, rounds in ((1, 1), (2, 1), (1, 3), (2, 3))] == [
        "jax", "jax-seed7", "jax-round2", "jax-seed7-round2"]


def _steps(median_s, rounds, jitter=0.02, n=400, seed=0):
    """Per-round step times around median_s (one drift factor a round, given), with a little noise."""
    rng = np.random.default_rng(seed)
    return [median_s * drift * (1 + jitter * rng.standard_normal(n)) for drift in rounds]


def test_constant_steps_give_the_exact_ratio_with_no_width():
    ratio = paired_ratio([np.full(100, 0.010)] * 3, [np.full(100, 0.020)] * 3)
    assert (ratio.median, ratio.low, ratio.high, ratio.rounds) == (0.5, 0.5, 0.5, 3)
    assert not ratio.tied and ratio.text() == "0.50× [0.50–0.50]"


def test_tokens_per_step_enter_the_ratio():
    ratio = paired_ratio([np.full(50, 0.010)], [np.full(50, 0.010)], tokens_ratio=2.0)
    assert ratio.median == ratio.low == ratio.high == 2.0


def test_a_framework_twice_as_slow_is_half_within_a_narrow_interval():
    ratio = paired_ratio(_steps(0.010, [1.0, 1.0, 1.0]), _steps(0.020, [1.0, 1.0, 1.0], seed=1))
    assert ratio.low < 0.5 < ratio.high
    assert ratio.high - ratio.low < 0.01
    assert abs(ratio.median - 0.5) < 0.005


def test_the_same_speed_is_a_tie():
    ratio = paired_ratio(_steps(0.010, [1.0, 1.0, 1.0]), _steps(0.010, [1.0, 1.0, 1.0], seed=1))
    assert ratio.tied and ratio.text().endswith(", tied")


def test_drift_between_rounds_widens_the_interval_past_the_step_noise():
    """The baseline's rounds ran 10% slow, normal and 10% fast against a steady other: the step noise
    alone says ±0.3%, the rounds say about ±10%, and the ratio is a tie."""
    base = _steps(0.010, [1.1, 1.0, 0.9], jitter=0.01)
    other = _steps(0.010, [1.0, 1.0, 1.0], jitter=0.01, seed=1)
    ratio = paired_ratio(base, other)
    assert abs(ratio.median - 1.0) < 0.01
    assert ratio.low < 0.95 and ratio.high > 1.05 and ratio.tied
    one_round = paired_ratio(base[1:2], other[1:2])
    assert one_round.high - one_round.low < 0.01


def test_pairing_is_by_round_so_a_slow_minute_shared_by_both_cancels():
    """Both frameworks ran 30% slow in round 2: paired, the ratio stays 0.8 with a narrow interval."""
    base = _steps(0.010, [1.0, 1.3, 1.0])
    other = _steps(0.0125, [1.0, 1.3, 1.0], seed=1)
    ratio = paired_ratio(base, other)
    assert abs(ratio.median - 0.8) < 0.01 and ratio.high - ratio.low < 0.03


def test_rounds_must_pair_up():
    with pytest.raises(ValueError, match="paired rounds"):
        paired_ratio([np.ones(3)], [np.ones(3), np.ones(3)])


def test_warm_up_steps_are_left_out():
    times = [5.0] * WARMUP_STEPS + [0.01] * 20
    assert steady(times).max() == 0.01
    assert len(steady([1.0] * 3)) == 3  # a run shorter than the warm-up keeps its steps


def _summary(spread=0.1, steal=0.0, others=0.0, framework="jax", replicas=1):
    return {"framework": framework, "replicas": replicas, "median_step_ms": 10.0, "p10_step_ms": 10.0 - 5 * spread,
            "p90_step_ms": 10.0 + 5 * spread, "noise": {"steal_frac": steal, "others_cpu_frac": others}}


def test_a_round_with_a_spread_far_above_the_others_is_flagged():
    summaries = [_summary(0.10), _summary(0.12), _summary(0.09), _summary(0.45), _summary(0.11)]
    assert step_spread(summaries[3]) == pytest.approx(0.45)
    flags = noise_flags(summaries)
    assert [bool(f) for f in flags] == [False, False, False, True, False]
    assert flags[3] == ["step spread 45% (typical 11%)"]


def test_steal_and_other_processes_are_flagged():
    summaries = [_summary(), _summary(steal=0.08), _summary(), _summary(others=0.4),
                 _summary(others=0.4, framework="pytorch", replicas=2)]  # torchrun's other ranks are not noise
    flags = noise_flags(summaries)
    assert flags[1] == ["steal 8.0% (typical 0.0%)"]
    assert flags[3] == ["other processes used 40% of the CPUs"]
    assert flags[0] == flags[2] == flags[4] == []


def test_an_evenly_noisy_machine_flags_no_round():
    assert noise_flags([_summary(0.3), _summary(0.32), _summary(0.29)]) == [[], [], []]


def test_ratio_text_names_ties():
    assert Ratio(0.98, 0.93, 1.02, 3).text() == "0.98× [0.93–1.02], tied"
    assert Ratio(1.25, 1.2, 1.31, 3).text() == "1.25× [1.20–1.31]"
