"""The code study page (benchmarks/study.py) and the Transformer guide (docs/transformer.md).

The page's cells must be the current source of the symbols they name, and the guide's worked
numbers must be what the code computes; both are parsed here so neither can drift unnoticed.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np
import pytest

from benchmarks import study
from benchmarks.study import FRAMEWORKS, SECTIONS, Section
from common.config import get_preset
from common.params import num_params, param_shapes

REPO = study.REPO
PAGE = REPO / "study" / "index.html"
GUIDE = REPO / "docs" / "transformer.md"
REGENERATE = "the study is out of date: run `python -m benchmarks.study` and commit study/"
PRESETS = ("tiny", "cpu-baby", "shakespeare-char")
# The order, the order data flows.
SECTION_ORDER = ("config", "data", "embedding", "attention", "mlp", "block", "model", "weights", "optimizer",
                 "train-step", "generation", "data-parallel")


def _framework_of(symbol: str) -> str:
    package = symbol.split(".", 1)[0]
    return package.removesuffix("_impl") if package.endswith("_impl") else "common"


# --- reading a page back -----------------------------------------------------------------------

@dataclass
class PageCell:
    column: str
    code: dict[str, list[str]] = field(default_factory=dict)  # symbol -> source lines, as displayed
    highlighted: set[str] = field(default_factory=set)       # symbols whose code has Pygments tokens
    notes: list[str] = field(default_factory=list)           # classes of <p> notes: todo, missing


@dataclass
class PageSection:
    slug: str
    cells: list[PageCell] = field(default_factory=list)
    todo: bool = False


class StudyPage(HTMLParser):
    """Sections, their cells and each cell's code, from the markup study.py writes (or a browser's DOM)."""

    VOID = {"meta", "link", "br", "img", "hr", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[PageSection] = []
        self.column_heads: list[str] = []
        self.tags: list[str] = []
        self._stack: list[tuple[str, str | None]] = []
        self._figure: str | None = None
        self._line: list[str] | None = None
        self._in_head = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in self.VOID:
            return
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        role = None
        if "data-section" in a:
            self.sections.append(PageSection(a["data-section"]))
        elif "data-framework" in a:
            self.sections[-1].cells.append(PageCell(a["data-framework"]))
        elif "data-symbol" in a:
            self._figure, role = a["data-symbol"], "figure"
            self.sections[-1].cells[-1].code[self._figure] = []
        elif tag == "span" and "ln" in classes:
            self._line, role = [], "line"
        elif tag == "span" and self._line is not None and classes:
            self.sections[-1].cells[-1].highlighted.add(self._figure)
        elif tag == "p" and {"todo", "missing"} & set(classes):
            if self.sections and self.sections[-1].cells:
                self.sections[-1].cells[-1].notes.extend(sorted({"todo", "missing"} & set(classes)))
            elif self.sections:
                self.sections[-1].todo = True
        elif tag == "div" and "colheads" in classes:
            role = "colheads"
        elif tag == "div" and any(c.startswith("c-") for c in classes) and self._in_head:
            self.column_heads.append(classes[0].removeprefix("c-"))
        self._in_head = self._in_head or role == "colheads"
        self._stack.append((tag, role))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self._stack:
            open_tag, role = self._stack.pop()
            if role == "line":
                self.sections[-1].cells[-1].code[self._figure].append("".join(self._line))
                self._line = None
            elif role == "figure":
                self._figure = None
            elif role == "colheads":
                self._in_head = False
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self._line is not None:
            self._line.append(data)


def _displayed(lines: list[str]) -> str:
    return "\n".join(lines).rstrip("\n")


def check_structure(page: StudyPage, sections: tuple[Section, ...] = SECTIONS) -> None:
    """Every section in order; three framework columns where the frameworks differ, one shared cell
    for common/ code; each cell holds its section's symbols, highlighted, and nothing is missing."""
    assert page.column_heads == list(FRAMEWORKS)
    assert [s.slug for s in page.sections] == [s.slug for s in sections]
    for expected, found in zip(sections, page.sections):
        cells = study.build_cells(expected)
        if not study.implemented(expected, cells):
            assert found.todo and not found.cells, f"{expected.slug}: expected the not-yet-implemented note"
            continue
        columns = (["common"] if expected.shared else []) + list(expected.columns)
        assert [c.column for c in found.cells] == columns, expected.slug
        if expected.columns and not expected.optional:
            assert tuple(expected.columns) == FRAMEWORKS, f"{expected.slug}: all three columns"
        for cell in found.cells:
            present = [s.symbol for s in cells[cell.column].snippets]
            assert list(cell.code) == present, f"{expected.slug}/{cell.column}"
            assert cell.highlighted == set(present), f"{expected.slug}/{cell.column}: not highlighted"
            if expected.optional:
                assert cell.notes == ["todo"] * len(cells[cell.column].missing)
            else:
                assert not cell.notes, f"{expected.slug}/{cell.column}: {cell.notes}"


