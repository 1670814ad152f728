"""PCI addresses: parsed once, at the edge, and compared as numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from isogroup.errors import InputError

_BDF = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)

# The ranges libvirt accepts (virPCIDeviceAddressIsValid). Domains are 32-bit: Intel VMD puts its devices in
# domains from 0x10000 up, and sysfs names them with five hex digits.
_LIMITS = {"domain": 0xFFFFFFFF, "bus": 0xFF, "slot": 0x1F, "function": 0x7}


@dataclass(frozen=True, order=True, slots=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
        for field, limit in _LIMITS.items():
            value = getattr(self, field)
            if not 0 <= value <= limit:
                raise InputError(f"PCI {field} {value:#x} is out of range (0..{limit:#x})")

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """`0000:01:00.0` or `01:00.0` (domain 0), as sysfs and lspci write them (`10000:e0:06.0` for VMD)."""
        match = _BDF.match(text.strip())
        if not match:
            raise InputError(f"{text!r} is not a PCI address (expected DDDD:BB:SS.F, e.g. 0000:01:00.0)")
        return cls._of(match)

    @classmethod
    def parse_or_none(cls, text: str) -> PciAddress | None:
        """What `parse` returns, or None where it would refuse: for names that are mostly not addresses (a
        bridge's sysfs directory holds its attributes beside its children), without building an error each."""
        match = _BDF.match(text.strip())
        if not match:
            return None
        try:
            return cls._of(match)
        except InputError:  # a slot past 0x1f
            return None

    @classmethod
    def _of(cls, match: re.Match[str]) -> PciAddress:
        return cls(
            int(match["domain"] or "0", 16),
            int(match["bus"], 16),
            int(match["slot"], 16),
            int(match["function"], 16),
        )

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"
