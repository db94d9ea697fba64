"""Data parallelism on each framework's own engine: a step on 2 replicas equals the step on 1.

The step is taken from a trained state (step 10 of a run, Adam's moments filled in), resumed once on
one device and once on two. From the initial state the comparison would be ill-conditioned: Adam's
first update is about lr·g/(|g| + eps), which turns the rounding noise of near-zero gradients (the
summation order differs with the split) into differences of the order of the update itself.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from common.checkpoint import load_checkpoint
from common.config import get_preset
from tests.conftest import REPO
from tests.reference import assert_trained_params_match


def _harness(*args):
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", *args, "--sample-tokens", "8",
                             "--num-samples", "1"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def _step_ten(folder):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in records if r["type"] == "train" and r["step"] == 10)


# grad_accum 2: each micro-batch split over the replicas.
@pytest.mark.parametrize("framework", [pytest.param(f, marks=getattr(pytest.mark, f))
                                       for f in ("pytorch", "jax", "tensorflow")])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_replicas_take_the_single_device_step(framework, grad_accum, tmp_path, shakespeare_path):
    _harness("--framework", framework, "--preset", "tiny", "--device", "cpu", "--max-iters", "11",
             "--checkpoint-every", "10", "--set", f"grad_accum={grad_accum}", "--out", str(tmp_path / "single"))
    single = tmp_path / "single" / framework
    parallel = tmp_path / "parallel" / framework
    shutil.copytree(single, parallel)
    (parallel / "checkpoints" / "latest").write_text("step_0000010")
    config = json.loads((parallel / "config.json").read_text())
    (parallel / "config.json").write_text(json.dumps({**config, "replicas": 2}))
    _harness("--resume", str(parallel))

    assert json.loads((parallel / "summary.json").read_text())["replicas"] == 2
    assert json.loads((parallel / "config.json").read_text())["train"]["grad_accum"] == grad_accum
    assert abs(_step_ten(parallel) - _step_ten(single)) <= 1e-5
    expected, _ = load_checkpoint(single / "model.safetensors")
    actual, info = load_checkpoint(parallel / "model.safetensors")
    assert info["step"] == 11
    assert_trained_params_match(actual, expected, 1e-5, get_preset("tiny")[0].n_embd)
