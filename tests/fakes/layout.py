"""The sysfs tree the simulated kernel shows, drawn from its record (state.py): `devices/` with each function's
attributes and config space, `bus/pci/` (the devices' links, the drivers with their bind/unbind/new_id/remove_id
and their devices' links, drivers_probe) and `kernel/iommu_groups/`, in the kernel's formats, so that every read
of the code under test goes through the ordinary Sysfs code against real files. `Tree` redraws what a change to
the record changes; nothing here decides anything.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

from fakes.state import Device
from fakes.vfio import VFIO_PCI
from isogroup.core.address import PciAddress
from isogroup.core.kernel.configspace import CONFIG_SPACE_SIZE
from isogroup.core.model import Header, HostTopology, IommuGroup, PciFunction
from isogroup.host.sysfs import IOMMU_GROUPS, PCI_DEVICES, Sysfs

DRIVERS_PROBE = "bus/pci/drivers_probe"
DRIVER_ATTRS = ("bind", "unbind", "new_id", "remove_id")
# Mode bits of the kernel's attributes (0444 read-only, 0200 write-only, 0644/0664 read-write).
RO, WO, RW = 0o444, 0o200, 0o644
_HEADER_TYPE = {Header.ENDPOINT: 0, Header.BRIDGE: 1, Header.CARDBUS: 2}
CONVENTIONAL_CONFIG_SIZE = 256  # what root reads from a conventional PCI function's sysfs config
_VGA_CLASSES = (0x0300, 0x0001)  # pci_is_vga(): VGA display, and pre-2.0 "not defined, VGA compatible"
_NAME = re.compile(r"^[A-Za-z0-9_.:+-]+$")


class Tree:
    """Redraws the parts of the tree under `root` that a change to the record touches."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def device_dir(self, device: Device) -> Path:
        return self.root / device.path

    def bind(self, device: Device, driver: str) -> None:
        dev, drv = self.device_dir(device), self.root / Sysfs.driver_dir(driver)
        symlink(dev / "driver", drv)
        symlink(drv / device.bdf, dev)

    def unbind(self, device: Device, driver: str) -> None:
        (self.device_dir(device) / "driver").unlink()
        (self.root / Sysfs.driver_dir(driver, device.bdf)).unlink(missing_ok=True)

    def show_override(self, device: Device, name: str | None) -> None:
        path = self.device_dir(device) / "driver_override"
        path.write_text(f"{name if name is not None else '(null)'}\n", encoding="utf-8")

    def add_driver(self, name: str) -> None:
        path = self.root / Sysfs.driver_dir(name)
        path.mkdir(parents=True)
        for attr in DRIVER_ATTRS:
            write_attr(path / attr, "", WO)

    def remove_driver(self, name: str) -> None:
        shutil.rmtree(self.root / Sysfs.driver_dir(name))

    def unplug(self, device: Device, *, last_in_group: bool) -> None:
        """The device's directory and every link to it go; with the group's last device, the group too."""
        func = device.function
        if func.driver is not None:
            (self.root / Sysfs.driver_dir(func.driver, device.bdf)).unlink(missing_ok=True)
        if func.iommu_group is not None:
            group_dir = self.root / IOMMU_GROUPS / str(func.iommu_group)
            (group_dir / "devices" / device.bdf).unlink()
            if last_in_group:
                shutil.rmtree(group_dir)
        (self.root / PCI_DEVICES / device.bdf).unlink()
        shutil.rmtree(self.device_dir(device), ignore_errors=True)


def check_kernel_shaped(topology: HostTopology, vfio_loaded: bool) -> None:
    """Refuse a topology no kernel could show: the tree would have to lie, and the round trip would too."""
    if len(topology.by_address) != len(topology.functions):
        raise ValueError("a PCI address is listed twice")
    if topology.groups and not topology.iommu:
        raise ValueError("IOMMU groups are listed but iommu is false")
    for group in topology.groups:
        for member in group.members:
            func = topology.function(member)
            if func is None or func.iommu_group != group.number:
                raise ValueError(f"group {group.number} lists {member}, which does not say it is in it")
    for func in topology.functions:
        where = str(func.address)
        if (
            func.iommu_group is not None
            and func.address not in topology.by_group.get(func.iommu_group, _NO_GROUP).members
        ):
            raise ValueError(f"{where} names group {func.iommu_group}, which does not list it")
        if func.boot_vga and func.class_code >> 8 not in _VGA_CLASSES:
            raise ValueError(f"{where}: the kernel shows boot_vga only on VGA devices")
        for name in (func.driver, func.driver_override):
            if name is not None and (not _NAME.match(name) or name in (".", "..")):
                raise ValueError(f"{where}: {name!r} cannot be a driver name")
        if func.driver == VFIO_PCI and not vfio_loaded:
            raise ValueError(f"{where} is bound to vfio-pci, which is not loaded")
    for func in topology.functions:
        _check_capabilities(func)
    for func in topology.functions:
        seen = {func.address}
        parent = func.parent
        while parent is not None:
            if parent in seen:
                raise ValueError(f"{func.address}: its parent chain loops")
            seen.add(parent)
            parent_func = topology.function(parent)
            parent = parent_func.parent if parent_func else None


