"""`isogroup status --libvirt`: the ledger against libvirt's node devices and running guests (libvirt's test
driver on xml-samples/libvirt/desktop-gpu.xml: win10 runs with the GPU 01:00.0 of group 1, plain with nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clirun import run
from isogroup.cli.main import main
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.errors import ExitCode, InputError
from isogroup.formats.domainxml import parse_domain
from isogroup.host.ledger import Ledger
from isogroup.libvirt.agreement import Code, Disagreement, compare, read_status_dir, to_text
from isogroup.libvirt.virt import NodeDevice, UnreadableNodeDevice, Virt
from testpaths import SAMPLES

URI = f"test://{SAMPLES / 'libvirt' / 'desktop-gpu.xml'}"

GPU = PciAddress.parse("0000:01:00.0")
AUDIO = PciAddress.parse("0000:01:00.1")
THERMAL = PciAddress.parse("0000:00:14.2")


def status(capsys: pytest.CaptureFixture[str], ledger: Path, *argv: str | Path) -> tuple[int, str, str]:
    return run(capsys, "status", "--libvirt", "-c", URI, "--ledger", ledger, *argv)


def claim(ledger: Path, *claims: Claim) -> None:
    with Ledger(ledger).locked() as session:
        for c in claims:
            session.write(c)


def moved(address: PciAddress, group: int, driver: str) -> MovedDevice:
    return MovedDevice(address, group, driver, None, DeviceState.MOVED)


def codes(out: str) -> list[str]:
    return [d["code"] for d in json.loads(out)["libvirt"]["disagreements"]]


def test_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claim(tmp_path, Claim("win10", Phase.ACTIVE, (1,), (moved(AUDIO, 1, "snd_hda_intel"),)))
    code, out, err = status(capsys, tmp_path)
    assert (code, err) == (ExitCode.OK, "")
    assert "guest 'win10': active, IOMMU group(s) 1" in out
    assert "2 running guest(s): plain, win10" in out
    assert out.endswith("libvirt and the ledger agree\n")


def test_a_running_guest_whose_group_nobody_claimed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """win10 was started without the hook: libvirt treats the GPU's audio function as free."""
    code, out, _ = status(capsys, tmp_path)
    assert code == ExitCode.REFUSED
    assert "[unclaimed-group] 'win10' runs with 0000:01:00.0 (IOMMU group 1)" in out


def test_a_claim_of_a_guest_libvirt_no_longer_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claim(
        tmp_path,
        Claim("win10", Phase.ACTIVE, (1,)),
        Claim("gaming", Phase.ACTIVE, (2,), (moved(THERMAL, 2, "intel_pch_thermal"),)),
    )
    code, out, _ = status(capsys, tmp_path, "--format", "json")
    assert code == ExitCode.REFUSED
    doc = json.loads(out)
    assert [c["domain"] for c in doc["claims"]] == ["gaming", "win10"]
    assert doc["libvirt"]["running"] == ["plain", "win10"] and doc["libvirt"]["agree"] is False
    (d,) = doc["libvirt"]["disagreements"]
    assert (d["code"], d["domain"], d["group"]) == ("claim-without-guest", "gaming", None)
    assert "isogroup recover --domain gaming" in d["message"]


