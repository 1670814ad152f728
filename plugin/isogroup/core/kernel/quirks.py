"""The kernel's PCI quirks that shape IOMMU groups, as data: DMA aliases (a function that uses another's requester
ID) and ACS-equivalent quirks (devices the kernel treats as isolated without a standard ACS capability).

Each table row names the kernel function in drivers/pci/quirks.c that it mirrors. The tables follow Linux 6.18;
older kernels have fewer rows (a row added later is a device an older kernel groups more coarsely). Only the
facts are here: which IDs, which function, which port types; `explain` turns them into reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from isogroup.core.kernel import configspace as cs
from isogroup.core.model import PciFunction

# Vendor IDs the tables use (include/linux/pci_ids.h).
RICOH = 0x1180
GLENFLY = 0x6766
MARVELL_EXT = 0x1B4B
TTI = 0x1103
JMICRON = 0x197B
LITE_ON = 0x1C28
ADAPTEC2 = 0x9005
ASMEDIA = 0x1B21
INTEL = 0x8086
PLX = 0x10B5
MICROSEMI = 0x11F8  # Switchtec
ATI = 0x1002
AMD = 0x1022
SOLARFLARE = 0x1924
QCOM = 0x17CB
HXT = 0x1DBF
EMULEX_BE = 0x19A2  # ServerEngines
EMULEX = 0x10DF
CAVIUM = 0x177D
AMCC = 0x10E8
AMPERE = 0x1DEF
BROADCOM = 0x14E4
LOONGSON = 0x0014
AMAZON_ANNAPURNA_LABS = 0x1C36
ZHAOXIN = 0x1D17
NXP = 0x1957
WANGXUN = 0x8088

PCI_CLASS_BRIDGE_OTHER = 0x0680  # Switchtec management/NTB endpoints (SWITCHTEC_QUIRK's class match)


def devfn(slot: int, function: int) -> int:
    return (slot << 3) | function


# ---------------------------------------------------------------------------------------------- DMA aliases


class AliasKind(StrEnum):
    FUNCTION_0 = "function-0"  # quirk_dma_func0_alias: DMAs as function 0 of its slot
    FUNCTION_1 = "function-1"  # quirk_dma_func1_alias: DMAs as function 1 of its slot
    FIXED = "fixed"  # quirk_fixed_dma_alias: DMAs as a fixed devfn on its bus
    DEVFNS = "devfns"  # quirk_mic_x200_dma_alias, quirk_pex_vca_alias, quirk_plx_ntb_dma_alias: a devfn list
    PROXY_IDS = "proxy-ids"  # quirk_switchtec_ntb_dma_alias: proxy IDs read from the switch at boot
    PCIE_BRIDGE = "pcie-bridge"  # quirk_use_pcie_bridge_dma_alias: a PCIe-to-PCI bridge hiding its PCIe capability


@dataclass(frozen=True)
class DmaAliasQuirk:
    vendor: int
    device: int | None  # None: any device of the vendor (the class decides, see `class_prefix`)
    kind: AliasKind
    kernel: str  # the function in drivers/pci/quirks.c
    what: str  # the hardware, for people
    devfns: tuple[int, ...] = ()  # FIXED and DEVFNS: the aliased devfns on the device's own bus
    subsystem: tuple[int, int] | None = None  # applies to this subsystem only (isogroup does not record it)
    class_prefix: int | None = None  # applies to this class (upper 16 bits) only


def _each(vendor: int, devices: Iterable[int], kind: AliasKind, kernel: str, what: str) -> list[DmaAliasQuirk]:
    return [DmaAliasQuirk(vendor, d, kind, kernel, what) for d in devices]


_VCA = tuple(devfn(s, f) for s in range(0x20) for f in range(5))

DMA_ALIAS_QUIRKS: tuple[DmaAliasQuirk, ...] = (
    # quirk_dma_func0_alias (DECLARE_PCI_FIXUP_HEADER rows)
    *_each(RICOH, (0xE832, 0xE476), AliasKind.FUNCTION_0, "quirk_dma_func0_alias", "Ricoh card reader/FireWire"),
    *_each(GLENFLY, (0x3D40, 0x3D41), AliasKind.FUNCTION_0, "quirk_dma_func0_alias", "Glenfly GPU"),
    # quirk_dma_func1_alias
    *_each(
        MARVELL_EXT,
        (
            0x9120,
            0x9123,
            0x9125,
            0x9128,
            0x9130,
            0x9170,
            0x9172,
            0x917A,
            0x9182,
            0x9183,
            0x91A0,
            0x9215,
            0x9220,
            0x9230,
            0x9235,
        ),
        AliasKind.FUNCTION_1,
        "quirk_dma_func1_alias",
        "Marvell SATA controller",
    ),
    *_each(TTI, (0x0642, 0x0645), AliasKind.FUNCTION_1, "quirk_dma_func1_alias", "HighPoint RocketRAID"),
    *_each(JMICRON, (0x2392,), AliasKind.FUNCTION_1, "quirk_dma_func1_alias", "JMicron JMB388 card reader"),
    *_each(LITE_ON, (0x0122,), AliasKind.FUNCTION_1, "quirk_dma_func1_alias", "Plextor M6E SSD (Marvell 88SS9183)"),
    # quirk_fixed_dma_alias (fixed_dma_alias_tbl)
    DmaAliasQuirk(
        ADAPTEC2, 0x0285, AliasKind.FIXED, "quirk_fixed_dma_alias", "Adaptec 3405", (devfn(1, 0),), (ADAPTEC2, 0x02BB)
    ),
    DmaAliasQuirk(
        ADAPTEC2, 0x0285, AliasKind.FIXED, "quirk_fixed_dma_alias", "Adaptec 3805", (devfn(1, 0),), (ADAPTEC2, 0x02BC)
    ),
    # quirk_use_pcie_bridge_dma_alias
    *_each(ASMEDIA, (0x1080,), AliasKind.PCIE_BRIDGE, "quirk_use_pcie_bridge_dma_alias", "ASMedia ASM1083/1085"),
    *_each(0x10E3, (0x8113,), AliasKind.PCIE_BRIDGE, "quirk_use_pcie_bridge_dma_alias", "Tundra 8113"),
    *_each(0x1283, (0x8892, 0x8893), AliasKind.PCIE_BRIDGE, "quirk_use_pcie_bridge_dma_alias", "ITE 8892/8893"),
    *_each(INTEL, (0x244E,), AliasKind.PCIE_BRIDGE, "quirk_use_pcie_bridge_dma_alias", "Intel 82801 PCI bridge"),
    # quirk_mic_x200_dma_alias
    *(
        DmaAliasQuirk(
            INTEL,
            d,
            AliasKind.DEVFNS,
            "quirk_mic_x200_dma_alias",
            "Intel MIC x200 NTB",
            (devfn(0x10, 0), devfn(0x11, 0), devfn(0x12, 3)),
        )
        for d in (0x2260, 0x2264)
    ),
    # quirk_pex_vca_alias
    *(
        DmaAliasQuirk(INTEL, d, AliasKind.DEVFNS, "quirk_pex_vca_alias", "Intel Visual Compute Accelerator", _VCA)
        for d in (0x2954, 0x2955, 0x2956, 0x2958, 0x2959, 0x295A)
    ),
    # quirk_plx_ntb_dma_alias: all 256 devfns of its bus
    *(
        DmaAliasQuirk(PLX, d, AliasKind.DEVFNS, "quirk_plx_ntb_dma_alias", "PLX NTB", tuple(range(256)))
        for d in (0x87B0, 0x87B1)
    ),
    # quirk_switchtec_ntb_dma_alias (SWITCHTEC_QUIRK rows: Microsemi IDs of class PCI_CLASS_BRIDGE_OTHER)
    DmaAliasQuirk(
        MICROSEMI,
        None,
        AliasKind.PROXY_IDS,
        "quirk_switchtec_ntb_dma_alias",
        "Microsemi Switchtec NTB",
        class_prefix=PCI_CLASS_BRIDGE_OTHER,
    ),
)


def dma_alias_quirks(func: PciFunction) -> list[DmaAliasQuirk]:
    return [
        q
        for q in DMA_ALIAS_QUIRKS
        if q.vendor == func.vendor
        and (q.device is None or q.device == func.device)
        and (q.class_prefix is None or func.class_code >> 8 == q.class_prefix)
    ]


def aliased_devfns(func: PciFunction, quirk: DmaAliasQuirk) -> tuple[int, ...]:
    """The devfns on the function's own bus that `quirk` makes it DMA as (pci_add_dma_alias)."""
    address = func.address
    match quirk.kind:
        case AliasKind.FUNCTION_0:
            return (devfn(address.slot, 0),) if address.function != 0 else ()
        case AliasKind.FUNCTION_1:
            return (devfn(address.slot, 1),) if address.function != 1 else ()
        case AliasKind.FIXED | AliasKind.DEVFNS:
            return quirk.devfns
        case AliasKind.PROXY_IDS | AliasKind.PCIE_BRIDGE:
            return ()


