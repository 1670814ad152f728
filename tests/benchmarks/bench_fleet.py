"""Benchmark for the fleet check: 1,000 synthetic host snapshots and 10 domains, as a user runs it (a fresh
process, `isogroup check D1.xml ... D10.xml --hosts DIR --format json`).

Run: .venv/bin/python tests/benchmarks/bench_fleet.py [--repeat N]
Target on a 2-core machine: under 10 s. Prints figures; asserts nothing (a timed assertion is flaky).
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

HOSTS = 1000
DOMAINS = 10
FUNCTIONS = 64  # per host: a modest server, 12 groups of port + 4-function endpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hosts = Path(tmp, "hosts")
        hosts.mkdir()
        host = server(FUNCTIONS)
        text = snapshot.dumps(host)
        for n in range(HOSTS):
            Path(hosts, f"host{n:04d}.json").write_text(text)
        domains = []
        for d in range(DOMAINS):
            dom = Path(tmp, f"dom{d}.xml")
            dom.write_text(domain_xml(host, 1 + d % 4).replace("<name>bench</name>", f"<name>bench{d}</name>"))
            domains.append(str(dom))
        cmd = [sys.executable, "-m", "isogroup", "check", *domains, "--hosts", str(hosts), "--format", "json"]
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, check=False)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"fleet check failed ({done.returncode}): {done.stderr.decode()}")
    print(
        f"fleet check, {HOSTS} hosts of {FUNCTIONS} functions, {DOMAINS} domains: "
        f"{statistics.median(times):.2f} s (median of {args.repeat}; target < 10 s)"
    )


if __name__ == "__main__":
    main()
