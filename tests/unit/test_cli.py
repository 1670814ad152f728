"""The command line: usage errors, exit codes, the JSON documents, snapshot -o, and --sysfs against a written tree."""

from __future__ import annotations

import io
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from clirun import run
from fakes.simkernel import config_space
from isogroup import __version__
from isogroup.cli.main import main
from isogroup.core.model import HostTopology, PciFunction
from isogroup.errors import ExitCode, InputError
from isogroup.formats import snapshot
from testpaths import SAMPLES

HOSTS = SAMPLES / "hosts"
DOMAINS = SAMPLES / "domains"
DESKTOP = HOSTS / "desktop-gpu.json"


def one_line(err: str) -> None:
    assert err.startswith("isogroup: ") and err.endswith("\n") and err.count("\n") == 1, repr(err)


# --------------------------------------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["check"],
        ["check", "--format", "xml", "a.xml"],
        ["check", "--host", str(DESKTOP), "--sysfs", "/sys", "a.xml"],
        ["groups", "--host", str(DESKTOP), "--sysfs", "/sys"],
        ["snapshot", "--host", str(DESKTOP), "--sysfs", "/sys"],
        ["check", "--host"],
        ["groups", "--no-such-option"],
        ["snapshot", "-o"],
    ],
    ids=["nothing", "unknown-command", "check-no-domain", "bad-format", "check-host-and-sysfs",
         "groups-host-and-sysfs", "snapshot-host-and-sysfs", "host-without-file", "unknown-option",
         "output-without-file"],
)  # fmt: skip
def test_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == ExitCode.INPUT
    assert out == ""
    one_line(err)
    assert "see 'isogroup --help'" in err


def test_host_and_sysfs_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run(capsys, "check", "--host", DESKTOP, "--sysfs", "/sys", DOMAINS / "desktop-gpu.xml")
    assert "not allowed with argument" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, f"isogroup {__version__}\n", "")


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "0 ok, 1 refused, 2 bad input" in " ".join(out.split())


# ---------------------------------------------------------------------------------------------------- exit codes


def test_exit_0_when_every_domain_can_start(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "--host", DESKTOP, DOMAINS / "desktop-gpu.xml")
    assert (code, err) == (0, "")
    assert out.startswith("domain 'desktop-gpu': OK, can start\n")


def test_exit_1_when_one_of_several_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    domains = [DOMAINS / "desktop-gpu.xml", DOMAINS / "desktop-absent.xml"]
    code, out, err = run(capsys, "check", "--host", DESKTOP, "--format", "json", *domains)
    assert (code, err) == (1, "")
    assert [(p["domain"], p["verdict"]) for p in json.loads(out)] == [
        ("desktop-gpu", "ok"),
        ("desktop-absent", "refused"),
    ]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["check", "--host", DESKTOP, "/nonexistent/guest.xml"], "cannot read /nonexistent/guest.xml"),
        (["check", "--host", "/nonexistent/host.json", DOMAINS / "desktop-gpu.xml"], "cannot read host snapshot"),
        (["check", "--host", DOMAINS / "desktop-gpu.xml", DOMAINS / "desktop-gpu.xml"], "is not valid JSON"),
        (["check", "--host", DESKTOP, HOSTS / "desktop-gpu.json"], "malformed XML"),
        (["check", "--sysfs", "/nonexistent", DOMAINS / "desktop-gpu.xml"], "does not look like sysfs"),
        (["groups", "--host", "/nonexistent/host.json"], "cannot read host snapshot"),
        (["snapshot", "--sysfs", "/nonexistent"], "does not look like sysfs"),
    ],
    ids=["domain-missing", "host-missing", "host-is-xml", "domain-is-json", "sysfs-missing", "groups-host-missing",
         "snapshot-sysfs-missing"],
)  # fmt: skip
def test_exit_2_on_bad_input(argv: list[str | Path], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == ExitCode.INPUT
    assert out == ""
    one_line(err)
    assert says in err


def test_bad_second_domain_prints_nothing_for_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain><name>x</name><devices><hostdev type='pci'><source><address bus='1'/></source>")
    code, out, err = run(capsys, "check", "--host", DESKTOP, DOMAINS / "desktop-gpu.xml", bad)
    assert (code, out) == (ExitCode.INPUT, "")
    one_line(err)


def test_debug_shows_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="cannot read"):
        main(["--debug", "check", "--host", str(DESKTOP), "/nonexistent/guest.xml"])


