"""Hotplug: `isogroup attach-device` and `detach-device`, the virsh commands libvirt runs no hook for.

attach: plan the device's IOMMU groups against the ledger and every running guest, move what must move and
verify, all under the ledger's lock, exactly like a guest start; then ask libvirt to attach (outside the lock:
libvirtd may be running a hook that waits for it). If libvirt refuses, this run's moves are undone.
detach: ask libvirt to detach, wait until the guest let the device go, then restore the groups the guest no
longer uses. Both keep the guest's claim exact, so the hook's release at stop restores what is left.

This module is the libvirt side only: what libvirt is asked and when (never while the ledger's lock is held),
which definition a change affects, waiting for the guest to let a device go. Recording, moving, verifying and
undoing are the one engine's (`transaction.apply_plan`, `undo`, `release_groups`) with `Stage.HOTPLUG`: unlike a
start, a hotplug changes the claim of a guest that may be running, so the claim keeps its phase (never
`preparing`, which the next run would take for a dead start and restore, devices of the running guest
included), and a run killed half-way leaves a claim that the guest's release still restores completely.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from isogroup.apply.transaction import (
    Change,
    Context,
    Stage,
    apply_plan,
    finish_interrupted,
    locked,
    release_groups,
    settled_claims,
    undo,
)
from isogroup.core.address import PciAddress
from isogroup.core.domain import DomainSpec
from isogroup.core.model import HostTopology
from isogroup.core.plan import DomainPlan
from isogroup.core.planner import plan
from isogroup.errors import HostError, InputError, IsogroupError
from isogroup.formats.domainxml import Device, parse_device
from isogroup.host.hostscan import read_topology
from isogroup.libvirt.live import groups_in_use, spec_of
from isogroup.libvirt.virt import AFFECT_CONFIG, AFFECT_CURRENT, AFFECT_LIVE, Virt
from isogroup.log import log

DETACH_WAIT_S = 10.0  # after libvirt's own wait (5 s in the qemu driver) for the guest to release the device


@dataclass(frozen=True)
class Affected:
    """Which of the guest's definitions a change affects (libvirt's VIR_DOMAIN_AFFECT_* flags), as virsh decides
    it: --live, --config, both, or neither (the live guest when it runs, its persistent definition when not)."""

    live: bool
    config: bool
    flags: int

    @classmethod
    def of(cls, name: str, active: bool, *, live: bool, config: bool) -> Affected:
        if live and not active:
            raise InputError(f"domain '{name}' is not running: --live needs a running guest (use --config)")
        flags = (AFFECT_LIVE if live else AFFECT_CURRENT) | (AFFECT_CONFIG if config else AFFECT_CURRENT)
        return cls(live or (not config and active), config or (not live and not active), flags)


# --------------------------------------------------------------------------------------------------------
# attach


def attach_device(
    ctx: Context,
    virt: Virt,
    name: str,
    data: bytes,
    where: str,
    *,
    live: bool = False,
    config: bool = False,
) -> DomainPlan:
    """Returns the device's plan once libvirt attached it. RefusedError (nothing changed) when isolation
    would break; libvirt's refusal re-raised after this run's moves are undone. The plan weighs the host's
    policy (`ctx.policy`, with the guest's <metadata> adjustments) and, with `ctx.probes`, the host's use of
    every device that would leave its driver, as a start does."""
    current = virt.domain(name)
    target = Affected.of(name, current.active, live=live, config=config)
    spec = spec_of(current)
    device = parse_device(data, where, spec)
    _refuse_duplicates(device, spec if target.live else None, virt, name, config=target.config)

    if not target.live:
        # Only the persistent definition changes: nothing moves now, the hook isolates the group at start.
        topology = read_topology(ctx.kernel, scope=device.addresses, probes=ctx.probes)
        device_plan = plan(device.spec, topology, policy=ctx.policy, variants=ctx.variants)
        if not device_plan.ok:
            raise device_plan.refused()
        virt.attach(name, device.xml, target.flags)
        log.info("%s: device attached to the persistent definition (%s)", name, where)
        return device_plan

    # Read libvirt before taking the ledger's lock, never while holding it.
    running = [spec_of(d) for d in virt.domains(active_only=True)]
    change = _apply(ctx, device.spec, running)
    try:
        virt.attach(name, device.xml, target.flags)
    # BaseException: an interrupt while libvirt attaches must still undo the moves (see transaction.apply_plan).
    except BaseException as exc:
        if _attached_anyway(virt, name, device):
            log.error("%s: libvirt reported %s, but the device is attached: its groups stay isolated", name, exc)
            _rehint(exc, "the device is attached to the running guest all the same; its IOMMU group stays isolated")
            raise
        if not _undo(ctx, change):
            _rehint(exc, "isogroup could not put back everything it moved for this device: see 'isogroup status'")
        raise
    log.info("%s: device attached live (%s)", name, where)
    return change.plan


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
    ctx: Context, spec: DomainSpec, running: Sequence[DomainSpec], ledger: Mapping[int, str]
) -> tuple[DomainPlan, HostTopology]:
    # The running guests' devices are read only for their groups; host use is probed for this device's groups.
    theirs = read_topology(ctx.kernel, scope={r.address for s in running for r in s.pci})
    topology = read_topology(ctx.kernel, scope={r.address for r in spec.pci}, probes=ctx.probes)
    return plan(spec, topology, groups_in_use(ledger, running, theirs), ctx.policy, variants=ctx.variants), topology


def _apply(ctx: Context, spec: DomainSpec, running: Sequence[DomainSpec]) -> Change:
    # A refusal is decided before taking the lock, so that it creates nothing, not even the ledger directory;
    # the plan is made again under the lock, where it counts.
    first, _ = _plan_device(ctx, spec, running, settled_claims(ctx))
    if not first.ok:
        raise first.refused()
    with locked(ctx) as session:
        finish_interrupted(ctx, session)
        device_plan, topology = _plan_device(ctx, spec, running, session.holders())
        if not device_plan.ok:
            raise device_plan.refused()
        if not device_plan.groups:
            return Change(spec.name, device_plan, Stage.HOTPLUG, None)
        return apply_plan(ctx, session, spec, device_plan, topology=topology, stage=Stage.HOTPLUG)


def _undo(ctx: Context, change: Change) -> bool:
    """After libvirt refused: put back what the attach moved, under a new lock. A failure here is logged, and
    the caller re-raises libvirt's error. True when everything went back."""
    if not change.moved and not change.new_groups:
        return True
    try:
        with locked(ctx) as session:
            left = undo(ctx, session, change)
    except Exception as exc:
        log.error("%s: hotplug rollback failed: %s", change.domain, exc)
        return False
    return left is None or not any(left.device(a) for a in change.moved)


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
    target = Affected.of(name, current.active, live=live, config=config)
    spec = spec_of(current)
    device = parse_device(data, where, spec)
    if not target.live:
        virt.detach(name, device.xml, target.flags)
        log.info("%s: device detached from the persistent definition (%s)", name, where)
        return ()

    attached = device.addresses & {r.address for r in spec.pci}
    if attached or not device.addresses:
        virt.detach(name, device.xml, target.flags)
        remaining = _wait_until_released(virt, name, attached, ctx.wait(wait))
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
    return any(c.domain == name and groups & set(c.groups) for c in ctx.ledger.read_unlocked().claims)


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
    held = {g for c in ctx.ledger.read_unlocked().claims if c.domain == name for g in c.groups}
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
