"""attach-device / detach-device on the simulated kernel, with libvirt's test driver as libvirt.

The test driver is xml-samples/libvirt/desktop-gpu.xml (the host of xml-samples/hosts/desktop-gpu.json as node
devices; win10 and plain running, gaming and usb-guest shut off). libvirt 9.0's test driver implements no device
hotplug at all (virDomainAttachDeviceFlags, DetachDeviceFlags: VIR_ERR_NO_SUPPORT), so here libvirt refuses
every attach and detach: these tests cover planning, refusals, the moves, and the rollback when libvirt refuses.
A libvirt that accepts is tests/vm/test_hotplug_vm.py, a real libvirtd in the VM test bed.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from clirun import run as run_cli
from fakes.simkernel import FailPath, Faults, KillAt, KillWhen, NeverBind, SimKernel
from fakes.sweeps import SWEEP_ERRNOS, failing_at, killed_at_every_write
from isogroup.apply.deadline import Deadline
from isogroup.apply.hotplug import attach_device, detach_device
from isogroup.apply.transaction import Context, Stage, prepare, recover, release
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.core.domain import DomainSpec
from isogroup.core.model import HostTopology
from isogroup.errors import ExitCode, HostError, InputError, RefusedError
from isogroup.formats import policyfile, snapshot
from isogroup.formats.domainxml import parse_device
from isogroup.host.ledger import Ledger
from isogroup.libvirt.virt import Virt
from testpaths import SAMPLES

NODE = SAMPLES / "libvirt" / "desktop-gpu.xml"
URI = f"test://{NODE}"
HOST = SAMPLES / "hosts" / "desktop-gpu.json"

GPU = PciAddress.parse("0000:01:00.0")  # group 1, assigned to the running guest win10
AUDIO = PciAddress.parse("0000:01:00.1")  # group 1
USB = PciAddress.parse("0000:00:14.0")  # group 2, with the PCH thermal sensor
THERMAL = PciAddress.parse("0000:00:14.2")  # group 2: must move when USB is attached
ASMEDIA = PciAddress.parse("0000:03:00.0")  # group 11, alone
NIC = PciAddress.parse("0000:00:1f.6")  # group 10, alone
PORT = PciAddress.parse("0000:00:1c.4")  # a root port (bridge), group 6


def hostdev(address: PciAddress, managed: str = "yes") -> bytes:
    return (
        f"<hostdev mode='subsystem' type='pci' managed='{managed}'>\n"
        f"  <source>\n"
        f"    <address domain='{address.domain:#06x}' bus='{address.bus:#04x}' slot='{address.slot:#04x}' "
        f"function='{address.function:#x}'/>\n"
        f"  </source>\n"
        f"</hostdev>\n"
    ).encode()


def topology(**on: tuple[str, str]) -> tuple[HostTopology, dict[PciAddress, str | None]]:
    """The desktop, with some devices already on vfio-pci: name=(address, native driver)."""
    topo = snapshot.load(HOST)
    natives: dict[PciAddress, str | None] = {}
    moved = {PciAddress.parse(a): native for a, native in on.values()}
    functions = []
    for f in topo.functions:
        if f.address in moved:
            natives[f.address] = moved[f.address]
        functions.append(replace(f, driver="vfio-pci", driver_override="vfio-pci") if f.address in moved else f)
    return HostTopology.build(topo.iommu, functions, topo.groups), natives


def make(tmp_path: Path, **on: tuple[str, str]) -> tuple[SimKernel, Context]:
    topo, natives = topology(**on)
    sim = SimKernel.materialize(tmp_path / "sys", topo, native=natives)
    return sim, Context(sim, Ledger(tmp_path / "run"), bind_timeout=0.2)


def claims(host: Context) -> list[Claim]:
    return host.ledger.read_all_unlocked()


def write_claim(host: Context, claim: Claim) -> None:
    with host.ledger.locked() as session:
        session.write(claim)


def visible(sim: SimKernel) -> HostTopology:
    """What the kernel shows (drivers and overrides included): equal before and after means nothing changed."""
    return sim.topology()


@pytest.fixture
def virt() -> Iterator[Virt]:
    with Virt.open(URI, read_only=False) as v:
        yield v


# ------------------------------------------------------------------------------------------ the test driver


def test_the_test_driver_cannot_hotplug(virt: Virt) -> None:
    """Why the success path is tested in the VM bed. If a libvirt update implements it, extend these tests."""
    with pytest.raises(HostError, match="not supported by the connection driver"):
        virt.attach("plain", hostdev(USB).decode(), 1)
    with pytest.raises(HostError, match="not supported by the connection driver"):
        virt.detach("win10", hostdev(GPU).decode(), 1)


# ------------------------------------------------------------------------------------------------- attach


def test_libvirt_refusing_the_attach_rolls_the_moves_back(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    before = visible(sim)
    with pytest.raises(HostError, match="libvirt refused to attach the device to 'plain'"):
        attach_device(host, virt, "plain", hostdev(USB), "usb.xml")
    writes = sim.writes()
    # The sibling went to vfio-pci (override, unbind, probe), then back (override cleared, unbind, probe).
    assert writes[:3] == [
        (f"bus/pci/devices/{THERMAL}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/intel_pch_thermal/unbind", str(THERMAL)),
        ("bus/pci/drivers_probe", str(THERMAL)),
    ]
    assert ("bus/pci/drivers/vfio-pci/unbind", str(THERMAL)) in writes[3:]
    assert all(str(USB) not in value for _, value in writes), "the requested device is libvirt's to move"
    assert visible(sim) == before
    assert claims(host) == []


def test_refused_attach_leaves_the_guests_earlier_claim_as_it_was(tmp_path: Path, virt: Virt) -> None:
    """plain already holds group 10 (its NIC, hot-plugged earlier): a refused attach must not touch that."""
    sim, host = make(tmp_path, nic=(str(NIC), "e1000e"))
    earlier = Claim("plain", Phase.ACTIVE, (10,), (MovedDevice(NIC, 10, "e1000e", None, DeviceState.MOVED),))
    write_claim(host, earlier)
    before = visible(sim)
    with pytest.raises(HostError):
        attach_device(host, virt, "plain", hostdev(USB), "usb.xml")
    assert visible(sim) == before
    assert claims(host) == [earlier]
    assert sim.driver(NIC) == "vfio-pci"


KILLED_ATTACH = """
import sys
import time
from pathlib import Path
from isogroup.apply.hotplug import attach_device
from isogroup.host.ledger import Ledger
from isogroup.apply.transaction import Context
from isogroup.libvirt.virt import Virt
from fakes.simkernel import SimKernel
tmp, uri, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
host = Context(SimKernel(tmp / "sys"), Ledger(tmp / "run"), bind_timeout=0.2)
with Virt.open(uri, read_only=False) as virt:
    attach_device(host, virt, "plain", device, "usb.xml")