def test_the_ledger_gives_a_running_guests_group_to_another(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claim(tmp_path, Claim("plain", Phase.ACTIVE, (1,)))
    code, out, _ = status(capsys, tmp_path, "--format", "json")
    assert code == ExitCode.REFUSED
    assert codes(out) == ["group-of-another-guest"]


def test_groups_renumbered_and_devices_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = PciAddress.parse("0000:0a:00.0")
    claim(tmp_path, Claim("win10", Phase.ACTIVE, (1, 5), (moved(AUDIO, 5, "snd_hda_intel"), moved(gone, 5, "igb"))))
    code, out, _ = status(capsys, tmp_path, "--format", "json")
    assert code == ExitCode.REFUSED
    assert codes(out) == ["group-mismatch", "device-gone"]


def test_an_interrupted_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claim(tmp_path, Claim("win10", Phase.ACTIVE, (1,)), Claim("gaming", Phase.PREPARING, (2,)))
    code, out, _ = status(capsys, tmp_path)
    assert code == ExitCode.REFUSED
    assert "[interrupted-run] the claim of 'gaming' is still preparing" in out


def test_unreachable_libvirt_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--libvirt", "-c", "qemu+unix:///system?socket=/nonexistent/s", "--ledger", str(tmp_path)])
    out, err = capsys.readouterr()
    assert (code, out) == (ExitCode.INPUT, "")
    assert err.startswith("isogroup: cannot connect to libvirt") and err.count("\n") == 1


def test_status_without_libvirt_is_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--ledger", str(tmp_path), "--format", "json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == []
    assert main(["status", "--ledger", str(tmp_path), "-c", URI]) == ExitCode.INPUT


# ------------------------------------------------------------------------------- views the test driver lacks


def node(address: PciAddress, group: int, driver: str | None) -> NodeDevice:
    return NodeDevice(f"pci_{address}", address, group, (address,), driver)


def test_a_moved_device_libvirt_sees_back_on_a_host_driver() -> None:
    """A real libvirtd reports each node device's driver; its test driver never does."""
    claims = [Claim("win10", Phase.ACTIVE, (1,), (moved(AUDIO, 1, "snd_hda_intel"),))]
    win10 = parse_domain(
        "<domain><name>win10</name><devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0' bus='1' slot='0' function='0'/></source></hostdev></devices></domain>"
    )
    nodes = [node(GPU, 1, "vfio-pci"), node(AUDIO, 1, "vfio-pci")]
    assert compare(claims, [win10], nodes) == []
    found = compare(claims, [win10], [node(GPU, 1, "vfio-pci"), node(AUDIO, 1, "snd_hda_intel")])
    assert [(d.code, d.address) for d in found] == [(Code.MOVED_BUT_FREE, AUDIO)]
    assert "libvirt sees 0000:01:00.1 on snd_hda_intel, free for the host" in found[0].message


STATUS_FILE = """<domstatus state='running' reason='booted' pid='4242'>
  <monitor path='/var/lib/libvirt/qemu/domain-1-{name}/monitor.sock' type='unix'/>
  <vcpus><vcpu id='0' pid='4250'/></vcpus>
  <domain type='kvm' id='1'>
    <name>{name}</name>
    <devices>{devices}</devices>
  </domain>
</domstatus>
"""
VF_NETWORK = """<interface type='network'><source network='vf-pool'/><actual type='hostdev' managed='yes'>
<source><address type='pci' domain='0x0000' bus='0x00' slot='0x14' function='0x2'/></source></actual></interface>"""


def test_status_files_are_a_view_of_their_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """libvirt's status files name the VF a hostdev network gave a guest; and they must match what libvirt says
    runs. Here win10's file is missing and 'ghost' has one although libvirt does not run it."""
    status_dir = tmp_path / "qemu"
    status_dir.mkdir()
    (status_dir / "plain.xml").write_text(STATUS_FILE.format(name="plain", devices=VF_NETWORK))
    (status_dir / "ghost.xml").write_text(STATUS_FILE.format(name="ghost", devices=""))
    (status_dir / "plain.monitor").write_text("not a status file")
    specs = read_status_dir(status_dir)
    assert [(s.name, [str(r.address) for r in s.pci]) for s in specs] == [("ghost", []), ("plain", ["0000:00:14.2"])]

    ledger = tmp_path / "run"
    claim(ledger, Claim("win10", Phase.ACTIVE, (1,)))
    code, out, _ = status(capsys, ledger, "--status-dir", status_dir, "--format", "json")
    assert code == ExitCode.REFUSED
    found = [(d["code"], d["domain"], d["group"]) for d in json.loads(out)["libvirt"]["disagreements"]]
    assert found == [
        ("status-mismatch", "ghost", None),
        ("status-mismatch", "win10", None),
        ("unclaimed-group", "plain", 2),
    ]


def test_an_unreadable_status_dir_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read libvirt's status directory"):
        read_status_dir(tmp_path / "absent")


def test_the_api_sees_what_the_test_driver_runs() -> None:
    with Virt.open(URI, read_only=True) as virt:
        running = virt.domains(active_only=True)
        every = virt.domains()
    assert [d.name for d in running] == ["plain", "win10"]
    assert [(d.name, d.active) for d in every] == [
        ("gaming", False),
        ("plain", True),
        ("usb-guest", False),
        ("win10", True),
    ]


def test_a_node_device_isogroup_cannot_read_is_reported_not_dropped() -> None:
    """Dropped, it would look removed from the host: a false device-gone. Reported, the user knows why."""
    claims = [Claim("win10", Phase.ACTIVE, (1,), (moved(AUDIO, 1, "snd_hda_intel"),))]
    win10 = parse_domain(
        "<domain><name>win10</name><devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0' bus='1' slot='0' function='1'/></source></hostdev></devices></domain>"
    )
    reason = "libvirt's node device 'pci_0000_01_00_1': bus '0x1g' is not a number"
    found = compare(claims, [win10], [node(GPU, 1, "vfio-pci"), UnreadableNodeDevice("pci_0000_01_00_1", reason)])
    assert [d.code for d in found] == [Code.UNREADABLE_NODE, Code.DEVICE_GONE]
    assert found[0].message.startswith(reason)
    text = to_text("test:///x", ["win10"], found)
    assert "[unreadable-node-device] libvirt's node device 'pci_0000_01_00_1'" in text


def test_report_lines_cannot_be_forged_by_libvirts_strings() -> None:
    forged = Disagreement(Code.MOVED_BUT_FREE, "libvirt sees it on evil\n  [device-gone] forged\x1b[2J", "w")
    text = to_text("test:///x", ["w"], [forged])
    assert text.count("\n") == 3 and "evil\\n  [device-gone] forged\\x1b[2J" in text