# ---------------------------------------------------------------------------------------------- ACS quirks


class AcsQuirkKind(StrEnum):
    """One per function of drivers/pci/quirks.c's pci_dev_acs_enabled[] table."""

    AMD_SB = "pci_quirk_amd_sb_acs"
    MF_ENDPOINT = "pci_quirk_mf_endpoint_acs"
    RCIEP = "pci_quirk_rciep_acs"
    QCOM_RP = "pci_quirk_qcom_rp_acs"
    INTEL_PCH = "pci_quirk_intel_pch_acs"
    INTEL_SPT_PCH = "pci_quirk_intel_spt_pch_acs"
    CAVIUM = "pci_quirk_cavium_acs"
    XGENE = "pci_quirk_xgene_acs"
    BRCM = "pci_quirk_brcm_acs"
    LOONGSON = "pci_quirk_loongson_acs"
    AL = "pci_quirk_al_acs"
    NXP_RP = "pci_quirk_nxp_rp_acs"
    ZHAOXIN_PORTS = "pci_quirk_zhaoxin_pcie_ports_acs"
    WANGXUN_NIC = "pci_quirk_wangxun_nic_acs"


@dataclass(frozen=True)
class AcsQuirkRow:
    vendor: int
    device: int | None  # None: PCI_ANY_ID
    kind: AcsQuirkKind


