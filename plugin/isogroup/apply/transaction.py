"""Applying a plan to the host as one transaction, and undoing it: the one engine every command that moves a
device goes through (the hook's prepare, start and release; attach-device, detach-device and recover).

apply: plan under the ledger's lock, record each device before touching it, move it, verify the groups with the
kernel, commit; any failure (an interrupt included) restores this run's devices in reverse order, logs what could
not be restored, and re-raises the original error. release: restore exactly what the domain's claim recorded.
Every run first finishes what a killed run left behind, and no run outlives its deadline (`Context.deadline`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from isogroup.apply.deadline import Deadline
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.core.domain import DomainSpec
from isogroup.core.drivers import VFIO_PCI, is_viable_driver
from isogroup.core.model import HostTopology
from isogroup.core.plan import Action, DomainPlan
from isogroup.core.planner import plan
from isogroup.core.policy import DEFAULT as DEFAULT_POLICY
from isogroup.core.policy import Policy
from isogroup.core.variants import VariantTable
from isogroup.errors import HostError, IsogroupError, RefusedError, StateError
from isogroup.host.devices import move_to_vfio, restore
from isogroup.host.hostscan import read_topology
from isogroup.host.kmod import read_variants
from isogroup.host.ledger import Ledger, LedgerSession
from isogroup.host.probes.base import ProbeSeams
from isogroup.host.sysfs import IOMMU_GROUPS, Sysfs
from isogroup.log import log

BIND_TIMEOUT_S = 10.0


class Stage(StrEnum):
    PREPARE = "prepare"  # before libvirt detaches its managed='yes' devices
    START = "start"  # after libvirt prepared its devices and picked VFs from hostdev networks
    # attach-device to a running guest: libvirt's attach detaches the requested managed='yes' devices after us,
    # and the guest's claim keeps its phase (see `apply_plan`)
    HOTPLUG = "hotplug"


@dataclass(frozen=True)
class Context:
    """What one run works with: its seams (the kernel, the ledger, the host-use probes), the policy it applies,
    how long it waits for a bind, and when the whole run must be over."""

    kernel: Sysfs
    ledger: Ledger
    bind_timeout: float = BIND_TIMEOUT_S
    policy: Policy = DEFAULT_POLICY
    probes: ProbeSeams | None = None  # host-use probes; None: plans say host use was not probed
    deadline: Deadline | None = None  # None: each wait has only its own timeout
    # The running kernel's modules.alias (`kmod.running_kernel()` on the live host), whose vfio_pci: aliases
    # choose each device's VFIO driver; None: vfio-pci for every device.
    modules_alias: Path | None = None

    @cached_property
    def variants(self) -> VariantTable:
        """Read once per run, on the first plan that needs it (a release never does)."""
        return read_variants(self.modules_alias)

    def wait(self, timeout: float) -> float:
        """How long one wait may last. Once the deadline passed, 0: a wait still looks once, which is enough for
        what can be put back at all, because a bind happens within the write that asks for it (drivers_probe
        and bind run device_attach / device_driver_attach synchronously, drivers/base/bus.c and dd.c)."""
        return timeout if self.deadline is None else self.deadline.clip(timeout)

    def late(self) -> bool:
        return self.deadline is not None and self.deadline.passed()


def out_of_time(
    ctx: Context, cause: BaseException | str, left: Claim | None, only: Iterable[PciAddress] = ()
) -> HostError:
    """The one line of a run that took longer than its deadline: what stopped it and what stays recorded (of
    the claim `left`, the devices in `only` when given: a hotplug names its own, not the running guest's)."""
    budget = ctx.deadline.seconds if ctx.deadline is not None else 0.0
    wanted = set(only)
    devices = [d for d in left.devices if not wanted or d.address in wanted] if left is not None else []
    if left is None or not devices:
        rest, hint = "everything it had changed is back", None
    else:
        shown = ", ".join(str(d.address) for d in devices)
        rest = f"the claim of '{left.domain}' ({left.phase.value}) still records {shown}"
        hint = "run 'isogroup status', then 'isogroup recover'"
    return HostError(f"the run took longer than {budget:g} s and stopped ({cause}); {rest}", hint=hint)


@contextmanager
def locked(ctx: Context) -> Iterator[LedgerSession]:
    """The ledger's lock, waited for no longer than the run has left."""
    ledger = ctx.ledger
    if ctx.deadline is not None and ctx.deadline.remaining() < ledger.lock_timeout:
        ledger = Ledger(ledger.dir, lock_timeout=ctx.deadline.clip(ledger.lock_timeout))
    with ExitStack() as stack:
        try:
            session = stack.enter_context(ledger.locked())
        except StateError as exc:
            if ctx.late():
                raise out_of_time(ctx, "waiting for the ledger's lock", None) from exc
            raise
        yield session


# -------------------------------------------------------------------------------------------------- planning


def _plan(ctx: Context, session: LedgerSession, domain: DomainSpec) -> tuple[DomainPlan, HostTopology]:
    topology = read_topology(ctx.kernel, scope={r.address for r in domain.pci}, probes=ctx.probes, capabilities=False)
    return plan(domain, topology, session.holders(), ctx.policy, variants=ctx.variants), topology


def settled_claims(ctx: Context) -> dict[int, str]:
    """Claims read without the lock (each file is replaced atomically): only settled ones, because a claim still
    preparing or releasing may be finished or undone by the next locked run."""
    return {
        g: c.domain for c in ctx.ledger.read_all_unlocked() if c.phase in (Phase.ACTIVE, Phase.FAILED) for g in c.groups
    }


def _plan_unlocked(ctx: Context, domain: DomainSpec) -> DomainPlan:
    topology = read_topology(ctx.kernel, scope={r.address for r in domain.pci}, probes=ctx.probes, capabilities=False)
    return plan(domain, topology, settled_claims(ctx), ctx.policy, variants=ctx.variants)


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
    with locked(ctx) as session:
        finish_interrupted(ctx, session)
        domain_plan, topology = _plan(ctx, session, domain)
        if not domain_plan.ok:
            raise domain_plan.refused()
        # A successful hook's stderr reaches nobody: what the policy let through is said in the system log.
        for note in domain_plan.notes:
            if note.use is not None:
                log.warning("%s: %s %s: %s", domain.name, stage.value, note.subject, note.message)
        if domain_plan.groups:
            apply_plan(ctx, session, domain, domain_plan, topology=topology, stage=stage)
        return domain_plan


# ------------------------------------------------------------------------------------------------ the engine


@dataclass(frozen=True)
class Change:
    """What one `apply_plan` recorded and moved, so that it can be undone exactly: at once when a move or the
    verification fails, or later, under a new lock, when libvirt refuses a hotplug."""

    domain: str
    plan: DomainPlan
    stage: Stage
    before: Claim | None  # the domain's claim before this run; None: this run created it
    moved: tuple[PciAddress, ...] = ()  # devices this run recorded and moved, in order (an earlier run's are not)
    new_groups: tuple[int, ...] = ()  # groups this run added to the claim


def apply_plan(
    ctx: Context,
    session: LedgerSession,
    domain: DomainSpec,
    domain_plan: DomainPlan,
    *,
    topology: HostTopology,
    stage: Stage,
) -> Change:
    """Record, move, verify, commit, under the lock the caller holds; on any failure, undo this run's part and
    re-raise. A start marks the claim `preparing` until the commit: seen by a later locked run, that claim belongs
    to a dead start whose guest cannot be running, and its devices go home. A hotplug never does: its guest runs,
    so its claim keeps its phase, and a run killed half-way leaves a claim that the guest's release (or recover,
    for a device it could not put back) still restores completely."""
    running = stage is Stage.HOTPLUG
    before = session.claim(domain.name)
    claim = before or Claim(domain.name, Phase.ACTIVE if running else Phase.PREPARING, (), uuid=domain.uuid)
    new_groups = tuple(g for g in domain_plan.group_numbers if g not in claim.groups)
    claim = replace(
        claim,
        phase=claim.phase if running else Phase.PREPARING,
        groups=tuple(sorted({*claim.groups, *new_groups})),
    )
    change = Change(domain.name, domain_plan, stage, before, (), new_groups)
    moves = [(g.group, m) for g in domain_plan.groups for m in g.to_move]
    try:
        if moves and not ctx.kernel.exists(Sysfs.driver_dir(VFIO_PCI)):
            ctx.kernel.modprobe(VFIO_PCI)
        for group, member in moves:
            address = member.address
            if ctx.late():
                raise HostError(f"{address} was not moved yet")
            func = topology.by_address[address]
            known = claim.device(address)  # an earlier run of this guest moved it: keep the driver it recorded
            record = known or MovedDevice(address, group, func.driver, func.driver_override, DeviceState.MOVING)
            # One ledger write per device, before it is touched: its intent, carrying the previous device's
            # `moved` state (and, for the first, the claim's phase and groups). Folding them is as crash-safe as
            # writing each alone: a device recorded `moving` is restored exactly like a `moved` one (restore
            # starts from whatever state the device is in), so a death between a device's bind and the next
            # write leaves nothing the next run cannot put back. The last device's `moved` goes with the commit.
            claim = session.write(claim.with_device(replace(record, state=DeviceState.MOVING)))
            if known is None:
                change = replace(change, moved=(*change.moved, address))
            target = member.target or VFIO_PCI
            log.info("%s: moving %s (group %d) from %s to %s", domain.name, address, group, func.driver, target)
            # The ledger keeps the original driver and override only: release puts those back whichever VFIO
            # driver (a variant, or vfio-pci after a fallback) the device ended on.
            move_to_vfio(ctx.kernel, address, ctx.wait(ctx.bind_timeout), target)
            claim = claim.with_device(replace(record, state=DeviceState.MOVED))
        _verify(ctx, domain.name, domain_plan, stage)
        session.write(claim if running else replace(claim, phase=Phase.ACTIVE))
    # BaseException, not Exception: a KeyboardInterrupt (Ctrl-C on attach-device) or SystemExit (a SIGTERM
    # handler) between two writes would otherwise leave a half-moved group in the ledger; a start's would be
    # finished by the next run, but a hotplug's belongs to a running guest and would stay until it stops. The
    # error is re-raised unchanged after the rollback (only a deadline that passed is named as the cause).
    except BaseException as exc:
        log.error("%s: %s; rolling back", domain.name, str(exc) or type(exc).__name__)
        left = undo_safely(ctx, session, change)
        if isinstance(exc, Exception) and ctx.late():
            raise out_of_time(ctx, exc, left, change.moved if running else ()) from exc
        raise
    groups = ", ".join(map(str, domain_plan.group_numbers))
    log.info("%s: groups %s isolated at %s", domain.name, groups, stage.value)
    return change


def _verify(ctx: Context, guest: str, domain_plan: DomainPlan, stage: Stage) -> None:
    """Re-read each group from the kernel, its members and their drivers only: every member must now be on a
    driver VFIO accepts (before libvirt's own part, at prepare or a hotplug, its managed='yes' devices are still
    to come), and the VFIO group ioctl must agree."""
    for group_plan in domain_plan.groups:
        planned = {m.address: m for m in group_plan.members}
        members = ctx.kernel.listdir(f"{IOMMU_GROUPS}/{group_plan.group}/devices")
        if not members:
            raise HostError(f"IOMMU group {group_plan.group} disappeared while it was being prepared")
        libvirt_pending = stage is not Stage.START and any(m.action is Action.LIBVIRT for m in group_plan.members)
        blockers = []
        for name in members:
            address = PciAddress.parse(name)
            member = planned.get(address)
            driver = ctx.kernel.link_name(Sysfs.device(address, "driver"))
            if member is None:
                blockers.append(f"{name} joined the group")
            elif not is_viable_driver(driver) and not (libvirt_pending and member.action is Action.LIBVIRT):
                blockers.append(f"{name} is on {driver}")
        if blockers:
            raise HostError(f"IOMMU group {group_plan.group} is still not viable: {'; '.join(blockers)}")
        if libvirt_pending:
            continue
        verdict = ctx.kernel.vfio_group_viable(group_plan.group)
        if verdict is False:
            raise HostError(f"the kernel reports IOMMU group {group_plan.group} not viable after the moves")
        if verdict is None:
            # Never reported as verified by the kernel when it was not: no /dev/vfio/N to ask (an iommufd-only
            # kernel, CONFIG_VFIO_GROUP=n), or another process (QEMU) holds the group open.
            log.info(
                "%s: IOMMU group %d: every member is on a driver VFIO accepts; the kernel's viability ioctl was "
                "not asked (no /dev/vfio/%d to ask, or it is held open)",
                guest,
                group_plan.group,
                group_plan.group,
            )


def undo(ctx: Context, session: LedgerSession, change: Change) -> Claim | None:
    """Put back exactly what `change` moved, newest first, and drop the groups it added; the claim is read again,
    so this also works under a later lock. A device that cannot be put back stays recorded with its group: a
    start's claim turns FAILED (recover retries it all); a hotplug's keeps its phase and the device is marked
    `restore-failed` when its group is one the run added (recover retries that group alone, never the running
    guest's others). Returns the claim left (None: none)."""
    claim = session.claim(change.domain)
    if claim is None:  # a hotplug's guest stopped meanwhile: its release restored everything
        return None
    running = change.stage is Stage.HOTPLUG
    mine = [d for a in reversed(change.moved) if (d := claim.device(a)) is not None]
    claim, failed = _put_back(ctx, session, claim, mine)
    for device in failed:
        if running and device.group in change.new_groups:
            claim = claim.with_device(replace(device, state=DeviceState.RESTORE_FAILED))
    groups = tuple(g for g in claim.groups if g not in change.new_groups or claim.holds_devices_in(g))
    if change.before is None and not groups and not claim.devices:
        session.remove(change.domain)
        return None
    # A start without an earlier claim whose devices all came back had its claim removed above.
    if running:
        phase = claim.phase
    elif failed or change.before is None:
        phase = Phase.FAILED
    else:
        phase = change.before.phase
    return session.write(replace(claim, phase=phase, groups=groups))


def undo_safely(ctx: Context, session: LedgerSession, change: Change) -> Claim | None:
    """`undo` for a caller that is about to re-raise an error: a failure of the rollback itself (a ledger write,
    an unexpected bug) is logged and never replaces that error. What was not undone stays in the ledger, which
    is written before every change and so is never behind the host."""
    try:
        return undo(ctx, session, change)
    except Exception as exc:
        log.error("%s: the rollback failed too (%r); see 'isogroup status'", change.domain, exc)
        try:
            return session.claim(change.domain)
        except IsogroupError:
            return None


# -------------------------------------------------------------------------------------------------- restoring


def _restore_device(ctx: Context, domain: str, device: MovedDevice) -> bool:
    try:
        wait = ctx.wait(ctx.bind_timeout)
        restore(ctx.kernel, device.address, device.original_driver, device.original_override, wait)
    except IsogroupError as exc:
        log.error("%s: could not restore %s: %s", domain, device.address, exc)
        return False
    return True


def _put_back(
    ctx: Context, session: LedgerSession, claim: Claim, devices: Iterable[MovedDevice]
) -> tuple[Claim, list[MovedDevice]]:
    """Restore `devices` in the order given; each one back leaves the claim at once, one that cannot be put back
    stays recorded as it is. Returns the claim and the devices that failed."""
    failed = []
    for device in devices:
        if _restore_device(ctx, claim.domain, device):
            claim = session.write(claim.without_device(device.address))
        else:
            failed.append(device)
    return claim, failed


def _restore_claim(ctx: Context, session: LedgerSession, claim: Claim) -> Claim | None:
    """Restore every device of the claim, newest first; None when all are back and the claim is gone."""
    claim = session.write(replace(claim, phase=Phase.RELEASING))
    claim, _ = _put_back(ctx, session, claim, reversed(claim.devices))
    if claim.devices:
        return session.write(replace(claim, phase=Phase.FAILED))
    session.remove(claim.domain)
    log.info("%s: released groups %s", claim.domain, ", ".join(map(str, claim.groups)) or "(none)")
    return None


def _raise_if_late(ctx: Context, left: Claim | None) -> None:
    if left is not None and left.devices and ctx.late():
        raise out_of_time(ctx, "restoring its devices", left)


def release(ctx: Context, domain: str, *, unless_in_use: bool = False) -> Claim | None:
    """Put back what `domain` holds. Idempotent; returns the claim left behind when a restore failed.
    `unless_in_use` (a reservation): refuse, changing nothing, while a guest runs on one of its groups; decided
    under the same lock as the restore, so no guest can start on it in between."""
    with locked(ctx) as session:
        finish_interrupted(ctx, session)
        claim = session.claim(domain)
        if unless_in_use and claim is not None:
            current = session.holders()
            for group in claim.groups:
                if current.get(group, domain) != domain:
                    raise RefusedError(
                        f"IOMMU group {group} is in use by guest '{current[group]}': stop it first",
                        domain=domain,
                        codes=("group-claimed",),
                    )
        left = _restore_claim(ctx, session, claim) if claim is not None else None
        _raise_if_late(ctx, left)
        return left


def release_groups(ctx: Context, domain: str, groups: set[int]) -> Claim | None:
    """Hot-unplug, or a hotplug libvirt refused: restore only the devices of `groups` and drop those groups
    from the domain's claim while the guest keeps running. Returns what remains of the claim."""
    with locked(ctx) as session:
        finish_interrupted(ctx, session)
        claim = session.claim(domain)
        left = _release_groups(ctx, session, claim, groups) if claim is not None else None
        if left is not None and any(d.group in groups for d in left.devices):
            _raise_if_late(ctx, left)
        return left


def _release_groups(ctx: Context, session: LedgerSession, claim: Claim, groups: set[int]) -> Claim | None:
    claim, failed = _put_back(ctx, session, claim, [d for d in reversed(claim.devices) if d.group in groups])
    for device in failed:  # the guest still runs: mark this device alone, so recover retries it and nothing else
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
    with locked(ctx) as session:
        finish_interrupted(ctx, session)
        for claim in session.claims():
            if claim.phase is Phase.FAILED or (domains is not None and claim.domain in domains):
                _restore_claim(ctx, session, claim)
            elif stranded := {d.group for d in claim.devices if d.state is DeviceState.RESTORE_FAILED}:
                _release_groups(ctx, session, claim, stranded)
        left = session.claims()
        for claim in left:
            if claim.phase is Phase.FAILED or any(d.state is DeviceState.RESTORE_FAILED for d in claim.devices):
                _raise_if_late(ctx, claim)
        return left


def reconnect(ctx: Context, domain: DomainSpec) -> None:
    """libvirtd restarted with the guest running: adopt its groups if it has no claim, and report devices
    that are no longer where the claim says. Never raises for a healthy guest, and never adopts a group another
    claim holds: one group in two claims would let either guest's release pull it from the other. Such a group
    is reported as drift for a person to settle."""
    with locked(ctx) as session:
        claim = session.claim(domain.name)
        domain_plan, topology = _plan(ctx, session, domain)
        holders = session.holders()
        theirs = {g: o for g in domain_plan.group_numbers if (o := holders.get(g)) not in (None, domain.name)}
        for group, other in sorted(theirs.items()):
            log.warning(
                "%s: reconnect: the running guest uses IOMMU group %d, which the ledger gives to '%s'; not adopted "
                "(check both guests with 'isogroup status')",
                domain.name,
                group,
                other,
            )
        if claim is None:
            mine = tuple(g for g in domain_plan.group_numbers if g not in theirs)
            if mine:
                session.write(Claim(domain.name, Phase.ACTIVE, mine, uuid=domain.uuid))
                log.info("%s: adopted groups %s of a running guest", domain.name, mine)
            return
        for device in claim.devices:
            func = topology.function(device.address)
            if func is None or not is_viable_driver(func.driver):
                where = "gone" if func is None else f"on {func.driver}"
                log.warning("%s: %s was moved to %s but is now %s", domain.name, device.address, VFIO_PCI, where)
