"""PciAddress.parse_or_none is parse without its error: the same grammar, the same ranges."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from isogroup.core.address import PciAddress
from isogroup.errors import InputError

# Near misses of DDDD:BB:SS.F beside arbitrary text: sysfs attribute names, slots past 0x1f, long domains.
NAMES = st.from_regex(r"\A\s?([0-9a-fA-F]{1,9}:)?[0-9a-fA-Fg]{1,3}:[0-9a-fA-F]{1,3}\.[0-9]\s?\Z") | st.text(max_size=16)


@settings(max_examples=500, deadline=None)
@given(NAMES)
def test_parse_or_none_answers_what_parse_answers(name: str) -> None:
    try:
        expected: PciAddress | None = PciAddress.parse(name)
    except InputError:
        expected = None
    assert PciAddress.parse_or_none(name) == expected


def test_a_bridges_directory_entries() -> None:
    names = ["0000:01:00.0", "10000:e0:06.0", "config", "power", "0000:00:20.0", "pci_bus", "01:00.7"]
    assert [str(a) for a in map(PciAddress.parse_or_none, names) if a is not None] == [
        "0000:01:00.0",
        "10000:e0:06.0",
        "0000:01:00.7",
    ]