def _rows(vendor: int, devices: Iterable[int | None], kind: AcsQuirkKind) -> list[AcsQuirkRow]:
    return [AcsQuirkRow(vendor, d, kind) for d in devices]


_MF = AcsQuirkKind.MF_ENDPOINT

# pci_dev_acs_enabled[], in the kernel's order: the first row whose function answers (>= 0) decides.
ACS_QUIRK_TABLE: tuple[AcsQuirkRow, ...] = (
    *_rows(ATI, (0x4385, 0x439C, 0x4383, 0x439D, 0x4384, 0x4399), AcsQuirkKind.AMD_SB),
    *_rows(AMD, (0x780F, 0x7809), AcsQuirkKind.AMD_SB),
    *_rows(SOLARFLARE, (0x0903, 0x0923, 0x0A03), _MF),
    *_rows(INTEL, (0x10C6, 0x10DB, 0x10DD, 0x10E1, 0x10F1, 0x10F7, 0x10F8, 0x10F9, 0x10FA, 0x10FB, 0x10FC), _MF),
    *_rows(INTEL, (0x1507, 0x1514, 0x151C, 0x1529, 0x152A, 0x154D, 0x154F, 0x1551, 0x1558), _MF),
    *_rows(INTEL, (0x1509, 0x150E, 0x150F, 0x1510, 0x1511, 0x1516, 0x1527), _MF),  # 82580
    *_rows(INTEL, (0x10C9, 0x10E6, 0x10E7, 0x10E8, 0x150A, 0x150D, 0x1518, 0x1526), _MF),  # 82576
    *_rows(INTEL, (0x10A7, 0x10A9, 0x10D6), _MF),  # 82575
    *_rows(INTEL, (0x1521, 0x1522, 0x1523, 0x1524), _MF),  # I350
    *_rows(INTEL, (0x105E, 0x105F, 0x1060, 0x10D9), _MF),  # 82571 (quads omitted: non-ACS switch)
    *_rows(INTEL, (0x15B7, 0x15B8), _MF),  # I219
    AcsQuirkRow(INTEL, None, AcsQuirkKind.RCIEP),
    *_rows(QCOM, (0x0400, 0x0401, 0x0115), AcsQuirkKind.QCOM_RP),  # QDF2xxx, SA8775P
    AcsQuirkRow(HXT, 0x0401, AcsQuirkKind.QCOM_RP),  # HXT SD4800: QCOM's design
    AcsQuirkRow(INTEL, None, AcsQuirkKind.INTEL_PCH),
    AcsQuirkRow(INTEL, None, AcsQuirkKind.INTEL_SPT_PCH),
    AcsQuirkRow(EMULEX_BE, 0x0710, _MF),  # Emulex BE3-R
    AcsQuirkRow(EMULEX, 0x0720, _MF),  # Emulex Skyhawk-R
    AcsQuirkRow(CAVIUM, None, AcsQuirkKind.CAVIUM),
    *_rows(CAVIUM, (0xA026, 0xA059, 0xA060), _MF),
    AcsQuirkRow(AMCC, 0xE004, AcsQuirkKind.XGENE),
    *_rows(AMPERE, range(0xE005, 0xE00D), AcsQuirkKind.XGENE),
    *_rows(BROADCOM, (0x16D7, 0x1750, 0x1751, 0x1752, 0x1760, 0x1761, 0x1762, 0x1763), _MF),
    AcsQuirkRow(BROADCOM, 0xD714, AcsQuirkKind.BRCM),
    *_rows(
        LOONGSON,
        (0x3C09, 0x3C19, 0x3C29, 0x7A09, 0x7A19, 0x7A29, 0x7A39, 0x7A49, 0x7A59, 0x7A69),
        AcsQuirkKind.LOONGSON,
    ),
    AcsQuirkRow(AMAZON_ANNAPURNA_LABS, 0x0031, AcsQuirkKind.AL),
    *_rows(ZHAOXIN, (0x3038, 0x3104, 0x9083), _MF),
    *_rows(NXP, (0x8D81, 0x8DA1, 0x8D83, 0x8D80, 0x8DA0, 0x8D82, 0x8D90, 0x8DB0, 0x8D92), AcsQuirkKind.NXP_RP),
    *_rows(NXP, (0x8D91, 0x8DB1, 0x8D93, 0x8D89, 0x8DA9, 0x8D8B, 0x8D88, 0x8DA8, 0x8D8A), AcsQuirkKind.NXP_RP),
    *_rows(NXP, (0x8D98, 0x8DB8, 0x8D9A, 0x8D99, 0x8DB9, 0x8D9B), AcsQuirkKind.NXP_RP),
    AcsQuirkRow(ZHAOXIN, None, AcsQuirkKind.ZHAOXIN_PORTS),
    AcsQuirkRow(WANGXUN, None, AcsQuirkKind.WANGXUN_NIC),
)