def test_domain_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = (DOMAINS / "laptop-dgpu.xml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = run(capsys, "check", "--host", HOSTS / "laptop.json", "-")
    assert code == 0
    assert out == (SAMPLES / "expected" / "laptop-dgpu.txt").read_text()


# ---------------------------------------------------------------------------------------------------------- JSON


def _check_json(capsys: pytest.CaptureFixture[str], host: Path, domain: Path) -> tuple[int, list[dict[str, Any]]]:
    code, out, _ = run(capsys, "check", "--host", host, "--format", "json", domain)
    doc = json.loads(out)
    assert isinstance(doc, list)
    return code, doc


@pytest.mark.parametrize(
    ("host", "domain"),
    [("desktop-gpu", "desktop-three-problems"), ("server-sriov", "server-mdev-network"), ("laptop", "laptop-dgpu")],
)
def test_check_json_has_the_documented_keys(host: str, domain: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _check_json(capsys, HOSTS / f"{host}.json", DOMAINS / f"{domain}.xml")
    (p,) = doc
    assert {"domain", "verdict", "groups", "problems"} <= p.keys()
    assert p["domain"] == domain and p["verdict"] in ("ok", "refused")
    assert (p["verdict"] == "ok") == (code == 0) == (not p["problems"])
    for g in p["groups"]:
        assert isinstance(g["group"], int) and not isinstance(g["group"], bool)
        for m in g["members"]:
            assert {"address", "driver", "action"} <= m.keys()
            assert isinstance(m["address"], str) and len(m["address"]) == 12
            assert m["driver"] is None or isinstance(m["driver"], str)
            assert m["action"] in ("move", "libvirt", "keep", "blocked")
    for pr in p["problems"]:
        assert {"code", "address", "message"} <= pr.keys()
        assert pr["address"] is None or isinstance(pr["address"], str)
        assert isinstance(pr["message"], str) and "\n" not in pr["message"]


def test_groups_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "groups", "--host", DESKTOP, "--format", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["iommu"] is True
    by_number = {g["group"]: g for g in doc["groups"]}
    gpu = by_number[1]
    assert [m["address"] for m in gpu["members"]] == ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]
    assert gpu["usable_by_vfio"] is False
    assert gpu["blockers"] == ["0000:01:00.0 on nvidia", "0000:01:00.1 on snd_hda_intel"]
    assert by_number[5]["usable_by_vfio"] is True and by_number[5]["blockers"] == []
    for g in doc["groups"]:
        assert g["usable_by_vfio"] == (not g["blockers"])
        assert all({"address", "ids", "class", "header", "driver"} <= m.keys() for m in g["members"])


def test_groups_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "groups", "--host", HOSTS / "pci-bridge.json")
    assert code == 0
    assert "IOMMU group 8: not usable yet: 0000:05:00.0 on snd_ca0106, 0000:05:01.0 on firewire_ohci\n" in out
    assert "  0000:04:00.0  1b21:1080  class 060401 bridge  (none)\n" in out


def test_groups_without_iommu(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "groups", "--host", HOSTS / "desktop-vtd-off.json", "--format", "json")
    assert code == 0
    assert json.loads(out) == {"iommu": False, "groups": []}


# ------------------------------------------------------------------------------------------------------ snapshot


def test_snapshot_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "snapshot", "--host", DESKTOP)
    assert (code, err) == (0, "")
    assert out == DESKTOP.read_text()


def test_snapshot_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "host.json"
    code, out, err = run(capsys, "snapshot", "--host", HOSTS / "server-sriov.json", "-o", target)
    assert (code, out, err) == (0, "", "")
    assert target.read_text() == (HOSTS / "server-sriov.json").read_text()
    assert snapshot.load(target) == snapshot.load(HOSTS / "server-sriov.json")


def test_snapshot_output_file_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "snapshot", "--host", DESKTOP, "--output", tmp_path / "no" / "such" / "dir.json")
    assert (code, out) == (ExitCode.INPUT, "")
    one_line(err)
    assert "cannot write" in err


# -------------------------------------------------------------------------------------- a written sysfs tree
#
# A static tree laid out like /sys from a topology: the device hierarchy under devices/pciDDDD:BB/, the
# bus/pci/devices links into it, driver / iommu_group / physfn links, the attribute files, and 64 bytes of
# config space (vendor, device, header type with the multifunction bit). Reading it back through --sysfs must
# give exactly the topology it was written from.


def _device_dir(root: Path, topo: HostTopology, func: PciFunction) -> Path:
    chain = [func]
    while chain[-1].parent is not None:
        parent = topo.function(chain[-1].parent)
        assert parent is not None, f"{chain[-1].address}: parent {chain[-1].parent} is not in the topology"
        chain.append(parent)
    top = chain[-1].address
    path = root / "devices" / f"pci{top.domain:04x}:{top.bus:02x}"
    for f in reversed(chain):
        path /= str(f.address)
    return path


