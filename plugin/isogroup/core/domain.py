"""What a domain asks of the host: its PCI passthrough requests, mediated devices and hostdev networks, and its
own policy adjustments. Plain data; `formats.domainxml` reads it out of libvirt's XML."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.policy import DomainPolicy


class Source(StrEnum):
    """How the domain XML named the device."""

    HOSTDEV = "hostdev"  # <hostdev mode='subsystem' type='pci'>
    INTERFACE = "interface"  # <interface type='hostdev'>: an SR-IOV VF given as a NIC
    NETWORK = "network"  # <interface type='network'> whose hostdev pool libvirt already picked a VF from
    RESERVATION = "reservation"  # `isogroup reserve`: a member isogroup binds ahead of time, with no libvirt


@dataclass(frozen=True)
class PciRequest:
    address: PciAddress
    managed: bool
    source: Source
    line: int | None = None
    # <driver model='NAME'/>: the VFIO driver libvirt binds instead of the one it would pick from modules.alias
    # (libvirt ≥ 10; src/conf/schemas/basictypes.rng `hostdevDriver`, shared by <hostdev> and <interface>).
    model: str | None = None


@dataclass(frozen=True)
class MdevRequest:
    """A mediated device: its own IOMMU group, owned by the parent's driver; its parent is never detached."""

    uuid: str
    model: str | None


@dataclass(frozen=True)
class NetworkRequest:
    """An interface on a libvirt network: if that network is a hostdev pool, libvirt picks the VF after the
    prepare hook, so it can only be checked at `start begin`."""

    network: str


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str | None
    pci: tuple[PciRequest, ...]
    mdevs: tuple[MdevRequest, ...] = ()
    networks: tuple[NetworkRequest, ...] = ()
    policy: DomainPolicy = field(default_factory=DomainPolicy)  # the domain's <metadata><isogroup:policy>

    @property
    def addresses(self) -> frozenset[PciAddress]:
        return frozenset(r.address for r in self.pci)
