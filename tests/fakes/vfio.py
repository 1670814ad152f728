"""VFIO and DMA ownership in the simulated kernel: which drivers leave a group viable (drivers/iommu/iommu.c),
when /dev/vfio/N exists (drivers/vfio/group.c), and a simulated QEMU holding a group open."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fakes.refusals import SimulationError
from fakes.state import SimState

VFIO_PCI = "vfio-pci"

# Drivers whose pci_driver sets `.driver_managed_dma = true`: pci_dma_configure() does not make them users of
# the group's default domain, so they neither make a group unviable nor are refused in a group VFIO owns.
# In-tree today: pcieport (drivers/pci/pcie/portdrv.c), pci-stub (drivers/pci/pci-stub.c), vfio-pci and the
# vfio_pci_core variant drivers, whose names are KBUILD_MODNAME and so always end in "_vfio_pci".
_MANAGES_OWN_DMA = frozenset({"pcieport", "pci-stub"})


def is_vfio_driver(name: str | None) -> bool:
    """vfio-pci or a vfio_pci_core variant: binding one creates /dev/vfio/N."""
    return name is not None and (name == VFIO_PCI or name.endswith("_vfio_pci"))


def manages_own_dma(name: str | None) -> bool:
    """The kernel's viability list: True when a member bound to `name` (or unbound) leaves its group usable."""
    return name is None or name in _MANAGES_OWN_DMA or is_vfio_driver(name)


def group_viable(state: SimState, group: int) -> bool:
    """VFIO_GROUP_FLAGS_VIABLE: no member is bound to a driver that uses the kernel's DMA API."""
    return all(manages_own_dma(state.driver(m)) for m in state.members(group))


def vfio_groups(state: SimState) -> set[int]:
    """The groups with a /dev/vfio/N: those with a member on a vfio driver (vfio_create_group() on the first,
    cdev removal in vfio_device_remove_group() on the last)."""
    return {
        d.function.iommu_group
        for d in state.devices.values()
        if is_vfio_driver(d.function.driver) and d.function.iommu_group is not None
    }


def sync_group_nodes(state: SimState, devfs: Path) -> None:
    """Make devfs/vfio/N follow the record; a group whose node goes is no longer held."""
    wanted = vfio_groups(state)
    vfio_dir = devfs / "vfio"
    for node in vfio_dir.iterdir():
        if node.name.isdigit() and int(node.name) not in wanted:
            node.unlink()
    for group in wanted:
        (vfio_dir / str(group)).touch()
    state.owned_groups = [g for g in state.owned_groups if g in wanted]


def open_group(state: SimState, devfs: Path, group: int) -> None:
    """QEMU opens /dev/vfio/N and sets its container, claiming the group's DMA ownership. Raises OSError as the
    kernel would: ENOENT without the node, EBUSY if already open or not viable."""
    if group not in vfio_groups(state):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(devfs / "vfio" / str(group)))
    if group in state.owned_groups:
        raise OSError(errno.EBUSY, "the group is already open")  # vfio_group_fops_open()
    if not group_viable(state, group):
        raise OSError(errno.EBUSY, f"group {group} is not viable")  # iommu_group_claim_dma_owner()
    state.owned_groups.append(group)


def close_group(state: SimState, group: int) -> None:
    if group not in state.owned_groups:
        raise SimulationError(f"group {group} is not open")
    state.owned_groups.remove(group)