# pci_quirk_intel_pch_acs_ids[]: PCH root ports with ACS-like controls but no ACS capability (Red Hat bz 1037684).
INTEL_PCH_ACS_IDS: frozenset[int] = frozenset(
    [
        *range(0x3B42, 0x3B52),  # Ibexpeak
        *range(0x1C10, 0x1C20),  # Cougarpoint
        *range(0x1E10, 0x1E20),  # Pantherpoint
        *range(0x8C10, 0x8C20),  # Lynxpoint-H
        *range(0x9C10, 0x9C1C),  # Lynxpoint-LP
        *range(0x9C90, 0x9C9C),  # Wildcat
        *range(0x1D10, 0x1D1F, 2),  # Patsburg (X79): even IDs
        *range(0x8D10, 0x8D1F),  # Wellsburg (X99)
        *range(0x8C90, 0x8C9F, 2),  # Lynx Point (9 series): even IDs
    ]
)

# pci_quirk_intel_spt_pch_acs_match: ACS capability with 32-bit registers, control at +8 instead of +6.
INTEL_SPT_PCH_ACS_IDS: frozenset[int] = frozenset(
    [
        *range(0xA110, 0xA120),  # Sunrise Point-H
        *range(0xA167, 0xA16B),
        *range(0xA290, 0xA2A0),  # Union Point
        *range(0xA2E7, 0xA2EF),
        *range(0x9D10, 0x9D1C),  # 7th/8th generation mobile
    ]
)