def _check_capabilities(func: PciFunction) -> None:
    """Config-space facts the tree can show: a read that stopped at 64 bytes shows none, a conventional function
    has no ACS capability, and the ACS control word exists only with the capability."""
    where = str(func.address)
    known = (func.pcie_type, func.acs_cap, func.acs_ctrl)
    if not func.capabilities_read and known != (None, None, None):
        raise ValueError(f"{where}: capabilities are set but capabilities_read is false")
    if func.pcie_type is not None and not 0 <= func.pcie_type <= 0xF:
        raise ValueError(f"{where}: PCIe device/port type {func.pcie_type} does not fit in 4 bits")
    if func.pcie_type is None and (func.acs_cap, func.acs_ctrl) != (None, None):
        raise ValueError(f"{where}: a conventional PCI function has no ACS extended capability")
    if func.acs_cap is None and func.acs_ctrl is not None:
        raise ValueError(f"{where}: an ACS control word without an ACS capability")
    for value in (func.acs_cap, func.acs_ctrl):
        if value is not None and not 0 <= value <= 0xFFFF:
            raise ValueError(f"{where}: ACS registers are 16 bits, not {value:#x}")


_NO_GROUP = IommuGroup(-1, ())


def device_paths(topology: HostTopology) -> dict[PciAddress, str]:
    """Each function's directory: devices/pci{domain}:{bus}/ then the bridge chain down to it. An ancestor
    missing from the topology (a scoped capture) still gets its directory, so `parent` reads back."""
    paths = {}
    for func in topology.functions:
        chain = [func.address]
        parent = func.parent
        while parent is not None:
            chain.append(parent)
            parent_func = topology.function(parent)
            parent = parent_func.parent if parent_func else None
        top = chain[-1]
        paths[func.address] = "/".join(
            ["devices", f"pci{top.domain:04x}:{top.bus:02x}", *(str(a) for a in reversed(chain))]
        )
    return paths


def make_device(root: Path, topology: HostTopology, func: PciFunction, paths: Mapping[PciAddress, str]) -> None:
    dev = root / paths[func.address]
    dev.mkdir(parents=True, exist_ok=True)
    write_attr(dev / "vendor", f"0x{func.vendor:04x}\n", RO)
    write_attr(dev / "device", f"0x{func.device:04x}\n", RO)
    write_attr(dev / "class", f"0x{func.class_code:06x}\n", RO)
    if func.subsystem is not None:  # the kernel always has them (pci-sysfs.c); a topology may not record them
        write_attr(dev / "subsystem_vendor", f"0x{func.subsystem[0]:04x}\n", RO)
        write_attr(dev / "subsystem_device", f"0x{func.subsystem[1]:04x}\n", RO)
    secondary, subordinate = _bus_range(topology, func)
    (dev / "config").write_bytes(config_space(func, secondary, subordinate))
    (dev / "config").chmod(RW)
    write_attr(dev / "driver_override", f"{func.driver_override or '(null)'}\n", RW)
    if func.reset_methods:  # drivers/pci/pci.c: the file is hidden when the kernel has no reset for it
        write_attr(dev / "reset_method", " ".join(func.reset_methods) + "\n", RW)
        write_attr(dev / "reset", "", WO)
    if func.class_code >> 8 in _VGA_CLASSES:
        write_attr(dev / "boot_vga", "1\n" if func.boot_vga else "0\n", RO)
    if func.sriov_totalvfs is not None:
        write_attr(dev / "sriov_totalvfs", f"{func.sriov_totalvfs}\n", RO)
    if func.sriov_numvfs is not None:
        write_attr(dev / "sriov_numvfs", f"{func.sriov_numvfs}\n", 0o664)
    if func.is_bridge:
        write_attr(dev / "secondary_bus_number", f"{secondary}\n", RO)
        write_attr(dev / "subordinate_bus_number", f"{subordinate}\n", RO)
    if func.physfn is not None:
        pf = topology.function(func.physfn)
        pf_dir = root / paths[pf.address] if pf else dev.parent / str(func.physfn)
        symlink(dev / "physfn", pf_dir)
    vfs = sorted(f.address for f in topology.functions if f.physfn == func.address)
    for index, vf in enumerate(vfs):
        symlink(dev / f"virtfn{index}", root / paths[vf])
    symlink(root / PCI_DEVICES / str(func.address), dev)
    if func.driver is not None:
        drv = root / Sysfs.driver_dir(func.driver)
        symlink(dev / "driver", drv)
        symlink(drv / str(func.address), dev)
    if func.iommu_group is not None:
        symlink(dev / "iommu_group", root / IOMMU_GROUPS / str(func.iommu_group))


