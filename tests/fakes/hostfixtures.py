"""Shared scenery for the transaction and hook tests: a desktop host on the simulated kernel, libvirt's own
device handling (as virpci.c does it), and digests of a whole tree (and of what the
simulated kernel shows) for "nothing changed" assertions."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path

from fakes.simkernel import SIM_DIR, SimKernel, make_function, make_topology
from isogroup.apply.transaction import Context
from isogroup.core.address import PciAddress
from isogroup.core.model import Header, HostTopology
from isogroup.host.ledger import Ledger

PORT = PciAddress.parse("0000:00:01.0")
GPU = PciAddress.parse("0000:01:00.0")
AUDIO = PciAddress.parse("0000:01:00.1")
USB = PciAddress.parse("0000:01:00.2")
UCSI = PciAddress.parse("0000:01:00.3")
NIC = PciAddress.parse("0000:02:00.0")
SATA = PciAddress.parse("0000:03:00.0")
NIC2 = PciAddress.parse("0000:03:00.1")

ORIGINAL = {
    GPU: "nvidia",
    AUDIO: "snd_hda_intel",
    USB: "xhci_hcd",
    UCSI: "nvidia-gpu",
    NIC: "e1000e",
    SATA: "ahci",
    NIC2: "igb",
    PORT: "pcieport",
}


def desktop() -> HostTopology:
    """Group 1: a laptop-style dGPU with four functions behind a root port without ACS (port included).
    Group 2: a NIC alone. Group 3: a SATA controller and a NIC as one multifunction device."""
    return make_topology(
        [
            make_function(
                "0000:00:01.0", class_code=0x060400, header=Header.BRIDGE, driver="pcieport", group=1, device=0x1901
            ),
            make_function(
                "0000:01:00.0",
                class_code=0x030000,
                driver="nvidia",
                group=1,
                parent="0000:00:01.0",
                vendor=0x10DE,
                device=0x1F95,
                multifunction=True,
            ),
            make_function(
                "0000:01:00.1",
                class_code=0x040300,
                driver="snd_hda_intel",
                group=1,
                parent="0000:00:01.0",
                vendor=0x10DE,
                device=0x10FA,
                multifunction=True,
            ),
            make_function(
                "0000:01:00.2",
                class_code=0x0C0330,
                driver="xhci_hcd",
                group=1,
                parent="0000:00:01.0",
                vendor=0x10DE,
                device=0x1ADE,
                multifunction=True,
            ),
            make_function(
                "0000:01:00.3",
                class_code=0x0C8000,
                driver="nvidia-gpu",
                group=1,
                parent="0000:00:01.0",
                vendor=0x10DE,
                device=0x1ADF,
                multifunction=True,
            ),
            make_function("0000:02:00.0", driver="e1000e", group=2, device=0x10D3),
            make_function("0000:03:00.0", class_code=0x010601, driver="ahci", group=3, multifunction=True),
            make_function("0000:03:00.1", driver="igb", group=3, device=0x1533, multifunction=True),
        ]
    )


def make_host(
    tmp: Path, topology: HostTopology | None = None, *, bind_timeout: float = 0.2
) -> tuple[SimKernel, Context]:
    sim = SimKernel.materialize(tmp / "sys", topology or desktop())
    return sim, Context(sim, Ledger(tmp / "run"), bind_timeout=bind_timeout)


def domain_xml(name: str, *addresses: PciAddress, managed: str = "yes", extra: str = "") -> bytes:
    devs = "".join(
        f"<hostdev mode='subsystem' type='pci' managed='{managed}'><source><address domain='{a.domain:#06x}' "
        f"bus='{a.bus:#04x}' slot='{a.slot:#04x}' function='{a.function:#x}'/></source></hostdev>"
        for a in addresses
    )
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>00000000-0000-0000-0000-00000000000{len(name) % 10}</uuid>"
        f"<devices><disk type='file' device='disk'/>{devs}{extra}</devices></domain>"
    ).encode()


def libvirt_detach(sim: SimKernel, address: PciAddress) -> None:
    """What libvirt does for a managed='yes' hostdev after the prepare hook (virPCIDeviceBindWithDriverOverride)."""
    sim.write(f"bus/pci/devices/{address}/driver_override", "vfio-pci")
    driver = sim.driver(address)
    if driver is not None:
        sim.write(f"bus/pci/drivers/{driver}/unbind", str(address))
    sim.write("bus/pci/drivers_probe", str(address))


def libvirt_reattach(sim: SimKernel, address: PciAddress) -> None:
    """What libvirt does at stop for a device it detached: unbind from the stub, clear the override, probe."""
    if sim.driver(address) == "vfio-pci":
        sim.write("bus/pci/drivers/vfio-pci/unbind", str(address))
    sim.write(f"bus/pci/devices/{address}/driver_override", "\n")
    sim.write("bus/pci/drivers_probe", str(address))


def tree_digest(*roots: Path, leave_out: Collection[Path] = ()) -> dict[str, str]:
    """Every file's bytes, every link's target and every directory's mode under the roots (but not under
    `leave_out`): equal digests mean nothing changed. Reads the files directly, through no code under test."""
    skipped = {str(p) for p in leave_out}
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = "(absent)"
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if str(Path(dirpath, d)) not in skipped]
            for name in sorted(dirnames + filenames):
                path = Path(dirpath, name)
                if path.is_symlink():
                    out[str(path)] = "-> " + os.readlink(path)
                elif path.is_file():
                    out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[str(path)] = "dir %o" % (path.stat().st_mode & 0o7777)
    return out


def kernel_digest(sim: SimKernel) -> dict[str, str]:
    """What the simulated kernel shows, byte for byte: the whole sysfs tree and the /dev/vfio nodes, without the
    simulation's bookkeeping (its record, the write log and counters in .sim/). For "nothing changed" after a
    change was rolled back: the writes are in the log, but every attribute and link must be as it was. Keys are
    relative to the root, so two trees compare too (`kernel_digest(sim) == kernel_digest(fresh)`)."""
    shown = tree_digest(sim.root, leave_out=(sim.root / SIM_DIR,)) | tree_digest(sim.devfs)
    return {os.path.relpath(path, sim.root): value for path, value in shown.items()}


def drivers(sim: SimKernel) -> dict[PciAddress, str | None]:
    return {a: sim.driver(a) for a in ORIGINAL}


def assert_home(sim: SimKernel, ledger_dir: Path) -> None:
    """Nothing stranded: every device on its original driver, no override left, no claim left."""
    assert drivers(sim) == ORIGINAL
    for address in ORIGINAL:
        assert sim.read(f"bus/pci/devices/{address}/driver_override") == "(null)", address
    claims = ledger_dir / "claims"
    assert not claims.exists() or not [p for p in claims.iterdir() if p.suffix == ".json"]
