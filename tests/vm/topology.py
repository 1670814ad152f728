"""PCI topologies for the test bed, as data, and their translation into QEMU arguments.

A topology is a tuple of slots on the q35 root bus (pcie.0). A slot holds one function, or several as one
multifunction device. A function is an endpoint `Device` or a bridge (`RootPort`, `PcieToPciBridge`,
`PciBridge`) with slots of its own behind it.

Addresses are assigned deterministically, so nobody writes `addr=` by hand:
  * root-bus slots get device numbers ROOT_FIRST_SLOT, ROOT_FIRST_SLOT + 1, ... (00:02/00:03 carry the bed's
    own 9p devices, 00:1f the ICH9 functions q35 always has);
  * a root port has a single downstream slot, device 0 of its secondary bus;
  * slots behind a conventional bridge (pcie-pci-bridge, pci-bridge) get device numbers 1, 2, ... (slot 0 is
    left free, as libvirt does, because of the bridges' SHPC).
The guest bus *numbers* are chosen by the firmware and kernel, so they are not computed here. Instead every
named function gets a `path`: the (device, function) hop on the root bus, then one hop per bridge below it.
The guest resolves a path to a BDF by walking sysfs, where a device's children are subdirectories of the
bridge's own directory (see guest_lib.resolve_path). That holds whatever numbers the firmware picked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

ROOT_FIRST_SLOT = 0x08
ROOT_LAST_SLOT = 0x1E
BRIDGE_FIRST_SLOT = 0x01
BRIDGE_LAST_SLOT = 0x1F

# QEMU's rule for -device id=: a letter, then letters, digits, '-', '.', '_'.
_QEMU_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

Hop = tuple[int, int]  # (device, function) on one bus


@dataclass(frozen=True)
class Device:
    """An endpoint function: any QEMU PCI device model (e1000e, virtio-net-pci, e1000, ich9-ahci, ...).

    `disk_mib` > 0 attaches a blank raw disk of that size (sparse, in the run's temporary directory) to an
    AHCI controller's first port, so the guest can mkfs and mount it.
    """

    name: str
    model: str
    props: tuple[tuple[str, str], ...] = ()
    disk_mib: int = 0


@dataclass(frozen=True)
class RootPort:
    """A `pcie-root-port`. QEMU's advertises ACS, so what is behind it gets its own IOMMU group;
    `acs=False` sets `disable-acs=on`, which puts the port and everything behind it into one group."""

    name: str
    downstream: Slot | None = None
    acs: bool = True


@dataclass(frozen=True)
class PcieToPciBridge:
    """A `pcie-pci-bridge` (plug it into a root port): everything behind it shares one requester ID."""

    name: str
    slots: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class PciBridge:
    """A conventional `pci-bridge`; may sit on the root bus or behind another conventional bridge."""

    name: str
    slots: tuple[Slot, ...] = ()


Function = Device | RootPort | PcieToPciBridge | PciBridge


@dataclass(frozen=True)
class Slot:
    """One PCI slot: function i of the tuple becomes function i of the device (multifunction when > 1)."""

    functions: tuple[Function, ...]


def slot(*functions: Function) -> Slot:
    return Slot(functions)


class Iommu(StrEnum):
    """The IOMMU QEMU emulates (on q35, with interrupt remapping) and the kernel argument that turns it on."""

    INTEL = "intel"  # -device intel-iommu, intel_iommu=on
    AMD = "amd"  # -device amd-iommu, amd_iommu=on: AMD-Vi, the IOMMU of AMD hosts


@dataclass(frozen=True)
class Topology:
    """`extra_args`: QEMU arguments the slots cannot express (an audio backend and the HDA codec on a
    controller's bus: `-audiodev none,id=X -device hda-output,bus=NAME.0,audiodev=X`)."""

    name: str
    slots: tuple[Slot, ...]
    memory_mib: int = 2048
    iommu: Iommu = Iommu.INTEL
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where a named function ends up: its QEMU model and the path the guest resolves to a BDF."""

    name: str
    model: str
    path: tuple[Hop, ...]


@dataclass(frozen=True)
class QemuDevices:
    """The `-device`/`-drive` arguments for a topology, and the disk images they reference."""

    args: tuple[str, ...]
    disks: tuple[tuple[Path, int], ...] = field(default=())  # (image path, size in MiB)


def _model(function: Function) -> str:
    match function:
        case Device():
            return function.model
        case RootPort():
            return "pcie-root-port"
        case PcieToPciBridge():
            return "pcie-pci-bridge"
        case PciBridge():
            return "pci-bridge"


def _walk(
    slots: tuple[Slot, ...], first: int, last: int, parent: tuple[Hop, ...], bus: str
) -> Iterator[tuple[Function, tuple[Hop, ...], str, int, int, bool]]:
    """Yields (function, path, parent bus id, device number, function number, multifunction) depth-first."""
    if len(slots) > last - first + 1:
        raise ValueError(f"bus {bus}: {len(slots)} slots do not fit in device numbers {first:#x}..{last:#x}")
    for index, one in enumerate(slots):
        dev = first + index
        if not 1 <= len(one.functions) <= 8:
            raise ValueError(f"bus {bus}, device {dev:#x}: a slot holds 1 to 8 functions")
        multi = len(one.functions) > 1
        for fn, function in enumerate(one.functions):
            path = (*parent, (dev, fn))
            yield function, path, bus, dev, fn, multi
            match function:
                case RootPort(downstream=None) | Device():
                    pass
                case RootPort(downstream=Slot() as below):
                    yield from _walk((below,), 0, 0, path, function.name)
                case PcieToPciBridge() | PciBridge():
                    yield from _walk(function.slots, BRIDGE_FIRST_SLOT, BRIDGE_LAST_SLOT, path, function.name)


def placements(topology: Topology) -> dict[str, Placement]:
    """Every named function of the topology, by name. Names must be unique, valid QEMU ids."""
    found: dict[str, Placement] = {}
    for function, path, _bus, _dev, _fn, _multi in _walk(topology.slots, ROOT_FIRST_SLOT, ROOT_LAST_SLOT, (), "pcie.0"):
        if not _QEMU_ID.match(function.name):
            raise ValueError(f"{function.name!r} is not a valid QEMU id")
        if function.name in found:
            raise ValueError(f"duplicate device name {function.name!r}")
        found[function.name] = Placement(function.name, _model(function), path)
    return found


def qemu_devices(topology: Topology, disk_dir: Path) -> QemuDevices:
    """The QEMU arguments that build the topology; disk images are named into `disk_dir`."""
    placements(topology)  # validates names
    args: list[str] = []
    disks: list[tuple[Path, int]] = []
    chassis = 0
    for function, _path, bus, dev, fn, multi in _walk(topology.slots, ROOT_FIRST_SLOT, ROOT_LAST_SLOT, (), "pcie.0"):
        opts = [_model(function), f"id={function.name}", f"bus={bus}", f"addr={dev:#04x}.{fn}"]
        if multi and fn == 0:
            opts.append("multifunction=on")
        match function:
            case Device():
                opts += [f"{key}={value}" for key, value in function.props]
            case RootPort():
                # Every root port and pci-bridge needs a distinct chassis number.
                chassis += 1
                opts.append(f"chassis={chassis}")
                if not function.acs:
                    opts.append("disable-acs=on")
            case PciBridge():
                chassis += 1
                opts.append(f"chassis_nr={chassis}")
            case PcieToPciBridge():
                pass
        args += ["-device", ",".join(opts)]
        if isinstance(function, Device) and function.disk_mib > 0:
            image = disk_dir / f"{function.name}.img"
            disks.append((image, function.disk_mib))
            drive = f"{function.name}-disk"
            args += [
                "-drive",
                f"if=none,id={drive},file={image},format=raw,cache=unsafe",
                "-device",
                f"ide-hd,drive={drive},bus={function.name}.0,serial={drive}",
            ]
    return QemuDevices((*args, *topology.extra_args), tuple(disks))