def _committed_page() -> StudyPage:
    if not PAGE.is_file():
        pytest.fail(f"{PAGE.relative_to(REPO)} does not exist: {REGENERATE}")
    return StudyPage(PAGE.read_text(encoding="utf-8"))


# --- the section table and extraction ----------------------------------------------------------

def test_sections_follow_the_data_flow_and_name_every_framework():
    assert tuple(s.slug for s in SECTIONS) == SECTION_ORDER
    for section in SECTIONS:
        assert section.notes, f"{section.slug} has no notes on what differs"
        if not section.shared:
            assert section.columns == FRAMEWORKS, f"{section.slug} must name symbols in all three frameworks"
        for column in ("common", *FRAMEWORKS):
            for symbol in section.symbols(column):
                assert _framework_of(symbol) == column, f"{symbol} is in the {column} column"


def test_every_section_symbol_exists_in_every_framework():
    assert study.missing_symbols(study.build()) == []


def test_extract_returns_the_dedented_source_with_decorators():
    forward = study.extract("pytorch_impl.model:GPT.forward")
    assert forward.code.startswith("def forward(self, idx, cache: KVCache | None = None)")
    assert forward.path == "pytorch_impl/model.py"
    source = (REPO / forward.path).read_text().splitlines()
    assert source[forward.first_line - 1].strip().startswith("def forward(self, idx, cache: KVCache | None = None)")
    assert forward.code.rstrip().endswith("return logits, cache")
    # A decorated class starts at its decorator, as inspect.getsource has it.
    assert study.extract("tensorflow_impl.model:GPT").code.startswith("@keras.saving.register_keras_serializable")
    with pytest.raises(study.SymbolNotFound, match="no 'nope'"):
        study.extract("pytorch_impl.model:GPT.nope")
    with pytest.raises(study.SymbolNotFound, match="no file"):
        study.extract("pytorch_impl.nope:GPT")


def test_code_lines_count_neither_blanks_comments_nor_docstrings():
    source = textwrap.dedent('''\
        def f(x):
            """Docstring,
            on two lines."""
            # a comment

            y = """a string
            that is code"""  # trailing comment
            return (x +
                    y)
        ''')
    assert study.code_lines(source) == 5  # def, the two lines of y, the two of return


# --- the page ----------------------------------------------------------------------------------

def test_html_structure():
    html = study.render_html(study.build())
    check_structure(StudyPage(html))
    # Self-contained: no scripts, stylesheets, images or fonts fetched from anywhere.
    for outside in ("<script", "<link", "<img", "src=", "url(", "@import", "http://", "https://"):
        assert outside not in html, outside


def test_missing_symbols_show_and_optional_sections_wait():
    required = Section("required", "Required", notes=("n",), pytorch=("pytorch_impl.model:Nope",),
                       tensorflow=("tensorflow_impl.model:GPT",), jax=("jax_impl.model:GPT",))
    later = Section("later", "Later", notes=("n",), pytorch=("pytorch_impl.later",),
                    tensorflow=("tensorflow_impl.later",), jax=("jax_impl.later",), optional=True)
    partly = Section("partly", "Partly", notes=("n",), pytorch=("pytorch_impl.model",),
                     tensorflow=("tensorflow_impl.later",), jax=("jax_impl.later",), optional=True)
    built = [(s, study.build_cells(s)) for s in (required, later, partly)]
    assert study.missing_symbols(built) == ["pytorch_impl.model:Nope: no 'Nope' in pytorch_impl/model.py"]
    page = StudyPage(study.render_html(built))
    required_cells, later_section, partly_section = page.sections[0].cells, page.sections[1], page.sections[2]
    assert [c.notes for c in required_cells] == [["missing"], [], []]
    assert later_section.todo and not later_section.cells
    assert [c.notes for c in partly_section.cells] == [[], ["todo"], ["todo"]]
    assert "Not yet implemented in any framework" in study.render_markdown(built)


