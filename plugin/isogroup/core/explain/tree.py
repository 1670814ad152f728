"""The PCI tree as the kernel's grouping code walks it: which functions the IOMMU translates, the bridges above
a function, the functions beside it on its bus and in its slot, and what each function is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from isogroup.core.address import PciAddress
from isogroup.core.kernel import configspace as cs
from isogroup.core.model import HostTopology, PciFunction

PCIE_KINDS = {
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
PORTS = (cs.PCIE_ROOT_PORT, cs.PCIE_DOWNSTREAM_PORT)


def multifunction_in_kernel(func: PciFunction) -> bool:
    """The kernel's `dev->multifunction`: the header's multifunction bit, and every function above 0 that
    pci_scan_slot() found (drivers/pci/probe.c sets it whatever that function's own header says). SR-IOV virtual
    functions are added by the IOV code and keep their header's bit."""
    return func.multifunction or (func.address.function > 0 and func.physfn is None)


def label(func: PciFunction) -> str:
    return f"{func.address} [{func.ids}]"


def kind(func: PciFunction) -> str:
    if not func.capabilities_read:
        base = "PCI bridge" if func.is_bridge else "PCI device"
        return f"{base} (PCIe type unknown: config space not read)"
    if func.pcie_type is None:
        return "conventional PCI bridge" if func.is_bridge else "conventional PCI device"
    return PCIE_KINDS.get(func.pcie_type, f"PCIe device of type {func.pcie_type}")


class Tree:
    """The host's functions indexed for the walk. `translated`: the functions the IOMMU translates; on a host
    without groups, all of them (what would be). `also`: one more, taken as translated (a device the kernel left
    out of every group, to be explained as if it were in one)."""

    def __init__(self, host: HostTopology, also: PciAddress | None = None) -> None:
        self.host = host
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

    def parent(self, func: PciFunction) -> PciFunction | None:
        """The bridge directly above `func`; None on the root bus or when the capture lacks it."""
        return self.host.function(func.parent) if func.parent is not None else None

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

    def below(self, func: PciFunction) -> list[PciFunction]:
        """The functions directly below a bridge that the IOMMU translates."""
        return [c for c in self.children.get(func.address, []) if c.address in self.translated]

    def bus(self, func: PciFunction) -> list[PciFunction]:
        """The other functions on its bus that the IOMMU translates."""
        a = func.address
        return [f for f in self.buses.get((a.domain, a.bus), []) if f.address != a]

    def siblings(self, func: PciFunction) -> list[PciFunction]:
        """The other functions of its slot (same bus and device number) that the IOMMU translates."""
        return [f for f in self.bus(func) if f.address.slot == func.address.slot]

    def on_bus(self, func: PciFunction, devfns: Sequence[int]) -> list[PciFunction]:
        """The functions on its bus at these devfns (slot << 3 | function) that the IOMMU translates."""
        wanted = set(devfns)
        return [f for f in self.bus(func) if (f.address.slot << 3 | f.address.function) in wanted]
