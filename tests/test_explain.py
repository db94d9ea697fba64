"""python -m benchmarks.explain and Backend.inspect: what the models compute inside, in every framework."""
import base64
import functools
import math
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from benchmarks import explain, study
from common.checkpoint import save_checkpoint
from common.config import GPTConfig
from common.params import init_params
from common.sampling import filter_logits
from common.tokenizers import CharTokenizer
from tests.conftest import BACKENDS, SMALL_CONFIG, make_backend
from tests.reference import _dense, _gelu, _layer_norm, relative_error

PROMPT = [3, 14, 15, 9, 26, 5, 35]  # 7 of SMALL_CONFIG's 8 positions


def sharp_params(config: GPTConfig) -> dict:
    """Random weights scaled up until the heads attend unevenly, so that weights which were off
    would show (at the initial scale every row is close to uniform)."""
    params = init_params(config, 3)
    return {n: v * 4 if n in ("wte", "wpe") else v * 20 if n.endswith("c_attn.weight") else v
            for n, v in params.items()}


def reference(params: dict, config: GPTConfig, ids: list[int]) -> dict[str, np.ndarray]:
    """Backend.inspect's arrays in float64 numpy, from the canonical parameters alone."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    T, nh, eps = len(ids), config.n_head, config.layer_norm_eps
    hs = config.n_embd // nh
    x = p["wte"][ids] + p["wpe"][:T]
    attention, norms = [], []
    for i in range(config.n_layer):
        q, k, v = np.split(_dense(_layer_norm(x, p, f"h.{i}.ln_1", eps), p, f"h.{i}.attn.c_attn"), 3, axis=-1)
        q, k, v = (t.reshape(T, nh, hs).transpose(1, 0, 2) for t in (q, k, v))  # (nh, T, hs)
        scores = np.where(np.tril(np.ones((T, T), dtype=bool)), q @ k.transpose(0, 2, 1) / math.sqrt(hs), -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attn_out = _dense((weights @ v).transpose(1, 0, 2).reshape(T, -1), p, f"h.{i}.attn.c_proj")
        h = x + attn_out
        mlp_out = _dense(_gelu(_dense(_layer_norm(h, p, f"h.{i}.ln_2", eps), p, f"h.{i}.mlp.c_fc"),
                               config.gelu_approximate), p, f"h.{i}.mlp.c_proj")
        attention.append(weights)
        norms.append([np.linalg.norm(t, axis=-1) for t in (x, attn_out, mlp_out)])
        x = h + mlp_out
    logits = _layer_norm(x, p, "ln_f", eps) @ p["wte"].T
    return {"logits": logits, "attention": np.array(attention), "norms": np.array(norms)}


@functools.cache
def inspected(framework: str) -> tuple:
    backend = make_backend(framework, params=sharp_params(SMALL_CONFIG))
    return backend, backend.inspect(PROMPT)


@pytest.mark.parametrize("framework", BACKENDS)
def test_attention_rows_sum_to_one_and_see_no_future(framework):
    _, seen = inspected(framework)
    attention = seen["attention"]
    assert attention.shape == (SMALL_CONFIG.n_layer, SMALL_CONFIG.n_head, len(PROMPT), len(PROMPT))
    assert np.abs(attention.sum(-1) - 1).max() <= 1e-6
    future = np.triu(np.ones((len(PROMPT),) * 2, dtype=bool), 1)
    assert np.all(attention[..., future] == 0)
    assert np.all(attention[..., ~future] > 0)


@pytest.mark.parametrize("framework", BACKENDS)
def test_inspection_equals_the_numpy_reference(framework):
    _, seen = inspected(framework)
    want = reference(sharp_params(SMALL_CONFIG), SMALL_CONFIG, PROMPT)
    uniform = np.tril(np.ones((len(PROMPT),) * 2)) / np.arange(1, len(PROMPT) + 1)[:, None]
    assert np.abs(want["attention"] - uniform).max() > 0.3  # heads that pick: a real test of the weights
    for key in ("attention", "norms", "logits"):
        assert seen[key].shape == want[key].shape, key
        assert relative_error(seen[key], want[key]) <= 1e-5, key


@pytest.mark.parametrize("framework", BACKENDS)
def test_asking_for_the_weights_leaves_the_logits_as_they_were(framework):
    backend, seen = inspected(framework)
    plain = backend.logits(np.asarray([PROMPT], dtype=np.int32))[0]  # the default path, which keeps no weights
    assert relative_error(seen["logits"], plain) <= 1e-5
    assert np.array_equal(backend.inspect(PROMPT)["attention"], seen["attention"])  # recording is switched off
    assert np.array_equal(backend.logits(np.asarray([PROMPT], dtype=np.int32))[0], plain)  # and back again


@pytest.mark.pytorch
@pytest.mark.parametrize("prompt, message", [
    ([], "the prompt is empty"),
    ([3, 65], "prompt token 65 is outside the vocabulary"),
    (list(range(9)), "more than block_size 8"),
])
def test_inspect_refuses_a_prompt_the_model_cannot_read(prompt, message):
    from common.errors import UserError
    backend, _ = inspected("pytorch")
    with pytest.raises(UserError, match=message):
        backend.inspect(prompt)


# --- what the plots show -----------------------------------------------------------------------

def test_the_next_token_chart_keeps_what_the_sampling_rules_keep():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    top_k = explain.sampling_probabilities(logits, 1.0, 3, None)
    assert np.allclose(top_k, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])
    nucleus = explain.sampling_probabilities(logits, 1.0, None, 0.6)  # 0.5 alone is short of 0.6
    assert np.allclose(nucleus, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    assert np.array_equal(explain.sampling_probabilities(logits, 0.0, None, None), [1, 0, 0, 0, 0])
    hot = explain.sampling_probabilities(logits, 2.0, None, None)
    assert np.allclose(hot, explain.softmax(filter_logits(logits, 2.0, None, None)))
    assert np.allclose(hot, np.sqrt([0.5, 0.2, 0.15, 0.1, 0.05]) / np.sqrt([0.5, 0.2, 0.15, 0.1, 0.05]).sum())


def test_pca_recovers_points_that_lie_in_a_plane():
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(30, 2)) * [3.0, 1.0]
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    table = np.concatenate([flat, np.zeros((30, 4))], axis=1) @ rotation + 5.0  # a plane in 6-D, off the origin
    points, share = explain.pca_2d(table)
    distances = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    assert np.allclose(distances(points), distances(flat))
    assert np.isclose(share.sum(), 1.0) and share[0] > share[1]


def test_position_similarity_is_one_on_the_diagonal_and_symmetric():
    wpe = np.random.default_rng(1).normal(size=(10, 4))
    similarity = explain.cosine_similarity(wpe)
    assert np.allclose(np.diag(similarity), 1) and np.allclose(similarity, similarity.T)
    assert np.isclose(similarity[2, 7], wpe[2] @ wpe[7] / np.linalg.norm(wpe[2]) / np.linalg.norm(wpe[7]))


def test_token_labels_show_spaces_and_newlines():
    tokenizer = CharTokenizer.train("a b\n")
    assert [explain.token_label(tokenizer, i) for i in range(tokenizer.vocab_size)] == ["\\n", "␣", "a", "b"]
    assert [explain.character_class(c) for c in ("a", "b", "7", ",", "\n", " b")] == \
        ["vowel", "consonant", "digit", "punctuation", "space", "consonant"]


# --- the command and its page --------------------------------------------------------------------

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
TOKENIZER = CharTokenizer.train(TEXT)
CONFIG = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The folder of a --framework all run, holding only what explain reads: the PyTorch run's weights."""
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "pytorch" / "model.safetensors", sharp_params(CONFIG), CONFIG, step=0,
                    tokenizer_json=TOKENIZER.to_json(), framework="pytorch")
    return folder


