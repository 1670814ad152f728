"""The explanation of one function: the kernel's walk told step by step (where it sits, its DMA aliases, the
requester ID up to the bridge whose ID it carries or to the root bus, each bridge's ACS), who else is in the
predicted group and by which links, how that group stands against the kernel's, and what would split it."""

from __future__ import annotations

from collections.abc import Sequence

from isogroup.core.address import PciAddress
from isogroup.core.explain.grouping import Grouping
from isogroup.core.explain.result import Explanation, Member, Prediction, Step
from isogroup.core.explain.splits import advise
from isogroup.core.explain.tree import kind, label, multifunction_in_kernel
from isogroup.core.kernel.quirks import AliasKind, aliased_devfns, dma_alias_quirks
from isogroup.core.model import PciFunction
from isogroup.core.reset import reach_to_text, reset_reach


def explanation(g: Grouping, func: PciFunction) -> Explanation:
    host = g.tree.host
    kernel = host.group_of(func.address)
    kernel_members = kernel.members if kernel is not None else ()
    paths = g.component(func.address)
    predicted = tuple(sorted(paths))
    steps = _steps(g, func)
    members = tuple(
        Member(a, f.ids, f.driver, tuple(link.text for link in paths[a]))
        for a in predicted
        if a != func.address and (f := host.function(a)) is not None
    )
    if not host.iommu:
        agreement, difference = Prediction.NO_IOMMU, None
    elif kernel is None:
        agreement, difference = Prediction.NO_GROUP, None
    elif set(predicted) == set(kernel_members):
        agreement, difference = Prediction.SAME, None
    else:
        agreement, difference = Prediction.DIFFERENT, _difference(kernel.number, kernel_members, predicted)
    # Whose ACS the reasoning used: the bridges above, and the bridges and multifunction devices in the group.
    mattered = [*g.tree.ancestors(func)]
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
        splits=tuple(advise(g, func, agreement, paths)),
        reset=(reach := reset_reach(host, func.address)),
        reset_text=reach_to_text(host, reach),
    )


def _difference(number: int, kernel: Sequence[PciAddress], predicted: Sequence[PciAddress]) -> str:
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


def _steps(g: Grouping, func: PciFunction) -> list[Step]:
    steps = [Step(_where(func), "pci_device_group")]
    steps += _alias_steps(g, func)
    bridge = g.alias_bridge(func)
    passed = []
    for b in g.tree.ancestors(func):
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
        steps += _acs_steps(g, via)
        return steps
    if not passed and func.parent is None:
        steps.append(Step("requester ID: its own (it is on the root bus)", "pci_for_each_dma_alias"))
    elif not passed:
        steps.append(Step("requester ID: its own", "pci_for_each_dma_alias"))
    steps += _acs_steps(g, func)
    return steps


def _where(func: PciFunction) -> str:
    what = f"{label(func)}: {kind(func)}"
    if multifunction_in_kernel(func):
        what += f", function {func.address.function} of a multifunction device"
    if func.physfn is not None:
        what += f", an SR-IOV virtual function of {func.physfn}"
    if func.parent is None:
        return f"{what}, on the root bus"
    return f"{what}, below {func.parent}"


def _alias_steps(g: Grouping, func: PciFunction) -> list[Step]:
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
        present = g.tree.on_bus(func, devfns)
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
    for who, _whose, alias in g.alias_partners(func):
        if who.address != func.address:
            steps.append(
                Step(
                    f"DMA alias: {label(who)} ({alias.what}) DMAs with {func.address}'s requester ID ({alias.kernel})",
                    alias.kernel,
                )
            )
    if not steps:
        steps.append(Step(f"DMA alias: no alias quirk applies to {func.ids}", "pci_for_each_dma_alias"))
    return steps


def _acs_steps(g: Grouping, func: PciFunction) -> list[Step]:
    """The upstream walk: each bridge's ACS, then what follows for `func`."""
    steps = []
    oracle = g.oracle
    parent = g.tree.parent(func)
    for b in g.tree.ancestors(func):
        acs = oracle.acs(b)
        steps.append(Step(f"{label(b)} {kind(b)}: {acs.text}", acs.kernel))
    if func.parent is not None and parent is None:
        steps.append(Step(f"{func.parent} is not in this capture: the walk stops there", "pci_device_group"))
    if parent is not None and not oracle.path_isolates(parent):
        steps.append(Step(g.path_text(func, parent), "pci_acs_path_enabled"))
        if multifunction_in_kernel(func):
            acs = oracle.acs(func)
            kept = [s.address for s in g.tree.siblings(func) if not acs.isolates and not oracle.acs(s).isolates]
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
        acs = oracle.acs(func)
        steps.append(Step(f"{func.address} itself: {acs.text}", acs.kernel))
        if acs.isolates:
            steps.append(Step("its ACS keeps it apart from its sibling functions", "get_pci_function_alias_group"))
        else:
            for s in g.tree.siblings(func):
                sacs = oracle.acs(s)
                verdict = "joins it" if not sacs.isolates else "stays apart"
                steps.append(Step(f"sibling {label(s)}: {sacs.text}: {verdict}", "get_pci_function_alias_group"))
    if func.is_bridge:
        acs = oracle.acs(func)
        below = [c.address for c in g.tree.below(func)]
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
