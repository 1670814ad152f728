"""Shared test setup: the `--regen-golden` switch, where the sample data live, and the `needs_install` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci import missing_install
from testpaths import SAMPLES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite xml-samples/expected/ from the current output instead of comparing against it",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_install(installed, reason): skip when not installed, but fail in CI (tests/ci.py)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_install"):
        if not mark.args[0]:
            missing_install(mark.kwargs["reason"])


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
