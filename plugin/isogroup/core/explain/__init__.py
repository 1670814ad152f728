"""Why a device shares its IOMMU group, reconstructed from the host model by the kernel's own rules, and what
would split it.

The rules are those of drivers/iommu/iommu.c `pci_device_group()` as Linux has had them since 4.x:

1. `pci_for_each_dma_alias()` (drivers/pci/search.c): walking up from the device, the first PCIe-to-PCI
   bridge or conventional PCI bridge is the requester ID the IOMMU sees for it; the device joins that bridge's
   group. PCIe ports pass requester IDs through.
2. Otherwise the device joins the group of the bridge above it unless `pci_acs_path_enabled()` holds there:
   every bridge from it to the root bus passes `pci_acs_enabled(SV|RR|CR|UF)` (drivers/pci/pci.c), which asks
   the ACS quirks first (drivers/pci/quirks.c `pci_dev_acs_enabled[]`, see kernel/quirks.py), then the ACS capability.
3. A device that keeps its own place joins the functions that are its DMA aliases (kernel/quirks.py, the Ricoh and
   Marvell quirks) and, when it is multifunction without ACS, its sibling functions that lack ACS too
   (`get_pci_alias_group()`, `get_pci_function_alias_group()`).

Joining is transitive, so the groups are the connected components of these links. A pure function of the
topology: it reads nothing, and runs the same on a live host, a snapshot or a test. Where the config space was
not readable (a capture without root) ACS is unknown; it is then inferred from the kernel's own groups and
said so. A rework of the kernel's rules was proposed in 2025 (PCIe switches, PCIe-to-PCI bridges): a host
running it can form groups this model does not predict, and `explain` says when it sees that.

The package, bottom up: tree (the PCI tree the walk follows, what each function is), acs (the ACS oracle),
grouping (the rules as links between functions; the predicted groups are its connected components), result
(what explain answers, as data), splits (what would split a group), narrative (the explanation of one function,
step by step), render (JSON and text).
"""

from __future__ import annotations

from isogroup.core.address import PciAddress
from isogroup.core.explain.grouping import Grouping
from isogroup.core.explain.narrative import explanation
from isogroup.core.explain.render import to_json, to_text
from isogroup.core.explain.result import Explanation, Member, Prediction, Split, SplitKind, Step
from isogroup.core.model import HostTopology
from isogroup.errors import InputError

__all__ = [
    "Explanation",
    "Member",
    "Prediction",
    "Split",
    "SplitKind",
    "Step",
    "explain",
    "predicted_groups",
    "to_json",
    "to_text",
]


def explain(host: HostTopology, address: PciAddress) -> Explanation:
    """Why `address` is in the group it is in, by the kernel's rules; InputError when the host has no such
    function."""
    func = host.function(address)
    if func is None:
        raise InputError(f"{address} is not a PCI function of this host ({host.source or 'the topology'})")
    return explanation(Grouping(host, also=address), func)


def predicted_groups(host: HostTopology) -> list[tuple[PciAddress, ...]]:
    """Every group the model predicts for the functions the IOMMU translates (all of them without an IOMMU)."""
    return Grouping(host).components()
