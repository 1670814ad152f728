"""The ACS oracle: `pci_acs_enabled(dev, SV|RR|CR|UF)` (drivers/pci/pci.c) for each function, with the reason,
and `pci_acs_path_enabled()` over the bridges above it.

The kernel asks the ACS quirks first (drivers/pci/quirks.c `pci_dev_acs_enabled[]`, see kernel/quirks.py), then
the ACS capability. Where the config space was not read (a capture without root) ACS is unknown: it is then
read off the kernel's own groups where they show it, and said so."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.explain.tree import PCIE_KINDS, PORTS, Tree, multifunction_in_kernel
from isogroup.core.kernel import configspace as cs
from isogroup.core.kernel.quirks import QuirkContext, acs_quirk, flag_names
from isogroup.core.model import PciFunction


class Evidence(StrEnum):
    KNOWN = "known"  # from the config space or a quirk
    INFERRED = "inferred"  # ACS unknown: read off the kernel's groups
    ASSUMED = "assumed"  # ACS unknown and the groups cannot tell


@dataclass(frozen=True)
class Acs:
    """`pci_acs_enabled(dev, SV|RR|CR|UF)` for one function, with the reason."""

    isolates: bool
    evidence: Evidence
    text: str
    kernel: str


class AcsOracle:
    """Each function's ACS verdict, computed once (inference asks about the bridges above, again and again)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.ctx = QuirkContext(iommu=tree.host.iommu)
        self._acs: dict[PciAddress, Acs] = {}

    def path_isolates(self, bridge: PciFunction) -> bool:
        """pci_acs_path_enabled(bridge, NULL, SV|RR|CR|UF): it and every bridge above it isolate."""
        return self.acs(bridge).isolates and all(self.acs(b).isolates for b in self.tree.ancestors(bridge))

    def failing(self, bridge: PciFunction) -> list[PciFunction]:
        """The bridges from `bridge` up to the root bus that do not isolate."""
        return [b for b in (bridge, *self.tree.ancestors(bridge)) if not self.acs(b).isolates]

    def acs(self, func: PciFunction) -> Acs:
        found = self._acs.get(func.address)
        if found is None:
            found = self._acs[func.address] = self._compute(func)
        return found

    def _compute(self, func: PciFunction) -> Acs:
        quirk = acs_quirk(func, self.ctx)
        if quirk is not None and quirk.isolates is not None:
            verdict = "as isolating" if quirk.isolates else "as not isolating"
            text = f"{quirk.text}: the kernel's {quirk.name} treats it {verdict}"
            return Acs(quirk.isolates, Evidence.KNOWN, text, quirk.kind.value)
        if not func.capabilities_read:
            return self._infer(func, quirk.text if quirk is not None else None)
        kernel = "pci_acs_enabled"
        t = func.pcie_type
        if t is None:
            return Acs(
                False,
                Evidence.KNOWN,
                "conventional PCI (no PCIe capability): the kernel never counts it as "
                "isolated, anything on a shared bus sees its transactions",
                kernel,
            )
        if t in (cs.PCI_TO_PCIE_BRIDGE, cs.PCIE_TO_PCI_BRIDGE, cs.PCIE_RC_EVENT_COLLECTOR):
            return Acs(
                False,
                Evidence.KNOWN,
                f"a {PCIE_KINDS[t]}: ACS does not apply to it (PCIe 6.12.1), the kernel never counts it as isolated",
                kernel,
            )
        if t in PORTS:
            return self._flags(func)
        if t in (cs.PCIE_ENDPOINT, cs.PCIE_LEGACY_ENDPOINT, cs.PCIE_UPSTREAM_PORT, cs.PCIE_RC_INTEGRATED_ENDPOINT):
            if not multifunction_in_kernel(func):
                return Acs(True, Evidence.KNOWN, "a single-function device: ACS is not required of it", kernel)
            return self._flags(func)
        return Acs(True, Evidence.KNOWN, f"PCIe type {t}: ACS is not required of it", kernel)

    def _flags(self, func: PciFunction) -> Acs:
        """pci_acs_flags_enabled(): capabilities missing from the ACS capability count as hard-wired on."""
        kernel = "pci_acs_flags_enabled"
        if func.acs_cap is None:
            what = "multifunction device" if multifunction_in_kernel(func) and func.pcie_type not in PORTS else "port"
            return Acs(False, Evidence.KNOWN, f"no ACS capability: this {what} does not isolate", kernel)
        required = cs.REQUIRED_ACS & func.acs_cap
        ctrl = func.acs_ctrl or 0
        missing = required & ~ctrl
        regs = f"ACS capability {func.acs_cap:#06x}, control {ctrl:#06x}"
        if missing:
            return Acs(False, Evidence.KNOWN, f"{regs}: {flag_names(missing)} not enabled: does not isolate", kernel)
        absent = cs.REQUIRED_ACS & ~func.acs_cap
        hard_wired = f"{flag_names(absent)} not implemented: counted as hard-wired"
        if not required:
            return Acs(True, Evidence.KNOWN, f"{regs}: {hard_wired}: isolates", kernel)
        extra = f" ({hard_wired})" if absent else ""
        return Acs(True, Evidence.KNOWN, f"{regs}: {flag_names(required)} enabled{extra}: isolates", kernel)

    def _infer(self, func: PciFunction, hint: str | None) -> Acs:
        """ACS unknown: read it off the kernel's groups where they show it."""
        kernel = "pci_acs_enabled"
        prefix = f"ACS unknown (config space not read; {hint})" if hint else "ACS unknown (config space not read)"
        group = func.iommu_group
        if not self.tree.host.iommu or group is None:
            return Acs(
                False,
                Evidence.ASSUMED,
                f"{prefix}: assumed not to isolate (the larger group is the safe guess)",
                kernel,
            )
        above_isolates = all(self.acs(b).isolates for b in self.tree.ancestors(func))
        if not above_isolates:
            return Acs(
                True,
                Evidence.ASSUMED,
                f"{prefix}: the kernel's groups cannot show it, a bridge above does not isolate anyway",
                kernel,
            )
        siblings = self.tree.siblings(func) if multifunction_in_kernel(func) else []
        below = self.tree.below(func)
        joined = [f for f in (*siblings, *below) if f.iommu_group == group]
        if joined:
            return Acs(
                False,
                Evidence.INFERRED,
                f"{prefix}: the kernel put {joined[0].address} in its group, so it does not isolate",
                kernel,
            )
        if siblings or below:
            other = (siblings or below)[0].address
            return Acs(
                True, Evidence.INFERRED, f"{prefix}: the kernel gave {other} a group of its own, so it isolates", kernel
            )
        return Acs(
            True,
            Evidence.ASSUMED,
            f"{prefix}: it matters for nothing here (no sibling function, nothing below it)",
            kernel,
        )
