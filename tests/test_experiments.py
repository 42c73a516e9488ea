"""docs/experiments.md: every ```python block runs as written, on a few hundred images.

Each block that reads MNIST sets its subset in one line, ``N_TRAIN = ...`` or ``N_TRAIN, N_TEST = ...``;
the test puts smaller numbers in that line and runs the block in a fresh namespace, as a script
(``__name__ == "__main__"``), so its traceback names the line of the document. A block that loads
MNIST without such a line fails here rather than running its full size. Blocks that read MNIST need
the real files: set NANOTORCH_DATA (CI does); without it they skip.
"""
import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from nanotorch import random as nt_random

DOC = Path(__file__).resolve().parent.parent / "docs" / "experiments.md"
N_TRAIN, N_TEST = 640, 200                # 160 steps at batch 4, 5 at batch 128 (a loss for each fifth)
SUBSET = re.compile(r"^N_TRAIN(, N_TEST)? = [^#\n]*?(?=[ \t]*(#|$))", re.MULTILINE)   # up to a comment


def python_blocks(text):
    """(line number of the block's first line, code) of each ```python block of a Markdown text."""
    return [(text[:m.start(1)].count("\n") + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)]


def section(text, line):
    """The number of the '## N. ...' heading above that line ('?' if none), for the tests' ids."""
    numbers = re.findall(r"^## (\d+)\.", "\n".join(text.splitlines()[:line]), re.MULTILINE)
    return numbers[-1] if numbers else "?"


def shrunk(code):
    """The block with its subset line set to N_TRAIN, N_TEST; an error if a block reading MNIST has none."""
    code, found = SUBSET.subn(lambda m: f"N_TRAIN, N_TEST = {N_TRAIN}, {N_TEST}" if m.group(1)
                              else f"N_TRAIN = {N_TRAIN}", code)
    if "load_mnist" in code and found != 1:
        raise AssertionError(f"a block that loads MNIST must set its subset in one line 'N_TRAIN = ...' "
                             f"(or 'N_TRAIN, N_TEST = ...'); found {found}")
    return code


TEXT = DOC.read_text()
BLOCKS = python_blocks(TEXT)


def test_the_document_has_its_experiments():
    assert len(BLOCKS) >= 5
    assert sum("load_mnist" in code for _, code in BLOCKS) >= 4


def test_a_block_runs_shrunk_and_a_block_without_its_subset_line_is_refused():
    assert python_blocks("text\n```python\nx = 1\n```\n\n```\nnot python\n```\n```python\ny = 2\n```\n") \
        == [(3, "x = 1\n"), (10, "y = 2\n")]
    assert shrunk("N_TRAIN, N_TEST = 12_000, 10_000   # comment\nload_mnist()") \
        == f"N_TRAIN, N_TEST = {N_TRAIN}, {N_TEST}   # comment\nload_mnist()"
    assert shrunk("N_TRAIN = 12_000\nload_mnist()") == f"N_TRAIN = {N_TRAIN}\nload_mnist()"
    with pytest.raises(AssertionError, match="must set its subset"):
        shrunk("n = 60_000\nload_mnist()")


def run_block(line, code):
    """Run a block as a script, its subset shrunk; returns what it printed."""
    compiled = compile("\n" * (line - 1) + shrunk(code), str(DOC), "exec")   # line numbers as in the document
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compiled, {"__name__": "__main__"})
    return out.getvalue()


@pytest.fixture(autouse=True)
def _global_generator_put_back(monkeypatch, restore_threads):
    """The blocks reseed nanotorch's global generator (manual_seed makes a new one)."""
    monkeypatch.setattr(nt_random, "_generator", nt_random.default_generator())


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"experiment{section(TEXT, line)}-line{line}" for line, _ in BLOCKS])
def test_block_runs(line, code):
    if "load_mnist" in code and not os.environ.get("NANOTORCH_DATA"):
        pytest.skip("needs the real MNIST files: set NANOTORCH_DATA to a folder holding mnist/ (CI does)")
    printed = run_block(line, code)
    assert printed.strip(), "the block printed nothing: an experiment shows its result"
    assert not re.search(r"\bnan\b", printed, re.IGNORECASE), printed


def test_experiment_1_passes_the_layer_and_catches_its_broken_backward():
    """What the document says block 1 shows: the right backward checks to rounding, the broken one fails."""
    (line, code), = [(line, code) for line, code in BLOCKS if "class BrokenSiLU" in code]
    printed = run_block(line, code)
    errors = dict(re.findall(r"^(\w+) worst relative error (\S+)", printed, re.MULTILINE))
    assert float(errors["SiLU"]) < 1e-6 and float(errors["BrokenSiLU"]) > 0.1, printed
