"""The host as the planner sees it: PCI functions, IOMMU groups, whether there is an IOMMU at all.

Captured from a live sysfs (`hostscan`) or loaded from a snapshot (`snapshot`); the planner cannot tell which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from isogroup.core.address import PciAddress


class UseCode(StrEnum):
    """What a host-use probe found a function doing for the host. Stable: JSON reports and policies name them.
    The part before the first '-' is the probe's family, which a policy can set to refuse or warn."""

    STORAGE_MOUNTED = "storage-mounted"  # a filesystem on it (directly or through dm/md/LVM) is mounted
    STORAGE_SWAP = "storage-swap"  # active swap on it
    STORAGE_HELD = "storage-held"  # an LVM PV, md member or other holder (dm, bcache) sits on it
    STORAGE_ZFS = "storage-zfs"  # a ZFS pool member
    STORAGE_BUSY = "storage-busy"  # the kernel refuses an exclusive open: something holds it
    NETWORK_ADDRESS = "network-address"  # an interface on it is up with an IP address
    NETWORK_ROUTE = "network-route"  # an interface on it carries routes (the default route above all)
    NETWORK_MEMBER = "network-member"  # an interface on it is enslaved to a bond, bridge or team
    DISPLAY_CONSOLE = "display-console"  # the boot VGA with the framebuffer console, efifb or simpledrm on it
    DISPLAY_CLIENTS = "display-clients"  # processes hold its DRM device nodes open
    USB_INPUT = "usb-input"  # a keyboard, mouse or other input device hangs off this USB controller
    SRIOV_VFS = "sriov-vfs"  # a PF whose VFs are in use
    MDEV_ACTIVE = "mdev-active"  # an mdev parent with active mediated devices
    OPEN_NODES = "open-nodes"  # processes hold its device nodes open
    # Isolation beyond the group (issue 11). Families and their defaults: core.policy.FAMILY_DEFAULTS.
    RESET_SHARED = "reset-shared"  # only a bus reset remains, and it reaches functions outside the guest's groups
    RESET_NONE = "reset-none"  # the kernel has no reset for it at all: it carries one guest's state to the next
    COLLATERAL_RESET = "collateral-reset"  # that bus reset would reach a device the host uses
    ACS_OVERRIDE = "acs-override"  # the kernel command line weakens ACS (pcie_acs_override, disable_acs_redir)
    ACS_SPLIT = "acs-split"  # the kernel's group is finer than its own rules predict from the hardware
    HOLDER_NVIDIA = "holder-nvidia"  # processes hold the nvidia driver's nodes: unbinding it would hang
    DISPLAY_FRAMEBUFFER = "display-framebuffer"  # a firmware framebuffer holds memory inside its BARs
    POWER_D3COLD = "power-d3cold"  # in D3cold: often unreachable until woken
    # A probe could not tell (not root, an unreadable file): never the same as "unused". Same families, so a
    # policy that warns on a family warns on its unknowns too.
    STORAGE_UNKNOWN = "storage-unknown"
    NETWORK_UNKNOWN = "network-unknown"
    DISPLAY_UNKNOWN = "display-unknown"
    USB_UNKNOWN = "usb-unknown"
    SRIOV_UNKNOWN = "sriov-unknown"
    MDEV_UNKNOWN = "mdev-unknown"
    OPEN_UNKNOWN = "open-unknown"
    COLLATERAL_UNKNOWN = "collateral-unknown"  # a function the bus reset reaches: its host use is unknown
    ACS_UNKNOWN = "acs-unknown"
    HOLDER_UNKNOWN = "holder-unknown"

    @property
    def unknown(self) -> bool:
        return self.value.endswith("-unknown")

    @property
    def family(self) -> str:
        return self.value.split("-", 1)[0]


@dataclass(frozen=True)
class Finding:
    """One way the host uses a function, in words a person acts on (`message`) and a stable `code`."""

    address: PciAddress
    code: UseCode
    subject: str  # the thing in use: "/dev/sda2", "enp3s0", "input5"
    message: str  # "0000:00:17.0 (ahci) holds /dev/sda2 mounted at /"


