"""The host as the planner sees it: PCI functions, IOMMU groups, whether there is an IOMMU at all.

Captured from a live sysfs (`hostscan`) or loaded from a snapshot (`snapshot`); the planner cannot tell which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from isogroup.address import PciAddress

PCI_CLASS_DISPLAY_VGA = 0x0300
PCI_CLASS_BRIDGE_HOST = 0x0600


class Header(StrEnum):
    """PCI config header layout: vfio-pci takes only type-0 (endpoint) functions."""

    ENDPOINT = "endpoint"
    BRIDGE = "bridge"
    CARDBUS = "cardbus"


@dataclass(frozen=True)
class PciFunction:
    address: PciAddress
    vendor: int
    device: int
    class_code: int  # 24 bits: base class, subclass, programming interface
    header: Header
    driver: str | None
    driver_override: str | None = None
    iommu_group: int | None = None
    # The upstream bridge in the kernel's device tree; None on a root bus.
    parent: PciAddress | None = None
    multifunction: bool = False
    boot_vga: bool = False
    physfn: PciAddress | None = None  # set on an SR-IOV virtual function
    sriov_totalvfs: int | None = None  # set on an SR-IOV capable physical function
    sriov_numvfs: int | None = None

    @property
    def is_bridge(self) -> bool:
        return self.header is not Header.ENDPOINT

    @property
    def vfs_enabled(self) -> int:
        return self.sriov_numvfs or 0

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True)
class IommuGroup:
    number: int
    members: tuple[PciAddress, ...]


@dataclass(frozen=True)
class HostTopology:
    """`iommu` is False when the kernel formed no IOMMU groups at all (no IOMMU, or it is off)."""

    iommu: bool
    functions: tuple[PciFunction, ...]
    groups: tuple[IommuGroup, ...]
    # Where the data came from, for messages ("/sys", "hosts/desktop.json").
    source: str = field(default="", compare=False)

    @classmethod
    def build(
        cls, iommu: bool, functions: Iterable[PciFunction], groups: Iterable[IommuGroup], source: str = ""
    ) -> HostTopology:
        """Canonical order, so that two captures of one host compare and serialise equal."""
        return cls(
            iommu=iommu,
            functions=tuple(sorted(functions, key=lambda f: f.address)),
            groups=tuple(
                IommuGroup(g.number, tuple(sorted(g.members))) for g in sorted(groups, key=lambda g: g.number)
            ),
            source=source,
        )

    @cached_property
    def by_address(self) -> Mapping[PciAddress, PciFunction]:
        return {f.address: f for f in self.functions}

    @cached_property
    def by_group(self) -> Mapping[int, IommuGroup]:
        return {g.number: g for g in self.groups}

    def function(self, address: PciAddress) -> PciFunction | None:
        return self.by_address.get(address)

    def group_of(self, address: PciAddress) -> IommuGroup | None:
        func = self.by_address.get(address)
        if func is None or func.iommu_group is None:
            return None
        return self.by_group.get(func.iommu_group)
