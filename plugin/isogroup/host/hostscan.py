"""Reads a HostTopology from a sysfs tree: the live host's, or any tree laid out like it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from isogroup.core.address import PciAddress
from isogroup.core.kernel.configspace import CONFIG_SPACE_SIZE, parse_capabilities
from isogroup.core.model import Finding, Header, HostTopology, IommuGroup, PciFunction
from isogroup.host.probes.base import ProbeSeams
from isogroup.host.sysfs import IOMMU_GROUPS, PCI_DEVICES, Sysfs

# Config space: the first 64 bytes are readable without root. Byte 0x0e is the header type, bit 7 multifunction.
_HEADER_TYPE_OFFSET = 0x0E
_HEADER_BY_TYPE = {0: Header.ENDPOINT, 1: Header.BRIDGE, 2: Header.CARDBUS}
_BRIDGE_CLASSES = (0x0604, 0x0609)  # PCI-to-PCI and semi-transparent bridges


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text is not None else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_function(sysfs: Sysfs, address: PciAddress, *, capabilities: bool = True) -> PciFunction | None:
    """None when the device is not there (it was removed, or never existed)."""
    base = Sysfs.device(address)
    vendor = _hex(sysfs.read(f"{base}/vendor"))
    device = _hex(sysfs.read(f"{base}/device"))
    class_code = _hex(sysfs.read(f"{base}/class"))
    if vendor is None or device is None or class_code is None:
        return None

    header_byte = None
    # The whole config space costs a thousand config cycles per function; planning needs only the header.
    config = sysfs.read_bytes(f"{base}/config", CONFIG_SPACE_SIZE if capabilities else 64)
    if config is not None and len(config) > _HEADER_TYPE_OFFSET:
        header_byte = config[_HEADER_TYPE_OFFSET]
    caps = parse_capabilities(config) if config is not None else None
    if header_byte is not None:
        header = _HEADER_BY_TYPE.get(header_byte & 0x7F, Header.BRIDGE)
    elif sysfs.exists(f"{base}/subordinate_bus_number") or class_code >> 8 in _BRIDGE_CLASSES:
        # The kernel creates the bus-number attributes only for bridges.
        header = Header.BRIDGE
    else:
        header = Header.ENDPOINT

    group = sysfs.link_name(f"{base}/iommu_group")
    physfn = sysfs.link_name(f"{base}/physfn")
    parent_name = sysfs.resolve(base).parent.name
    override = sysfs.read(f"{base}/driver_override")
    sub_vendor, sub_device = _hex(sysfs.read(f"{base}/subsystem_vendor")), _hex(sysfs.read(f"{base}/subsystem_device"))
    methods = sysfs.read(f"{base}/reset_method")  # absent: see _settle_resets
    return PciFunction(
        address=address,
        vendor=vendor,
        device=device,
        class_code=class_code,
        header=header,
        driver=sysfs.link_name(f"{base}/driver"),
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=_int(group),
        parent=_parse_or_none(parent_name),
        multifunction=bool(header_byte is not None and header_byte & 0x80),
        boot_vga=sysfs.read(f"{base}/boot_vga") == "1",
        physfn=_parse_or_none(physfn),
        sriov_totalvfs=_int(sysfs.read(f"{base}/sriov_totalvfs")),
        sriov_numvfs=_int(sysfs.read(f"{base}/sriov_numvfs")),
        capabilities_read=caps is not None,
        pcie_type=caps.pcie_type if caps else None,
        acs_cap=caps.acs_cap if caps else None,
        acs_ctrl=caps.acs_ctrl if caps else None,
        subsystem=(sub_vendor, sub_device) if sub_vendor is not None and sub_device is not None else None,
        reset_methods=tuple(methods.split()) if methods is not None else None,
    )


def _settle_resets(sysfs: Sysfs, functions: dict[PciAddress, PciFunction]) -> None:
    """What a missing `reset_method` means. The kernel hides it exactly when it has no reset for the function
    (drivers/pci/pci.c pci_dev_reset_method_attr_is_visible), but kernels before 5.15 have no such file at all.
    So: when some function read has one, this kernel has them, and a function without one has no reset ((),
    unless it still shows the older `reset` file); when none has, nothing is known (None)."""
    if not any(f.reset_methods is not None for f in functions.values()):
        return
    for address, func in functions.items():
        if func.reset_methods is None and not sysfs.exists(Sysfs.device(address, "reset")):
            functions[address] = replace(func, reset_methods=())


# A bus is a few dozen functions at most; a tree that claims more below one bridge is not read further.
_MAX_NEIGHBOURS = 1024


def _parent_bridge(sysfs: Sysfs, address: PciAddress) -> PciAddress | None:
    """The bridge whose secondary bus `address` is on; None on a root bus."""
    return _parse_or_none(sysfs.resolve(Sysfs.device(address)).parent.name)


def _below(sysfs: Sysfs, parent: PciAddress | None) -> set[PciAddress]:
    """Every function a secondary bus reset below `parent` reaches: the functions below it, recursively (a
    bridge's sysfs directory holds the devices on its secondary bus). Empty on a root bus (`parent` None),
    which has no bridge to reset it."""
    if parent is None:
        return set()
    found: set[PciAddress] = set()
    todo = [parent]
    while todo and len(found) < _MAX_NEIGHBOURS:
        bridge = todo.pop()
        for name in sysfs.listdir(Sysfs.device(bridge)):
            child = _parse_or_none(name)
            if child is not None and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _parse_or_none(name: str | None) -> PciAddress | None:
    return PciAddress.parse_or_none(name) if name is not None else None


def _read_groups(sysfs: Sysfs, numbers: Iterable[str]) -> list[IommuGroup]:
    groups = []
    for number in numbers:
        members = [_parse_or_none(m) for m in sysfs.listdir(f"{IOMMU_GROUPS}/{number}/devices")]
        groups.append(IommuGroup(int(number), tuple(m for m in members if m is not None)))
    return groups


def read_topology(
    sysfs: Sysfs,
    scope: Iterable[PciAddress] | None = None,
    *,
    probes: ProbeSeams | None = None,
    capabilities: bool = True,
) -> HostTopology:
    """The whole host, or with `scope` only what planning for those devices needs: the devices themselves,
    their groups' members and their PFs. The hook passes a scope so a big host costs what the guest asks for.
    With `probes` (seams onto the same host), every function read is probed for host use: `findings` and
    `probed` are set; without, nothing is known of host use (`probed` False). `capabilities` False skips the
    config space past its header (ACS, port type: `explain` needs them, planning does not)."""
    all_groups = [n for n in sysfs.listdir(IOMMU_GROUPS) if n.isdigit()]
    iommu = bool(all_groups)

    if scope is None:
        addresses = {a for a in map(_parse_or_none, sysfs.listdir(PCI_DEVICES)) if a is not None}
        group_numbers: Iterable[str] = all_groups
    else:
        addresses = set(scope)
        wanted = {sysfs.link_name(Sysfs.device(a, "iommu_group")) for a in addresses}
        group_numbers = sorted(n for n in wanted if n is not None and n.isdigit())

    groups = _read_groups(sysfs, group_numbers)
    for group in groups:
        addresses.update(group.members)
    if scope is not None:
        # What a bus reset of a device leaving its driver reaches, and whether the host uses it (core.reset).
        # Siblings share their bridge: each bridge's subtree is listed once.
        reached: dict[PciAddress | None, set[PciAddress]] = {}
        for address in sorted(addresses):
            parent = _parent_bridge(sysfs, address)
            if parent not in reached:
                reached[parent] = _below(sysfs, parent)
            addresses.update(reached[parent])
    functions = {a: f for a in addresses if (f := read_function(sysfs, a, capabilities=capabilities)) is not None}
    # A VF's PF decides whether the VF may move (its own use); read it too.
    for func in list(functions.values()):
        if func.physfn is not None and func.physfn not in functions:
            pf = read_function(sysfs, func.physfn, capabilities=capabilities)
            if pf is not None:
                functions[pf.address] = pf
    _settle_resets(sysfs, functions)
    findings: tuple[Finding, ...] = ()
    if probes is not None and functions:
        # The probe modules (netlink, /proc scans) are loaded only when there is something to probe: a refusal
        # for a device that is not there costs the hook none of them.
        from isogroup.host.probes import probe  # noqa: PLC0415

        findings = tuple(probe(probes, functions))
    return HostTopology.build(
        iommu, functions.values(), groups, source=str(sysfs.root), findings=findings, probed=probes is not None
    )
