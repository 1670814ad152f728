"""Which IOMMU groups this host can give a guest whole, and which device of each a guest asks for.

The judgement is the planner's, not a second copy of its rules: each group is planned as if a guest named its
requestable device (`plan` on a synthetic DomainSpec), with the host's claims and policy. A group is whole-
assignable when that plan is clean and nothing in it would leave a host driver unknowingly: on a topology
captured without host-use probes a group whose plan takes a device from its driver fails closed.

Schedulers (nova, KubeVirt, Proxmox, NFD) count devices, not groups, so each group offers exactly ONE requestable
device: one allocation by the scheduler is then one whole group, and two guests can never be placed on two halves
of a group. The hook still moves the rest of the group at `prepare begin` on the host itself.

Reservations (groups bound to vfio-pci ahead of time, for KubeVirt) are holders like guests: pass them in
`reservations` (group -> holder name, also present in `holders`); a reserved group stays offered, as reserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.claims import GroupHolders
from isogroup.core.domain import DomainSpec, PciRequest, Source
from isogroup.core.drivers import is_vfio_driver, is_viable_driver
from isogroup.core.model import HostTopology, IommuGroup, PciFunction
from isogroup.core.plan import Action, DomainPlan
from isogroup.core.planner import plan
from isogroup.core.policy import DEFAULT, Policy

# The synthetic guest each group is planned for. A real guest of this name would count as the group's holder.
INVENTORY_DOMAIN = "isogroup-inventory"

_CLASS_BASE_BRIDGE = 0x06  # host, ISA, PCI bridges: platform plumbing, never something a guest asks for

_PCI_BASE_CLASS_DISPLAY = 0x03  # display controllers (VGA, 3D, ...): a group's GPU is what a guest asks for


class Reason(StrEnum):
    """Why a group is not offered, beyond the planner's problem codes (which are reported as they are)."""

    NO_ENDPOINT = "no-endpoint"  # only bridges and platform functions: nothing a guest would ask for
    NOT_PROBED = "host-use-unknown"  # a device would leave its host driver and host use was never probed


@dataclass(frozen=True)
class Member:
    address: PciAddress
    function: PciFunction
    action: Action  # what the plan does with it when the requestable device is asked for
    requestable: bool

    @property
    def ready(self) -> bool:
        """Already where VFIO needs it: the requestable device on a vfio driver, the others safe as they are."""
        return is_vfio_driver(self.function.driver) if self.requestable else is_viable_driver(self.function.driver)


@dataclass(frozen=True)
class GroupEntry:
    group: int
    members: tuple[Member, ...]
    reasons: tuple[str, ...]  # empty: whole-assignable; else problem codes / Reason values, in plan order
    messages: tuple[str, ...]  # one line each, for a person
    holder: str | None = None  # the guest or reservation that holds it now
    reserved: bool = False  # held by a reservation: offered, and bound ahead of time by it

    @property
    def assignable(self) -> bool:
        return not self.reasons

    @property
    def requestable(self) -> Member | None:
        return next((m for m in self.members if m.requestable), None)

    @property
    def ready(self) -> bool:
        """Every member already where VFIO needs it: nothing left to bind before KubeVirt or Proxmox sees it."""
        return all(m.ready for m in self.members)


@dataclass(frozen=True)
class Inventory:
    node: str  # the host's name as the scheduler knows it
    iommu: bool
    probed: bool
    groups: tuple[GroupEntry, ...]

    @property
    def assignable(self) -> tuple[GroupEntry, ...]:
        return tuple(g for g in self.groups if g.assignable)


def requestable_device(host: HostTopology, group: IommuGroup) -> PciFunction | None:
    """The device a guest asks for: a display controller first (its audio, USB and UCSI functions are the
    companions), else the lowest-addressed endpoint that is not platform plumbing."""
    funcs = [f for a in group.members if (f := host.function(a)) is not None]
    candidates = [f for f in funcs if not f.is_bridge and f.class_code >> 16 != _CLASS_BASE_BRIDGE]
    candidates.sort(key=lambda f: (f.class_code >> 16 != _PCI_BASE_CLASS_DISPLAY, f.address))
    return candidates[0] if candidates else None


def judge(
    host: HostTopology,
    node: str,
    holders: GroupHolders | None = None,
    policy: Policy = DEFAULT,
    *,
    reservations: Mapping[int, str] | None = None,
) -> Inventory:
    holders = dict(holders or {})
    reservations = reservations or {}
    entries = [_judge_group(host, g, holders, policy, reservations.get(g.number)) for g in host.groups]
    return Inventory(node, host.iommu, host.probed, tuple(entries))


def _judge_group(
    host: HostTopology, group: IommuGroup, holders: GroupHolders, policy: Policy, reservation: str | None
) -> GroupEntry:
    holder = holders.get(group.number)
    primary = requestable_device(host, group)
    if primary is None:
        members = tuple(
            Member(f.address, f, Action.KEEP, False) for a in group.members if (f := host.function(a)) is not None
        )
        return GroupEntry(
            group.number,
            members,
            (Reason.NO_ENDPOINT.value,),
            ("only bridges and platform functions: nothing a guest would ask for",),
            holder,
        )
    # A reservation is adopted by the guest that asks for its devices: plan as the reservation itself, so the
    # planner's own-claim rule accepts the group; any other holder refuses it (group-claimed).
    name = reservation if reservation is not None else INVENTORY_DOMAIN
    spec = DomainSpec(name, None, (PciRequest(primary.address, managed=True, source=Source.HOSTDEV),))
    result = plan(spec, host, holders, policy, unknown_refuses=True)
    members = _members(host, result, primary)
    reasons = [p.code.value for p in result.problems]
    messages = [p.message for p in result.problems]
    leaving = [m for m in members if m.action in (Action.MOVE, Action.LIBVIRT) and m.function.driver is not None]
    if leaving and not host.probed:
        reasons.append(Reason.NOT_PROBED.value)
        messages.append(
            f"{', '.join(f'{m.address} ({m.function.driver})' for m in leaving)} would leave the host's driver, and "
            "this topology was captured without the host-use probes: take the snapshot as root on the host"
        )
    return GroupEntry(
        group.number,
        members,
        tuple(dict.fromkeys(reasons)),
        tuple(dict.fromkeys(messages)),
        holder,
        reserved=reservation is not None,
    )


def _members(host: HostTopology, result: DomainPlan, primary: PciFunction) -> tuple[Member, ...]:
    planned = {m.address: m.action for g in result.groups for m in g.members}
    out = []
    for func in (f for g in result.groups for m in g.members if (f := host.function(m.address)) is not None):
        out.append(Member(func.address, func, planned[func.address], func.address == primary.address))
    return tuple(out)
