"""`isogroup check --domain NAME | --all` reads domains from libvirt: here libvirt's test driver on
xml-samples/libvirt/desktop-gpu.xml (win10 runs with the GPU, plain runs with nothing, gaming wants the GPU's
group, usb-guest the ASMedia xHCI), checked against xml-samples/hosts/desktop-gpu.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clirun import run
from isogroup.core.claims import Claim, Phase
from isogroup.errors import ExitCode, InputError
from isogroup.host.ledger import Ledger
from isogroup.libvirt.virt import NodeDevice, Virt, parse_node_device
from testpaths import PLUGIN, SAMPLES

URI = f"test://{SAMPLES / 'libvirt' / 'desktop-gpu.xml'}"
HOST = SAMPLES / "hosts" / "desktop-gpu.json"
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def check(capsys: pytest.CaptureFixture[str], ledger: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "check", "-c", URI, "--host", HOST, "--ledger", ledger, *argv)


def one_line(err: str) -> None:
    assert err.startswith("isogroup: ") and err.endswith("\n") and err.count("\n") == 1, repr(err)


def test_a_shut_off_guest_wanting_a_running_guests_group_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, tmp_path, "--domain", "gaming")
    assert (code, err) == (ExitCode.REFUSED, "")
    assert "domain 'gaming': REFUSED" in out
    assert "IOMMU group 1 is in use by guest 'win10'" in out


def test_a_running_guest_does_not_conflict_with_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(capsys, tmp_path, "--domain", "win10")
    assert code == ExitCode.OK
    assert "domain 'win10': OK, can start" in out


def test_ledger_claims_count_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(capsys, tmp_path, "--domain", "usb-guest")[0] == ExitCode.OK
    with Ledger(tmp_path).locked() as session:
        session.write(Claim("elsewhere", Phase.ACTIVE, (11,)))
    code, out, _ = check(capsys, tmp_path, "--domain", "usb-guest")
    assert code == ExitCode.REFUSED
    assert "IOMMU group 11 is in use by guest 'elsewhere'" in out


def test_all_checks_every_domain_defined_and_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(capsys, tmp_path, "--all", "--format", "json")
    assert code == ExitCode.REFUSED
    verdicts = {p["domain"]: p["verdict"] for p in json.loads(out)}
    assert verdicts == {"gaming": "refused", "plain": "ok", "usb-guest": "ok", "win10": "ok"}


@pytest.mark.parametrize("name", ["gaming", "usb-guest", "win10", "plain"])
def test_the_same_output_as_check_on_the_file(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The XML libvirt gives, written to a file and checked the offline way (with the running guests'
    groups as ledger claims), reads exactly the same."""
    with Virt.open(URI, read_only=True) as virt:
        xml = virt.domain(name).xml
    path = tmp_path / f"{name}.xml"
    path.write_bytes(xml)
    ledger = tmp_path / "run"
    with Ledger(ledger).locked() as session:
        session.write(Claim("win10", Phase.ACTIVE, (1,)))
    for fmt in ("text", "json"):
        live = check(capsys, ledger, "--domain", name, "--format", fmt)
        offline = run(capsys, "check", "--host", HOST, "--ledger", ledger, "--no-schema", "--format", fmt, path)
        assert live == offline


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-c", URI, "--domain", "nope"], "has no domain 'nope'"),
        (["-c", UNREACHABLE, "--domain", "win10"], "cannot connect to libvirt at " + UNREACHABLE),
        (["-c", UNREACHABLE, "--all"], "cannot connect to libvirt"),
        (["-c", URI, "--domain", "win10", "some.xml"], "not both"),
        (["-c", URI, "some.xml"], "-c/--connect reads domains from libvirt"),
    ],
    ids=["unknown-domain", "unreachable", "unreachable-all", "files-and-domains", "connect-without-domain"],
)
def test_input_errors(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "--host", HOST, "--ledger", tmp_path, *argv)
    assert code == ExitCode.INPUT
    assert out == ""
    one_line(err)
    assert message in err


def test_nothing_to_check_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "--host", HOST)
    assert (code, out) == (ExitCode.INPUT, "")
    one_line(err)


# --------------------------------------------------------------------------------------------- the seam


def test_only_virt_imports_libvirt() -> None:
    statement = re.compile(r"^\s*(import libvirt\b|from libvirt\b.* import )", re.MULTILINE)
    importers = sorted(str(p.relative_to(PLUGIN)) for p in PLUGIN.rglob("*.py") if statement.search(p.read_text()))
    assert importers == ["libvirt/virt.py"]


@pytest.mark.parametrize("module", ["isogroup.cli.main", "isogroup.hook.entry", "isogroup.hook.run"])
def test_importing_loads_no_libvirt(module: str) -> None:
    """The CLI loads libvirt only for the commands that use it; the hook never (it would deadlock libvirtd)."""
    code = f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] == 'libvirt'"
    code += " or m in ('isogroup.libvirt.virt', 'isogroup.cli.libvirt', 'isogroup.apply.hotplug'))"
    code += "; print(bad); sys.exit(bool(bad))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -------------------------------------------------------------------------------------------- node devices


def test_node_devices_carry_libvirts_iommu_groups() -> None:
    with Virt.open(URI, read_only=True) as virt:
        found = virt.node_devices()
    nodes = {str(n.address): n for n in found if isinstance(n, NodeDevice)}
    assert len(nodes) == len(found)  # libvirt's test driver writes nothing isogroup cannot read
    assert nodes["0000:01:00.1"].iommu_group == 1
    assert [str(a) for a in nodes["0000:01:00.1"].group_members] == ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]
    assert nodes["0000:00:02.0"].iommu_group is None
    assert nodes["0000:01:00.1"].driver is None  # the test driver never reports one


def test_a_node_device_as_a_real_libvirtd_writes_it() -> None:
    xml = """<device>
  <name>pci_0000_3b_02_1</name>
  <path>/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:02.1</path>
  <parent>pci_0000_3a_00_0</parent>
  <driver><name>iavf</name></driver>
  <capability type='pci'>
    <class>0x020000</class>
    <domain>0</domain><bus>59</bus><slot>2</slot><function>1</function>
    <product id='0x154c'>Ethernet Virtual Function 700 Series</product>
    <vendor id='0x8086'>Intel Corporation</vendor>
    <capability type='phys_function'>
      <address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/>
    </capability>
    <iommuGroup number='87'>
      <address domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/>
    </iommuGroup>
  </capability>
</device>"""
    node = parse_node_device(xml)
    assert node is not None
    assert (str(node.address), node.iommu_group, node.driver) == ("0000:3b:02.1", 87, "iavf")
    assert parse_node_device("<device><name>net_eth0</name><capability type='net'/></device>") is None
    # What it cannot read is an error, never a device quietly left out (that would look like device-gone).
    with pytest.raises(InputError, match="malformed XML"):
        parse_node_device("not xml")
