"""keras-jax: the Keras GPT on Keras' JAX backend held to the same contract and parity bar as the
TensorFlow row.

Keras picks its backend once per process and this one runs Keras on TensorFlow, so the contract,
parity, decode, explain and quantize modules run again in a child process under KERAS_BACKEND=jax, where their
Keras row is keras-jax.
"""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.keras_jax, pytest.mark.pytorch, pytest.mark.parity, pytest.mark.slow]


def test_contract_and_parity_pass_for_keras_on_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_backend.py", "tests/test_parity.py", "tests/test_decode.py",
                             "tests/test_explain.py", "tests/test_quantize.py", "-k", "keras-jax"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", tail).group(1))
    assert passed >= 43 and "skipped" not in tail.splitlines()[-1], tail  # every keras-jax case ran
