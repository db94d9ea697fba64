"""Data parallelism on each framework's own engine: one step on 2 replicas equals one step on 1."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common.checkpoint import load_checkpoint
from tests.conftest import REPO
from tests.reference import relative_error


def _one_step(framework: str, replicas: int, out) -> tuple[float, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--framework", framework, "--preset", "tiny", "--device", "cpu",
         "--max-iters", "1", "--replicas", str(replicas), "--out", str(out), "--sample-tokens", "8",
         "--num-samples", "1"], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    folder = out / framework
    loss = next(json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                if '"train"' in line)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["replicas"] == replicas
    params, _ = load_checkpoint(folder / "model.safetensors")
    return loss, params


@pytest.mark.parametrize("framework", [pytest.param("pytorch", marks=pytest.mark.pytorch)])
def test_two_replicas_take_the_single_device_step(framework, tmp_path, shakespeare_path):
    single_loss, single = _one_step(framework, 1, tmp_path / "single")
    parallel_loss, parallel = _one_step(framework, 2, tmp_path / "parallel")
    assert abs(parallel_loss - single_loss) <= 1e-5
    for name, expected in single.items():
        assert relative_error(parallel[name], expected) <= 1e-5, name