def make_group(root: Path, group: IommuGroup, paths: Mapping[PciAddress, str]) -> None:
    devices = root / IOMMU_GROUPS / str(group.number) / "devices"
    devices.mkdir(parents=True)
    for member in group.members:
        symlink(devices / str(member), root / paths[member])


def _bus_range(topology: HostTopology, func: PciFunction) -> tuple[int, int]:
    """A bridge's secondary and subordinate bus numbers, from the functions below it."""
    below = [f.address.bus for f in topology.functions if _is_below(topology, f, func.address)]
    secondary = min((f.address.bus for f in topology.functions if f.parent == func.address), default=None)
    if secondary is None:
        secondary = min(func.address.bus + 1, 0xFF)
    return secondary, max([secondary, *below])


def _is_below(topology: HostTopology, func: PciFunction, ancestor: PciAddress) -> bool:
    parent = func.parent
    seen: set[PciAddress] = set()
    while parent is not None and parent not in seen:
        if parent == ancestor:
            return True
        seen.add(parent)
        parent_func = topology.function(parent)
        parent = parent_func.parent if parent_func else None
    return False


def config_space(func: PciFunction, secondary: int = 0, subordinate: int = 0) -> bytes:
    """The config space a read of sysfs `config` returns: the 64 bytes an unprivileged read gets when the
    topology does not know the capabilities (`capabilities_read` False); otherwise what root reads, 256 bytes for
    a conventional function, 4096 for a PCIe one, with its PCIe capability and ACS extended capability."""
    if not func.capabilities_read:
        config = bytearray(64)
    elif func.pcie_type is None:
        config = bytearray(CONVENTIONAL_CONFIG_SIZE)
    else:
        config = bytearray(CONFIG_SPACE_SIZE)
    struct.pack_into("<HH", config, 0x00, func.vendor, func.device)
    config[0x09:0x0C] = func.class_code.to_bytes(3, "little")  # prog-if, subclass, base class
    config[0x0E] = _HEADER_TYPE[func.header] | (0x80 if func.multifunction else 0)
    if func.is_bridge:
        config[0x18:0x1B] = bytes((func.address.bus, secondary, subordinate))
    if func.capabilities_read:
        _capabilities(config, func)
    return bytes(config)


def _capabilities(config: bytearray, func: PciFunction) -> None:
    """The capability list (PCI 6.7: status bit 4, pointer at 0x34) and, for PCIe, the extended capabilities from
    0x100 (PCIe 7.6.3): power management at 0x40, then PCIe at 0x50 with the device/port type in bits 7:4 of its
    flags; AER at 0x100, then ACS at 0x148 with its capability and control words at +4 and +6."""
    struct.pack_into("<H", config, 0x06, 0x0010)  # status: capabilities list
    config[0x34] = 0x40
    config[0x40:0x44] = bytes((0x01, 0x50 if func.pcie_type is not None else 0x00, 0x03, 0x00))  # PM, version 3
    if func.pcie_type is None:
        return
    config[0x50:0x52] = bytes((0x10, 0x00))  # PCI Express, end of list
    struct.pack_into("<H", config, 0x52, (func.pcie_type << 4) | 0x2)  # flags: type, capability version 2
    acs = 0x148
    struct.pack_into("<I", config, 0x100, 0x0001 | 2 << 16 | (acs if func.acs_cap is not None else 0) << 20)
    if func.acs_cap is not None:
        struct.pack_into("<IHH", config, acs, 0x000D | 1 << 16, func.acs_cap, func.acs_ctrl or 0)


def symlink(link: Path, target: Path) -> None:
    """A relative link, as sysfs makes them (`driver -> ../../../bus/pci/drivers/e1000e`)."""
    os.symlink(os.path.relpath(target, link.parent), link)


def write_attr(path: Path, text: str, mode: int) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
