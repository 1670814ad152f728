"""Why a device shares its IOMMU group, reconstructed from the host model by the kernel's own rules, and what
would split it.

The rules are those of drivers/iommu/iommu.c `pci_device_group()` as Linux has had them since 4.x:

1. `pci_for_each_dma_alias()` (drivers/pci/search.c): walking up from the device, the first PCIe-to-PCI
   bridge or conventional PCI bridge is the requester ID the IOMMU sees for it; the device joins that bridge's
   group. PCIe ports pass requester IDs through.
2. Otherwise the device joins the group of the bridge above it unless `pci_acs_path_enabled()` holds there:
   every bridge from it to the root bus passes `pci_acs_enabled(SV|RR|CR|UF)` (drivers/pci/pci.c), which asks
   the ACS quirks first (drivers/pci/quirks.c `pci_dev_acs_enabled[]`, see quirks.py), then the ACS capability.
3. A device that keeps its own place joins the functions that are its DMA aliases (quirks.py, the Ricoh and
   Marvell quirks) and, when it is multifunction without ACS, its sibling functions that lack ACS too
   (`get_pci_alias_group()`, `get_pci_function_alias_group()`).

Joining is transitive, so the groups are the connected components of these links. A pure function of the
topology: it reads nothing, and runs the same on a live host, a snapshot or a test. Where the config space was
not readable (a capture without root) ACS is unknown; it is then inferred from the kernel's own groups and
said so. A rework of the kernel's rules was proposed in 2025 (PCIe switches, PCIe-to-PCI bridges): a host
running it can form groups this model does not predict, and `explain` says when it sees that.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from isogroup.core.address import PciAddress
from isogroup.core.kernel import configspace as cs
from isogroup.core.kernel.quirks import (
    AliasKind,
    DmaAliasQuirk,
    QuirkContext,
    acs_quirk,
    aliased_devfns,
    dma_alias_quirks,
    flag_names,
)
from isogroup.core.model import HostTopology, PciFunction
from isogroup.errors import InputError

_PCIE_KINDS = {
    cs.PCIE_ENDPOINT: "PCIe endpoint",
    cs.PCIE_LEGACY_ENDPOINT: "PCIe legacy endpoint",
    cs.PCIE_ROOT_PORT: "PCIe root port",
    cs.PCIE_UPSTREAM_PORT: "PCIe switch upstream port",
    cs.PCIE_DOWNSTREAM_PORT: "PCIe switch downstream port",
    cs.PCIE_TO_PCI_BRIDGE: "PCIe-to-PCI bridge",
    cs.PCI_TO_PCIE_BRIDGE: "PCI-to-PCIe bridge",
    cs.PCIE_RC_INTEGRATED_ENDPOINT: "root-complex integrated endpoint",
    cs.PCIE_RC_EVENT_COLLECTOR: "root-complex event collector",
}
_PORTS = (cs.PCIE_ROOT_PORT, cs.PCIE_DOWNSTREAM_PORT)


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


@dataclass(frozen=True)
class Step:
    text: str
    kernel: str


@dataclass(frozen=True)
class Member:
    address: PciAddress
    ids: str
    driver: str | None
    why: tuple[str, ...]  # the links from the explained device to this member, in order


class SplitKind(StrEnum):
    NOTHING_TO_SPLIT = "nothing-to-split"
    CANNOT_SPLIT = "cannot-split"  # DMA aliases: one requester ID for several functions
    OTHER_SLOT = "other-slot"
    ENABLE_ACS = "enable-acs"  # the port has the capability, the controls are off
    FIRMWARE_ACS = "firmware-acs"  # the port shows no ACS capability
    ACS_OVERRIDE = "acs-override"
    ENABLE_IOMMU = "enable-iommu"


@dataclass(frozen=True)
class Split:
    kind: SplitKind
    text: str
    ports: tuple[PciAddress, ...] = ()


class Agreement(StrEnum):
    SAME = "same"  # the model predicts exactly the kernel's group
    DIFFERENT = "different"
    NO_GROUP = "no-group"  # the kernel gave the device no group: the IOMMU does not translate it
    NO_IOMMU = "no-iommu"  # the host formed no groups at all


@dataclass(frozen=True)
class Explanation:
    address: PciAddress
    ids: str
    driver: str | None
    kind: str  # "PCIe root port", "conventional PCI device", ...
    kernel_group: int | None
    kernel_members: tuple[PciAddress, ...]
    predicted: tuple[PciAddress, ...]
    agreement: Agreement
    difference: str | None
    steps: tuple[Step, ...]
    members: tuple[Member, ...]
    unknown_acs: tuple[PciAddress, ...]  # functions on the way whose ACS was not read from the config space
    splits: tuple[Split, ...]


def explain(host: HostTopology, address: PciAddress) -> Explanation:
    """Why `address` is in the group it is in, by the kernel's rules; InputError when the host has no such
    function."""
    func = host.function(address)
    if func is None:
        raise InputError(f"{address} is not a PCI function of this host ({host.source or 'the topology'})")
    return _Model(host, also=address).explain(func)


def predicted_groups(host: HostTopology) -> list[tuple[PciAddress, ...]]:
    """Every group the model predicts for the functions the IOMMU translates (all of them without an IOMMU)."""
    return _Model(host).components()


# ------------------------------------------------------------------------------------------------ the model


def multifunction_in_kernel(func: PciFunction) -> bool:
    """The kernel's `dev->multifunction`: the header's multifunction bit, and every function above 0 that
    pci_scan_slot() found (drivers/pci/probe.c sets it whatever that function's own header says). SR-IOV virtual
    functions are added by the IOV code and keep their header's bit."""
    return func.multifunction or (func.address.function > 0 and func.physfn is None)


def _slot(address: PciAddress) -> str:
    return f"{address.domain:04x}:{address.bus:02x}:{address.slot:02x}"


def label(func: PciFunction) -> str:
    return f"{func.address} [{func.ids}]"


def kind(func: PciFunction) -> str:
    if not func.capabilities_read:
        base = "PCI bridge" if func.is_bridge else "PCI device"
        return f"{base} (PCIe type unknown: config space not read)"
    if func.pcie_type is None:
        return "conventional PCI bridge" if func.is_bridge else "conventional PCI device"
    return _PCIE_KINDS.get(func.pcie_type, f"PCIe device of type {func.pcie_type}")


class _Model:
    def __init__(self, host: HostTopology, also: PciAddress | None = None) -> None:
        self.host = host
        self.ctx = QuirkContext(iommu=host.iommu)
        # The functions the IOMMU translates; on a host without groups, all of them (what would be). `also`: one
        # more, explained as if it were translated (a device the kernel left out of every group).
        self.translated = {
            f.address: f for f in host.functions if f.iommu_group is not None or not host.iommu or f.address == also
        }
        self.children: dict[PciAddress, list[PciFunction]] = {}
        for f in host.functions:
            if f.parent is not None:
                self.children.setdefault(f.parent, []).append(f)
        self.buses: dict[tuple[int, int], list[PciFunction]] = {}
        for f in self.translated.values():
            self.buses.setdefault((f.address.domain, f.address.bus), []).append(f)
        self._acs: dict[PciAddress, Acs] = {}
        self._quirks: dict[PciAddress, list[DmaAliasQuirk]] = {}

    # --- ACS ------------------------------------------------------------------------------------------

    def ancestors(self, func: PciFunction) -> Iterator[PciFunction]:
        """The bridges above `func`, nearest first; stops at the root bus or at a bridge the capture lacks."""
        seen = {func.address}
        parent = func.parent
        while parent is not None and parent not in seen:
            seen.add(parent)
            bridge = self.host.function(parent)
            if bridge is None:
                return
            yield bridge
            parent = bridge.parent

    def path_isolates(self, bridge: PciFunction) -> bool:
        """pci_acs_path_enabled(bridge, NULL, SV|RR|CR|UF): it and every bridge above it isolate."""
        return self.acs(bridge).isolates and all(self.acs(b).isolates for b in self.ancestors(bridge))

    def failing(self, bridge: PciFunction) -> list[PciFunction]:
        """The bridges from `bridge` up to the root bus that do not isolate."""
        return [b for b in (bridge, *self.ancestors(bridge)) if not self.acs(b).isolates]

    def acs(self, func: PciFunction) -> Acs:
        found = self._acs.get(func.address)
        if found is None:
            found = self._acs[func.address] = self._compute_acs(func)
        return found

    def _compute_acs(self, func: PciFunction) -> Acs:
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
                f"a {_PCIE_KINDS[t]}: ACS does not apply to it (PCIe 6.12.1), the kernel never counts it as isolated",
                kernel,
            )
        if t in _PORTS:
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
            what = "multifunction device" if multifunction_in_kernel(func) and func.pcie_type not in _PORTS else "port"
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
        if not self.host.iommu or group is None:
            return Acs(
                False,
                Evidence.ASSUMED,
                f"{prefix}: assumed not to isolate (the larger group is the safe guess)",
                kernel,
            )
        above_isolates = all(self.acs(b).isolates for b in self.ancestors(func))
        if not above_isolates:
            return Acs(
                True,
                Evidence.ASSUMED,
                f"{prefix}: the kernel's groups cannot show it, a bridge above does not isolate anyway",
                kernel,
            )
        siblings = self.siblings(func) if multifunction_in_kernel(func) else []
        below = [c for c in self.children.get(func.address, []) if c.address in self.translated]
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

    # --- the links ------------------------------------------------------------------------------------

    def bus(self, func: PciFunction) -> list[PciFunction]:
        """The other functions on its bus that the IOMMU translates."""
        a = func.address
        return [f for f in self.buses.get((a.domain, a.bus), []) if f.address != a]

    def siblings(self, func: PciFunction) -> list[PciFunction]:
        """The other functions of its slot (same bus and device number) that the IOMMU translates."""
        return [f for f in self.bus(func) if f.address.slot == func.address.slot]

    def on_bus(self, func: PciFunction, devfns: Sequence[int]) -> list[PciFunction]:
        wanted = set(devfns)
        return [f for f in self.bus(func) if (f.address.slot << 3 | f.address.function) in wanted]

    def alias_quirks(self, func: PciFunction) -> list[DmaAliasQuirk]:
        found = self._quirks.get(func.address)
        if found is None:
            found = self._quirks[func.address] = dma_alias_quirks(func)
        return found

    def alias_bridge(self, func: PciFunction) -> tuple[PciFunction, str] | None:
        """pci_for_each_dma_alias(): the nearest bridge above whose requester ID the device's DMA carries."""
        for bridge in self.ancestors(func):
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
        parent = self.host.function(bridge.parent)
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
            found += [(func, t, quirk) for t in self.on_bus(func, aliased_devfns(func, quirk))]
        a = func.address
        for other in self.bus(func):
            for quirk in self.alias_quirks(other):
                if (a.slot << 3 | a.function) in aliased_devfns(other, quirk):
                    found.append((other, func, quirk))
        return found

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
        parent = self.host.function(func.parent) if func.parent is not None else None
        if parent is not None and not self.path_isolates(parent):
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
        if multifunction_in_kernel(func) and not self.acs(func).isolates:
            links += [
                Link(
                    func.address,
                    s.address,
                    Rule.MULTIFUNCTION,
                    f"{func.address} and {s.address} are functions of one device and no ACS keeps them apart: "
                    "they can reach each other inside the device",
                    "get_pci_function_alias_group",
                )
                for s in self.siblings(func)
                if not self.acs(s).isolates
            ]
        return links

    def path_text(self, func: PciFunction, parent: PciFunction) -> str:
        failing = ", ".join(str(b.address) for b in self.failing(parent))
        return (
            f"{func.address} is below {parent.address}, and the path from there to the root bus does not isolate "
            f"(at {failing}): {func.address} joins {parent.address}'s group"
        )

    @cached_property
    def links(self) -> list[Link]:
        return [link for f in self.translated.values() for link in self.links_of(f)]

    @cached_property
    def graph(self) -> Mapping[PciAddress, list[Link]]:
        graph: dict[PciAddress, list[Link]] = {a: [] for a in self.translated}
        for link in self.links:
            if link.member in graph and link.to in graph:
                graph[link.member].append(link)
                graph[link.to].append(link)
        return graph

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
        for address in sorted(self.translated):
            if address not in seen:
                members = tuple(sorted(self.component(address)))
                seen.update(members)
                groups.append(members)
        return groups

    # --- the explanation ------------------------------------------------------------------------------

    def explain(self, func: PciFunction) -> Explanation:
        host = self.host
        kernel = host.group_of(func.address)
        kernel_members = kernel.members if kernel is not None else ()
        paths = self.component(func.address)
        predicted = tuple(sorted(paths))
        steps = self.steps(func)
        members = tuple(
            Member(a, f.ids, f.driver, tuple(link.text for link in paths[a]))
            for a in predicted
            if a != func.address and (f := host.function(a)) is not None
        )
        if not host.iommu:
            agreement, difference = Agreement.NO_IOMMU, None
        elif kernel is None:
            agreement, difference = Agreement.NO_GROUP, None
        elif set(predicted) == set(kernel_members):
            agreement, difference = Agreement.SAME, None
        else:
            agreement, difference = Agreement.DIFFERENT, self.difference(kernel.number, kernel_members, predicted)
        # Whose ACS the reasoning used: the bridges above, and the bridges and multifunction devices in the group.
        mattered = [*self.ancestors(func)]
        mattered += [
            f for a in predicted if (f := host.function(a)) is not None and (f.is_bridge or multifunction_in_kernel(f))
        ]
        unknown = sorted({f.address for f in mattered if not f.capabilities_read})
        return Explanation(
            address=func.address,
            ids=func.ids,
            driver=func.driver,
            kind=kind(func),
            kernel_group=kernel.number if kernel is not None else None,
            kernel_members=kernel_members,
            predicted=predicted,
            agreement=agreement,
            difference=difference,
            steps=tuple(steps),
            members=members,
            unknown_acs=tuple(unknown),
            splits=tuple(self.splits(func, agreement, paths)),
        )

    def difference(self, number: int, kernel: Sequence[PciAddress], predicted: Sequence[PciAddress]) -> str:
        extra = sorted(set(kernel) - set(predicted))
        missing = sorted(set(predicted) - set(kernel))
        parts = [f"the kernel formed a different group: group {number} is {', '.join(map(str, kernel))}"]
        if extra:
            parts.append(f"the kernel also put {', '.join(map(str, extra))} in it, which explain's rules keep apart")
        if missing:
            parts.append(f"explain's rules also join {', '.join(map(str, missing))}, which the kernel kept apart")
        parts.append(
            "explain's model misses something here: a quirk it does not know, a kernel with other grouping rules, "
            "an ACS setting changed since boot (setpci, config_acs=, disable_acs_redir=, pcie_acs_override=), "
            "or config-space values in the snapshot that are not the device's"
        )
        return "; ".join(parts)

    def steps(self, func: PciFunction) -> list[Step]:
        steps = [Step(self.where(func), "pci_device_group")]
        steps += self.alias_steps(func)
        bridge = self.alias_bridge(func)
        passed = []
        for b in self.ancestors(func):
            if bridge is not None and b.address == bridge[0].address:
                break
            passed.append(b)
        if passed:
            names = ", ".join(f"{b.address} ({kind(b)})" for b in passed)
            if all(b.capabilities_read for b in passed):
                text = f"requester ID: PCIe ports pass it through unchanged: {names}"
            else:
                text = f"requester ID: passed through unchanged, as PCIe ports do (taken as such): {names}"
            steps.append(Step(text, "pci_for_each_dma_alias"))
        if bridge is not None:
            via, why = bridge
            steps.append(
                Step(
                    f"requester ID: {why}: {func.address} joins {via.address}'s group, whatever the ACS of "
                    "the ports above says",
                    "pci_for_each_dma_alias",
                )
            )
            steps.append(Step(f"{via.address}'s own group, by the same rules:", "pci_device_group"))
            steps += self.acs_steps(via)
            return steps
        if not passed and func.parent is None:
            steps.append(Step("requester ID: its own (it is on the root bus)", "pci_for_each_dma_alias"))
        elif not passed:
            steps.append(Step("requester ID: its own", "pci_for_each_dma_alias"))
        steps += self.acs_steps(func)
        return steps

    def where(self, func: PciFunction) -> str:
        what = f"{label(func)}: {kind(func)}"
        if multifunction_in_kernel(func):
            what += f", function {func.address.function} of a multifunction device"
        if func.physfn is not None:
            what += f", an SR-IOV virtual function of {func.physfn}"
        if func.parent is None:
            return f"{what}, on the root bus"
        return f"{what}, below {func.parent}"

    def alias_steps(self, func: PciFunction) -> list[Step]:
        steps = []
        for quirk in dma_alias_quirks(func):
            devfns = aliased_devfns(func, quirk)
            if quirk.kind is AliasKind.PCIE_BRIDGE:
                continue  # about what is behind it: told where the walk meets it
            if quirk.kind is AliasKind.PROXY_IDS:
                steps.append(
                    Step(
                        f"DMA alias: {quirk.what} ({quirk.kernel}) DMAs with proxy requester IDs the "
                        "switch reports at boot; which ones cannot be read from sysfs",
                        quirk.kernel,
                    )
                )
                continue
            present = self.on_bus(func, devfns)
            sub = (
                f" (for subsystem {quirk.subsystem[0]:04x}:{quirk.subsystem[1]:04x} only; isogroup does not record "
                "subsystem IDs)"
                if quirk.subsystem
                else ""
            )
            if not devfns:
                continue
            if present:
                targets = ", ".join(str(f.address) for f in present)
            else:
                targets = f"{len(devfns)} devfn(s) on its bus where no function exists (a ghost requester)"
            steps.append(
                Step(
                    f"DMA alias: as a {quirk.what}, it DMAs with the requester ID of {targets} ({quirk.kernel}){sub}",
                    quirk.kernel,
                )
            )
        for who, _whose, alias in self.alias_partners(func):
            if who.address != func.address:
                steps.append(
                    Step(
                        f"DMA alias: {label(who)} ({alias.what}) DMAs with {func.address}'s requester ID "
                        f"({alias.kernel})",
                        alias.kernel,
                    )
                )
        if not steps:
            steps.append(Step(f"DMA alias: no alias quirk applies to {func.ids}", "pci_for_each_dma_alias"))
        return steps

    def acs_steps(self, func: PciFunction) -> list[Step]:
        """The upstream walk: each bridge's ACS, then what follows for `func`."""
        steps = []
        parent = self.host.function(func.parent) if func.parent is not None else None
        for b in self.ancestors(func):
            acs = self.acs(b)
            steps.append(Step(f"{label(b)} {kind(b)}: {acs.text}", acs.kernel))
        if func.parent is not None and parent is None:
            steps.append(Step(f"{func.parent} is not in this capture: the walk stops there", "pci_device_group"))
        if parent is not None and not self.path_isolates(parent):
            steps.append(Step(self.path_text(func, parent), "pci_acs_path_enabled"))
            if multifunction_in_kernel(func):
                acs = self.acs(func)
                kept = [s.address for s in self.siblings(func) if not acs.isolates and not self.acs(s).isolates]
                also = (
                    f"; behind a port that isolated, {', '.join(map(str, kept))} would still share its group "
                    "(functions of one device without ACS between them)"
                    if kept
                    else ""
                )
                steps.append(Step(f"{func.address} itself: {acs.text}{also}", acs.kernel))
            return steps
        if parent is not None:
            steps.append(
                Step(
                    f"every bridge from {parent.address} to the root bus isolates: nothing above joins {func.address}",
                    "pci_acs_path_enabled",
                )
            )
        if multifunction_in_kernel(func):
            acs = self.acs(func)
            steps.append(Step(f"{func.address} itself: {acs.text}", acs.kernel))
            if acs.isolates:
                steps.append(Step("its ACS keeps it apart from its sibling functions", "get_pci_function_alias_group"))
            else:
                for s in self.siblings(func):
                    sacs = self.acs(s)
                    verdict = "joins it" if not sacs.isolates else "stays apart"
                    steps.append(Step(f"sibling {label(s)}: {sacs.text}: {verdict}", "get_pci_function_alias_group"))
        if func.is_bridge:
            acs = self.acs(func)
            below = [c.address for c in self.children.get(func.address, []) if c.address in self.translated]
            if below and not acs.isolates:
                follows = f"what is below it ({', '.join(map(str, below))}) joins its group"
            elif below:
                follows = "what is below it keeps groups of its own, as far as this bridge decides"
            else:
                follows = "nothing is below it"
            steps.append(Step(f"{func.address} as a bridge: {acs.text}: {follows}", acs.kernel))
        elif not multifunction_in_kernel(func) and func.parent is None:
            steps.append(Step("a single function on the root bus: only DMA aliases could join it", "pci_device_group"))
        return steps

    def splits(self, func: PciFunction, agreement: Agreement, paths: Mapping[PciAddress, list[Link]]) -> list[Split]:
        if agreement is Agreement.NO_IOMMU:
            return [
                Split(
                    SplitKind.ENABLE_IOMMU,
                    "this host formed no IOMMU groups: no device can be given to a guest until the IOMMU is on "
                    "(VT-d or AMD-Vi in the firmware, intel_iommu=on or amd_iommu=on on the kernel command line); "
                    "the groups above are what the kernel would form then",
                )
            ]
        if agreement is Agreement.NO_GROUP:
            return [
                Split(
                    SplitKind.ENABLE_IOMMU,
                    f"the kernel gave {func.address} no IOMMU group: the IOMMU does not translate it (outside every "
                    "IOMMU unit's scope, e.g. intel_iommu=igfx_off for an integrated GPU, or the IOMMU's own "
                    "function); it cannot be given to a guest",
                )
            ]
        if len(paths) == 1:
            return [Split(SplitKind.NOTHING_TO_SPLIT, f"nothing to split: {func.address} is alone in its group")]
        splits: list[Split] = []
        aliased = self.bound(func, multifunction=False)
        own = self.bound(func, multifunction=True)
        if len(aliased) > 1:
            others = ", ".join(str(a) for a in sorted(aliased) if a != func.address)
            behind_bridge = any(
                link.rule is Rule.BRIDGE_ALIAS
                for a in aliased
                for link in self.graph.get(a, [])
                if link.member in aliased
            )
            why = (
                "behind a conventional PCI bus every device's DMA carries the bridge's requester ID; only a PCIe card "
                "in a PCIe slot gets an ID of its own"
                if behind_bridge
                else "a hardware quirk: DMA from one carries the other's requester ID"
            )
            splits.append(
                Split(
                    SplitKind.CANNOT_SPLIT,
                    f"{func.address} cannot be split from {others} by any setting: {why}; neither an ACS setting "
                    "nor pcie_acs_override changes that",
                )
            )
        functions = sorted(own - aliased)
        if functions:
            splits.append(
                Split(
                    SplitKind.CANNOT_SPLIT,
                    f"{func.address} goes to a guest together with {', '.join(map(str, functions))}: functions of one "
                    "device with no ACS between them, which can reach each other inside the device; no slot or "
                    "firmware setting adds ACS to an endpoint",
                )
            )
        rest = [f for a in sorted(paths) if a not in own and (f := self.host.function(a)) is not None]
        beside = [f for f in rest if not f.is_bridge]
        blocking = self.blocking_ports(func) if beside else []
        if blocking:
            splits += self.port_splits(func, blocking)
        elif rest:
            bridges = ", ".join(f"{f.address} ({f.driver or 'no driver'})" for f in rest)
            splits.append(
                Split(
                    SplitKind.NOTHING_TO_SPLIT,
                    f"nothing else needs splitting: the rest of the group is bridges ({bridges}), which stay with "
                    "the host and do not stop VFIO from using the group",
                )
            )
        if blocking or functions:
            splits.append(self.override(func, blocking, functions, beside))
        return splits

    def bound(self, func: PciFunction, multifunction: bool) -> set[PciAddress]:
        """What no port's ACS can split from `func`: its DMA aliases, what shares a conventional bus's requester
        ID with it, and (with `multifunction`) its functions without ACS between them, wherever they sit."""
        bound = {func.address}
        queue = deque([func])
        while queue:
            here = queue.popleft()
            near = [t for pair in self.alias_partners(here) for t in pair[:2]]
            for link in self.graph.get(here.address, []):
                if link.rule is Rule.BRIDGE_ALIAS:
                    near += [f for a in (link.member, link.to) if (f := self.translated.get(a)) is not None]
            if multifunction and multifunction_in_kernel(here) and not self.acs(here).isolates:
                near += [f for f in self.siblings(here) if not self.acs(f).isolates]
            for there in near:
                if there.address not in bound:
                    bound.add(there.address)
                    queue.append(there)
        return bound

    def blocking_ports(self, func: PciFunction) -> list[PciFunction]:
        """The bridges whose missing isolation puts others in `func`'s group: from the requester-ID bridge (or
        `func` itself when it is a bridge, else its parent) up to the root bus."""
        alias = self.alias_bridge(func)
        if alias is not None:
            start: PciFunction | None = alias[0]
        elif func.is_bridge:
            start = func
        else:
            start = self.host.function(func.parent) if func.parent is not None else None
        return self.failing(start) if start is not None else []

    def port_splits(self, func: PciFunction, blocking: list[PciFunction]) -> list[Split]:
        splits = []
        card = func.parent is not None and not any(b.address == func.address for b in blocking)
        if card:
            splits.append(self.other_slot(func))
        for port in blocking:
            acs = self.acs(port)
            if port.capabilities_read and port.pcie_type in (None, cs.PCIE_TO_PCI_BRIDGE, cs.PCI_TO_PCIE_BRIDGE):
                continue  # conventional buses: no ACS exists for them
            if acs.evidence is not Evidence.KNOWN:
                splits.append(
                    Split(
                        SplitKind.FIRMWARE_ACS,
                        f"{label(port)}: its ACS is unknown (capture the host "
                        "as root to read it); if it has an ACS capability Linux enables it at boot, if "
                        "not, look for a firmware ACS option",
                        (port.address,),
                    )
                )
            elif port.acs_cap is not None:
                splits.append(
                    Split(
                        SplitKind.ENABLE_ACS,
                        f"{label(port)} has an ACS capability whose controls are "
                        "off; Linux turns them on at boot when an IOMMU is active, so something turned "
                        "them off: the kernel command line (config_acs=, disable_acs_redir=) or a "
                        "setpci after boot; remove that and reboot",
                        (port.address,),
                    )
                )
            else:
                splits.append(
                    Split(
                        SplitKind.FIRMWARE_ACS,
                        f"{label(port)} shows no ACS capability: some firmware "
                        "has an option that exposes it (on AMD boards often 'ACS Enable' in the CBS/NBIO "
                        "menu) and firmware updates sometimes add it; chipset and switch ports built "
                        "without it cannot get it",
                        (port.address,),
                    )
                )
        return splits

    def other_slot(self, func: PciFunction) -> Split:
        mine = {b.address for b in self.ancestors(func)}
        candidates = [
            f
            for f in self.translated.values()
            if f.is_bridge
            and f.address not in mine
            and (f.pcie_type in _PORTS if f.capabilities_read else f.class_code >> 8 == 0x0604)
            and self.path_isolates(f)
        ]
        if not candidates:
            return Split(
                SplitKind.OTHER_SLOT,
                "no port on this host isolates its slot all the way to the root bus: "
                "moving the card does not help here",
            )
        names = []
        for port in sorted(candidates, key=lambda f: f.address)[:8]:
            below = [c.address for c in self.children.get(port.address, [])]
            now = f"holds {', '.join(map(str, below))}" if below else "empty"
            names.append(f"{port.address} ({now})")
        more = f" and {len(candidates) - 8} more" if len(candidates) > 8 else ""
        card = "the card (all its functions move together)" if multifunction_in_kernel(func) else "the card"
        return Split(
            SplitKind.OTHER_SLOT,
            f"move {card} to a slot behind a port that isolates all the way to the root bus: {', '.join(names)}{more}",
            tuple(sorted(f.address for f in candidates)),
        )

    def override(
        self, func: PciFunction, blocking: list[PciFunction], functions: list[PciAddress], beside: list[PciFunction]
    ) -> Split:
        tokens: list[str] = []
        for port in blocking:
            if port.capabilities_read and port.pcie_type in (None, cs.PCIE_TO_PCI_BRIDGE, cs.PCI_TO_PCIE_BRIDGE):
                continue
            if port.pcie_type in _PORTS:
                tokens.append("downstream")
            else:
                tokens.append(
                    "multifunction" if multifunction_in_kernel(port) else f"id:{port.vendor:04x}:{port.device:04x}"
                )
        if functions:
            tokens.append("multifunction")
        option = ",".join(dict.fromkeys(tokens))
        pretend = [str(p.address) for p in blocking]
        if functions:
            pretend.append(f"the functions of {_slot(func.address)}")
        reach = [f"{f.address} ({f.driver or 'no driver'})" for f in beside] + [str(a) for a in functions]
        if func.is_bridge:
            between = f"between the devices below {func.address} ({', '.join(reach)})"
            who = "a guest given one of them may reach the others"
        else:
            between = f"between {func.address} and {', '.join(reach)}"
            who = f"a guest given {func.address} may reach those devices of the host"
        return Split(
            SplitKind.ACS_OVERRIDE,
            f"pcie_acs_override={option} (an out-of-tree kernel patch, not in mainline Linux) makes the kernel "
            f"pretend that {' and '.join(pretend)} isolate; the group splits, but the hardware is unchanged: "
            f"peer-to-peer DMA {between} is no longer blocked by hardware and never reaches the IOMMU, so {who}, "
            "and they the guest's memory: the isolation the group stood for is given up",
            tuple(p.address for p in blocking),
        )