def write_sysfs(root: Path, topo: HostTopology) -> None:
    (root / "bus/pci/drivers").mkdir(parents=True)
    (root / "bus/pci/devices").mkdir(parents=True)
    (root / "kernel/iommu_groups").mkdir(parents=True)
    for func in topo.functions:
        d = _device_dir(root, topo, func)
        d.mkdir(parents=True, exist_ok=True)
        (d / "vendor").write_text(f"0x{func.vendor:04x}\n")
        (d / "device").write_text(f"0x{func.device:04x}\n")
        (d / "class").write_text(f"0x{func.class_code:06x}\n")
        if func.subsystem is not None:
            (d / "subsystem_vendor").write_text(f"0x{func.subsystem[0]:04x}\n")
            (d / "subsystem_device").write_text(f"0x{func.subsystem[1]:04x}\n")
        (d / "config").write_bytes(config_space(func))  # capabilities too, when the topology knows them
        (d / "driver_override").write_text(f"{func.driver_override or '(null)'}\n")
        if func.class_code >> 16 == 0x03:
            (d / "boot_vga").write_text("1\n" if func.boot_vga else "0\n")
        if func.sriov_totalvfs is not None:
            (d / "sriov_totalvfs").write_text(f"{func.sriov_totalvfs}\n")
        if func.sriov_numvfs is not None:
            (d / "sriov_numvfs").write_text(f"{func.sriov_numvfs}\n")
        if func.reset_methods:  # hidden when the kernel has no reset for it (drivers/pci/pci.c)
            (d / "reset_method").write_text(" ".join(func.reset_methods) + "\n")
        if func.driver is not None:
            drv = root / "bus/pci/drivers" / func.driver
            drv.mkdir(exist_ok=True)
            os.symlink(drv, d / "driver")
        if func.iommu_group is not None:
            os.symlink(root / "kernel/iommu_groups" / str(func.iommu_group), d / "iommu_group")
        if func.physfn is not None:
            pf = topo.function(func.physfn)
            assert pf is not None
            os.symlink(_device_dir(root, topo, pf), d / "physfn")
        os.symlink(d, root / "bus/pci/devices" / str(func.address))
    for group in topo.groups:
        devices = root / "kernel/iommu_groups" / str(group.number) / "devices"
        devices.mkdir(parents=True)
        for address in group.members:
            os.symlink(root / "bus/pci/devices" / str(address), devices / str(address))


HOST_FILES = sorted(HOSTS.glob("*.json"))


@pytest.mark.parametrize("host", HOST_FILES, ids=[p.stem for p in HOST_FILES])
def test_snapshot_of_a_sysfs_tree_is_the_topology_it_was_written_from(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = snapshot.load(host)
    write_sysfs(tmp_path / "sys", topology)
    code, out, err = run(capsys, "snapshot", "--sysfs", tmp_path / "sys")
    assert (code, err) == (0, "")
    # A sysfs tree alone carries no host-use findings (those come from probing /proc and netlink too).
    unprobed = type(topology).build(topology.iommu, topology.functions, topology.groups)
    assert out == snapshot.dumps(unprobed)
    if not topology.probed:
        assert out == host.read_text()


def _state_options(case: dict[str, Any]) -> list[str]:
    options = ["--ledger", str(SAMPLES / case["ledger"])] if "ledger" in case else []
    return options + (["--policy", str(SAMPLES / case["policy"])] if "policy" in case else [])


def _cases() -> list[tuple[str, Path, Path, list[str]]]:
    with open(SAMPLES / "cases.toml", "rb") as f:
        doc = tomllib.load(f)
    return [
        (
            c["name"],
            SAMPLES / c["host"],
            SAMPLES / c["domain"],
            ["--ledger", str(SAMPLES / c["ledger"])] if "ledger" in c else [],
        )
        for c in doc["case"]
    ]


# A probed host's findings are not part of a sysfs tree: those cases cannot be replayed from one.
CASES = [c for c in _cases() if not snapshot.load(c[1]).probed]


@pytest.mark.parametrize(("name", "host", "domain", "ledger"), CASES, ids=[c[0] for c in CASES])
def test_check_on_sysfs_matches_check_on_snapshot(
    name: str, host: Path, domain: Path, ledger: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --sysfs` reads only the requested devices' groups; it must decide exactly as the full snapshot."""
    write_sysfs(tmp_path / "sys", snapshot.load(host))
    code, out, _ = run(capsys, "check", "--sysfs", tmp_path / "sys", *ledger, "--format", "json", domain)
    assert out == (SAMPLES / "expected" / f"{name}.json").read_text()
    assert code == (0 if json.loads(out)[0]["verdict"] == "ok" else 1)
