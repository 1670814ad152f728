"""Host-use probes end to end: the capture (read_topology with probe seams), snapshots that make `check --host`
give the same verdict offline, the CLI's --proc/--dev, this machine's live kernel, and an unprivileged user who
cannot see everything (could-not-tell, never "unused")."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clirun import run
from fakes.hostfixtures import domain_xml
from fakes.probetree import AHCI, DGPU, NIC, NIC2, PF, HostTree, address, workstation
from isogroup.core.address import PciAddress
from isogroup.core.model import UseCode
from isogroup.formats import snapshot
from isogroup.host.hostscan import read_topology
from isogroup.host.probes import ProbeSeams, probe, probe_report
from isogroup.host.probes.base import Unreadable
from isogroup.host.sysfs import Sysfs

NOBODY = 65534


@pytest.fixture
def busy(tmp_path: Path) -> HostTree:
    """The NIC pair's group carries the default route; the SATA controller's disk holds /."""
    tree = HostTree.build(tmp_path / "host", workstation())
    tree.disk(AHCI, "sda", "8:0", {"sda1": "8:1"})
    tree.mount("8:1", "/", "ext4", "/dev/sda1")
    tree.netdev(NIC, "enp3s0f0")
    tree.netdev(NIC2, "enp3s0f1", up=False, ifindex=3)
    tree.route("enp3s0f0", "0.0.0.0", "0.0.0.0", gateway="10.0.0.1", flags=0x3)
    return tree


# --- capture ---------------------------------------------------------------------------------------------------


def test_read_topology_probes_only_when_asked(busy: HostTree) -> None:
    plain = read_topology(busy.kernel)
    assert (plain.probed, plain.findings) == (False, ())
    probed = read_topology(busy.kernel, probes=busy.seams())
    assert probed.probed
    assert [(str(f.address), f.code) for f in probed.findings] == [
        (AHCI, UseCode.STORAGE_MOUNTED),
        (NIC, UseCode.NETWORK_ROUTE),
        (PF, UseCode.SRIOV_VFS),
    ]
    assert probed.functions == plain.functions and probed.groups == plain.groups


def test_a_scoped_capture_probes_the_groups_it_reads_and_nothing_else(busy: HostTree) -> None:
    """Asking for NIC2 reads its group (NIC too): the route on NIC counts, the disk elsewhere is not probed."""
    topology = read_topology(busy.kernel, scope={address(NIC2)}, probes=busy.seams())
    assert [(str(f.address), f.code) for f in topology.findings] == [(NIC, UseCode.NETWORK_ROUTE)]


def test_a_bridge_does_not_own_what_is_behind_it(tmp_path: Path) -> None:
    """A root port's sysfs directory holds its endpoint's: the endpoint's disk and NIC are the endpoint's only."""
    from fakes.simkernel import make_function, make_topology
    from isogroup.core.model import Header

    port, end = "0000:00:1c.0", "0000:05:00.0"
    tree = HostTree.build(
        tmp_path,
        make_topology(
            [
                make_function(port, class_code=0x060400, header=Header.BRIDGE, driver="pcieport", group=4),
                make_function(end, class_code=0x010802, driver="nvme", group=4, parent=port),
            ]
        ),
    )
    tree.disk(end, "nvme0n1", "259:0")
    tree.mount("259:0", "/", "xfs", "/dev/nvme0n1")
    tree.process(321, "smartd", {3: "/dev/nvme0n1"})
    assert [(str(f.address), f.code.value) for f in probe(tree.seams(), [address(port), address(end)])] == [
        (end, "open-nodes"),
        (end, "storage-mounted"),
    ]


def test_probe_skips_addresses_that_are_not_there(busy: HostTree) -> None:
    assert probe(busy.seams(), [PciAddress.parse("0000:7f:1f.7")]) == ()


def test_findings_survive_a_snapshot(busy: HostTree) -> None:
    topology = read_topology(busy.kernel, probes=busy.seams())
    again = snapshot.from_json(json.loads(snapshot.dumps(topology)))
    assert again == topology and again.findings == topology.findings


# --- the CLI ---------------------------------------------------------------------------------------------------


def test_check_host_gives_the_live_verdict_offline(
    busy: HostTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = tmp_path / "guest.xml"
    domain.write_bytes(domain_xml("guest", address(NIC2)))
    tree: list[str | Path] = ["--sysfs", busy.sys, "--proc", busy.proc, "--dev", busy.dev]
    code, out, err = run(capsys, "snapshot", *tree, "-o", tmp_path / "host.json")
    assert (code, out, err) == (0, "", "")
    saved = json.loads((tmp_path / "host.json").read_text())
    assert saved["probed"] is True
    assert [f["code"] for f in saved["findings"]] == ["storage-mounted", "network-route", "sriov-vfs"]

    live = run(capsys, "check", *tree, "--no-schema", domain)
    offline = run(capsys, "check", "--host", tmp_path / "host.json", "--no-schema", domain)
    assert live[0] == 1 and "0000:03:00.0 (igb) carries the default route via enp3s0f0" in live[1]
    assert offline == live


def test_a_tree_without_proc_is_not_probed(busy: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "snapshot", "--sysfs", busy.sys)
    assert code == 0
    doc = json.loads(out)
    assert (doc["probed"], doc["findings"]) == (False, [])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["snapshot", "--proc", "/proc"], "--proc and --dev go with --sysfs"),
        (["snapshot", "--host", "HOST", "--proc", "/proc"], "a snapshot carries its findings already"),
        (["snapshot", "--sysfs", "SYS", "--dev", "/dev"], "--dev needs --proc"),
        (["snapshot", "--sysfs", "SYS", "--proc", "SYS"], "does not look like /proc"),
    ],
    ids=["live-with-proc", "host-with-proc", "dev-without-proc", "proc-not-proc"],
)
def test_probe_option_errors(
    argv: list[str], message: str, busy: HostTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "h.json"
    host.write_text(snapshot.dumps(read_topology(busy.kernel)))
    args = [str(busy.sys) if a == "SYS" else str(host) if a == "HOST" else a for a in argv]
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    assert message in err


# --- this machine's kernel -------------------------------------------------------------------------------------


def _pci_ancestor(path: Path) -> PciAddress | None:
    for part in reversed(path.resolve().parts):
        try:
            return PciAddress.parse(part)
        except ValueError:
            continue
    return None


def _root_disk_function() -> tuple[PciAddress, str] | None:
    """The PCI function holding the block device of / and that device's name, found without isogroup."""
    st = os.stat("/")
    sys_dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not sys_dev.exists():
        return None
    found = _pci_ancestor(sys_dev)
    return (found, sys_dev.resolve().name) if found is not None else None