def test_committed_study_is_current():
    """study/index.html shows today's source, and study/index.md is what the generator writes today."""
    page = _committed_page()
    check_structure(page)
    for section in page.sections:
        for cell in section.cells:
            for symbol, lines in cell.code.items():
                assert _displayed(lines) == study.extract(symbol).code.rstrip("\n"), f"{symbol}: {REGENERATE}"
    markdown = (REPO / "study" / "index.md").read_text(encoding="utf-8")
    assert markdown == study.render_markdown(study.build()), REGENERATE


@pytest.mark.parametrize("framework", [
    "common",
    pytest.param("pytorch", marks=pytest.mark.pytorch),
    pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    pytest.param("jax", marks=pytest.mark.jax),
])
def test_page_cells_are_inspect_getsource(framework):
    """Each cell on the committed page against Python's own inspect.getsource of the live object."""
    checked = 0
    for section in _committed_page().sections:
        for cell in section.cells:
            for symbol, lines in cell.code.items():
                if _framework_of(symbol) != framework:
                    continue
                module, _, qualname = symbol.partition(":")
                obj = importlib.import_module(module)
                for part in qualname.split(".") if qualname else ():
                    obj = getattr(obj, part)
                expected = textwrap.dedent(inspect.getsource(obj))
                assert _displayed(lines) == expected.rstrip("\n"), f"{symbol}: {REGENERATE}"
                checked += 1
    assert checked >= 5


def test_page_renders_in_headless_chromium(tmp_path):
    if study.find_chromium() is None:
        if os.environ.get("CI"):  # .ci/run installs it: a missing browser there is a broken CI, not a skip
            pytest.fail("Chromium is not installed although .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium); test_html_structure "
                    "checks the same structure without a browser")
    study.write(tmp_path)
    dom = study.run_chromium(tmp_path / "index.html", "--dump-dom").stdout
    page = StudyPage(dom)
    check_structure(page)
    for section in page.sections:  # the browser's DOM still holds the exact source
        for cell in section.cells:
            for symbol, lines in cell.code.items():
                assert _displayed(lines) == study.extract(symbol).code.rstrip("\n"), symbol


# --- docs/transformer.md -----------------------------------------------------------------------

def _guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _table_after(text: str, marker: str) -> list[list[str]]:
    """Rows of the Markdown table after the line holding `marker` (that line not included), cells
    stripped, the rule under a header left out."""
    rows = []
    for line in text[text.index(marker):].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set("-:") for c in cells):
            rows.append(cells)
    return rows


def _number(cell: str) -> float:
    return float(cell.replace("*", "").replace(",", ""))


def _parameter_table() -> dict[str, dict[str, str]]:
    rows = _table_after(_guide(), "<!-- parameter counts")
    header = rows[0]
    assert header[2:] == list(PRESETS)
    return {row[0]: dict(zip(PRESETS, row[2:])) for row in rows[1:]}


def _sum(shapes: dict[str, tuple[int, ...]], *prefixes: str) -> int:
    return sum(math.prod(shape) for name, shape in shapes.items() if name.startswith(prefixes))


def test_guide_parameter_counts_are_derived_right():
    table = _parameter_table()
    for preset in PRESETS:
        config = get_preset(preset)[0]
        shapes = param_shapes(config)
        V, T, L, C, bias = (c.strip() for c in table["V, block_size, L, C, bias"][preset].split(","))
        assert (int(V), int(T), int(L), int(C), bias == "yes") == (
            config.vocab_size, config.block_size, config.n_layer, config.n_embd, config.bias)
        expected = {
            "`wte`": _sum(shapes, "wte"),
            "`wpe`": _sum(shapes, "wpe"),
            "`ln_1` + `ln_2`, one block": _sum(shapes, "h.0.ln_1.", "h.0.ln_2."),
            "`attn.c_attn`, one block": _sum(shapes, "h.0.attn.c_attn."),
            "`attn.c_proj`, one block": _sum(shapes, "h.0.attn.c_proj."),
            "`mlp.c_fc`, one block": _sum(shapes, "h.0.mlp.c_fc."),
            "`mlp.c_proj`, one block": _sum(shapes, "h.0.mlp.c_proj."),
            "one block": _sum(shapes, "h.0."),
            "all blocks": _sum(shapes, "h."),
            "`ln_f`": _sum(shapes, "ln_f."),
            "LM head": 0,
            "**total**": num_params(config),
            "total without `wpe`": num_params(config, include_position=False),
        }
        assert set(table) - {"V, block_size, L, C, bias"} == set(expected)
        for term, count in expected.items():
            assert _number(table[term][preset]) == count, f"{term} for {preset}"


