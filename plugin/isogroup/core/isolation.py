"""Groups that lie: a kernel group finer than the kernel's own rules predict from the hardware.

The prediction is `explain`'s model of drivers/iommu/iommu.c and drivers/pci/quirks.c, from the capabilities
read in the config space. When the kernel's group leaves out functions the model puts with the device, the
kernel was told to pretend isolation the hardware does not have (the out-of-tree pcie_acs_override, a quirk
this model lacks): the guest could reach those functions by peer-to-peer DMA, which the IOMMU never sees.

Only said when the prediction rests on read capabilities (`unknown_acs` empty): a model guessing from the
groups themselves cannot contradict them. The command-line signal itself (acs-override) is a probe's finding
(host.probes.isolation), since it is a fact of the running kernel, not of the topology.
"""

from __future__ import annotations

from isogroup.core.address import PciAddress
from isogroup.core.model import Finding, HostTopology, PciFunction, UseCode


def _read_up_to_root(host: HostTopology, func: PciFunction) -> bool:
    """Whether the config space of the function and every bridge above it was read (cheap, before the model)."""
    seen = set()
    current: PciFunction | None = func
    while current is not None and current.address not in seen:
        if not current.capabilities_read:
            return False
        seen.add(current.address)
        current = host.function(current.parent) if current.parent is not None else None
    return True


def acs_findings(host: HostTopology, address: PciAddress) -> list[Finding]:
    func = host.function(address)
    if func is None or func.iommu_group is None or not host.iommu or not _read_up_to_root(host, func):
        return []  # without the capabilities the model guesses from the groups: it cannot contradict them
    # The explain package only here: the hook reads no capabilities, so a start never pays for importing it.
    from isogroup.core.explain import explain  # noqa: PLC0415

    explanation = explain(host, address)
    if explanation.unknown_acs:
        return []
    kernel = set(explanation.kernel_members)
    exposed = [a for a in explanation.predicted if a not in kernel]
    if not exposed:
        return []
    named = []
    for a in exposed[:4]:
        other = host.function(a)
        named.append(f"{a} ({other.driver})" if other is not None and other.driver else str(a))
    more = f" and {len(exposed) - 4} more" if len(exposed) > 4 else ""
    who = f"{address} ({func.driver})" if func.driver else str(address)
    text = (
        f"{who} is in IOMMU group {func.iommu_group}, finer than the hardware isolates (the kernel's own rules "
        f"put it with {', '.join(named)}{more}; pcie_acs_override or a quirk split them): the guest could reach "
        "those by peer-to-peer DMA, which the IOMMU does not see"
    )
    return [Finding(address, UseCode.ACS_SPLIT, "group", text)]
