"""The link graph: the kernel's `pci_device_group()` (drivers/iommu/iommu.c) as links between functions, and the
groups it predicts as the graph's connected components (joining is transitive).

Each function keeps its own place unless its DMA carries a bridge's requester ID (`pci_for_each_dma_alias()`,
drivers/pci/search.c) or the path above it does not isolate (`pci_acs_path_enabled()`); one that keeps its place
joins its DMA aliases (the Ricoh and Marvell quirks) and, multifunction without ACS, its sibling functions that
lack ACS too (`get_pci_alias_group()`, `get_pci_function_alias_group()`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from isogroup.core.address import PciAddress
from isogroup.core.explain.acs import AcsOracle
from isogroup.core.explain.tree import Tree, label, multifunction_in_kernel
from isogroup.core.kernel import configspace as cs
from isogroup.core.kernel.quirks import AliasKind, DmaAliasQuirk, aliased_devfns, dma_alias_quirks
from isogroup.core.model import HostTopology, PciFunction


class Rule(StrEnum):
    """Why two functions are in one group. Stable: JSON reports name them."""

    DMA_ALIAS = "dma-alias"  # a quirk: one DMAs with the other's requester ID
    BRIDGE_ALIAS = "bridge-alias"  # behind a PCIe-to-PCI or conventional bridge: the bridge's requester ID
    ACS_PATH = "acs-path"  # the path from the bridge above to the root bus does not isolate
    MULTIFUNCTION = "multifunction"  # functions of one device, neither isolated from the other by ACS


@dataclass(frozen=True)
class Link:
    """`member` joins `to`'s group because of `rule`; `text` says it in words."""

    member: PciAddress
    to: PciAddress
    rule: Rule
    text: str
    kernel: str  # the kernel function this mirrors