"""


def test_a_hotplug_killed_half_way_is_never_taken_for_a_dead_start(tmp_path: Path) -> None:
    """plain runs with its NIC (group 10). An attach killed between unbinding the sensor and binding it to
    vfio-pci leaves plain's claim active, with the sensor recorded: the next run of any guest must not take it
    for a dead start and pull the NIC from the running guest; plain's release restores everything."""
    sim, host = make(tmp_path, nic=(str(NIC), "e1000e"))
    nic = MovedDevice(NIC, 10, "e1000e", None, DeviceState.MOVED)
    write_claim(host, Claim("plain", Phase.ACTIVE, (10,), (nic,)))
    sim.set_faults(Faults(kill=(KillAt(2, KillWhen.AFTER),)))  # after the sensor's unbind
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-c", KILLED_ATTACH, str(tmp_path), URI, hostdev(USB).decode()]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    sim.set_faults(Faults())
    assert sim.driver(THERMAL) is None

    (claim,) = claims(host)
    assert (claim.phase, claim.groups) == (Phase.ACTIVE, (2, 10))
    assert claim.device(THERMAL) == MovedDevice(THERMAL, 2, "intel_pch_thermal", None, DeviceState.MOVING)
    prepare(host, DomainSpec("another", None, ()), Stage.PREPARE)  # finishes interrupted runs first
    assert sim.driver(NIC) == "vfio-pci"
    assert claims(host) == [claim]

    assert release(host, "plain") is None
    assert (sim.driver(THERMAL), sim.driver(NIC)) == ("intel_pch_thermal", "e1000e")
    assert visible(sim) == snapshot.load(HOST)


