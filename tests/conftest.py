"""Shared fixtures; each framework's tests skip with a reason when it is not installed."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from common.backend import FRAMEWORKS, missing_modules  # noqa: E402  (after KERAS_BACKEND is set)
from common.allocator import retain_freed_memory  # noqa: E402

# As in every benchmark run: freed host memory stays for reuse (common/allocator.py), so the compiled
# steps that the tests run in this process do not page-fault their scratch memory in on every call.
retain_freed_memory()

REPO = Path(__file__).resolve().parents[1]

# Pytest markers are identifiers: the keras-jax row's marker is keras_jax.
_MARKERS = {framework.replace("-", "_"): framework for framework in FRAMEWORKS}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, framework in _MARKERS.items():
            if item.get_closest_marker(marker) is None:
                continue
            missing = missing_modules(framework)
            if missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"{framework} not installed (missing {', '.join(missing)}): "
                           f'pip install -e ".[{framework}]"'))


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The real corpus, where the project looks for it; tests that need it skip without it."""
    from common.data import data_dir
    path = data_dir() / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"Tiny Shakespeare not at {path}; .ci/run places it there")
    return path


@pytest.fixture(scope="session")
def shakespeare_tokens(shakespeare_path):
    """Tiny Shakespeare's training split as char token ids (the vocabulary has 65 characters)."""
    import numpy as np
    from common.data import split_text
    from common.tokenizers import CharTokenizer
    train_text, _ = split_text(shakespeare_path.read_text(encoding="utf-8"))
    return np.asarray(CharTokenizer.train(train_text).encode(train_text), dtype=np.uint16)


@pytest.fixture(scope="session")
def trained_params(shakespeare_tokens):
    """The parity config trained 150 steps by PyTorch, so greedy decoding has clear winners."""
    pytest.importorskip("torch", reason="PyTorch trains the shared test model")
    from common.data import get_batch
    from common.params import init_params
    from pytorch_impl.backend import Backend
    from tests.test_parity import CONFIG, TRAIN
    backend = Backend(CONFIG, TRAIN, init_params(CONFIG, 0), device="cpu")
    for step in range(150):
        x, y = get_batch(shakespeare_tokens, 32, CONFIG.block_size, 1, step)
        backend.train_step(x, y, 3e-3)
    return backend.export_params()