def _framework_param_count(framework: str, config) -> int:
    """Trainable parameters counted through the framework's own API."""
    if framework == "pytorch":
        import torch

        from pytorch_impl.model import GPT
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            return sum(p.numel() for p in GPT(config).parameters() if p.requires_grad)
    if framework == "tensorflow":
        from tensorflow_impl.model import GPT
        model = GPT(config)
        model.build()
        return model.count_params()
    import jax
    from flax import nnx

    from jax_impl.model import GPT
    model = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))  # shapes only, as above
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("framework", [pytest.param("pytorch", marks=pytest.mark.pytorch),
                                       pytest.param("tensorflow", marks=pytest.mark.tensorflow),
                                       pytest.param("jax", marks=pytest.mark.jax)])
def test_guide_totals_are_each_frameworks_own_count(framework):
    totals = _parameter_table()["**total**"]
    for preset in PRESETS:
        assert _framework_param_count(framework, get_preset(preset)[0]) == _number(totals[preset]), preset


def test_guide_symbols_and_links_resolve():
    text = _guide()
    symbols = set(re.findall(r"`((?:common|pytorch_impl|tensorflow_impl|jax_impl|benchmarks|tests)"
                             r"\.[\w.]+:[\w.]+)`", text))
    assert len(symbols) >= 40
    for symbol in sorted(symbols):
        study.extract(symbol)  # raises SymbolNotFound naming the symbol
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert not target.startswith("http") and (GUIDE.parent / target).exists(), target
    # A symbol's link opens the file that defines it.
    for symbol, target in re.findall(r"\[`([\w.]+:[\w.]+)`\]\(([^)]+)\)", text):
        assert (GUIDE.parent / target).resolve() == study.module_path(symbol.partition(":")[0]), symbol


def test_guide_learning_rates_are_the_schedule():
    from common.schedule import learning_rate
    train = get_preset("cpu-baby")[1]
    rows = _table_after(_guide(), "| step | learning rate |")
    assert len(rows) >= 5
    for step, lr in rows:
        assert _number(lr) == pytest.approx(learning_rate(int(step), train), rel=5e-3), step


def test_guide_sampling_probabilities_are_filter_logits():
    from common.sampling import filter_logits
    logits = np.array([2.0, 1.0, 0.5, -1.0])
    assert "logits (2.0, 1.0, 0.5, −1.0)" in _guide()
    rows = _table_after(_guide(), "| setting | p(token 1)")
    assert len(rows) == 5
    for setting, *probs in rows:
        options = {"temperature": 1.0, "top-k": None, "top-p": None}
        for part in setting.split(","):
            key, value = part.split()
            options[key] = float(value)
        top_k = None if options["top-k"] is None else int(options["top-k"])
        scaled = filter_logits(logits, options["temperature"], top_k, options["top-p"])
        expected = np.exp(scaled - scaled.max())
        expected /= expected.sum()
        np.testing.assert_allclose([_number(p) for p in probs], expected, atol=5e-4, err_msg=setting)


def test_guide_loss_at_initialisation_is_log_vocab():
    """The guide says an untrained model's loss is close to ln 65 ≈ 4.17: check it with the numpy reference."""
    from common.params import init_params
    from tests import reference
    assert "ln 65 ≈ 4.17" in _guide() and round(math.log(65), 2) == 4.17
    config = get_preset("tiny")[0]
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, config.vocab_size, (4, config.block_size)) for _ in range(2))
    loss = reference.cross_entropy(reference.forward(init_params(config, 0), config, x), y)
    assert abs(loss - math.log(config.vocab_size)) < 0.05


def test_guide_tokenizer_example(shakespeare_path):
    from common.data import split_text
    from common.tokenizers import CharTokenizer
    match = re.search(r'`encode\("\\nFirst"\) == \[([\d, ]+)\]`', _guide())
    assert match, "the guide's tokenizer example"
    tokenizer = CharTokenizer.train(split_text(shakespeare_path.read_text(encoding="utf-8"))[0])
    assert tokenizer.vocab_size == 65
    assert tokenizer.encode("\nFirst") == [int(i) for i in match.group(1).split(",")]