def test_a_group_a_running_guest_uses_is_refused_with_nothing_changed(tmp_path: Path, virt: Virt) -> None:
    """win10 runs with the GPU and has no claim (started without the hook): libvirt's view alone protects it."""
    sim, host = make(tmp_path)
    with pytest.raises(RefusedError, match="IOMMU group 1 is in use by guest 'win10'"):
        attach_device(host, virt, "plain", hostdev(AUDIO), "audio.xml")
    assert sim.writes() == []
    assert not host.ledger.dir.exists(), "a refusal creates nothing, not even the ledger"


def test_a_group_the_ledger_gives_another_guest_is_refused(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    write_claim(host, Claim("elsewhere", Phase.ACTIVE, (2,)))
    with pytest.raises(RefusedError, match="in use by guest 'elsewhere'"):
        attach_device(host, virt, "plain", hostdev(USB), "usb.xml")
    assert sim.writes() == []
    assert [c.domain for c in claims(host)] == ["elsewhere"]


def test_a_bridge_is_refused(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    with pytest.raises(RefusedError, match="is a PCI bridge"):
        attach_device(host, virt, "plain", hostdev(PORT), "port.xml")
    assert sim.writes() == []


def test_the_hosts_policy_applies_as_at_a_start(tmp_path: Path, virt: Virt) -> None:
    """In strict mode only the devices named may leave their drivers: the sensor may not."""
    sim, host = make(tmp_path)
    strict = replace(host, policy=policyfile.parse_toml('mode = "strict"\n', "policy.toml"))
    with pytest.raises(RefusedError, match=str(THERMAL)):
        attach_device(strict, virt, "plain", hostdev(USB), "usb.xml")
    assert sim.writes() == []
    assert claims(host) == []


def test_a_failed_move_is_undone_before_libvirt_is_asked(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    before = visible(sim)
    sim.set_faults(Faults(fail_paths=(FailPath("bus/pci/drivers_probe", errno.EIO, str(THERMAL), times=1),)))
    with pytest.raises(HostError, match="drivers_probe") as info:
        attach_device(host, virt, "plain", hostdev(USB), "usb.xml")
    assert "libvirt" not in str(info.value)
    assert visible(sim) == before
    assert claims(host) == []


def test_attach_to_a_shut_off_guest_changes_only_its_definition(tmp_path: Path, virt: Virt) -> None:
    """Nothing moves for a guest that is not running: the hook isolates the group when it starts."""
    sim, host = make(tmp_path)
    with pytest.raises(HostError, match="libvirt refused to attach the device to 'usb-guest'"):
        attach_device(host, virt, "usb-guest", hostdev(USB), "usb.xml")
    assert sim.writes() == []
    assert claims(host) == []


def test_attach_to_a_shut_off_guest_is_still_planned(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    with pytest.raises(RefusedError, match="is a PCI bridge"):
        attach_device(host, virt, "usb-guest", hostdev(PORT), "port.xml", config=True)
    assert sim.writes() == []


def test_live_needs_a_running_guest(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    with pytest.raises(InputError, match="'usb-guest' is not running"):
        attach_device(host, virt, "usb-guest", hostdev(USB), "usb.xml", live=True)
    assert sim.writes() == []


def test_a_device_the_guest_has_already_is_refused_before_anything_moves(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    with pytest.raises(InputError, match=f"{GPU} is already assigned to 'win10'"):
        attach_device(host, virt, "win10", hostdev(GPU), "gpu.xml")
    with pytest.raises(InputError, match=f"{GPU} is already assigned to 'gaming'"):
        attach_device(host, virt, "gaming", hostdev(GPU), "gpu.xml", config=True)
    assert sim.writes() == []


def test_an_unknown_guest_is_an_input_error(tmp_path: Path, virt: Virt) -> None:
    _, host = make(tmp_path)
    with pytest.raises(InputError, match="has no domain 'nope'"):
        attach_device(host, virt, "nope", hostdev(USB), "usb.xml")


# ------------------------------------------------------------------------------------------------- detach


def test_libvirt_refusing_the_detach_changes_nothing(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path, gpu=(str(GPU), "nvidia"), audio=(str(AUDIO), "snd_hda_intel"))
    claim = Claim("win10", Phase.ACTIVE, (1,), (MovedDevice(AUDIO, 1, "snd_hda_intel", None, DeviceState.MOVED),))
    write_claim(host, claim)
    with pytest.raises(HostError, match="libvirt refused to detach the device from 'win10'"):
        detach_device(host, virt, "win10", hostdev(GPU), "gpu.xml")
    assert sim.writes() == []
    assert claims(host) == [claim]


def test_detach_restores_the_group_of_a_device_the_guest_no_longer_has(tmp_path: Path, virt: Virt) -> None:
    """USB was hot-unplugged from plain with plain virsh (no hook runs): detach-device gives its group back
    without asking libvirt again, and the guest's claim goes with it."""
    sim, host = make(tmp_path, thermal=(str(THERMAL), "intel_pch_thermal"))
    write_claim(
        host,
        Claim("plain", Phase.ACTIVE, (2,), (MovedDevice(THERMAL, 2, "intel_pch_thermal", None, DeviceState.MOVED),)),
    )
    assert detach_device(host, virt, "plain", hostdev(USB), "usb.xml") == (2,)
    assert sim.driver(THERMAL) == "intel_pch_thermal"
    assert visible(sim) == snapshot.load(HOST)
    assert claims(host) == []


def test_detach_keeps_a_group_the_guest_still_uses(tmp_path: Path, virt: Virt) -> None:
    """win10 holds group 1 (its GPU, running) and group 2. Detaching USB frees group 2 only; the audio
    function, in the GPU's group, stays on vfio-pci while the GPU is assigned."""
    sim, host = make(
        tmp_path,
        gpu=(str(GPU), "nvidia"),
        audio=(str(AUDIO), "snd_hda_intel"),
        thermal=(str(THERMAL), "intel_pch_thermal"),
    )
    audio = MovedDevice(AUDIO, 1, "snd_hda_intel", None, DeviceState.MOVED)
    thermal = MovedDevice(THERMAL, 2, "intel_pch_thermal", None, DeviceState.MOVED)
    write_claim(host, Claim("win10", Phase.ACTIVE, (1, 2), (audio, thermal)))

    assert detach_device(host, virt, "win10", hostdev(AUDIO), "audio.xml") == ()
    assert sim.writes() == []
    assert detach_device(host, virt, "win10", hostdev(USB), "usb.xml") == (2,)
    assert sim.driver(THERMAL) == "intel_pch_thermal"
    assert (sim.driver(AUDIO), sim.driver(GPU)) == ("vfio-pci", "vfio-pci")
    (left,) = claims(host)
    assert (left.domain, left.phase, left.groups, left.devices) == ("win10", Phase.ACTIVE, (1,), (audio,))


def test_detach_of_something_neither_attached_nor_claimed_is_an_input_error(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    with pytest.raises(InputError, match=f"{USB} is not attached to 'plain'"):
        detach_device(host, virt, "plain", hostdev(USB), "usb.xml")
    assert sim.writes() == []


def test_detach_from_a_shut_off_guest_changes_only_its_definition(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    with pytest.raises(HostError, match="libvirt refused to detach the device from 'usb-guest'"):
        detach_device(host, virt, "usb-guest", hostdev(ASMEDIA), "asmedia.xml")
    assert sim.writes() == []


# ------------------------------------------------------------------------------------------ device documents


def test_a_device_document_names_its_own_lines() -> None:
    data = b"<?xml version='1.0'?>\n<!-- my GPU -->\n" + hostdev(GPU).replace(b"function='0x0'", b"function='9'")
    with pytest.raises(InputError, match=r"^gpu\.xml line 5: "):
        parse_device(data, "gpu.xml", "win10", None)


def test_a_device_document_reads_as_the_guests_request() -> None:
    device = parse_device(hostdev(GPU, managed="no"), "gpu.xml", "win10", "some-uuid")
    assert (device.spec.name, device.spec.uuid) == ("win10", "some-uuid")
    assert [(r.address, r.managed) for r in device.spec.pci] == [(GPU, False)]
    assert "<hostdev" in device.xml and "win10" not in device.xml


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<domain><name>x</name></domain>", "whole domain"),
        (b"<hostdev", "malformed XML"),
        (b"<!DOCTYPE hostdev [<!ENTITY x 'y'>]><hostdev>&x;</hostdev>", "DOCTYPE"),
        (b"<hostdev mode='subsystem' type='pci'><source/></hostdev>", "no <source><address"),
    ],
    ids=["domain", "malformed", "doctype", "no-address"],
)
def test_bad_device_documents_are_input_errors(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_device(data, "dev.xml", "g", None)


def test_a_device_without_pci_plans_nothing() -> None:
    disk = b"<disk type='file' device='disk'><source file='/x.img'/><target dev='vdb'/></disk>"
    assert parse_device(disk, "disk.xml", "g", None).addresses == frozenset()


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("command", "domain", "device", "extra", "code", "message"),
    [
        ("attach-device", "plain", AUDIO, [], ExitCode.REFUSED, "in use by guest 'win10'"),
        ("attach-device", "nope", USB, [], ExitCode.INPUT, "has no domain 'nope'"),
        ("attach-device", "usb-guest", USB, ["--live"], ExitCode.INPUT, "is not running"),
        ("attach-device", "usb-guest", USB, ["--config"], ExitCode.HOST, "libvirt refused to attach"),
        ("detach-device", "usb-guest", ASMEDIA, [], ExitCode.HOST, "libvirt refused to detach"),
        ("detach-device", "plain", USB, [], ExitCode.INPUT, "is not attached to 'plain'"),
    ],
    ids=["refused", "unknown-domain", "live-not-running", "libvirt-refuses-attach", "libvirt-refuses-detach",
         "not-attached"],
)  # fmt: skip
def test_cli_exit_codes_and_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    domain: str,
    device: PciAddress,
    extra: list[str],
    code: int,
    message: str,
) -> None:
    sim, _ = make(tmp_path)
    path = tmp_path / "dev.xml"
    path.write_bytes(hostdev(device))
    got, out, err = run_cli(
        capsys, command, domain, path, "-c", URI, "--sysfs", tmp_path / "sys", "--ledger", tmp_path / "run", *extra
    )
    assert got == code, err
    assert out == ""
    assert err.startswith(("isogroup: ", "isogroup refused ")) and err.endswith("\n") and err.count("\n") == 1, err
    assert message in err
    assert sim.writes() == []


def test_cli_unreachable_libvirt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dev.xml"
    path.write_bytes(hostdev(USB))
    code, _, err = run_cli(
        capsys, "attach-device", "plain", path, "-c", "qemu+unix:///system?socket=/nonexistent/sock",
        "--ledger", tmp_path / "run",
    )  # fmt: skip
    assert code == ExitCode.INPUT
    assert err.startswith("isogroup: cannot connect to libvirt at qemu+unix:///system?socket=/nonexistent/sock")
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------- a fault or a kill at every write
# The hook's sweeps (tests/unit/test_transaction.py), over attach and detach. libvirt's test driver refuses every
# attach, so an attach's writes are the moves and, after libvirt refused, their undo: both halves of the engine.

EARLIER = Claim("plain", Phase.ACTIVE, (10,), (MovedDevice(NIC, 10, "e1000e", None, DeviceState.MOVED),))


def _plain_with_its_nic(root: Path) -> tuple[SimKernel, Context]:
    """plain runs with its NIC (group 10), hot-plugged earlier and recorded."""
    sim, host = make(root, nic=(str(NIC), "e1000e"))
    write_claim(host, EARLIER)
    return sim, host


def _writes_of_an_attach(root: Path, virt: Virt) -> int:
    sim, host = _plain_with_its_nic(root)
    with pytest.raises(HostError, match="libvirt refused"):
        attach_device(host, virt, "plain", hostdev(USB), "usb.xml")
    return sim.write_count()


def test_a_failure_at_every_write_of_an_attach_strands_nothing(tmp_path: Path, virt: Virt) -> None:
    total = _writes_of_an_attach(tmp_path / "probe", virt)
    assert total >= 6  # the sensor to vfio-pci (override, unbind, probe), and back after libvirt refused
    for n in range(1, total + 1):
        for err in SWEEP_ERRNOS:
            sim, host = _plain_with_its_nic(tmp_path / f"w{n}-{err}")
            before = visible(sim)
            with failing_at(sim, n, err), pytest.raises(HostError):
                attach_device(host, virt, "plain", hostdev(USB), "usb.xml")
            # A device the undo could not put back is marked for recover alone; the running guest keeps its NIC.
            assert {d.state for c in claims(host) for d in c.devices if d.address != NIC} <= {
                DeviceState.RESTORE_FAILED
            }, f"write {n}"
            assert recover(host) == [EARLIER], f"write {n}"
            assert sim.driver(NIC) == "vfio-pci"
            assert visible(sim) == before, f"write {n}"


def _exec(script: str) -> Callable[[str], None]:
    """A kill sweep's child that runs `script ROOT URI DEVICE` in a fresh interpreter (exec in the forked
    process): libvirt's connection is opened there, never inherited across a fork."""

    def child(root: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        os.execve(sys.executable, [sys.executable, "-c", script, root, URI, hostdev(USB).decode()], env)

    return child


@pytest.mark.parametrize("when", list(KillWhen))
def test_a_sigkill_at_every_write_of_an_attach_strands_nothing(tmp_path: Path, virt: Virt, when: KillWhen) -> None:
    total = _writes_of_an_attach(tmp_path / "probe", virt)
    for root, sim, host in killed_at_every_write(tmp_path, total, when, _exec(KILLED_ATTACH), host=_plain_with_its_nic):
        n = root.name
        # The next run, of any guest, never takes the running guest's claim for a dead start ...
        prepare(host, DomainSpec("another", None, ()), Stage.PREPARE)
        (claim,) = claims(host)
        assert claim.phase is Phase.ACTIVE and claim.device(NIC) == EARLIER.devices[0], f"write {n}"
        assert sim.driver(NIC) == "vfio-pci"
        # ... and the guest's release restores everything, whatever the killed run had done.
        assert release(host, "plain") is None
        assert visible(sim) == snapshot.load(HOST), f"write {n}"


def _sensor_claimed(root: Path) -> tuple[SimKernel, Context]:
    """USB was hot-unplugged from plain with plain virsh: its group (the sensor, moved) is still plain's."""
    sim, host = make(root, thermal=(str(THERMAL), "intel_pch_thermal"))
    thermal = MovedDevice(THERMAL, 2, "intel_pch_thermal", None, DeviceState.MOVED)
    write_claim(host, Claim("plain", Phase.ACTIVE, (2,), (thermal,)))
    return sim, host


def test_a_failure_at_every_write_of_a_detach_strands_nothing(tmp_path: Path, virt: Virt) -> None:
    sim, host = _sensor_claimed(tmp_path / "probe")
    assert detach_device(host, virt, "plain", hostdev(USB), "usb.xml") == (2,)
    total = sim.write_count()
    assert total >= 3  # the sensor's override cleared, unbound from vfio-pci, probed
    for n in range(1, total + 1):
        for err in SWEEP_ERRNOS:
            sim, host = _sensor_claimed(tmp_path / f"w{n}-{err}")
            with (
                failing_at(sim, n, err),
                pytest.raises(HostError, match="could not restore every device of IOMMU group"),
            ):
                detach_device(host, virt, "plain", hostdev(USB), "usb.xml")
            (left,) = claims(host)
            assert left.device(THERMAL) == MovedDevice(
                THERMAL, 2, "intel_pch_thermal", None, DeviceState.RESTORE_FAILED
            ), f"write {n}"
            assert recover(host) == []
            assert visible(sim) == snapshot.load(HOST), f"write {n}"


KILLED_DETACH = KILLED_ATTACH.replace("attach_device", "detach_device")


@pytest.mark.parametrize("when", list(KillWhen))
def test_a_sigkill_at_every_write_of_a_detach_strands_nothing(tmp_path: Path, virt: Virt, when: KillWhen) -> None:
    for root, sim, host in killed_at_every_write(tmp_path, 3, when, _exec(KILLED_DETACH), host=_sensor_claimed):
        n = root.name
        assert [c.groups for c in claims(host)] == [(2,)], f"write {n}"
        # What detach-device's message says to do: run it again.
        assert detach_device(host, virt, "plain", hostdev(USB), "usb.xml") == (2,)
        assert claims(host) == []
        assert visible(sim) == snapshot.load(HOST), f"write {n}"


def test_an_attach_out_of_time_is_undone_before_libvirt_is_asked(tmp_path: Path, virt: Virt) -> None:
    sim, host = make(tmp_path)
    before = visible(sim)
    sim.set_faults(Faults(never_bind=(NeverBind(driver="vfio-pci"),)))
    bounded = replace(host, bind_timeout=10.0, deadline=Deadline.after(0.5))
    started = time.monotonic()
    with pytest.raises(HostError, match=r"^the run took longer than 0.5 s and stopped \(.*did not bind") as info:
        attach_device(bounded, virt, "plain", hostdev(USB), "usb.xml")
    assert time.monotonic() - started < 2.0
    assert "libvirt" not in str(info.value) and "everything it had changed is back" in str(info.value)
    sim.set_faults(Faults())
    assert visible(sim) == before
    assert claims(host) == []


def test_an_attach_out_of_time_names_only_what_it_left_recorded(tmp_path: Path, virt: Virt) -> None:
    """The sensor binds to nothing, neither vfio-pci nor its own driver: it stays recorded for recover alone,
    and the message names it, not the NIC the running guest holds."""
    sim, host = _plain_with_its_nic(tmp_path)
    before = visible(sim)
    sim.set_faults(Faults(never_bind=(NeverBind(address=str(THERMAL)),)))
    bounded = replace(host, bind_timeout=10.0, deadline=Deadline.after(0.5))
    with pytest.raises(HostError, match=r"^the run took longer than 0.5 s and stopped") as info:
        attach_device(bounded, virt, "plain", hostdev(USB), "usb.xml")
    message = str(info.value)
    assert f"the claim of 'plain' (active) still records {THERMAL} (run 'isogroup status'" in message, message
    (left,) = claims(host)
    assert left.device(THERMAL) == MovedDevice(THERMAL, 2, "intel_pch_thermal", None, DeviceState.RESTORE_FAILED)
    sim.set_faults(Faults())
    assert recover(host) == [EARLIER]
    assert visible(sim) == before
