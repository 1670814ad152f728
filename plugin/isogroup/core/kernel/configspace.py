"""The few facts isogroup reads from a function's PCI config space: its PCI Express port type and its ACS
capability (PCIe spec: capability list at 0x34, PCIe capability ID 0x10, extended capabilities from 0x100,
ACS extended capability ID 0x000d). Only root can read past the first 64 bytes of sysfs `config`; with less,
nothing is known (None), which is not the same as "no ACS"."""

from __future__ import annotations

from dataclasses import dataclass

CONFIG_SPACE_SIZE = 4096
_STATUS = 0x06
_STATUS_CAP_LIST = 0x10
_CAP_POINTER = 0x34
_CAP_ID_PCIE = 0x10
_EXT_CAP_START = 0x100
_EXT_CAP_ID_ACS = 0x000D

# PCI Express capability, flags register bits 7:4 (device/port type)
PCIE_ENDPOINT = 0x0
PCIE_LEGACY_ENDPOINT = 0x1
PCIE_ROOT_PORT = 0x4
PCIE_UPSTREAM_PORT = 0x5
PCIE_DOWNSTREAM_PORT = 0x6
PCIE_TO_PCI_BRIDGE = 0x7
PCI_TO_PCIE_BRIDGE = 0x8
PCIE_RC_INTEGRATED_ENDPOINT = 0x9
PCIE_RC_EVENT_COLLECTOR = 0xA

# ACS capability and control bits (include/uapi/linux/pci_regs.h)
ACS_SV = 0x01  # source validation
ACS_TB = 0x02  # translation blocking
ACS_RR = 0x04  # P2P request redirect
ACS_CR = 0x08  # P2P completion redirect
ACS_UF = 0x10  # upstream forwarding
ACS_EC = 0x20  # P2P egress control
ACS_DT = 0x40  # direct translated P2P
# What the kernel requires for isolation (drivers/iommu/iommu.c REQ_ACS_FLAGS)
REQUIRED_ACS = ACS_SV | ACS_RR | ACS_CR | ACS_UF


@dataclass(frozen=True)
class Capabilities:
    pcie_type: int | None  # None: a conventional PCI function
    acs_cap: int | None  # None: no ACS capability
    acs_ctrl: int | None


def _u16(config: bytes, offset: int) -> int:
    return int.from_bytes(config[offset : offset + 2], "little")


def _u32(config: bytes, offset: int) -> int:
    return int.from_bytes(config[offset : offset + 4], "little")


def parse_capabilities(config: bytes) -> Capabilities | None:
    """None when the config space was not readable past its standard header (not root)."""
    if len(config) < 256:
        return None
    pcie_type = None
    if _u16(config, _STATUS) & _STATUS_CAP_LIST:
        pointer = config[_CAP_POINTER] & 0xFC
        seen = set()
        while 0x40 <= pointer < 256 and pointer not in seen:  # the list lives above the header; no loops
            seen.add(pointer)
            if config[pointer] == _CAP_ID_PCIE:
                pcie_type = (_u16(config, pointer + 2) >> 4) & 0xF
                break
            pointer = config[pointer + 1] & 0xFC
    if pcie_type is not None and len(config) < CONFIG_SPACE_SIZE:
        return None  # a PCIe function whose extended space we cannot see: its ACS is unknown
    acs_cap = acs_ctrl = None
    if pcie_type is not None:
        offset = _EXT_CAP_START
        seen = set()
        while _EXT_CAP_START <= offset < CONFIG_SPACE_SIZE - 8 and offset not in seen:
            seen.add(offset)
            header = _u32(config, offset)
            if header in (0, 0xFFFFFFFF):
                break
            if header & 0xFFFF == _EXT_CAP_ID_ACS:
                acs_cap, acs_ctrl = _u16(config, offset + 4), _u16(config, offset + 6)
                break
            offset = (header >> 20) & 0xFFC
    return Capabilities(pcie_type, acs_cap, acs_ctrl)
