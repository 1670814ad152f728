"""Benchmarks for the hook, printed in one run (asserts nothing; a timed assertion is flaky on a shared machine):

1. the hook's wall time for a domain with no PCI hostdev, run as libvirt runs it (the installed executable, a
   fresh process, XML on stdin), against a bare `python -I -c pass` of the same interpreter. Target ratio <= 1.3;
2. the slow path as a whole process: a domain with a PCI hostdev, refused because the device is absent (the
   hook imports, parses, plans and refuses). Target ratio <= 4. Beside it, the floor the design sets: an
   interpreter that only imports lxml.etree (the one XML parser), dataclasses (the model) and pathlib (the
   seams), and what creating the slow path's frozen dataclasses costs;
3. prepare and release of a four-member group on the simulated kernel (in-process, the transaction itself).

Run: .venv/bin/python tests/benchmarks/bench_hook.py [--repeat N]
"""

from __future__ import annotations

import argparse
import dataclasses
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


# The imports no run of the slow path can do without: the parser, the model's dataclasses, the seams' paths.
FLOOR = "import lxml.etree, dataclasses, pathlib"

# Run in a fresh interpreter: the slow path's refusal, then how many frozen dataclasses it created.
COUNT = """
import dataclasses, io, sys
from isogroup.hook.entry import main
code = main(["qemu", "absent", "prepare", "begin", "-"], stdin=io.BytesIO(sys.argv[1].encode()),
            ledger_dir=sys.argv[2], sysfs_root=sys.argv[3])
assert code == 1, code
print(sum(1 for name, m in list(sys.modules.items()) if name.startswith("isogroup") for v in vars(m).values()
          if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == name))
"""


def _refusing_tree(tmp: Path) -> Path:
    """A tree with an IOMMU group but not the device: nothing to probe, nothing moved."""
    tree = tmp / "sys"
    (tree / "bus" / "pci" / "devices").mkdir(parents=True)
    (tree / "kernel" / "iommu_groups" / "1" / "devices").mkdir(parents=True)
    return tree


def slow_path(repeat: int) -> tuple[float, float, float]:
    """A refusal end to end; the bare interpreter; the design's floor (FLOOR). Interleaved, medians."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = _refusing_tree(Path(tmp))
        installed = install_hook(
            Path(tmp) / "hooks", python=sys.executable, ledger_dir=str(Path(tmp) / "run"), sysfs_root=str(tree)
        )
        hook = [str(installed.path), "absent", "prepare", "begin", "-"]
        bare = [sys.executable, "-I", "-c", "pass"]
        floor = [sys.executable, "-I", "-c", FLOOR]
        hook_t, bare_t, floor_t = [], [], []
        for _ in range(repeat):
            hook_t.append(_median_run(hook, ABSENT, 5, expect=1))
            bare_t.append(_median_run(bare, ABSENT, 5))
            floor_t.append(_median_run(floor, ABSENT, 5))
        return statistics.median(hook_t), statistics.median(bare_t), statistics.median(floor_t)


def dataclass_cost() -> tuple[int, float]:
    """How many frozen dataclasses the slow path creates, and what creating one costs here (five fields, in
    this process, median of 200)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = _refusing_tree(Path(tmp))
        done = subprocess.run(
            [sys.executable, "-c", COUNT, ABSENT.decode(), str(Path(tmp) / "run"), str(tree)],
            capture_output=True,
            check=True,
            text=True,
        )
    fields = {"__annotations__": dict.fromkeys("abcde", "int"), "__doc__": "a record"}
    times = []
    for _ in range(200):
        start = time.perf_counter()
        dataclasses.dataclass(frozen=True)(type("Record", (), dict(fields)))
        times.append(time.perf_counter() - start)
    return int(done.stdout), statistics.median(times)


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
    slow_t, bare_t, floor_t = slow_path(args.repeat)
    print(f"hook, absent device refused: {slow_t * 1000:.1f} ms; bare interpreter: {bare_t * 1000:.1f} ms")
    print(f"slow-path ratio: {slow_t / bare_t:.2f} (target <= 4)")
    count, each = dataclass_cost()
    print(
        f"floor, no isogroup code ({FLOOR}): {floor_t * 1000:.1f} ms, ratio {floor_t / bare_t:.2f}; "
        f"the slow path's {count} frozen dataclasses: about {count * each * 1000:.1f} ms ({each * 1e6:.0f} us each); "
        f"the rest of isogroup's share: {(slow_t - floor_t - count * each) * 1000:.1f} ms"
    )
    prep, rel = transaction(args.repeat)
    print(
        f"simulated kernel, group of 5 (port kept, GPU left to libvirt, 3 functions moved): "
        f"prepare {prep * 1000:.1f} ms, release {rel * 1000:.1f} ms (medians of {args.repeat})"
    )


if __name__ == "__main__":
    main()
