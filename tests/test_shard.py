"""Fully sharded data parallelism (--shard) on each framework's own engine: the same computation as one
device, with each device holding about half of the training state.

As in test_parallel.py the steps are taken from a trained state (step 10 of a one-device run): a
sharded run resumes it for one step, and a one-device run resumes the sharded run's checkpoint for
the next, so checkpoints cross a change of device count both ways. Every figure is compared with
the one-device run that took both steps itself.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from common.checkpoint import load_checkpoint
from common.config import get_preset
from tests.conftest import REPO, framework_param
from tests.reference import assert_trained_params_match


def _harness(*args, env=None):
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _train(*args):
    result = _harness(*args, "--sample-tokens", "8", "--num-samples", "1")
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(folder):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["type"] == "train"}


def _resume(folder, step: int, **changes):
    (folder / "checkpoints" / "latest").write_text(f"step_{step:07d}")
    config = json.loads((folder / "config.json").read_text())
    config.update({k: v for k, v in changes.items() if k != "max_iters"})
    config["train"]["max_iters"] = changes.get("max_iters", config["train"]["max_iters"])
    (folder / "config.json").write_text(json.dumps(config))
    _train("--resume", str(folder))


@pytest.mark.parametrize("framework", [framework_param(f) for f in ("pytorch", "jax", "keras-jax")])
def test_a_sharded_step_is_the_single_device_step(framework, tmp_path, shakespeare_path):
    _train("--framework", framework, "--preset", "tiny", "--device", "cpu", "--max-iters", "12",
           "--checkpoint-every", "10", "--out", str(tmp_path / "single"))
    single = tmp_path / "single" / framework
    sharded = tmp_path / "sharded" / framework
    shutil.copytree(single, sharded)
    _resume(sharded, 10, shard=2, max_iters=11)  # step 10 on two devices, from one device's checkpoint

    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["shard"] == 2
    state = summary["state_bytes"]
    whole = 16 * summary["params"]  # four float32 copies of every parameter
    assert 0.45 <= summary["state_share"] <= 0.55 and sum(state.values()) == pytest.approx(summary["state_share"] * whole)
    assert state["grads"] == state["params"] and state["adam"] == 2 * state["params"]
    assert abs(_losses(sharded)[10] - _losses(single)[10]) <= 1e-5

    _resume(sharded, 11, shard=1, max_iters=12)  # step 11 on one device, from the sharded run's checkpoint
    assert json.loads((sharded / "summary.json").read_text())["shard"] == 1
    assert abs(_losses(sharded)[11] - _losses(single)[11]) <= 1e-5
    expected, _ = load_checkpoint(single / "model.safetensors")
    actual, info = load_checkpoint(sharded / "model.safetensors")
    assert info["step"] == 12
    assert_trained_params_match(actual, expected, 1e-5, get_preset("tiny")[0].n_embd)


def test_tensorflow_refuses_to_shard_in_one_line(tmp_path):
    result = _harness("--framework", "tensorflow", "--preset", "tiny", "--shard", "2", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no parameter sharding" in result.stderr and "--replicas" in result.stderr
    assert not any(tmp_path.iterdir())


def test_shard_and_replicas_together_are_refused(tmp_path):
    result = _harness("--framework", "jax", "--preset", "tiny", "--shard", "2", "--replicas", "2", "--out", str(tmp_path))
    assert result.returncode == 2 and "drop --replicas" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_device_memory_must_be_a_size(value, tmp_path):
    result = _harness("--framework", "jax", "--preset", "tiny", "--device-memory", value, "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--device-memory is a size" in result.stderr


def test_gpt2_xl_is_planned_before_its_weights_are_fetched(tmp_path):
    """nanoGPT's finetune_shakespeare from gpt2-xl on 24 GiB devices: refused on one, with the fix
    named, and planned on two, without a byte of its 6 GB of weights (this machine is offline)."""
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = ("--framework", "pytorch", "--init-from", "gpt2-xl", "--preset", "finetune-shakespeare",
               "--device-memory", "24", "--out", str(tmp_path / "runs"))
    one = _harness(*command, env=offline)
    assert one.returncode == 2 and one.stderr.count("\n") == 1
    assert "a device has 21.6 GiB usable" in one.stderr
    assert "--shard 2 --set batch_size=2 --set grad_accum=16 fits" in one.stderr

    two = _harness(*command, "--shard", "2", "--set", "batch_size=2", "--set", "grad_accum=16", "--plan", env=offline)
    assert two.returncode == 0, two.stderr
    assert "[pytorch] 48 layers of 1600, 2 device(s):" in two.stderr and "24.0 GiB a device" in two.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "hf").exists()