CAVIUM_ROOT_PORT_IDS: frozenset[int] = frozenset([*range(0xA000, 0xA800), 0xAF84, 0xB884])  # ThunderX1/2/3
ZHAOXIN_ACS_PORT_IDS: frozenset[int] = frozenset([*range(0x0710, 0x071F), 0x0721, *range(0x0723, 0x0753)])
WANGXUN_ISOLATED_IDS: frozenset[int] = frozenset(
    [*range(0x0100, 0x0110), 0x1001, 0x2001, 0x5010, 0x5025, 0x5040, 0x5110, 0x5125, 0x5140]
)


@dataclass(frozen=True)
class QuirkContext:
    iommu: bool  # the host formed IOMMU groups (stands in for "the firmware described an IOMMU")


@dataclass(frozen=True)
class AcsQuirkAnswer:
    """What a quirk function says about a device: `text` is the hardware fact, `name` the quirk for people.
    `isolates` None: it cannot be told without the PCIe port type (the config space was not readable)."""

    kind: AcsQuirkKind
    isolates: bool | None
    name: str
    text: str


QuirkFunction = Callable[[PciFunction, QuirkContext], AcsQuirkAnswer | None]


_BRIDGE_TYPES: tuple[int, ...] = (
    cs.PCIE_ROOT_PORT,
    cs.PCIE_UPSTREAM_PORT,
    cs.PCIE_DOWNSTREAM_PORT,
    cs.PCIE_TO_PCI_BRIDGE,
    cs.PCI_TO_PCIE_BRIDGE,
)


def _port_types(func: PciFunction, *types: int) -> bool | None:
    """Whether the function is a PCIe device of one of `types`; None when its type is unknown and its header
    does not rule them out (a port has a bridge header, an endpoint does not)."""
    if func.capabilities_read:
        return func.pcie_type in types
    if all((t in _BRIDGE_TYPES) != func.is_bridge for t in types):
        return False
    return None


