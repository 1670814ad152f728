"""The pure planning core: (domain, host topology, claims, policy) -> DomainPlan. It touches nothing on the host.

Every problem is collected, not just the first, so that one `check` run tells a person everything to fix.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from isogroup.core.address import PciAddress
from isogroup.core.claims import GroupHolders, is_reservation
from isogroup.core.domain import DomainSpec, PciRequest, Source
from isogroup.core.drivers import is_vfio_driver, is_viable_driver
from isogroup.core.isolation import acs_findings
from isogroup.core.model import Finding, HostTopology, PciFunction, UseCode
from isogroup.core.plan import Action, DomainPlan, GroupPlan, MemberPlan, Note, Problem, ProblemCode
from isogroup.core.policy import DEFAULT, Mode, Policy, ProbeAction, merge
from isogroup.core.reset import reset_findings
from isogroup.core.variants import NO_VARIANTS, VariantTable, choose


def plan(
    domain: DomainSpec,
    host: HostTopology,
    holders: GroupHolders | None = None,
    policy: Policy = DEFAULT,
    *,
    unknown_refuses: bool = True,
    variants: VariantTable = NO_VARIANTS,
) -> DomainPlan:
    """`unknown_refuses` False turns a probe's "could not tell" into a warning: for a person checking the live
    host without root, who is told to run as root for a verdict. The hook and snapshots always fail closed.
    `variants`: the running kernel's vfio_pci: aliases, from which each leaving member's VFIO driver is chosen
    (none: vfio-pci)."""
    holders = holders or {}
    problems: list[Problem] = []
    notes = list(_notes(domain))
    requests = {r.address: r for r in domain.pci}
    policy, ignored = merge(policy, domain.policy)
    notes += [
        Note("policy", f"the domain's {wish} was ignored: {policy.source} does not let domains relax it")
        for wish in ignored
    ]

    if domain.pci and not host.iommu:
        problems.append(
            Problem(
                ProblemCode.NO_IOMMU,
                None,
                "this host has no IOMMU groups: enable VT-d/AMD-Vi in the firmware and boot with "
                "intel_iommu=on (Intel) or the AMD IOMMU enabled",
            )
        )

    group_numbers: list[int] = []
    for request in domain.pci:
        func = host.function(request.address)
        if func is None:
            problems.append(
                Problem(
                    ProblemCode.DEVICE_ABSENT,
                    request.address,
                    f"{request.address} is not on this host (removed, renumbered or a typo in the domain XML?)",
                )
            )
            continue
        problems.extend(_request_problems(request, func))
        if not host.iommu:
            continue
        if func.iommu_group is None or host.group_of(request.address) is None:
            problems.append(
                Problem(
                    ProblemCode.NO_GROUP,
                    request.address,
                    f"{request.address} is in no IOMMU group: the IOMMU does not translate for it",
                )
            )
            continue
        if func.iommu_group not in group_numbers:
            group_numbers.append(func.iommu_group)

    groups = []
    derived = _derived_findings(host, group_numbers)
    for number in sorted(group_numbers):
        owner = holders.get(number)
        # A reservation's group is there to be used: a guest asking for its devices runs on its binding.
        if owner is not None and owner != domain.name and not is_reservation(owner):
            problems.append(
                Problem(
                    ProblemCode.GROUP_CLAIMED,
                    None,
                    f"IOMMU group {number} is in use by guest '{owner}': stop it first, or give this guest "
                    "devices from another group",
                )
            )
        group_plan, group_problems = _plan_group(number, host, requests, variants)
        group_plan, policy_problems, policy_notes = _apply_policy(group_plan, host, policy, unknown_refuses, derived)
        groups.append(group_plan)
        problems.extend(group_problems + policy_problems)
        notes.extend(policy_notes)

    leaving = [m for g in groups for m in g.members if m.action in (Action.MOVE, Action.LIBVIRT)]
    if leaving and not host.probed:
        notes.append(
            Note(
                "host use",
                "not probed: this topology carries no host-use findings (captured without root, from a tree "
                "without /proc, or by an older isogroup), so nothing is known of whether the host uses the devices "
                "that will leave their drivers; check on the live host as root",
            )
        )
    return DomainPlan(domain.name, tuple(groups), tuple(problems), tuple(notes))


# Findings that are not the host losing the device: the refusal says which policy family refused them.
_NOT_HOST_LOSS = frozenset(
    {
        UseCode.RESET_SHARED,
        UseCode.RESET_NONE,
        UseCode.COLLATERAL_RESET,
        UseCode.COLLATERAL_UNKNOWN,
        UseCode.ACS_OVERRIDE,
        UseCode.ACS_SPLIT,
        UseCode.ACS_UNKNOWN,
        UseCode.HOLDER_NVIDIA,
        UseCode.HOLDER_UNKNOWN,
        UseCode.DISPLAY_FRAMEBUFFER,
        UseCode.POWER_D3COLD,
    }
)


def _derived_findings(host: HostTopology, taken: Collection[int]) -> Mapping[PciAddress, tuple[Finding, ...]]:
    """Findings the core derives from the topology for the members of the groups the guest takes (reset reach,
    groups finer than predicted): a function of the topology, so a snapshot reproduces them."""
    found: dict[PciAddress, tuple[Finding, ...]] = {}
    for number in taken:
        group = host.by_group.get(number)
        for address in group.members if group is not None else ():
            if host.function(address) is not None:
                found[address] = (*reset_findings(host, address, taken), *acs_findings(host, address))
    return found


def _refusal(finding: Finding, group: int, policy: Policy) -> str:
    if finding.code in _NOT_HOST_LOSS:
        return f"{finding.message} (refused: policy family '{finding.code.family}', {policy.source})"
    return f"{finding.message}: the host would lose it if the guest took IOMMU group {group}"


def _apply_policy(
    group_plan: GroupPlan,
    host: HostTopology,
    policy: Policy,
    unknown_refuses: bool,
    derived: Mapping[PciAddress, tuple[Finding, ...]],
) -> tuple[GroupPlan, list[Problem], list[Note]]:
    """Every member that would leave its driver (moved by isogroup or detached by libvirt) must be allowed by
    the policy and unused by the host; otherwise it is blocked and the domain refused, or warned about."""
    members, problems, notes = [], [], []
    for member in group_plan.members:
        func = host.by_address[member.address]
        if member.action not in (Action.MOVE, Action.LIBVIRT):
            members.append(member)
            continue
        blocked = None
        if policy.deny.matches(func):
            blocked = Problem(
                ProblemCode.POLICY_DENIED,
                func.address,
                f"{func.address} ({func.driver}, class {func.class_code:06x}) would leave its driver, but the "
                f"policy ({policy.source}) denies moving it",
            )
        elif member.action is Action.MOVE and policy.mode is Mode.STRICT and not member.requested:
            blocked = Problem(
                ProblemCode.STRICT_MODE,
                func.address,
                f"{func.address} ({func.driver}) shares IOMMU group {group_plan.group} and would have to move, but "
                "the policy is strict: name it in the domain XML as a hostdev, or use mode 'expand'",
            )
        if blocked is not None:
            problems.append(blocked)
        for finding in (*host.findings_for(func.address), *derived.get(func.address, ())):
            if finding.code.unknown and not unknown_refuses:
                notes.append(
                    Note(
                        f"warning [{finding.code.value}]",
                        f"{finding.message} (run as root for a verdict)",
                        use=finding.code,
                    )
                )
                continue
            if policy.probe_action(finding.code) is ProbeAction.WARN or policy.allow.matches(func):
                notes.append(
                    Note(f"warning [{finding.code.value}]", f"{finding.message} (allowed by policy)", use=finding.code)
                )
                continue
            problems.append(
                Problem(
                    ProblemCode.HOST_IN_USE, func.address, _refusal(finding, group_plan.group, policy), use=finding.code
                )
            )
            blocked = blocked or problems[-1]
        if blocked is not None:
            on = f"on {member.driver}" if member.driver else "with no driver"
            members.append(
                replace(member, action=Action.BLOCKED, why=f"{on}: must stay ({blocked.code.value})", target=None)
            )
        else:
            members.append(member)
    return GroupPlan(group_plan.group, tuple(members)), problems, notes


def _request_problems(request: PciRequest, func: PciFunction) -> list[Problem]:
    problems = []
    if func.is_bridge:
        problems.append(
            Problem(
                ProblemCode.BRIDGE_REQUESTED,
                func.address,
                f"{func.address} is a PCI bridge: vfio-pci cannot take bridges; assign the devices behind it",
            )
        )
    if func.vfs_enabled:
        problems.append(
            Problem(
                ProblemCode.PF_HAS_VFS,
                func.address,
                f"{func.address} has {func.vfs_enabled} SR-IOV VFs enabled: vfio-pci refuses such a PF; "
                f"assign a VF instead, or disable the VFs (echo 0 > .../{func.address}/sriov_numvfs)",
            )
        )
    if not request.managed and not is_vfio_driver(func.driver):
        where = f"on {func.driver}" if func.driver else "unbound"
        problems.append(
            Problem(
                ProblemCode.NOT_DETACHED,
                func.address,
                f"{func.address} has managed='no' but is {where}: detach it first "
                f"(virsh nodedev-detach pci_{str(func.address).replace(':', '_').replace('.', '_')}) "
                "or set managed='yes'",
            )
        )
    return problems


def _plan_group(
    number: int, host: HostTopology, requests: Mapping[PciAddress, PciRequest], variants: VariantTable
) -> tuple[GroupPlan, list[Problem]]:
    group = host.by_group[number]
    members = []
    problems = []
    for address in group.members:
        func = host.function(address)
        if func is None:  # a snapshot's group names a function it lacks: from_json refuses those
            continue
        member, problem = _plan_member(func, requests.get(address), variants)
        members.append(member)
        if problem is not None:
            problems.append(problem)
    return GroupPlan(number, tuple(members)), problems


def _plan_member(
    func: PciFunction, request: PciRequest | None, variants: VariantTable
) -> tuple[MemberPlan, Problem | None]:
    def member(action: Action, why: str, target: str | None = None) -> MemberPlan:
        return MemberPlan(func.address, func.driver, action, why, request is not None, func.ids, target)

    on = f"on {func.driver}" if func.driver else "with no driver"
    if request is not None:
        if func.is_bridge:
            return member(Action.BLOCKED, f"requested, but a bridge {on}"), None  # the request's problem says why
        if func.vfs_enabled:
            return member(Action.BLOCKED, f"requested, but a PF with {func.vfs_enabled} VFs enabled"), None
        if is_vfio_driver(func.driver):
            return member(Action.KEEP, f"requested; already {on}"), None
        if request.source is Source.RESERVATION:  # no libvirt will come: isogroup binds it itself
            target = choose(variants, func, request.model).driver
            return member(Action.MOVE, f"reserved {on}: must move to {target} ahead of time", target), None
        if request.managed:
            # libvirt detaches it after the prepare hook and reattaches it at stop (FIELD.md §2), binding the
            # driver its <driver model> names or the best vfio_pci: alias of modules.alias (core.variants).
            return member(
                Action.LIBVIRT,
                f"requested, managed='yes': libvirt detaches it from {func.driver}"
                if func.driver
                else "requested, managed='yes': libvirt binds it",
                choose(variants, func, request.model).driver,
            ), None
        # managed='no' and not detached: already a problem for the request; nothing will move it.
        return member(Action.BLOCKED, f"requested, managed='no', {on}"), None

    if is_viable_driver(func.driver):
        return member(Action.KEEP, f"{on}: safe for VFIO as it is"), None
    if func.is_bridge:
        return member(Action.BLOCKED, f"bridge {on}"), Problem(
            ProblemCode.BRIDGE_ON_HOST_DRIVER,
            func.address,
            f"{func.address} is a bridge in this group bound to {func.driver}, which VFIO does not allow and "
            "vfio-pci cannot replace",
        )
    if func.vfs_enabled:
        return member(Action.BLOCKED, f"PF with {func.vfs_enabled} VFs enabled"), Problem(
            ProblemCode.PF_HAS_VFS,
            func.address,
            f"{func.address} shares the group and has {func.vfs_enabled} SR-IOV VFs enabled, which vfio-pci refuses",
        )
    target = choose(variants, func).driver
    return member(Action.MOVE, f"{on}: must move to {target} for the group to be viable", target), None


def _notes(domain: DomainSpec) -> tuple[Note, ...]:
    notes = [
        Note(f"mdev {m.uuid}", "a mediated device has its own IOMMU group; its parent is never detached")
        for m in domain.mdevs
    ]
    notes += [
        Note(
            f"network '{n.network}'",
            "if this network is a hostdev pool, libvirt picks its VF after the prepare hook; it is checked at start",
        )
        for n in domain.networks
    ]
    return tuple(notes)
