"""The benchmark scripts run in every suite run, so their figures land in the CI log (terminal summary).
Their timings are printed, never asserted: a fixed threshold is flaky on a shared machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent
FIGURES: list[str] = []  # printed by conftest's terminal summary


@pytest.mark.parametrize(
    ("script", "must_print"),
    [("bench_check.py", "ratio 4096/1024"), ("bench_hook.py", "fast-path ratio"), ("bench_fleet.py", "fleet check")],
)
def test_benchmark_runs_and_reports(script: str, must_print: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--repeat", "1" if script == "bench_fleet.py" else "5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert must_print in done.stdout
    FIGURES.append(f"{script}:\n{done.stdout}")
