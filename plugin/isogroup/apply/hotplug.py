"""Hotplug: `isogroup attach-device` and `detach-device`, the virsh commands libvirt runs no hook for.

attach: plan the device's IOMMU groups against the ledger and every running guest, move what must move and
verify, all under the ledger's lock, exactly like a guest start; then ask libvirt to attach (outside the lock:
libvirtd may be running a hook that waits for it). If libvirt refuses, this run's moves are undone.
detach: ask libvirt to detach, wait until the guest let the device go, then restore the groups the guest no
longer uses. Both keep the guest's claim exact, so the hook's release at stop restores what is left.

Unlike a start, a hotplug changes the claim of a guest that may be running: the claim keeps its phase (never
`preparing`, which the next run would take for a dead start and restore, devices of the running guest
included), and each device is recorded before it is touched, so a run killed half-way leaves a claim that
the guest's release still restores completely.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from isogroup.apply.transaction import Context, finish_interrupted, release_groups, settled_claims
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.core.domain import DomainSpec
from isogroup.core.drivers import VFIO_PCI, is_viable_driver
from isogroup.core.model import HostTopology
from isogroup.core.plan import Action, DomainPlan
from isogroup.core.planner import plan
from isogroup.errors import HostError, InputError, IsogroupError
from isogroup.formats.domainxml import Device, parse_device
from isogroup.host.devices import move_to_vfio, restore
from isogroup.host.hostscan import read_topology
from isogroup.host.ledger import LedgerSession
from isogroup.host.probes import ProbeSeams
from isogroup.host.sysfs import Sysfs
from isogroup.libvirt.live import groups_in_use, spec_of
from isogroup.libvirt.virt import AFFECT_CONFIG, AFFECT_CURRENT, AFFECT_LIVE, Virt
from isogroup.log import log

DETACH_WAIT_S = 10.0  # after libvirt's own wait (5 s in the qemu driver) for the guest to release the device


@dataclass(frozen=True)
class Target:
    """Which of the guest's definitions a change affects, as virsh decides it: --live, --config, both, or
    neither (the live guest when it runs, its persistent definition when it does not)."""

    live: bool
    config: bool
    flags: int

    @classmethod
    def of(cls, name: str, active: bool, *, live: bool, config: bool) -> Target:
        if live and not active:
            raise InputError(f"domain '{name}' is not running: --live needs a running guest (use --config)")
        flags = (AFFECT_LIVE if live else AFFECT_CURRENT) | (AFFECT_CONFIG if config else AFFECT_CURRENT)
        return cls(live or (not config and active), config or (not live and not active), flags)


# --------------------------------------------------------------------------------------------------------
# attach


@dataclass(frozen=True)
class Applied:
    """What one attach did to the host and the ledger, so that it can be undone exactly."""

    plan: DomainPlan
    touched: tuple[PciAddress, ...] = ()  # devices this run recorded and moved, in order
    new_groups: tuple[int, ...] = ()  # groups this run added to the guest's claim
    created: bool = False  # the claim did not exist before this run


def attach_device(
    ctx: Context,
    virt: Virt,
    name: str,
    data: bytes,
    where: str,
    *,
    live: bool = False,
    config: bool = False,
    probes: ProbeSeams | None = None,
) -> DomainPlan:
    """Returns the device's plan once libvirt attached it. RefusedError (nothing changed) when isolation
    would break; libvirt's refusal re-raised after this run's moves are undone. The plan weighs the host's
    policy (`ctx.policy`, with the guest's <metadata> adjustments) and, with `probes`, the host's use of
    every device that would leave its driver, as a start does."""
    current = virt.domain(name)
    target = Target.of(name, current.active, live=live, config=config)
    spec = spec_of(current)
    device = parse_device(data, where, spec)
    _refuse_duplicates(device, spec if target.live else None, virt, name, config=target.config)

    if not target.live:
        # Only the persistent definition changes: nothing moves now, the hook isolates the group at start.
        topology = read_topology(ctx.kernel, scope=device.addresses, probes=probes)
        device_plan = plan(device.spec, topology, policy=ctx.policy)
        if not device_plan.ok:
            raise device_plan.refused()
        virt.attach(name, device.xml, target.flags)
        log.info("%s: device attached to the persistent definition (%s)", name, where)
        return device_plan

    # Read libvirt before taking the ledger's lock, never while holding it.
    running = [spec_of(d) for d in virt.domains(active_only=True)]
    applied = _apply(ctx, device.spec, running, probes)
    try:
        virt.attach(name, device.xml, target.flags)
    except BaseException as exc:
        if _attached_anyway(virt, name, device):
            log.error("%s: libvirt reported %s, but the device is attached: its groups stay isolated", name, exc)
            _rehint(exc, "the device is attached to the running guest all the same; its IOMMU group stays isolated")
            raise
        if not _undo(ctx, name, applied):
            _rehint(exc, "isogroup could not put back everything it moved for this device: see 'isogroup status'")
        raise
    log.info("%s: device attached live (%s)", name, where)
    return applied.plan


def _rehint(exc: BaseException, hint: str) -> None:
    if isinstance(exc, IsogroupError):
        exc.hint = hint


def _refuse_duplicates(device: Device, live: DomainSpec | None, virt: Virt, name: str, *, config: bool) -> None:
    """libvirt would refuse a second assignment too, but only after isogroup moved the group."""
    definitions = [live] if live is not None else []
    if config:
        definitions.append(spec_of(virt.domain(name, inactive=True)))
    for spec in definitions:
        both = sorted(device.addresses & {r.address for r in spec.pci})
        if both:
            raise InputError(f"{both[0]} is already assigned to '{name}'")


def _attached_anyway(virt: Virt, name: str, device: Device) -> bool:
    """libvirt failed (or we were interrupted) after the device reached the running guest: rolling back
    would pull its group from under it. Asked of libvirt again; when even that fails, assume not."""
    if not device.addresses:
        return False
    try:
        now = virt.domain(name)
        return now.active and device.addresses <= {r.address for r in spec_of(now).pci}
    except IsogroupError:
        return False


def _plan_device(
    ctx: Context, spec: DomainSpec, running: Sequence[DomainSpec], ledger: Mapping[int, str], probes: ProbeSeams | None
) -> tuple[DomainPlan, HostTopology]:
    # The running guests' devices are read only for their groups; host use is probed for this device's groups.
    theirs = read_topology(ctx.kernel, scope={r.address for s in running for r in s.pci})
    topology = read_topology(ctx.kernel, scope={r.address for r in spec.pci}, probes=probes)
    return plan(spec, topology, groups_in_use(ledger, running, theirs), ctx.policy), topology


def _apply(ctx: Context, spec: DomainSpec, running: Sequence[DomainSpec], probes: ProbeSeams | None) -> Applied:
    # A refusal is decided before taking the lock, so that it creates nothing, not even the ledger directory;
    # the plan is made again under the lock, where it counts.
    first, _ = _plan_device(ctx, spec, running, settled_claims(ctx), probes)
    if not first.ok:
        raise first.refused()
    with ctx.ledger.locked() as session:
        finish_interrupted(ctx, session)
        device_plan, topology = _plan_device(ctx, spec, running, session.holders(), probes)
        if not device_plan.ok:
            raise device_plan.refused()
        if not device_plan.groups:
            return Applied(device_plan)
        before = session.claim(spec.name)
        claim = before or Claim(spec.name, Phase.ACTIVE, (), uuid=spec.uuid)
        new_groups = tuple(g for g in device_plan.group_numbers if g not in claim.groups)
        claim = session.write(replace(claim, groups=tuple(sorted({*claim.groups, *new_groups}))))
        touched: list[PciAddress] = []
        try:
            claim = _move(ctx, session, claim, device_plan, topology, touched=touched)
            _verify(ctx, device_plan)
        except BaseException as exc:
            log.error("%s: hotplug: %s; rolling back", spec.name, exc)
            _undo_locked(ctx, session, spec.name, Applied(device_plan, tuple(touched), new_groups, before is None))
            raise
        log.info("%s: hotplug: groups %s isolated", spec.name, ", ".join(map(str, device_plan.group_numbers)))
        return Applied(device_plan, tuple(touched), new_groups, before is None)


def _move(
    ctx: Context,
    session: LedgerSession,
    claim: Claim,
    device_plan: DomainPlan,
    topology: HostTopology,
    *,
    touched: list[PciAddress],
) -> Claim:
    moves = [(g.group, m.address) for g in device_plan.groups for m in g.to_move]
    if moves and not ctx.kernel.exists(Sysfs.driver_dir(VFIO_PCI)):
        ctx.kernel.modprobe(VFIO_PCI)
    for group, address in moves:
        func = topology.by_address[address]
        known = claim.device(address)  # moved earlier for this guest: keep the original driver recorded then
        record = known or MovedDevice(address, group, func.driver, func.driver_override, DeviceState.MOVING)
        claim = session.write(claim.with_device(replace(record, state=DeviceState.MOVING)))
        if known is None:
            touched.append(address)
        log.info("%s: hotplug: moving %s (group %d) from %s to %s", claim.domain, address, group, func.driver, VFIO_PCI)
        move_to_vfio(ctx.kernel, address, ctx.bind_timeout)
        claim = session.write(claim.with_device(replace(record, state=DeviceState.MOVED)))
    return claim


def _verify(ctx: Context, device_plan: DomainPlan) -> None:
    """Every member on a driver VFIO accepts, but the requested managed='yes' devices, which libvirt's attach
    detaches itself; with none of those pending, the kernel's viability ioctl must agree."""
    now = read_topology(ctx.kernel, scope={m.address for g in device_plan.groups for m in g.members})
    for group_plan in device_plan.groups:
        planned = {m.address: m for m in group_plan.members}
        group = now.by_group.get(group_plan.group)
        if group is None:
            raise HostError(f"IOMMU group {group_plan.group} disappeared while it was being prepared")
        blockers = []
        for address in group.members:
            func, member = now.by_address.get(address), planned.get(address)
            if member is None:
                blockers.append(f"{address} joined the group")
            elif func is not None and not is_viable_driver(func.driver) and member.action is not Action.LIBVIRT:
                blockers.append(f"{address} is on {func.driver}")
        if blockers:
            raise HostError(f"IOMMU group {group_plan.group} is still not viable: {'; '.join(blockers)}")
        pending = any(m.action is Action.LIBVIRT for m in group_plan.members)
        if not pending and ctx.kernel.vfio_group_viable(group_plan.group) is False:
            raise HostError(f"the kernel reports IOMMU group {group_plan.group} not viable after the moves")


def _undo(ctx: Context, name: str, applied: Applied) -> bool:
    """After libvirt refused: a failure here is logged, and the caller re-raises libvirt's error."""
    if not applied.touched and not applied.new_groups:
        return True
    try:
        with ctx.ledger.locked() as session:
            return _undo_locked(ctx, session, name, applied)
    except IsogroupError as exc:
        log.error("%s: hotplug rollback failed: %s", name, exc)
        return False


def _undo_locked(ctx: Context, session: LedgerSession, name: str, applied: Applied) -> bool:
    """Put back exactly what `applied` moved, newest first, and drop the groups it added. A device that
    cannot be put back stays recorded, with its group, and the guest's release tries again. True when all
    went back."""
    claim = session.claim(name)
    if claim is None:  # the guest stopped meanwhile: its release restored everything
        return True
    ok = True
    for address in reversed(applied.touched):
        device = claim.device(address)
        if device is None:
            continue
        try:
            restore(ctx.kernel, address, device.original_driver, device.original_override, ctx.bind_timeout)
        except IsogroupError as exc:
            log.error("%s: hotplug rollback: could not restore %s: %s", name, address, exc)
            ok = False
            continue
        claim = session.write(claim.without_device(address))
    groups = tuple(g for g in claim.groups if g not in applied.new_groups or claim.holds_devices_in(g))
    if applied.created and not groups and not claim.devices:
        session.remove(name)
    else:
        session.write(replace(claim, groups=groups))
    return ok


# --------------------------------------------------------------------------------------------------------
# detach


def detach_device(
    ctx: Context,
    virt: Virt,
    name: str,
    data: bytes,
    where: str,
    *,
    live: bool = False,
    config: bool = False,
    wait: float = DETACH_WAIT_S,
) -> tuple[int, ...]:
    """Detach through libvirt, then restore the groups the running guest no longer uses; returns them.
    A device already gone from the live guest is not detached again: its groups are restored (a re-run after
    the guest was slow to let go, or a device unplugged with plain virsh)."""
    current = virt.domain(name)
    target = Target.of(name, current.active, live=live, config=config)
    spec = spec_of(current)
    device = parse_device(data, where, spec)
    if not target.live:
        virt.detach(name, device.xml, target.flags)
        log.info("%s: device detached from the persistent definition (%s)", name, where)
        return ()

    attached = device.addresses & {r.address for r in spec.pci}
    if attached or not device.addresses:
        virt.detach(name, device.xml, target.flags)
        remaining = _wait_until_released(virt, name, attached, wait)
    else:
        # Gone from the running guest already: restore what its groups left behind, if anything.
        if not target.config and not _claimed(ctx, name, device.addresses):
            shown = ", ".join(map(str, sorted(device.addresses)))
            raise InputError(f"{shown} is not attached to '{name}' and isogroup holds nothing of it")
        if target.config:
            virt.detach(name, device.xml, AFFECT_CONFIG)
        remaining = spec
    if remaining is None:  # the guest stopped: its release restores everything
        return ()
    return _restore_unused(ctx, name, device.addresses, remaining)


def _claimed(ctx: Context, name: str, addresses: Iterable[PciAddress]) -> bool:
    """Whether the guest's claim holds a group of one of `addresses` (read without the lock: a hint only)."""
    topology = read_topology(ctx.kernel, scope=set(addresses))
    groups = {f.iommu_group for f in topology.functions if f.address in set(addresses)}
    return any(c.domain == name and groups & set(c.groups) for c in ctx.ledger.read_all_unlocked())


def _wait_until_released(virt: Virt, name: str, addresses: Iterable[PciAddress], wait: float) -> DomainSpec | None:
    """The running guest's definition once none of `addresses` is in it; None when the guest stopped.
    A guest that does not acknowledge the unplug within `wait` seconds keeps the device and its group."""
    wanted = set(addresses)
    deadline = time.monotonic() + wait
    while True:
        now = virt.domain(name)
        if not now.active:
            return None
        spec = spec_of(now)
        still = sorted(wanted & {r.address for r in spec.pci})
        if not still:
            return spec
        if time.monotonic() >= deadline:
            raise HostError(
                f"libvirt asked '{name}' to release {', '.join(map(str, still))} but the guest still has it after "
                f"{wait:g} s; its IOMMU group stays isolated",
                hint="run the same detach-device again once the guest let it go, or the group is restored when "
                "the guest stops",
            )
        time.sleep(0.2)


def _restore_unused(ctx: Context, name: str, addresses: Iterable[PciAddress], remaining: DomainSpec) -> tuple[int, ...]:
    """Restore the guest's claimed groups of `addresses` that none of its remaining PCI devices is in."""
    wanted = set(addresses)
    still = {r.address for r in remaining.pci}
    topology = read_topology(ctx.kernel, scope=wanted | still)
    used = {f.iommu_group for a in still if (f := topology.function(a)) is not None}
    freed = {g for a in wanted if (f := topology.function(a)) is not None and (g := f.iommu_group) is not None}
    held = {g for c in ctx.ledger.read_all_unlocked() if c.domain == name for g in c.groups}
    freed = (freed - used) & held
    if not freed:
        return ()
    left = release_groups(ctx, name, freed)
    if left is not None and any(d.group in freed for d in left.devices):
        raise HostError(
            f"could not restore every device of IOMMU group(s) {', '.join(map(str, sorted(freed)))} of '{name}'",
            hint="run 'isogroup status' and 'isogroup recover'",
        )
    log.info("%s: hot-unplug: released group(s) %s", name, ", ".join(map(str, sorted(freed))))
    return tuple(sorted(freed))
