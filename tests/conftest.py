"""Shared test setup: the `--regen-golden` switch and where the sample data live."""

from __future__ import annotations

from pathlib import Path

import pytest

from testpaths import SAMPLES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite xml-samples/expected/ from the current output instead of comparing against it",
    )


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))


@pytest.fixture
def samples() -> Path:
    return SAMPLES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Benchmark figures (tests/benchmarks/test_benchmarks.py) at the end of the run, where CI logs keep them."""
    from benchmarks.test_benchmarks import FIGURES

    if FIGURES:
        terminalreporter.section("benchmark figures")
        for block in FIGURES:
            terminalreporter.write(block)
