"""Reset reach: how the kernel can reset a function that leaves its driver, and what else that reset resets.

VFIO resets a device when a guest opens and closes it (drivers/vfio/pci/vfio_pci_core.c). With a method of the
function's own (FLR, PM, ACPI _RST, a device-specific quirk) only the function is reset. Without one, only a
secondary bus reset of the parent bridge remains, and it resets everything below that bridge: every function on
the bus and, through their bridges, every bus below (drivers/pci/pci.c pci_reset_secondary_bus). VFIO does that
reset only when every function it reaches is a closed vfio-pci device of the same set and the user owns each
one's group (vfio_pci_dev_set_resettable, vfio_pci_dev_set_hot_reset); otherwise the device is not reset and
carries one guest's state to the next, and a reset forced another way (sysfs `reset_subordinate`, a script)
takes the neighbours from whoever uses them.

Why not trust "bus" in `reset_method`: the kernel probes the methods before the function is linked into its
bus and before a bridge's own bus is scanned (drivers/pci/probe.c pci_device_add), so the first function on a
shared bus, and every bridge, may list "bus" although pci_parent_bus_reset() refuses it (measured on Debian
6.1: "Unsupported reset method 'bus'"). "Alone" is decided here from the topology instead: a function that
is not a bridge, not on a root bus, and the only function below its parent bridge.

A slot reset (pciehp) reaches the slot's functions; behind a PCIe port that is the same set as the bus.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from isogroup.core.address import PciAddress
from isogroup.core.model import Finding, HostTopology, PciFunction, UseCode

# drivers/pci/pci.c pci_reset_fn_methods[]: the methods that reset the function alone.
FUNCTION_RESETS = frozenset({"device_specific", "acpi", "flr", "af_flr", "pm"})
# The methods that reset the bus (or the CXL port's bus) below the parent bridge.
BUS_RESETS = frozenset({"bus", "cxl_bus"})


class Scope(StrEnum):
    FUNCTION = "function"  # a reset of its own
    ALONE = "alone"  # only a bus reset, but nothing else is below the bridge
    BUS = "bus"  # only a bus reset, reaching the other functions below the bridge
    NONE = "none"  # no reset at all: no method of its own, and no bus reset (a root bus, or a quirk)
    UNKNOWN = "unknown"  # the methods were not read (a kernel before 5.15, an older snapshot)


@dataclass(frozen=True)
class ResetReach:
    address: PciAddress
    methods: tuple[str, ...] | None
    scope: Scope
    bridge: PciAddress | None  # the bridge whose secondary bus reset is the remaining reset (BUS, ALONE)
    reached: tuple[PciAddress, ...]  # the other functions that reset resets, in address order

    @property
    def isolated(self) -> bool:
        return self.scope in (Scope.FUNCTION, Scope.ALONE)


def _methods_text(methods: tuple[str, ...] | None) -> str:
    if methods is None:
        return "not known"
    return " ".join(methods) if methods else "none"


def _below(host: HostTopology, bridge: PciAddress) -> list[PciAddress]:
    """Every function whose chain of parents passes through `bridge`."""
    found = []
    for func in host.functions:
        seen = {func.address}
        parent = func.parent
        while parent is not None and parent not in seen:
            if parent == bridge:
                found.append(func.address)
                break
            seen.add(parent)
            above = host.function(parent)
            parent = above.parent if above is not None else None
    return sorted(found)


def reset_reach(host: HostTopology, address: PciAddress) -> ResetReach:
    """How `address` can be reset and what that reaches. The function must be in `host`."""
    func = host.by_address[address]
    methods = func.reset_methods
    if methods is None:
        return ResetReach(address, None, Scope.UNKNOWN, None, ())
    if FUNCTION_RESETS.intersection(methods):
        return ResetReach(address, methods, Scope.FUNCTION, None, ())
    if func.parent is None:
        # A root bus has no bridge above it to reset (pci_parent_bus_reset: pci_is_root_bus).
        return ResetReach(address, methods, Scope.NONE, None, ())
    others = tuple(a for a in _below(host, func.parent) if a != address)
    if others:
        return ResetReach(address, methods, Scope.BUS, func.parent, others)
    if not BUS_RESETS.intersection(methods):
        # Alone, yet the kernel's probe (which cannot be stale in this direction) found no bus reset: the
        # device or its bridge carries PCI_DEV_FLAGS_NO_BUS_RESET.
        return ResetReach(address, methods, Scope.NONE, None, ())
    return ResetReach(address, methods, Scope.ALONE, func.parent, ())


def _who(func: PciFunction) -> str:
    return f"{func.address} ({func.driver})" if func.driver else str(func.address)


def _listing(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def reset_findings(host: HostTopology, address: PciAddress, taken: Collection[int]) -> list[Finding]:
    """The reset findings for a function that leaves its driver for a guest that takes the IOMMU groups
    `taken`: reset-none, reset-shared (the bus reset reaches functions outside those groups) and, for each of
    those the host uses (its own findings say so), collateral-reset, or collateral-unknown when its use could
    not be told."""
    func = host.by_address[address]
    reach = reset_reach(host, address)
    who = _who(func)
    methods = _methods_text(reach.methods)
    if reach.scope is Scope.NONE:
        text = (
            f"{who} has no reset the kernel can use (reset_method: {methods}, and no bus reset: "
            f"{'a root bus has no bridge to reset it' if func.parent is None else 'the kernel refuses one'}): "
            "it keeps one guest's state into the next guest or the host driver"
        )
        return [Finding(address, UseCode.RESET_NONE, "reset", text)]
    if reach.scope is not Scope.BUS or reach.bridge is None:
        return []
    outside = [
        other
        for a in reach.reached
        if (other := host.by_address[a]).iommu_group is None or other.iommu_group not in taken
    ]
    if not outside:
        return []  # QEMU owns every group the reset reaches: VFIO's hot reset can do it
    groups = sorted({f.iommu_group for f in outside if f.iommu_group is not None})
    named = _listing([_who(f) for f in outside])
    give = f"; give the guest IOMMU group(s) {', '.join(map(str, groups))} too" if groups else ""
    findings = [
        Finding(
            address,
            UseCode.RESET_SHARED,
            f"bus below {reach.bridge}",
            f"{who} has no isolated reset (reset_method: {methods}): only a secondary bus reset below "
            f"{reach.bridge} remains, which also resets {named}{give} so that QEMU owns every group it reaches, "
            "or the device keeps one guest's state into the next",
        )
    ]
    for other in outside:
        uses = [f for f in host.findings_for(other.address) if not f.code.unknown]
        unknown = [f for f in host.findings_for(other.address) if f.code.unknown]
        consequence = (
            "VFIO will not do that reset, so the device keeps one guest's state into the next, and a reset "
            "forced another way (reset_subordinate, a script) would take it from the host"
        )
        if uses:
            text = (
                f"{who} has no isolated reset: the secondary bus reset below {reach.bridge} would also reset "
                f"{_who(other)}, which the host uses ({uses[0].message}): {consequence}"
            )
            findings.append(Finding(address, UseCode.COLLATERAL_RESET, str(other.address), text))
        elif unknown:
            text = (
                f"{who}: could not tell whether the secondary bus reset below {reach.bridge} would reach a device "
                f"the host uses: {unknown[0].message}"
            )
            findings.append(Finding(address, UseCode.COLLATERAL_UNKNOWN, str(other.address), text))
    return findings


# --- rendering, for `explain` ---------------------------------------------------------------------------------

_SCOPE_TEXT = {
    Scope.FUNCTION: "resets alone (a method of its own)",
    Scope.ALONE: "only a bus reset, and nothing else is below {bridge}: resets alone",
    Scope.BUS: "only a secondary bus reset below {bridge}, which also resets: {reached}",
    Scope.NONE: "no reset at all (no method of its own, no bus reset): keeps one guest's state into the next",
    Scope.UNKNOWN: "not known (no reset_method: a kernel before 5.15, or a snapshot without it)",
}


def reach_to_text(host: HostTopology, reach: ResetReach) -> str:
    """One line: `reset: <methods>: <what it reaches>`."""
    reached = _listing(
        [
            f"{a} (group {f.iommu_group})"
            if (f := host.function(a)) is not None and f.iommu_group is not None
            else str(a)
            for a in reach.reached
        ],
        limit=6,
    )
    scope = _SCOPE_TEXT[reach.scope].format(bridge=reach.bridge, reached=reached)
    if reach.methods is None:
        return f"reset: {scope}"
    return f"reset: reset_method {_methods_text(reach.methods)}; {scope}"


def reach_to_json(reach: ResetReach) -> dict[str, Any]:
    return {
        "methods": list(reach.methods) if reach.methods is not None else None,
        "scope": reach.scope.value,
        "isolated": reach.isolated,
        "bridge": str(reach.bridge) if reach.bridge else None,
        "reached": [str(a) for a in reach.reached],
    }
