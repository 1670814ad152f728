"""`isogroup reserve` and `unreserve`: whole IOMMU groups bound to vfio-pci ahead of time, for a scheduler that
sees only devices already there (KubeVirt's device plugin advertises a device only on vfio-pci).

A reservation goes through the same engine, ledger and refusals as a guest start: it is a claim named
`reservation/N` whose request is every endpoint of group N, each moved by isogroup itself (no libvirt will
come). A guest later started with devices of the group runs on the reservation's binding: its claim holds the
group while it runs (a second guest is refused), and at its stop the group stays reserved. `unreserve` puts
every device back on its original driver, refused while a guest runs on the group.
"""

from __future__ import annotations

from collections.abc import Iterable

from isogroup.apply.transaction import Context, Stage, prepare, release
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, reservation_name
from isogroup.core.domain import DomainSpec, PciRequest, Source
from isogroup.core.plan import DomainPlan
from isogroup.errors import InputError
from isogroup.host.hostscan import read_topology
from isogroup.host.sysfs import IOMMU_GROUPS

_PCI_BASE_CLASS_BRIDGE = 0x06  # host, ISA, PCI-to-PCI bridges...: never given to a guest, never bound to vfio-pci


def reservation_spec(ctx: Context, group: int) -> DomainSpec:
    """The reservation of `group` as a domain: every member but bridges, requested for isogroup to bind."""
    names = ctx.kernel.listdir(f"{IOMMU_GROUPS}/{group}/devices")
    if not names:
        raise InputError(f"IOMMU group {group} does not exist on this host")
    members = {PciAddress.parse(n) for n in names}
    topology = read_topology(ctx.kernel, scope=members, capabilities=False)
    requests = tuple(
        PciRequest(f.address, managed=True, source=Source.RESERVATION)
        for f in topology.functions
        if f.address in members and f.class_code >> 16 != _PCI_BASE_CLASS_BRIDGE and not f.is_bridge
    )
    if not requests:
        raise InputError(f"IOMMU group {group} holds only bridges: there is nothing to reserve")
    return DomainSpec(reservation_name(group), None, requests)


def reserve(ctx: Context, groups: Iterable[int]) -> list[DomainPlan]:
    """Reserve each group in turn (one transaction each); RefusedError for the first that cannot be, with the
    groups before it reserved."""
    return [prepare(ctx, reservation_spec(ctx, group), Stage.START) for group in groups]


def unreserve(ctx: Context, groups: Iterable[int]) -> list[Claim]:
    """Give each group back to the host; returns what could not be restored (left recorded, as for a release)."""
    left = []
    for group in groups:
        if (claim := release(ctx, reservation_name(group), unless_in_use=True)) is not None:
            left.append(claim)
    return left