class Grouping:
    """The kernel's grouping rules over one host: its tree, the ACS oracle, and the links they make."""

    def __init__(self, host: HostTopology, also: PciAddress | None = None) -> None:
        self.tree = Tree(host, also)
        self.oracle = AcsOracle(self.tree)
        self._quirks: dict[PciAddress, list[DmaAliasQuirk]] = {}

    # --- requester IDs and DMA aliases ----------------------------------------------------------------

    def alias_quirks(self, func: PciFunction) -> list[DmaAliasQuirk]:
        found = self._quirks.get(func.address)
        if found is None:
            found = self._quirks[func.address] = dma_alias_quirks(func)
        return found

    def alias_bridge(self, func: PciFunction) -> tuple[PciFunction, str] | None:
        """pci_for_each_dma_alias(): the nearest bridge above whose requester ID the device's DMA carries."""
        for bridge in self.tree.ancestors(func):
            if not bridge.capabilities_read:
                continue  # its type is unknown: treated as a PCIe port, its ACS (inferred) decides
            t = bridge.pcie_type
            if t == cs.PCIE_TO_PCI_BRIDGE:
                return bridge, (
                    f"{label(bridge)} is a PCIe-to-PCI bridge: DMA from behind it reaches the IOMMU with the "
                    "requester ID of its secondary bus, device 00.0"
                )
            if t == cs.PCI_TO_PCIE_BRIDGE:
                return bridge, f"{label(bridge)} is a PCI-to-PCIe bridge: DMA from behind it carries its own ID"
            if t is None:
                if self.hides_pcie(bridge):
                    return bridge, (
                        f"{label(bridge)} is a PCIe-to-PCI bridge that hides its PCIe capability "
                        "(quirk_use_pcie_bridge_dma_alias): DMA from behind it carries the ID of its secondary "
                        "bus, device 00.0"
                    )
                return bridge, f"{label(bridge)} is a conventional PCI bridge: DMA from behind it carries its ID"
        return None

    def hides_pcie(self, bridge: PciFunction) -> bool:
        """quirk_use_pcie_bridge_dma_alias: a non-root, non-PCIe bridge below a PCIe port that is no bridge."""
        if not any(q.kind is AliasKind.PCIE_BRIDGE for q in dma_alias_quirks(bridge)) or bridge.parent is None:
            return False
        parent = self.tree.parent(bridge)
        return (
            parent is not None
            and parent.capabilities_read
            and parent.pcie_type is not None
            and parent.pcie_type != cs.PCIE_TO_PCI_BRIDGE
        )

    def alias_partners(self, func: PciFunction) -> list[tuple[PciFunction, PciFunction, DmaAliasQuirk]]:
        """pci_devs_are_dma_aliases() in both directions: (who DMAs, with whose ID, by which quirk)."""
        found: list[tuple[PciFunction, PciFunction, DmaAliasQuirk]] = []
        for quirk in self.alias_quirks(func):
            found += [(func, t, quirk) for t in self.tree.on_bus(func, aliased_devfns(func, quirk))]
        a = func.address
        for other in self.tree.bus(func):
            for quirk in self.alias_quirks(other):
                if (a.slot << 3 | a.function) in aliased_devfns(other, quirk):
                    found.append((other, func, quirk))
        return found

    # --- the links ------------------------------------------------------------------------------------

    def links_of(self, func: PciFunction) -> list[Link]:
        """The kernel's pci_device_group() for one function: the links it makes."""
        bridge = self.alias_bridge(func)
        if bridge is not None:
            via, why = bridge
            return [
                Link(
                    func.address,
                    via.address,
                    Rule.BRIDGE_ALIAS,
                    f"{why}: {func.address} joins its group",
                    "pci_for_each_dma_alias",
                )
            ]
        parent = self.tree.parent(func)
        if parent is not None and not self.oracle.path_isolates(parent):
            return [
                Link(func.address, parent.address, Rule.ACS_PATH, self.path_text(func, parent), "pci_acs_path_enabled")
            ]
        links = [
            Link(
                who.address,
                whose.address,
                Rule.DMA_ALIAS,
                f"{label(who)} DMAs with {whose.address}'s requester ID ({quirk.kernel}: {quirk.what}): the IOMMU "
                "cannot tell them apart",
                "get_pci_alias_group",
            )
            for who, whose, quirk in self.alias_partners(func)
        ]
        if multifunction_in_kernel(func) and not self.oracle.acs(func).isolates:
            links += [
                Link(
                    func.address,
                    s.address,
                    Rule.MULTIFUNCTION,
                    f"{func.address} and {s.address} are functions of one device and no ACS keeps them apart: "
                    "they can reach each other inside the device",
                    "get_pci_function_alias_group",
                )
                for s in self.tree.siblings(func)
                if not self.oracle.acs(s).isolates
            ]
        return links

    def path_text(self, func: PciFunction, parent: PciFunction) -> str:
        failing = ", ".join(str(b.address) for b in self.oracle.failing(parent))
        return (
            f"{func.address} is below {parent.address}, and the path from there to the root bus does not isolate "
            f"(at {failing}): {func.address} joins {parent.address}'s group"
        )

    @cached_property
    def links(self) -> list[Link]:
        return [link for f in self.tree.translated.values() for link in self.links_of(f)]

    @cached_property
    def graph(self) -> Mapping[PciAddress, list[Link]]:
        graph: dict[PciAddress, list[Link]] = {a: [] for a in self.tree.translated}
        for link in self.links:
            if link.member in graph and link.to in graph:
                graph[link.member].append(link)
                graph[link.to].append(link)
        return graph

    # --- the groups -----------------------------------------------------------------------------------

    def component(self, start: PciAddress) -> dict[PciAddress, list[Link]]:
        """Every function linked to `start`, with the links of a shortest path from `start` to it."""
        paths: dict[PciAddress, list[Link]] = {start: []}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for link in self.graph.get(here, []):
                there = link.to if link.member == here else link.member
                if there not in paths:
                    paths[there] = [*paths[here], link]
                    queue.append(there)
        return paths

    def components(self) -> list[tuple[PciAddress, ...]]:
        seen: set[PciAddress] = set()
        groups = []
        for address in sorted(self.tree.translated):
            if address not in seen:
                members = tuple(sorted(self.component(address)))
                seen.update(members)
                groups.append(members)
        return groups