class Header(StrEnum):
    """PCI config header layout: vfio-pci takes only type-0 (endpoint) functions."""

    ENDPOINT = "endpoint"
    BRIDGE = "bridge"
    CARDBUS = "cardbus"


@dataclass(frozen=True)
class PciFunction:
    address: PciAddress
    vendor: int
    device: int
    class_code: int  # 24 bits: base class, subclass, programming interface
    header: Header
    driver: str | None
    driver_override: str | None = None
    iommu_group: int | None = None
    # The upstream bridge in the kernel's device tree; None on a root bus.
    parent: PciAddress | None = None
    multifunction: bool = False
    boot_vga: bool = False
    physfn: PciAddress | None = None  # set on an SR-IOV virtual function
    sriov_totalvfs: int | None = None  # set on an SR-IOV capable physical function
    sriov_numvfs: int | None = None
    # From the config space beyond its first 64 bytes, readable by root only. `capabilities_read` False: unknown.
    capabilities_read: bool = False
    pcie_type: int | None = None  # PCI Express capability's device/port type; None: conventional PCI
    acs_cap: int | None = None  # ACS capability register; None: no ACS capability
    acs_ctrl: int | None = None  # ACS control register
    # sysfs subsystem_vendor/subsystem_device (the board maker's IDs); None: not recorded (an older snapshot).
    # Proxmox's PCI mappings compare them with the device at guest start (`isogroup inventory --format proxmox`).
    subsystem: tuple[int, int] | None = None
    # The kernel's reset methods for it (sysfs `reset_method`, v5.15+: "flr", "pm", "bus", ...), in its order.
    # (): the kernel offers none (the file is hidden exactly then). None: not known (an older kernel or snapshot).
    reset_methods: tuple[str, ...] | None = None

    @property
    def is_bridge(self) -> bool:
        return self.header is not Header.ENDPOINT

    @property
    def vfs_enabled(self) -> int:
        return self.sriov_numvfs or 0

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True)
class IommuGroup:
    number: int
    members: tuple[PciAddress, ...]


@dataclass(frozen=True)
class HostTopology:
    """`iommu` is False when the kernel formed no IOMMU groups at all (no IOMMU, or it is off)."""

    iommu: bool
    functions: tuple[PciFunction, ...]
    groups: tuple[IommuGroup, ...]
    # What the host-use probes found; `probed` False when they did not run (a tree without /proc, an old
    # snapshot): then nothing is known about host use, which is not the same as "nothing in use".
    findings: tuple[Finding, ...] = ()
    probed: bool = False
    # Where the data came from, for messages ("/sys", "hosts/desktop.json").
    source: str = field(default="", compare=False)

    @classmethod
    def build(
        cls,
        iommu: bool,
        functions: Iterable[PciFunction],
        groups: Iterable[IommuGroup],
        source: str = "",
        *,
        findings: Iterable[Finding] = (),
        probed: bool = False,
    ) -> HostTopology:
        """Canonical order, so that two captures of one host compare and serialise equal."""
        return cls(
            iommu=iommu,
            functions=tuple(sorted(functions, key=lambda f: f.address)),
            groups=tuple(
                IommuGroup(g.number, tuple(sorted(g.members))) for g in sorted(groups, key=lambda g: g.number)
            ),
            findings=tuple(sorted(findings, key=lambda f: (f.address, f.code.value, f.subject))),
            probed=probed,
            source=source,
        )

    @cached_property
    def by_address(self) -> Mapping[PciAddress, PciFunction]:
        return {f.address: f for f in self.functions}

    @cached_property
    def by_group(self) -> Mapping[int, IommuGroup]:
        return {g.number: g for g in self.groups}

    def function(self, address: PciAddress) -> PciFunction | None:
        return self.by_address.get(address)

    def findings_for(self, address: PciAddress) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.address == address)

    def group_of(self, address: PciAddress) -> IommuGroup | None:
        func = self.by_address.get(address)
        if func is None or func.iommu_group is None:
            return None
        return self.by_group.get(func.iommu_group)