# ------------------------------------------------------------------------------------------------- reports


def to_json(e: Explanation) -> dict[str, object]:
    return {
        "address": str(e.address),
        "ids": e.ids,
        "driver": e.driver,
        "kind": e.kind,
        "kernel_group": e.kernel_group,
        "kernel_members": [str(a) for a in e.kernel_members],
        "predicted_members": [str(a) for a in e.predicted],
        "agreement": e.agreement.value,
        "difference": e.difference,
        "steps": [{"text": s.text, "kernel": s.kernel} for s in e.steps],
        "members": [
            {"address": str(m.address), "ids": m.ids, "driver": m.driver, "why": list(m.why)} for m in e.members
        ],
        "unknown_acs": [str(a) for a in e.unknown_acs],
        "split": [{"kind": s.kind.value, "text": s.text, "ports": [str(p) for p in s.ports]} for s in e.splits],
    }


def to_text(e: Explanation) -> str:
    out = [f"{e.address} [{e.ids}] {e.driver or '(no driver)'}: {e.kind}"]
    if e.agreement is Agreement.NO_IOMMU:
        out.append("the host formed no IOMMU groups (no IOMMU, or it is off): below is what the kernel would form")
    elif e.kernel_group is None:
        out.append("the kernel gave it no IOMMU group")
    else:
        out.append(f"IOMMU group {e.kernel_group}: {', '.join(map(str, e.kernel_members))}")
    out.append("")
    out.append("Why, by the kernel's rules (drivers/iommu/iommu.c pci_device_group):")
    out += [f"  {i}. {s.text}  [{s.kernel}]" for i, s in enumerate(e.steps, 1)]
    if e.members:
        out.append("")
        out.append("Who else is in the group and why:")
        for m in e.members:
            out.append(f"  {m.address} [{m.ids}] {m.driver or '(no driver)'}: {m.why[-1]}")
    out.append("")
    predicted = ", ".join(map(str, e.predicted))
    match e.agreement:
        case Agreement.SAME:
            out.append(f"Predicted group: {predicted}: the same as the kernel's.")
        case Agreement.DIFFERENT:
            out.append(f"Predicted group: {predicted}.")
            out.append(f"But {e.difference}.")
        case Agreement.NO_IOMMU:
            out.append(f"Predicted group (were the IOMMU on): {predicted}.")
        case Agreement.NO_GROUP:
            out.append(f"Predicted group (were it translated): {predicted}; the kernel formed none.")
    if e.unknown_acs:
        out.append(
            f"ACS was not read for {', '.join(map(str, e.unknown_acs))} (config space beyond 64 bytes needs root): "
            "what is said of their ACS is inferred from the kernel's groups or assumed, as marked."
        )
    out.append("")
    out.append("What would split it:")
    out += [f"  - {s.text}" for s in e.splits]
    return "\n".join(out) + "\n"
