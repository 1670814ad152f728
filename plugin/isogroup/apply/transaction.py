"""Applying a plan to the host as one transaction, and undoing it.

prepare/start: plan under the ledger's lock, record each device before touching it, move it, verify the
group with the kernel; any failure restores this run's devices in reverse order and re-raises. release:
restore exactly what the domain's claim recorded. Every run first finishes what a killed run left behind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.core.domain import DomainSpec
from isogroup.core.drivers import VFIO_PCI, is_viable_driver
from isogroup.core.model import HostTopology
from isogroup.core.plan import Action, DomainPlan
from isogroup.core.planner import plan
from isogroup.core.policy import DEFAULT as DEFAULT_POLICY
from isogroup.core.policy import Policy
from isogroup.errors import HostError, IsogroupError
from isogroup.host.devices import move_to_vfio, restore
from isogroup.host.hostscan import read_topology
from isogroup.host.ledger import Ledger, LedgerSession
from isogroup.host.probes.base import ProbeSeams
from isogroup.host.sysfs import IOMMU_GROUPS, Sysfs
from isogroup.log import log

BIND_TIMEOUT_S = 10.0


class Stage(StrEnum):
    PREPARE = "prepare"  # before libvirt detaches its managed='yes' devices
    START = "start"  # after libvirt prepared its devices and picked VFs from hostdev networks


@dataclass(frozen=True)
class Context:
    """What one run works with: its seams (the kernel, the ledger, the host-use probes), the policy it applies
    and how long it waits for a bind."""

    kernel: Sysfs
    ledger: Ledger
    bind_timeout: float = BIND_TIMEOUT_S
    policy: Policy = DEFAULT_POLICY
    probes: ProbeSeams | None = None  # host-use probes; None: plans say host use was not probed


def _plan(ctx: Context, session: LedgerSession, domain: DomainSpec) -> tuple[DomainPlan, HostTopology]:
    topology = read_topology(ctx.kernel, scope={r.address for r in domain.pci}, probes=ctx.probes, capabilities=False)
    return plan(domain, topology, session.holders(), ctx.policy), topology


def settled_claims(ctx: Context) -> dict[int, str]:
    """Claims read without the lock (each file is replaced atomically): only settled ones, because a claim still
    preparing or releasing may be finished or undone by the next locked run."""
    return {
        g: c.domain for c in ctx.ledger.read_all_unlocked() if c.phase in (Phase.ACTIVE, Phase.FAILED) for g in c.groups
    }


def _plan_unlocked(ctx: Context, domain: DomainSpec) -> DomainPlan:
    topology = read_topology(ctx.kernel, scope={r.address for r in domain.pci}, probes=ctx.probes, capabilities=False)
    return plan(domain, topology, settled_claims(ctx), ctx.policy)


def check(ctx: Context, domain: DomainSpec) -> DomainPlan:
    """Plan only (migrate, restore): refuse early, change nothing, not even the ledger directory."""
    domain_plan = _plan_unlocked(ctx, domain)
    if not domain_plan.ok:
        raise domain_plan.refused()
    return domain_plan


def prepare(ctx: Context, domain: DomainSpec, stage: Stage) -> DomainPlan:
    # A refusal must change nothing, not even create the ledger: where there is none yet, plan first without
    # the lock. A plan that passes is made again under the lock, where the claims are certain.
    if not ctx.ledger.exists():
        early = _plan_unlocked(ctx, domain)
        if not early.ok:
            raise early.refused()
    with ctx.ledger.locked() as session:
        finish_interrupted(ctx, session)
        domain_plan, topology = _plan(ctx, session, domain)
        if not domain_plan.ok:
            raise domain_plan.refused()
        if domain_plan.groups:
            _apply(ctx, session, domain, domain_plan, topology, stage=stage)
        return domain_plan


def _apply(
    ctx: Context,
    session: LedgerSession,
    domain: DomainSpec,
    domain_plan: DomainPlan,
    topology: HostTopology,
    *,
    stage: Stage,
) -> None:
    before = session.claim(domain.name)
    claim = before or Claim(domain.name, Phase.PREPARING, (), uuid=domain.uuid)
    groups = tuple(sorted(set(claim.groups) | set(domain_plan.group_numbers)))
    claim = session.write(replace(claim, phase=Phase.PREPARING, groups=groups))

    moves = [(g.group, m.address) for g in domain_plan.groups for m in g.to_move]
    touched: list[PciAddress] = []
    try:
        if moves and not ctx.kernel.exists(Sysfs.driver_dir(VFIO_PCI)):
            ctx.kernel.modprobe(VFIO_PCI)
        for group, address in moves:
            func = topology.by_address[address]
            # A device an earlier run of this domain moved keeps the original driver that run recorded.
            record = claim.device(address) or MovedDevice(
                address, group, func.driver, func.driver_override, DeviceState.MOVING
            )
            claim = session.write(claim.with_device(replace(record, state=DeviceState.MOVING)))
            touched.append(address)
            log.info("%s: moving %s (group %d) from %s to %s", domain.name, address, group, func.driver, VFIO_PCI)
            move_to_vfio(ctx.kernel, address, ctx.bind_timeout)
            claim = session.write(claim.with_device(replace(record, state=DeviceState.MOVED)))
        _verify(ctx, domain_plan, stage)
    except Exception as exc:
        log.error("%s: %s; rolling back", domain.name, exc)
        _rollback(ctx, session, claim, touched, before)
        raise
    session.write(replace(claim, phase=Phase.ACTIVE))
    log.info("%s: groups %s isolated at %s", domain.name, ", ".join(map(str, groups)), stage.value)


def _verify(ctx: Context, domain_plan: DomainPlan, stage: Stage) -> None:
    """Re-read each group from the kernel, its members and their drivers only: every member must now be on a
    driver VFIO accepts (at prepare, libvirt's own managed='yes' devices are still to come), and the VFIO group
    ioctl must agree."""
    for group_plan in domain_plan.groups:
        planned = {m.address: m for m in group_plan.members}
        members = ctx.kernel.listdir(f"{IOMMU_GROUPS}/{group_plan.group}/devices")
        if not members:
            raise HostError(f"IOMMU group {group_plan.group} disappeared while it was being prepared")
        libvirt_pending = stage is Stage.PREPARE and any(m.action is Action.LIBVIRT for m in group_plan.members)
        blockers = []
        for name in members:
            member = planned.get(PciAddress.parse(name))
            driver = ctx.kernel.link_name(Sysfs.device(PciAddress.parse(name), "driver"))
            if member is None:
                blockers.append(f"{name} joined the group")
            elif not is_viable_driver(driver) and not (libvirt_pending and member.action is Action.LIBVIRT):
                blockers.append(f"{name} is on {driver}")
        if blockers:
            raise HostError(f"IOMMU group {group_plan.group} is still not viable: {'; '.join(blockers)}")
        if not libvirt_pending and ctx.kernel.vfio_group_viable(group_plan.group) is False:
            raise HostError(f"the kernel reports IOMMU group {group_plan.group} not viable after the moves")


def _rollback(
    ctx: Context, session: LedgerSession, claim: Claim, touched: list[PciAddress], before: Claim | None
) -> None:
    """Undo this run's moves in reverse. A device that cannot be restored stays recorded (phase FAILED)."""
    failed = False
    for address in reversed(touched):
        device = claim.device(address)
        if device is None:
            continue
        if before is not None and before.device(address) is not None:
            continue  # an earlier run of this domain moved it; release restores it
        if _restore_device(ctx, claim.domain, device):
            claim = session.write(claim.without_device(address))
        else:
            failed = True
    if failed:
        session.write(replace(claim, phase=Phase.FAILED))
    elif before is None:
        session.remove(claim.domain)
    else:
        session.write(replace(claim, phase=before.phase, groups=before.groups))


def _restore_device(ctx: Context, domain: str, device: MovedDevice) -> bool:
    try:
        restore(ctx.kernel, device.address, device.original_driver, device.original_override, ctx.bind_timeout)
    except IsogroupError as exc:
        log.error("%s: could not restore %s: %s", domain, device.address, exc)
        return False
    return True


def _restore_claim(ctx: Context, session: LedgerSession, claim: Claim) -> Claim | None:
    """Restore every device of the claim, newest first; None when all are back and the claim is gone."""
    claim = session.write(replace(claim, phase=Phase.RELEASING))
    for device in reversed(claim.devices):
        if _restore_device(ctx, claim.domain, device):
            claim = session.write(claim.without_device(device.address))
    if claim.devices:
        return session.write(replace(claim, phase=Phase.FAILED))
    session.remove(claim.domain)
    log.info("%s: released groups %s", claim.domain, ", ".join(map(str, claim.groups)) or "(none)")
    return None


def release(ctx: Context, domain: str) -> Claim | None:
    """Put back what `domain` holds. Idempotent; returns the claim left behind when a restore failed."""
    with ctx.ledger.locked() as session:
        finish_interrupted(ctx, session)
        claim = session.claim(domain)
        return _restore_claim(ctx, session, claim) if claim is not None else None


def release_groups(ctx: Context, domain: str, groups: set[int]) -> Claim | None:
    """Hot-unplug, or a hotplug libvirt refused: restore only the devices of `groups` and drop those groups
    from the domain's claim while the guest keeps running. Returns what remains of the claim."""
    with ctx.ledger.locked() as session:
        finish_interrupted(ctx, session)
        claim = session.claim(domain)
        return _release_groups(ctx, session, claim, groups) if claim is not None else None


def _release_groups(ctx: Context, session: LedgerSession, claim: Claim, groups: set[int]) -> Claim | None:
    for device in reversed(claim.devices):
        if device.group not in groups:
            continue
        if _restore_device(ctx, claim.domain, device):
            claim = session.write(claim.without_device(device.address))
        else:  # the guest still runs: mark this device alone, so recover retries it and nothing else
            claim = session.write(claim.with_device(replace(device, state=DeviceState.RESTORE_FAILED)))
    kept = tuple(g for g in claim.groups if g not in groups or claim.holds_devices_in(g))
    if not kept and not claim.devices:
        session.remove(claim.domain)
        return None
    return session.write(replace(claim, groups=kept))


def finish_interrupted(ctx: Context, session: LedgerSession) -> None:
    """A claim still `preparing` or `releasing` while we hold the lock belongs to a run that died. Its guest
    cannot be running (libvirt fails a start whose hook was killed), so its devices go home."""
    for claim in session.claims():
        if claim.phase in (Phase.PREPARING, Phase.RELEASING):
            log.warning("%s: finishing an interrupted %s run", claim.domain, claim.phase.value)
            _restore_claim(ctx, session, claim)


def recover(ctx: Context, domains: set[str] | None = None) -> list[Claim]:
    """`isogroup recover`: finish interrupted runs and retry failed restores (a stopped guest's whole claim; a
    running guest's hot-unplugged groups only); with `domains`, also release those domains' claims (guests that
    are gone without a release). Returns the claims that remain."""
    with ctx.ledger.locked() as session:
        finish_interrupted(ctx, session)
        for claim in session.claims():
            if claim.phase is Phase.FAILED or (domains is not None and claim.domain in domains):
                _restore_claim(ctx, session, claim)
            elif stranded := {d.group for d in claim.devices if d.state is DeviceState.RESTORE_FAILED}:
                _release_groups(ctx, session, claim, stranded)
        return session.claims()


def reconnect(ctx: Context, domain: DomainSpec) -> None:
    """libvirtd restarted with the guest running: adopt its groups if it has no claim, and report devices
    that are no longer where the claim says. Never raises for a healthy guest."""
    with ctx.ledger.locked() as session:
        claim = session.claim(domain.name)
        domain_plan, topology = _plan(ctx, session, domain)
        if claim is None:
            if domain_plan.groups:
                session.write(Claim(domain.name, Phase.ACTIVE, domain_plan.group_numbers, uuid=domain.uuid))
                log.info("%s: adopted groups %s of a running guest", domain.name, domain_plan.group_numbers)
            return
        for device in claim.devices:
            func = topology.function(device.address)
            if func is None or not is_viable_driver(func.driver):
                where = "gone" if func is None else f"on {func.driver}"
                log.warning("%s: %s was moved to %s but is now %s", domain.name, device.address, VFIO_PCI, where)
