"""What `explain` answers: the reasoning steps, who else is in the group and why, how the predicted group
stands against the kernel's, and what would split it. Plain data: narrative.py and splits.py fill it,
render.py prints it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from isogroup.core.address import PciAddress
from isogroup.core.reset import ResetReach


@dataclass(frozen=True)
class Step:
    text: str
    kernel: str  # the kernel function this step mirrors


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


class Prediction(StrEnum):
    """How the group the model predicts stands against the group the kernel formed. Stable: JSON reports name
    it (the `agreement` field)."""

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
    agreement: Prediction
    difference: str | None
    steps: tuple[Step, ...]
    members: tuple[Member, ...]
    unknown_acs: tuple[PciAddress, ...]  # functions on the way whose ACS was not read from the config space
    splits: tuple[Split, ...]
    reset: ResetReach  # how it can be reset, and what else such a reset reaches (core.reset)
    reset_text: str  # that, in a line a person reads