class Page(HTMLParser):
    """The sections and images of a page, and every address it refers to."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.names, self.addresses, self.tags = [], [], [], [], set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
            self.names.append(attrs["alt"])
        self.addresses += [value for name, value in attrs.items() if name in ("src", "href")]


def png_bytes(src: str) -> bytes:
    return base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)


def check_page(text: str, frameworks: list[str]) -> Page:
    page = Page(text)
    assert page.sections == list(explain.SECTIONS)
    assert not page.tags & {"script", "link", "iframe"} and "url(" not in text
    assert all(a.startswith("data:image/png;base64,") for a in page.addresses)  # nothing fetched
    per_framework = ("attention", "next-token", "residual")
    assert len(page.images) == len(per_framework) * len(frameworks) + 2
    for src in page.images:
        png = png_bytes(src)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 200 and height > 200
    return page


@pytest.fixture(scope="module")
def page_dir(run_dir):
    """The page for every installed framework (keras-jax in a process of its own), through the command,
    written where it goes by default: explain/ in the run folder."""
    assert explain.main([str(run_dir), "--prompt", "First Citizen", "--framework", "all"]) == 0
    return run_dir / "explain"


def test_the_command_writes_a_self_contained_page_with_every_framework(page_dir, capsys):
    from common.backend import FRAMEWORKS, is_installed
    frameworks = [f for f in FRAMEWORKS if is_installed(f)]
    text = (page_dir / "index.html").read_text(encoding="utf-8")
    check_page(text, frameworks)
    for framework in frameworks:
        assert (page_dir / f"attention-{framework}.png").read_bytes().startswith(b"\x89PNG")
    assert "First Citizen" in text and "pytorch/model.safetensors" in text
    differences = [float(d) for d in re.findall(r"Largest difference between frameworks[^:]*: ([0-9.e+-]+)", text)]
    assert len(differences) == len(explain.SECTIONS)  # parity made visible, beside each plot
    assert max(differences) <= 1e-5


def test_the_page_renders_in_headless_chromium(page_dir):
    if study.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed although .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    dom = study.run_chromium(page_dir / "index.html", "--dump-dom").stdout
    page = Page(dom)
    assert page.sections == list(explain.SECTIONS)
    assert len(page.images) == len(Page((page_dir / "index.html").read_text(encoding="utf-8")).images)


@pytest.mark.pytorch
def test_a_gpt2_folder_is_explained_with_its_own_tokens(tmp_path, capsys):
    """--init-from: BPE tokens as labels, and of a vocabulary over LABELLED_TOKENS only the prompt's
    tokens labelled in the embedding plot."""
    pytest.importorskip("transformers")
    from tests.test_hf_gpt2 import save_gpt2_folder, tiny_bpe, tiny_gpt2
    tokenizer = tiny_bpe()
    folder = save_gpt2_folder(tiny_gpt2(tokenizer), tokenizer, tmp_path / "gpt2")
    assert tokenizer.vocab_size > explain.LABELLED_TOKENS
    assert explain.main(["--init-from", str(folder), "--prompt", "the quick brown fox", "--out",
                         str(tmp_path / "page")]) == 0, capsys.readouterr().err
    check_page((tmp_path / "page" / "index.html").read_text(encoding="utf-8"), ["pytorch"])
    labels = [explain.token_label(tokenizer, t) for t in tokenizer.encode("the quick brown fox")]
    assert len(labels) < len("the quick brown fox") and "␣quick" in labels


def test_the_committed_example_is_a_complete_page():
    from tests.conftest import REPO
    example = REPO / "docs" / "explain"
    text = (example / "index.html").read_text(encoding="utf-8")
    page = check_page(text, ["pytorch", "tensorflow", "jax", "keras-jax"])
    for name, src in zip(page.names, page.images):  # the PNGs beside it are the page's own
        assert (example / f"{name}.png").read_bytes() == png_bytes(src), name
    differences = [float(d) for d in re.findall(r"Largest difference between frameworks[^:]*: ([0-9.e+-]+)", text)]
    assert len(differences) == len(explain.SECTIONS) and max(differences) <= 1e-5


@pytest.mark.parametrize("args, message", [
    (["{run}/nowhere", "--prompt", "First"], "no run folder at"),
    (["{empty}", "--prompt", "First"], "holds no run"),
    (["{run}", "--prompt", "Zebra"], "not in the tokenizer's vocabulary"),
    (["{run}", "--prompt", ""], "the prompt is empty"),
    (["{run}", "--prompt", "First Citizen: hear"], "more than block_size 16"),
    (["--prompt", "First"], "name the weights"),
    (["{run}", "--init-from", "{run}", "--prompt", "First"], "name the weights, once"),
    (["{run}", "--prompt", "First", "--top-p", "2"], "top_p must be above 0"),
    (["{run}", "--prompt", "First", "--framework", "caffe"], "unknown framework"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, message):
    args = [a.format(run=run_dir, empty=tmp_path) for a in args]
    assert explain.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
