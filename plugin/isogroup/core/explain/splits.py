"""What would split a group: what no setting can part (DMA aliases, a conventional bus's one requester ID,
functions of one device without ACS), the ports whose missing isolation joins the rest, and for each what would
change it (another slot, the ACS controls, a firmware option), with the price of pcie_acs_override."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from isogroup.core.address import PciAddress
from isogroup.core.explain.acs import Evidence
from isogroup.core.explain.grouping import Grouping, Link, Rule
from isogroup.core.explain.result import Prediction, Split, SplitKind
from isogroup.core.explain.tree import PORTS, label, multifunction_in_kernel
from isogroup.core.kernel import configspace as cs
from isogroup.core.model import PciFunction


def advise(
    g: Grouping, func: PciFunction, agreement: Prediction, paths: Mapping[PciAddress, list[Link]]
) -> list[Split]:
    """What would split `func` from the rest of its predicted group (`paths`: `g.component(func.address)`)."""
    if agreement is Prediction.NO_IOMMU:
        return [
            Split(
                SplitKind.ENABLE_IOMMU,
                "this host formed no IOMMU groups: no device can be given to a guest until the IOMMU is on "
                "(VT-d or AMD-Vi in the firmware, intel_iommu=on or amd_iommu=on on the kernel command line); "
                "the groups above are what the kernel would form then",
            )
        ]
    if agreement is Prediction.NO_GROUP:
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
    aliased = _bound(g, func, multifunction=False)
    own = _bound(g, func, multifunction=True)
    if len(aliased) > 1:
        others = ", ".join(str(a) for a in sorted(aliased) if a != func.address)
        behind_bridge = any(
            link.rule is Rule.BRIDGE_ALIAS for a in aliased for link in g.graph.get(a, []) if link.member in aliased
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
    rest = [f for a in sorted(paths) if a not in own and (f := g.tree.host.function(a)) is not None]
    beside = [f for f in rest if not f.is_bridge]
    blocking = _blocking_ports(g, func) if beside else []
    if blocking:
        splits += _port_splits(g, func, blocking)
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
        splits.append(_override(func, blocking, functions, beside))
    return splits


def _bound(g: Grouping, func: PciFunction, multifunction: bool) -> set[PciAddress]:
    """What no port's ACS can split from `func`: its DMA aliases, what shares a conventional bus's requester
    ID with it, and (with `multifunction`) its functions without ACS between them, wherever they sit."""
    bound = {func.address}
    queue = deque([func])
    while queue:
        here = queue.popleft()
        near = [t for pair in g.alias_partners(here) for t in pair[:2]]
        for link in g.graph.get(here.address, []):
            if link.rule is Rule.BRIDGE_ALIAS:
                near += [f for a in (link.member, link.to) if (f := g.tree.translated.get(a)) is not None]
        if multifunction and multifunction_in_kernel(here) and not g.oracle.acs(here).isolates:
            near += [f for f in g.tree.siblings(here) if not g.oracle.acs(f).isolates]
        for there in near:
            if there.address not in bound:
                bound.add(there.address)
                queue.append(there)
    return bound


def _blocking_ports(g: Grouping, func: PciFunction) -> list[PciFunction]:
    """The bridges whose missing isolation puts others in `func`'s group: from the requester-ID bridge (or
    `func` itself when it is a bridge, else its parent) up to the root bus."""
    alias = g.alias_bridge(func)
    if alias is not None:
        start: PciFunction | None = alias[0]
    elif func.is_bridge:
        start = func
    else:
        start = g.tree.parent(func)
    return g.oracle.failing(start) if start is not None else []


def _conventional(port: PciFunction) -> bool:
    """A conventional bus's bridge: no ACS exists for it."""
    return port.capabilities_read and port.pcie_type in (None, cs.PCIE_TO_PCI_BRIDGE, cs.PCI_TO_PCIE_BRIDGE)


def _port_splits(g: Grouping, func: PciFunction, blocking: list[PciFunction]) -> list[Split]:
    splits = []
    card = func.parent is not None and not any(b.address == func.address for b in blocking)
    if card:
        splits.append(_other_slot(g, func))
    for port in blocking:
        acs = g.oracle.acs(port)
        if _conventional(port):
            continue
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


def _other_slot(g: Grouping, func: PciFunction) -> Split:
    mine = {b.address for b in g.tree.ancestors(func)}
    candidates = [
        f
        for f in g.tree.translated.values()
        if f.is_bridge
        and f.address not in mine
        and (f.pcie_type in PORTS if f.capabilities_read else f.class_code >> 8 == 0x0604)
        and g.oracle.path_isolates(f)
    ]
    if not candidates:
        return Split(
            SplitKind.OTHER_SLOT,
            "no port on this host isolates its slot all the way to the root bus: moving the card does not help here",
        )
    names = []
    for port in sorted(candidates, key=lambda f: f.address)[:8]:
        below = [c.address for c in g.tree.children.get(port.address, [])]
        now = f"holds {', '.join(map(str, below))}" if below else "empty"
        names.append(f"{port.address} ({now})")
    more = f" and {len(candidates) - 8} more" if len(candidates) > 8 else ""
    card = "the card (all its functions move together)" if multifunction_in_kernel(func) else "the card"
    return Split(
        SplitKind.OTHER_SLOT,
        f"move {card} to a slot behind a port that isolates all the way to the root bus: {', '.join(names)}{more}",
        tuple(sorted(f.address for f in candidates)),
    )


def _slot(address: PciAddress) -> str:
    return f"{address.domain:04x}:{address.bus:02x}:{address.slot:02x}"


def _override(
    func: PciFunction, blocking: list[PciFunction], functions: list[PciAddress], beside: list[PciFunction]
) -> Split:
    tokens: list[str] = []
    for port in blocking:
        if _conventional(port):
            continue
        if port.pcie_type in PORTS:
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
