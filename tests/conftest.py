"""Shared fixtures; each framework's tests skip with a reason when it is not installed."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from common.backend import FRAMEWORKS, load_backend, missing_modules  # noqa: E402  (after KERAS_BACKEND is set)
from common.allocator import retain_freed_memory  # noqa: E402
from common.config import GPTConfig, TrainConfig  # noqa: E402
from common.params import init_params  # noqa: E402

# As in every benchmark run: freed host memory stays for reuse (common/allocator.py), so the compiled
# steps that the tests run in this process do not page-fault their scratch memory in on every call.
retain_freed_memory()

REPO = Path(__file__).resolve().parents[1]

# The parity model: what every framework is compared on, and trained 150 steps for generation tests.
PARITY_CONFIG = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0, bias=True)
PARITY_TRAIN = TrainConfig(batch_size=8, max_iters=50, lr=3e-3, min_lr=3e-4, warmup_iters=10, lr_decay_iters=50,
                           beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=10, eval_iters=2)
# The contract tests' model: tiny, because every compiled function costs seconds of XLA compilation
# on 2 cores.
SMALL_CONFIG = GPTConfig(vocab_size=65, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
SMALL_TRAIN = TrainConfig(batch_size=4, max_iters=10, lr=1e-2, min_lr=1e-3, warmup_iters=3, lr_decay_iters=10,
                          beta2=0.99, weight_decay=0.1, grad_clip=0.5, eval_interval=5, eval_iters=1)

# Keras reads its backend once per process. Under KERAS_BACKEND=jax, which tests/test_keras_jax.py
# sets for a process of its own, the Keras model on JAX (keras-jax) takes the TensorFlow row's place.
KERAS_ROW = "keras-jax" if os.environ.get("KERAS_BACKEND") == "jax" else "tensorflow"


def framework_param(framework: str):
    """A pytest parameter for one framework, marked so that it skips (saying why) where not installed."""
    return pytest.param(framework, marks=getattr(pytest.mark, framework.replace("-", "_")))


BACKENDS = [framework_param(f) for f in ("pytorch", "jax", KERAS_ROW)]  # every framework this process runs


def make_backend(framework: str, config: GPTConfig = SMALL_CONFIG, train: TrainConfig = SMALL_TRAIN,
                 params: dict | None = None, **kwargs):
    params = params if params is not None else init_params(config, 0)
    return load_backend(framework)(config, train, params, device="cpu", **kwargs)


def random_batch(config: GPTConfig, batch_size: int = 3, seed: int = 0):
    """Uniformly random (x, y) int32 token ids, (batch_size, block_size) each."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return (rng.integers(0, config.vocab_size, (batch_size, config.block_size), dtype=np.int32),
            rng.integers(0, config.vocab_size, (batch_size, config.block_size), dtype=np.int32))


def decisive_params(config: GPTConfig) -> dict:
    """Random weights scaled up so greedy decoding has clear winners (no float near-ties)."""
    params = init_params(config, 1)
    return {n: v * 8 if n in ("wte", "wpe") or n.endswith("c_fc.weight") else v for n, v in params.items()}

# Pytest markers are identifiers: the keras-jax row's marker is keras_jax.
_MARKERS = {framework.replace("-", "_"): framework for framework in FRAMEWORKS}


# The files with the longest tests, longest first. Under pytest-xdist each worker takes whole files in
# collection order (README: --dist loadfile), so these start at once rather than last, alone on one worker.
LONGEST_FILES = ("test_keras_jax.py", "test_benchmarks.py", "test_parallel.py", "test_resume.py")


def pytest_configure(config):
    # xdist's loadfile hands out the files with the most tests first unless told otherwise, which put
    # test_keras_jax.py (one test, two minutes) last, alone on one worker.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if hasattr(config, "workerinput"):  # an xdist worker, before any test module imports a framework
        _pin_to_own_cores(int(config.workerinput["workerid"].removeprefix("gw")), config.workerinput["workercount"])


def _pin_to_own_cores(worker: int, workers: int):
    """Keep this xdist worker, and the processes it starts, to its own share of the cores.

    Every framework sizes its thread pools to the cores it may use. Unpinned, two workers each run
    two-thread pools on two cores, and the pools' threads wait on each other: the suite took 11m56s
    against 10m47s pinned, on 2 cores."""
    if not hasattr(os, "sched_setaffinity"):  # Linux only
        return
    cores = sorted(os.sched_getaffinity(0))
    if 1 < workers <= len(cores):
        # A worker that replaces a crashed one counts on (gw2 of two): it takes the crashed one's cores.
        os.sched_setaffinity(0, cores[worker % workers::workers])


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
    items.sort(key=rank)  # stable: every file keeps its own order
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
    backend = make_backend("pytorch", PARITY_CONFIG, PARITY_TRAIN)
    for step in range(150):
        x, y = get_batch(shakespeare_tokens, 32, PARITY_CONFIG.block_size, 1, step)
        backend.train_step(x, y, 3e-3)
    return backend.export_params()
