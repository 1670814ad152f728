"""What the host's administrator allows to move, and what a domain asks to adjust: plain data and the rule
that merges them. `formats.policyfile` reads both (the TOML file and the domain's `<metadata>`).

Defaults are the safe choice: every probe family refuses unless FAMILY_DEFAULTS says it only warns, and a
domain may tighten the policy but never relax it unless the host's policy grants that
(`[domains] may_relax = true`). Whoever may define a domain need not be the host's administrator (libvirt's ACLs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.model import PciFunction, UseCode

FAMILIES = frozenset(code.family for code in UseCode)


class Mode(StrEnum):
    EXPAND = "expand"
    STRICT = "strict"


class ProbeAction(StrEnum):
    REFUSE = "refuse"
    WARN = "warn"


# The families whose findings warn unless a policy says "refuse"; every other family refuses by default.
# - reset: no isolated reset (reset-shared, reset-none) costs the next guest a clean device, not the host
#   anything, and most consumer boards have such devices: refusing would refuse most passthrough setups.
# - acs: groups that may lie (acs-override, acs-split) were the administrator's own choice on the command line
#   or a model's prediction; the host keeps running either way. A policy that wants isolation proven refuses.
# - power: a function in D3cold is often woken by vfio-pci itself; when not, QEMU fails cleanly at start.
# Families that stay "refuse": collateral (a reset reaching a device the host uses), holder (an unbind that
# hangs the hook and libvirtd with it), display (the boot framebuffer: vfio-pci fails after the start was
# allowed), and every host-use probe family.
FAMILY_DEFAULTS: Mapping[str, ProbeAction] = {
    "reset": ProbeAction.WARN,
    "acs": ProbeAction.WARN,
    "power": ProbeAction.WARN,
}


@dataclass(frozen=True)
class Selector:
    """Devices by address, vendor:device (device may be `*`) or class prefix."""

    addresses: frozenset[PciAddress] = frozenset()
    ids: frozenset[tuple[int, int | None]] = frozenset()
    classes: frozenset[str] = frozenset()  # lower-case hex prefixes of the 6-digit class code

    def matches(self, func: PciFunction) -> bool:
        return (
            func.address in self.addresses
            or (func.vendor, func.device) in self.ids
            or (func.vendor, None) in self.ids
            or any(f"{func.class_code:06x}".startswith(prefix) for prefix in self.classes)
        )

    def union(self, other: Selector) -> Selector:
        return Selector(self.addresses | other.addresses, self.ids | other.ids, self.classes | other.classes)

    @property
    def empty(self) -> bool:
        return not (self.addresses or self.ids or self.classes)


@dataclass(frozen=True)
class Policy:
    mode: Mode = Mode.EXPAND
    allow: Selector = Selector()
    deny: Selector = Selector()
    probes: Mapping[str, ProbeAction] = field(default_factory=dict)  # family -> action; absent: its default
    domains_may_relax: bool = False  # relaxing safety is the administrator's grant
    source: str = field(default="built-in defaults", compare=False)

    def probe_action(self, code: UseCode) -> ProbeAction:
        return self.family_action(code.family)

    def family_action(self, family: str) -> ProbeAction:
        return self.probes.get(family, FAMILY_DEFAULTS.get(family, ProbeAction.REFUSE))


DEFAULT = Policy()


@dataclass(frozen=True)
class DomainPolicy:
    """What a domain's `<metadata><isogroup:policy>` asks for, before the host decides what it may have."""

    mode: Mode | None = None
    allow: Selector = Selector()
    deny: Selector = Selector()
    probes: Mapping[str, ProbeAction] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.mode is None and self.allow.empty and self.deny.empty and not self.probes


def merge(host: Policy, domain: DomainPolicy) -> tuple[Policy, list[str]]:
    """The policy that applies to this domain, and what of the domain's wishes the host did not grant.
    Tightening (strict, deny, refuse) is always granted; relaxing (expand, allow, warn) only when the host's
    policy lets domains relax it."""
    ignored: list[str] = []
    merged = host
    if not domain.empty:
        merged = replace(host, source=f"{host.source} with the domain's <metadata>")
    merged = replace(merged, deny=host.deny.union(domain.deny))
    if domain.mode is Mode.STRICT or (domain.mode is Mode.EXPAND and host.domains_may_relax):
        merged = replace(merged, mode=domain.mode)
    elif domain.mode is Mode.EXPAND and host.mode is Mode.STRICT:
        ignored.append("mode='expand'")
    if not domain.allow.empty:
        if host.domains_may_relax:
            merged = replace(merged, allow=merged.allow.union(domain.allow))
        else:
            ignored.append("<allow>")
    probes = dict(merged.probes)
    for family, action in domain.probes.items():
        if action is ProbeAction.REFUSE or host.domains_may_relax:
            probes[family] = action
        elif replace(merged, probes=probes).family_action(family) is ProbeAction.REFUSE:
            ignored.append(f"<probe family='{family}' action='warn'>")
    merged = replace(merged, probes=probes)
    return merged, ignored
