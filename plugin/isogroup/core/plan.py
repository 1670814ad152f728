"""The plan and its parts: what happens to every member of every group a domain needs, or why it cannot start.

Plain data, produced by `planner.plan` and consumed by the reports, the hook and the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.model import UseCode
from isogroup.errors import RefusedError


class Action(StrEnum):
    MOVE = "move"  # isogroup binds it to a VFIO driver before the guest starts and restores it at release
    LIBVIRT = "libvirt"  # managed='yes': libvirt itself detaches it after the prepare hook and reattaches it
    KEEP = "keep"  # already safe for VFIO where it is: no driver, a vfio driver, pci-stub or pcieport
    BLOCKED = "blocked"  # can never be made safe; the matching problem says why


class ProblemCode(StrEnum):
    DEVICE_ABSENT = "device-absent"
    NO_IOMMU = "no-iommu"
    NO_GROUP = "no-iommu-group"
    BRIDGE_REQUESTED = "bridge-requested"
    BRIDGE_ON_HOST_DRIVER = "bridge-on-host-driver"
    PF_HAS_VFS = "pf-has-vfs"
    NOT_DETACHED = "managed-no-not-detached"
    GROUP_CLAIMED = "group-claimed"
    HOST_IN_USE = "host-in-use"  # a probe found the host using a device that would leave its driver
    POLICY_DENIED = "policy-denied"  # the policy's deny list names a device that would leave its driver
    STRICT_MODE = "strict-mode"  # strict policy: a device not named in the domain XML would have to move


@dataclass(frozen=True)
class Problem:
    code: ProblemCode
    address: PciAddress | None
    message: str  # one line a person can act on
    use: UseCode | None = None  # for host-in-use: what the probe found

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MemberPlan:
    address: PciAddress
    driver: str | None
    action: Action
    why: str
    requested: bool  # named in the domain XML (as opposed to pulled in by its group)
    ids: str = ""  # vendor:device, for people reading the report
    # The VFIO driver it will be on: for `move`, the one isogroup binds (it falls back to vfio-pci when that
    # variant is absent or refuses the device); for `libvirt`, the one libvirt ≥ 10 binds (core.variants).
    # None for members that stay where they are.
    target: str | None = None


@dataclass(frozen=True)
class GroupPlan:
    group: int
    members: tuple[MemberPlan, ...]

    @property
    def to_move(self) -> tuple[MemberPlan, ...]:
        return tuple(m for m in self.members if m.action is Action.MOVE)


@dataclass(frozen=True)
class Note:
    """Something the plan could not decide yet and leaves for later, stated so a person is not surprised."""

    subject: str
    message: str
    # The host use a warning let through (the policy allowed it, or nobody could tell without root); the start
    # logs such a note to the system log, where a successful hook's stderr would reach nobody.
    use: UseCode | None = None


@dataclass(frozen=True)
class DomainPlan:
    domain: str
    groups: tuple[GroupPlan, ...]
    problems: tuple[Problem, ...]
    notes: tuple[Note, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "refused"

    @property
    def group_numbers(self) -> tuple[int, ...]:
        return tuple(g.group for g in self.groups)

    def refused(self) -> RefusedError:
        """The error a refused plan raises: its first problem, how many more, and every problem's code."""
        first = self.problems[0].message
        more = len(self.problems) - 1
        return RefusedError(
            first + (f" (and {more} more problem(s))" if more else ""),
            domain=self.domain,
            codes=tuple(p.code.value for p in self.problems),
        )

    def refusal(self) -> str:
        """The one line the hook prints on stderr, shown by `virsh start` after "Hook script execution failed"."""
        return self.refused().line()
