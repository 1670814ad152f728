"""Benchmarks for the hook, printed in one run (asserts nothing; a timed assertion is flaky on a shared machine):

1. the hook's wall time for a domain with no PCI hostdev, run as libvirt runs it (the installed executable, a
   fresh process, XML on stdin), against a bare `python -I -c pass` of the same interpreter. Target ratio <= 1.3;
2. the slow path as a whole process: a domain with a PCI hostdev, refused because the device is absent (the
   hook imports, parses, plans and refuses). Target ratio <= 4;
3. prepare and release of a four-member group on the simulated kernel (in-process, the transaction itself).

Run: .venv/bin/python tests/benchmarks/bench_hook.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, when run as a script
from fakes.hostfixtures import GPU, domain_xml, libvirt_detach, libvirt_reattach, make_host
from isogroup.apply.transaction import Stage, prepare, release
from isogroup.formats.domainxml import parse_domain
from isogroup.hook.install import install_hook

PLAIN = (
    b"<domain type='kvm'><name>plain</name><memory unit='KiB'>4194304</memory><devices>"
    b"<disk type='file' device='disk'><source file='/var/lib/libvirt/images/plain.qcow2'/></disk>"
    b"<interface type='network'><source network='default'/></interface><graphics type='spice'/>"
    b"</devices></domain>"
)


def _median_run(cmd: list[str], stdin: bytes, repeat: int, *, expect: int = 0) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, check=False, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
        )
        times.append(time.perf_counter() - start)
        if done.returncode != expect:
            raise SystemExit(f"{cmd[0]} exited {done.returncode}, not {expect}: {done.stderr.decode()}")
    return statistics.median(times)


def fast_path(repeat: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        installed = install_hook(Path(tmp) / "hooks", python=sys.executable, ledger_dir=str(Path(tmp) / "run"))
        hook = [str(installed.path), "plain", "prepare", "begin", "-"]
        bare = [sys.executable, "-I", "-c", "pass"]
        # Interleave, so a burst of load on the machine hits both alike.
        hook_t, bare_t = [], []
        for _ in range(repeat):
            hook_t.append(_median_run(hook, PLAIN, 5))
            bare_t.append(_median_run(bare, PLAIN, 5))
        return statistics.median(hook_t), statistics.median(bare_t)


ABSENT = (
    b"<domain type='kvm'><name>absent</name><devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
    b"<address domain='0x0000' bus='0x09' slot='0x00' function='0x0'/></source></hostdev></devices></domain>"
)


def slow_path(repeat: int) -> tuple[float, float]:
    """A refusal end to end, over a tree with an IOMMU group but not the device (nothing to probe, nothing moved)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "sys"
        (tree / "bus" / "pci" / "devices").mkdir(parents=True)
        (tree / "kernel" / "iommu_groups" / "1" / "devices").mkdir(parents=True)
        installed = install_hook(
            Path(tmp) / "hooks", python=sys.executable, ledger_dir=str(Path(tmp) / "run"), sysfs_root=str(tree)
        )
        hook = [str(installed.path), "absent", "prepare", "begin", "-"]
        bare = [sys.executable, "-I", "-c", "pass"]
        hook_t, bare_t = [], []
        for _ in range(repeat):
            hook_t.append(_median_run(hook, ABSENT, 5, expect=1))
            bare_t.append(_median_run(bare, ABSENT, 5))
        return statistics.median(hook_t), statistics.median(bare_t)


def transaction(repeat: int) -> tuple[float, float]:
    prep, rel = [], []
    guest = parse_domain(domain_xml("bench", GPU))
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            sim, host = make_host(Path(tmp))
            start = time.perf_counter()
            prepare(host, guest, Stage.PREPARE)
            prep.append(time.perf_counter() - start)
            libvirt_detach(sim, GPU)
            libvirt_reattach(sim, GPU)
            start = time.perf_counter()
            release(host, "bench")
            rel.append(time.perf_counter() - start)
    return statistics.median(prep), statistics.median(rel)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    hook_t, bare_t = fast_path(args.repeat)
    print(f"hook, domain without PCI hostdev: {hook_t * 1000:.1f} ms; bare interpreter: {bare_t * 1000:.1f} ms")
    print(f"fast-path ratio: {hook_t / bare_t:.2f} (target <= 1.3)")
    slow_t, bare_t = slow_path(args.repeat)
    print(f"hook, absent device refused: {slow_t * 1000:.1f} ms; bare interpreter: {bare_t * 1000:.1f} ms")
    print(f"slow-path ratio: {slow_t / bare_t:.2f} (target <= 4)")
    prep, rel = transaction(args.repeat)
    print(
        f"simulated kernel, group of 5 (port kept, GPU left to libvirt, 3 functions moved): "
        f"prepare {prep * 1000:.1f} ms, release {rel * 1000:.1f} ms (medians of {args.repeat})"
    )


if __name__ == "__main__":
    main()
