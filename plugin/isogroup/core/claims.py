"""Claims as data: which guest holds which IOMMU groups, and every device isogroup moved for it with its original
driver. `host.ledger` keeps them on disk; the planner and the engine reason about them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from isogroup.core.address import PciAddress

# Who holds which IOMMU group now: group number -> the holding guest's name. Derived from the claims (and, for
# the libvirt commands, from the running guests' definitions); the planner refuses a group another guest holds.
GroupHolders = Mapping[int, str]


class Phase(StrEnum):
    PREPARING = "preparing"  # devices are being moved; seen under the lock, the run that wrote it is dead
    ACTIVE = "active"  # every move done and verified; the guest may run
    RELEASING = "releasing"  # devices are being restored; seen under the lock, finish the job
    FAILED = "failed"  # a restore failed: the devices listed stay recorded until release or recover succeeds


class DeviceState(StrEnum):
    MOVING = "moving"  # intent recorded; the device may be anywhere between its driver and vfio-pci
    MOVED = "moved"  # on vfio-pci, verified
    # Its group was being given back while the guest kept running (hot-unplug) and the restore failed: only this
    # device is retried by `recover`, never the running guest's other groups.
    RESTORE_FAILED = "restore-failed"


@dataclass(frozen=True)
class MovedDevice:
    address: PciAddress
    group: int
    original_driver: str | None
    original_override: str | None
    state: DeviceState


@dataclass(frozen=True)
class Claim:
    domain: str
    phase: Phase
    groups: tuple[int, ...]
    devices: tuple[MovedDevice, ...] = ()
    uuid: str | None = None
    updated: float = field(default=0.0, compare=False)

    def device(self, address: PciAddress) -> MovedDevice | None:
        return next((d for d in self.devices if d.address == address), None)

    def with_device(self, device: MovedDevice) -> Claim:
        others = tuple(d for d in self.devices if d.address != device.address)
        return replace(self, devices=(*others, device))

    def without_device(self, address: PciAddress) -> Claim:
        return replace(self, devices=tuple(d for d in self.devices if d.address != address))

    def holds_devices_in(self, group: int) -> bool:
        return any(d.group == group for d in self.devices)


# A reservation (`isogroup reserve`) holds a group bound to vfio-pci ahead of time for a scheduler that needs it so
# (KubeVirt). Its claim is named for the group; libvirt refuses '/' in a domain's name, so no guest is called so.
RESERVATION_PREFIX = "reservation/"


def reservation_name(group: int) -> str:
    return f"{RESERVATION_PREFIX}{group}"


def is_reservation(holder: str) -> bool:
    return holder.startswith(RESERVATION_PREFIX)


def holders(claims: Iterable[Claim]) -> dict[int, str]:
    """Group -> its holder, for the planner. A guest running on a reserved group holds it over the reservation,
    so that a second guest is refused while the first still uses it."""
    ordered = sorted(claims, key=lambda c: not is_reservation(c.domain))  # reservations first, guests win
    return {g: c.domain for c in ordered for g in c.groups}
