"""ruff and mypy --strict are part of the suite: a change that breaks them fails like any other test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testpaths import ROOT

BIN = Path(sys.executable).parent


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}"


def test_ruff_check() -> None:
    _run(str(BIN / "ruff"), "check", "plugin", "hooks", "tests")


def test_ruff_format() -> None:
    _run(str(BIN / "ruff"), "format", "--check", "plugin", "hooks", "tests")


def test_mypy_strict() -> None:
    _run(str(BIN / "mypy"))
