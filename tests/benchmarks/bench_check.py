"""Benchmark for `isogroup check`: wall time on synthetic hosts of 1,024 and 4,096 PCI functions with a
64-hostdev domain, as a user runs it (a fresh process, snapshot from --host), and the ratio of the two.

Run: .venv/bin/python tests/benchmarks/bench_check.py [--repeat N]
Target on a 2-core machine: at most 0.3 s at 4,096 functions; ratio at most 4.5 (near-linear growth).
Prints figures; asserts nothing (a timed assertion is flaky on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from isogroup.formats import snapshot

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, when run as a script
from benchmarks.synthetic import domain_xml, server


def wall(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{cmd} failed ({done.returncode}): {done.stderr.decode()}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (1024, 4096):
            host = server(size)
            hostfile = Path(tmp, f"host{size}.json")
            hostfile.write_text(snapshot.dumps(host))
            domfile = Path(tmp, f"dom{size}.xml")
            domfile.write_text(domain_xml(host, 64))
            cmd = [sys.executable, "-m", "isogroup", "check", str(domfile), "--host", str(hostfile), "--format", "json"]
            results[size] = wall(cmd, args.repeat)
            ms = results[size] * 1000
            print(f"check, {len(host.functions)} functions, 64 hostdevs: {ms:.0f} ms (median of {args.repeat})")
    print(f"ratio 4096/1024: {results[4096] / results[1024]:.2f} (target <= 4.5); 4096 target <= 200 ms")


if __name__ == "__main__":
    main()
