"""The claim file: one guest's claim as a versioned JSON document in the ledger's `claims/` directory.

The ledger is input too: anyone who can write `/run/isogroup` (or a disk error, or a run killed at the wrong
moment on a file system without atomic renames) can put anything there, and release writes what it reads into
sysfs paths. So every field read back is validated as strictly as domain XML is: driver names are plain kernel
driver names, addresses are canonical PCI addresses, phases and states are known, groups are bounded
non-negative integers, the uuid has libvirt's form, no key is missing or extra, and the document's size and
nesting are bounded. The writer checks that what it writes reads back (`dumps`), so the ledger never records
a claim it would later call corrupt.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.core.drivers import DRIVER_NAME
from isogroup.errors import InputError, StateError
from isogroup.formats import jsondoc

VERSION = 1
MAX_CLAIM_BYTES = 1 << 20  # a claim of a few thousand devices is ~0.5 MiB; anything larger is not ours
MAX_DEPTH = 3  # object -> "devices" list -> device object
MAX_GROUP = 2**31 - 1  # the kernel numbers IOMMU groups with an int (drivers/iommu/iommu.c, ida_alloc)

_KEYS = frozenset({"version", "domain", "uuid", "phase", "groups", "devices", "updated"})
_DEVICE_KEYS = frozenset({"address", "group", "original_driver", "original_override", "state"})
# libvirt's virUUIDParse (src/util/viruuid.c): 16 pairs of hex digits, '-' or ' ' allowed between them.
_UUID = re.compile(r"(?:[- ]*[0-9A-Fa-f]{2}){16}")
_MAX_UUID_CHARS = 64

_E = TypeVar("_E", Phase, DeviceState)


class ClaimRefused(StateError):
    """A claim file isogroup will not trust; `where` is its path and `reason` what is wrong, in a few words."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where} {reason}")
        self.where = where
        self.reason = reason


def claim_to_json(claim: Claim) -> dict[str, Any]:
    return {
        "version": VERSION,
        "domain": claim.domain,
        "uuid": claim.uuid,
        "phase": claim.phase.value,
        "groups": list(claim.groups),
        "devices": [
            {
                "address": str(d.address),
                "group": d.group,
                "original_driver": d.original_driver,
                "original_override": d.original_override,
                "state": d.state.value,
            }
            for d in claim.devices
        ],
        "updated": claim.updated,
    }


def dumps(claim: Claim, where: str) -> bytes:
    """The file's bytes (compact: written twice per device moved). ClaimRefused if they would not read back as
    this claim, before anything is written."""
    data = (json.dumps(claim_to_json(claim), separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass")
    try:
        back = parse(data, where)
    except ClaimRefused as exc:
        raise ClaimRefused(where, f"would not be readable back, so it is not written: {exc.reason}") from None
    if back != claim:
        raise ClaimRefused(where, "would not read back as the claim written, so it is not written")
    return data


class _Fields:
    """Typed access to one JSON object's fields; every error names the field."""

    def __init__(self, obj: object, what: str, keys: frozenset[str]) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{what} is not an object")
        if missing := sorted(keys - obj.keys()):
            raise ValueError(f"{what} lacks {', '.join(map(repr, missing))}")
        if extra := sorted(obj.keys() - keys):
            raise ValueError(f"{what} has unknown key(s) {', '.join(repr(k[:40]) for k in extra[:3])}")
        self.obj: dict[str, object] = obj
        self.what = what

    def bad(self, key: str, why: str) -> ValueError:
        return ValueError(f"{self.what} {key!r} {why}")

    def text(self, key: str) -> str:
        value = self.obj[key]
        if not isinstance(value, str):
            raise self.bad(key, "is not a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.obj[key] is None else self.text(key)

    def group(self, key: str, value: object) -> int:
        # bool is an int in Python: `true` is not group 1.
        if type(value) is not int or not 0 <= value <= MAX_GROUP:
            raise self.bad(key, f"holds {_short(value)}, not an IOMMU group number (0 to {MAX_GROUP})")
        return value

    def driver(self, key: str) -> str | None:
        name = self.opt_text(key)
        if name is not None and not DRIVER_NAME.fullmatch(name):
            raise self.bad(key, f"is {_short(name)}, not a kernel driver's name")
        return name

    def enum(self, key: str, kind: type[_E]) -> _E:
        text = self.text(key)
        try:
            return kind(text)
        except ValueError:
            raise self.bad(key, f"is {_short(text)}, none of {', '.join(m.value for m in kind)}") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _device(obj: object, index: int) -> MovedDevice:
    f = _Fields(obj, f"devices[{index}]", _DEVICE_KEYS)
    text = f.text("address")
    try:
        address = PciAddress.parse(text)
    except InputError:
        address = None
    if address is None or str(address) != text:  # the writer writes the canonical form only
        raise f.bad("address", f"is {_short(text)}, not a PCI address DDDD:BB:SS.F")
    return MovedDevice(
        address=address,
        group=f.group("group", f.obj["group"]),
        original_driver=f.driver("original_driver"),
        original_override=f.driver("original_override"),
        state=f.enum("state", DeviceState),
    )


def _claim(doc: object) -> Claim:
    f = _Fields(doc, "the claim", _KEYS)
    version = f.obj["version"]
    if type(version) is not int or version != VERSION:
        raise ValueError(f"has version {_short(version)}, not {VERSION}")
    domain = f.text("domain")
    if not domain:
        raise f.bad("domain", "is empty")
    uuid = f.opt_text("uuid")
    if uuid is not None and (len(uuid) > _MAX_UUID_CHARS or not _UUID.fullmatch(uuid)):
        raise f.bad("uuid", f"is {_short(uuid)}, not a UUID")
    groups = f.obj["groups"]
    if not isinstance(groups, list):
        raise f.bad("groups", "is not a list")
    devices = f.obj["devices"]
    if not isinstance(devices, list):
        raise f.bad("devices", "is not a list")
    moved = tuple(_device(d, i) for i, d in enumerate(devices))
    if len({d.address for d in moved}) != len(moved):
        raise f.bad("devices", "lists a device twice")
    updated = f.obj["updated"]
    if isinstance(updated, bool) or not isinstance(updated, int | float) or not 0 <= updated <= 2**40:
        raise f.bad("updated", f"holds {_short(updated)}, not a time")
    return Claim(
        domain=domain,
        phase=f.enum("phase", Phase),
        groups=tuple(f.group("groups", g) for g in groups),
        devices=moved,
        uuid=uuid,
        updated=float(updated),
    )


def parse(data: bytes, where: str) -> Claim:
    """The claim in a file's bytes; ClaimRefused (a StateError) for anything else, naming `where`."""
    if len(data) > MAX_CLAIM_BYTES:
        raise ClaimRefused(where, f"is larger than {MAX_CLAIM_BYTES} bytes")
    try:
        doc = jsondoc.loads(data, max_depth=MAX_DEPTH)
    except jsondoc.JsonRefused as exc:
        raise ClaimRefused(where, f"is not valid JSON ({exc})") from None
    try:
        return _claim(doc)
    except ValueError as exc:
        raise ClaimRefused(where, f"is not a claim isogroup wrote: {exc}") from None
