"""Topologies for tests: functions with test-friendly defaults, and a host whose groups are read off them."""

from __future__ import annotations

from collections.abc import Iterable

from isogroup.core.address import PciAddress
from isogroup.core.model import Header, HostTopology, IommuGroup, PciFunction


def make_function(
    address: str,
    *,
    class_code: int = 0x020000,
    driver: str | None = None,
    group: int | None = None,
    parent: str | None = None,
    vendor: int = 0x8086,
    device: int = 0x1234,
    header: Header = Header.ENDPOINT,
    multifunction: bool = False,
    driver_override: str | None = None,
    boot_vga: bool = False,
    physfn: str | None = None,
    sriov_totalvfs: int | None = None,
    sriov_numvfs: int | None = None,
) -> PciFunction:
    """A PciFunction with test-friendly defaults (an Intel NIC endpoint) and addresses as strings."""
    return PciFunction(
        address=PciAddress.parse(address),
        vendor=vendor,
        device=device,
        class_code=class_code,
        header=header,
        driver=driver,
        driver_override=driver_override,
        iommu_group=group,
        parent=PciAddress.parse(parent) if parent else None,
        multifunction=multifunction,
        boot_vga=boot_vga,
        physfn=PciAddress.parse(physfn) if physfn else None,
        sriov_totalvfs=sriov_totalvfs,
        sriov_numvfs=sriov_numvfs,
    )


def make_topology(functions: Iterable[PciFunction], *, iommu: bool = True) -> HostTopology:
    """A HostTopology whose groups are read off the functions' `iommu_group`."""
    funcs = list(functions)
    members: dict[int, list[PciAddress]] = {}
    for func in funcs:
        if func.iommu_group is not None:
            members.setdefault(func.iommu_group, []).append(func.address)
    groups = [IommuGroup(n, tuple(m)) for n, m in members.items()]
    return HostTopology.build(iommu, funcs, groups)
