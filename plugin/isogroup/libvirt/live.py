"""What running guests hold, from the two records of it: the ledger's claims and libvirt's running domains.

Pure: the callers read libvirt (virt.py) and the ledger, and pass what they read in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from isogroup.core.domain import DomainSpec
from isogroup.core.model import HostTopology
from isogroup.formats.domainxml import parse_domain
from isogroup.libvirt.virt import LibvirtDomain


def origin(name: str) -> str:
    return f"libvirt domain '{name}'"


def spec_of(domain: LibvirtDomain) -> DomainSpec:
    return parse_domain(domain.xml, origin=origin(domain.name))


def groups_in_use(ledger: Mapping[int, str], running: Sequence[DomainSpec], topology: HostTopology) -> dict[int, str]:
    """IOMMU group -> the guest holding it: every group of a PCI device a running guest has (libvirt's view;
    a guest started without the hook, or a device hot-plugged with virsh, is there too), then the ledger's
    claims (group -> guest), which win where the two disagree (`isogroup status --libvirt` reports that)."""
    held: dict[int, str] = {}
    for spec in running:
        for request in spec.pci:
            func = topology.function(request.address)
            if func is not None and func.iommu_group is not None:
                held.setdefault(func.iommu_group, spec.name)
    held.update(ledger)
    return held