def _fixed(kind: AcsQuirkKind, name: str, text: str) -> QuirkFunction:
    """A quirk that answers 'isolated' for every device its table rows name."""

    def answer(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
        return AcsQuirkAnswer(kind, True, name, text)

    return answer


def _for_types(kind: AcsQuirkKind, name: str, text: str, ids: frozenset[int] | None, *types: int) -> QuirkFunction:
    """A quirk for PCIe ports of `types` (and, with `ids`, only those device IDs); -ENOTTY for anything else."""

    def answer(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
        if ids is not None and func.device not in ids:
            return None
        match _port_types(func, *types):
            case False:
                return None
            case None:
                return AcsQuirkAnswer(
                    kind, None, name, f"{text}, if it is what the quirk expects (its PCIe type is unknown)"
                )
        return AcsQuirkAnswer(kind, True, name, text)

    return answer


def _amd_sb(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
    multifunction = func.multifunction or (func.address.function > 0 and func.physfn is None)  # as the kernel sees it
    if not multifunction or func.parent is not None or not ctx.iommu:
        return None  # -ENODEV: multifunction southbridge devices on the root bus, with an AMD IOMMU (IVRS) only
    return AcsQuirkAnswer(
        AcsQuirkKind.AMD_SB,
        True,
        "AMD southbridge ACS quirk",
        "an AMD/ATI southbridge function that sends peer-to-peer upstream (RR, CR) when an AMD IOMMU is present",
    )


def _intel_spt(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
    kind, name = AcsQuirkKind.INTEL_SPT_PCH, "Intel Sunrise Point ACS quirk"
    if func.device not in INTEL_SPT_PCH_ACS_IDS:
        return None
    match _port_types(func, cs.PCIE_ROOT_PORT):
        case False:
            return None
        case None:
            return AcsQuirkAnswer(
                kind,
                None,
                name,
                "a Sunrise/Union Point PCH root port ID; whether it has the ACS capability the quirk needs is unknown",
            )
    if func.acs_cap is None:
        return None  # -ENOTTY: no ACS capability at all
    flags = flag_names(cs.REQUIRED_ACS & func.acs_cap) or "nothing it requires"
    return AcsQuirkAnswer(
        kind,
        True,
        name,
        "a Sunrise/Union Point PCH root port whose ACS registers are 32 bits wide, the control "
        "register at +8 where the spec has it at +6 (so the control word isogroup and lspci read is "
        f"not the real one); the kernel enables {flags} there at boot and reads them back",
    )


def _zhaoxin_ports(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
    kind, name = AcsQuirkKind.ZHAOXIN_PORTS, "Zhaoxin port ACS quirk"
    match _port_types(func, cs.PCIE_ROOT_PORT, cs.PCIE_DOWNSTREAM_PORT):
        case False:
            return None
        case None:
            return AcsQuirkAnswer(
                kind,
                None,
                name,
                "a Zhaoxin device: the quirk decides if it is a root or downstream port (its PCIe type is unknown)",
            )
    if func.device in ZHAOXIN_ACS_PORT_IDS:
        return AcsQuirkAnswer(kind, True, name, "a Zhaoxin port that blocks peer-to-peer without an ACS capability")
    return AcsQuirkAnswer(
        kind,
        False,
        name,
        "a Zhaoxin port outside the IDs the quirk vouches for (it answers 'no' whatever the ACS capability says)",
    )


def _wangxun(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
    kind, name = AcsQuirkKind.WANGXUN_NIC, "Wangxun NIC ACS quirk"
    if func.device in WANGXUN_ISOLATED_IDS:
        return AcsQuirkAnswer(
            kind, True, name, "a Wangxun NIC that sends peer-to-peer upstream as if RR and CR were set"
        )
    return AcsQuirkAnswer(kind, False, name, "a Wangxun device outside the IDs the quirk vouches for (it answers 'no')")


_ROOT_PORTS = "root port that blocks peer-to-peer between root ports without an ACS capability"

_QUIRK_FUNCTIONS: dict[AcsQuirkKind, QuirkFunction] = {
    AcsQuirkKind.AMD_SB: _amd_sb,
    AcsQuirkKind.MF_ENDPOINT: _fixed(
        AcsQuirkKind.MF_ENDPOINT,
        "multifunction ACS quirk",
        "a multifunction device whose vendor verified its functions do no peer-to-peer with each other",
    ),
    AcsQuirkKind.RCIEP: _for_types(
        AcsQuirkKind.RCIEP,
        "Intel RCiEP ACS quirk",
        "an Intel root-complex integrated endpoint, which may do peer-to-peer only on translated addresses (VT-d 3.16)",
        None,
        cs.PCIE_RC_INTEGRATED_ENDPOINT,
    ),
    AcsQuirkKind.QCOM_RP: _fixed(AcsQuirkKind.QCOM_RP, "Qualcomm root port ACS quirk", f"a Qualcomm/HXT {_ROOT_PORTS}"),
    AcsQuirkKind.INTEL_PCH: _for_types(
        AcsQuirkKind.INTEL_PCH,
        "Intel PCH ACS quirk",
        "an Intel PCH root port with ACS-like controls but no ACS capability, which the kernel switches on at boot",
        INTEL_PCH_ACS_IDS,
        cs.PCIE_ROOT_PORT,
    ),
    AcsQuirkKind.INTEL_SPT_PCH: _intel_spt,
    AcsQuirkKind.CAVIUM: _for_types(
        AcsQuirkKind.CAVIUM,
        "Cavium ACS quirk",
        "a Cavium ThunderX root port with SV/RR/CR/UF-like protection but no ACS capability",
        CAVIUM_ROOT_PORT_IDS,
        cs.PCIE_ROOT_PORT,
    ),
    AcsQuirkKind.XGENE: _fixed(AcsQuirkKind.XGENE, "X-Gene ACS quirk", f"an APM X-Gene/Ampere {_ROOT_PORTS}"),
    AcsQuirkKind.BRCM: _fixed(AcsQuirkKind.BRCM, "Broadcom ACS quirk", f"a Broadcom iProc {_ROOT_PORTS}"),
    AcsQuirkKind.LOONGSON: _fixed(AcsQuirkKind.LOONGSON, "Loongson ACS quirk", f"a Loongson {_ROOT_PORTS}"),
    AcsQuirkKind.AL: _for_types(
        AcsQuirkKind.AL, "Annapurna Labs ACS quirk", f"an Amazon Annapurna Labs {_ROOT_PORTS}", None, cs.PCIE_ROOT_PORT
    ),
    AcsQuirkKind.NXP_RP: _fixed(AcsQuirkKind.NXP_RP, "NXP root port ACS quirk", f"an NXP Layerscape {_ROOT_PORTS}"),
    AcsQuirkKind.ZHAOXIN_PORTS: _zhaoxin_ports,
    AcsQuirkKind.WANGXUN_NIC: _wangxun,
}


def acs_quirk(func: PciFunction, ctx: QuirkContext) -> AcsQuirkAnswer | None:
    """pci_dev_specific_acs_enabled(): the first table row matching the IDs whose function answers; None when no
    quirk applies (-ENOTTY) and the standard ACS rules decide."""
    for row in ACS_QUIRK_TABLE:
        if row.vendor != func.vendor or (row.device is not None and row.device != func.device):
            continue
        answer = _QUIRK_FUNCTIONS[row.kind](func, ctx)
        if answer is not None:
            return answer
    return None


_FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (cs.ACS_SV, "SV"),
    (cs.ACS_TB, "TB"),
    (cs.ACS_RR, "RR"),
    (cs.ACS_CR, "CR"),
    (cs.ACS_UF, "UF"),
    (cs.ACS_EC, "EC"),
    (cs.ACS_DT, "DT"),
)


def flag_names(bits: int) -> str:
    """'SV RR CR UF' for 0x1d."""
    return " ".join(name for bit, name in _FLAG_NAMES if bits & bit)


__all__ = [
    "ACS_QUIRK_TABLE",
    "DMA_ALIAS_QUIRKS",
    "AcsQuirkAnswer",
    "AcsQuirkKind",
    "AliasKind",
    "DmaAliasQuirk",
    "QuirkContext",
    "acs_quirk",
    "aliased_devfns",
    "dma_alias_quirks",
    "flag_names",
]
