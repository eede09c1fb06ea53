"""Set-up for every test session of the repository (tests/, benchmarks/tests/ and the package's docstring examples).

1. The docstring examples of `dino_hf` are tests: `pytest dino_hf` (part of `make test`) runs every `>>>` example.
The examples sit in markdown ```python fences, as in transformers. The standard doctest parser would read the closing
fence as part of the expected output; transformers' `HfDocTestParser` stops the output before it, so each module's
examples are parsed with it. Nothing else changes: pytest's own doctest items run them, with the `doctest_optionflags`
of pyproject.toml, each from the same random state.

2. accelerate keeps one state per process: it is reset after every test, so the settings of one test's `Accelerator`
never reach the next test that the same pytest-xdist worker runs.
"""

from pathlib import Path

import pytest
import torch
from _pytest.doctest import DoctestItem, DoctestModule
from accelerate.state import AcceleratorState
from transformers.testing_utils import HfDocTestParser


PACKAGE = Path(__file__).parent / "dino_hf"


class FencedDoctestModule(DoctestModule):
    """pytest's doctest module collector, with each test re-parsed by `HfDocTestParser` (transformers' own
    `HfDoctestModule` does the same but no longer runs on current pytest)."""

    def collect(self):
        parser = HfDocTestParser()
        for item in super().collect():
            test = item.dtest
            item.dtest = parser.get_doctest(test.docstring, test.globs, test.name, test.filename, test.lineno)
            yield item


def pytest_collect_file(file_path: Path, parent):
    """Every module of the package is a doctest module (test files elsewhere are collected as usual)."""
    if file_path.suffix == ".py" and PACKAGE in file_path.parents:
        return FencedDoctestModule.from_parent(parent, path=file_path)
    return None


@pytest.fixture(autouse=True)
def _seed_examples(request):
    """Examples that draw random tensors print the same values on every run."""
    if isinstance(request.node, DoctestItem):
        torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