def _default_route_function() -> tuple[PciAddress, str] | None:
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000" and fields[7] == "00000000":
            found = _pci_ancestor(Path("/sys/class/net") / fields[0])
            if found is not None:
                return found, fields[0]
    return None


def _live_addresses() -> list[PciAddress]:
    return [PciAddress.parse(n) for n in os.listdir("/sys/bus/pci/devices")]


@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(), reason="no PCI bus in this machine's sysfs")
def test_this_kernel_root_disk_and_default_route() -> None:
    root, route = _root_disk_function(), _default_route_function()
    if root is None and route is None:
        pytest.skip("neither / nor the default route is on a PCI device here")
    findings = probe(ProbeSeams.live_host(), _live_addresses())
    if root is not None:
        assert any(
            f.address == root[0]
            and f.code is UseCode.STORAGE_MOUNTED
            and re.search(r" mounted at /(,| and|$)", f.message)
            for f in findings
        ), findings
    if route is not None:
        assert any(
            f.address == route[0] and f.code is UseCode.NETWORK_ROUTE and "default route" in f.message for f in findings
        ), findings


# --- without root ----------------------------------------------------------------------------------------------


def _as_nobody(work: Callable[[], Any]) -> Any:
    """`work()` in a forked child running as nobody; its pickled result, or the child's error re-raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            data = pickle.dumps((True, work()))
        except BaseException as exc:
            data = pickle.dumps((False, repr(exc)))
        with os.fdopen(write_end, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        ok, value = pickle.loads(f.read())
    os.waitpid(pid, 0)
    if not ok:
        raise AssertionError(f"child failed: {value}")
    return value


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")


@pytest.fixture
def open_tree() -> Iterator[HostTree]:
    """A tree nobody may read, except one process's open files and one disk."""
    base = Path(tempfile.mkdtemp(prefix="isogroup-probes-"))
    try:
        base.chmod(0o755)
        tree = HostTree.build(base, workstation())
        tree.disk(AHCI, "sda", "8:0")
        tree.device("drm", tree.pci(DGPU) / "drm", "card1", majmin="226:1", devname="dri/card1")
        tree.process(700, "Xorg", {3: "/dev/dri/card1"})
        tree.process(701, "thing", {3: "/dev/null"})
        (tree.proc / "701" / "fd").chmod(0o500)
        (tree.dev / "sda").chmod(0o600)
        yield tree
    finally:
        import shutil

        shutil.rmtree(base)


@needs_root
def test_unprivileged_on_a_tree_cannot_tell_instead_of_unused(open_tree: HostTree) -> None:
    seams = open_tree.seams()
    report = _as_nobody(lambda: probe_report(seams, [address(AHCI), address(DGPU)]))
    assert [(f.code.value, f.subject) for f in report.uses] == [("display-clients", "/dev/dri/card1")]
    unknown = {(str(f.address), f.subject, f.message.split(": ", 1)[1]) for f in report.unknown}
    hidden = "the open files of 1 processes are not readable; run as root"
    assert unknown == {
        (AHCI, "/dev/sda", "could not tell whether /dev/sda is an LVM physical volume or a ZFS pool member "
         f"(cannot read {open_tree.dev / 'sda'}: permission denied; run as root)"),
        (AHCI, "open files", f"could not tell whether processes hold /dev/sda open ({hidden})"),
        (DGPU, "open files", f"could not tell whether processes hold /dev/dri/card1 open ({hidden})"),
    }  # fmt: skip


@needs_root
@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(), reason="no PCI bus in this machine's sysfs")
def test_unprivileged_on_this_kernel_still_sees_the_mounted_root() -> None:
    root = _root_disk_function()
    if root is None:
        pytest.skip("/ is not on a PCI device here")
    report = _as_nobody(lambda: probe_report(ProbeSeams.live_host(), [root[0]]))
    assert any(f.code is UseCode.STORAGE_MOUNTED for f in report.uses)
    # Root's processes' open files are hidden from nobody: the node of the root disk is could-not-tell.
    assert any(f.subject == "open files" and "run as root" in f.message for f in report.unknown), report


def test_unreadable_says_why() -> None:
    assert Unreadable("/proc/swaps", errno.ENOENT).why == "cannot read /proc/swaps: no such file or directory"
    assert Unreadable("/x", None).why == "cannot read /x: unreadable"
    assert stat.S_ISDIR(os.stat(Sysfs.live_host().root).st_mode)
