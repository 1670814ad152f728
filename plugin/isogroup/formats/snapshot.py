"""Host snapshots: everything the planner needs, as a versioned JSON document.

Captured once on a host (`isogroup snapshot`), then used offline wherever `--sysfs` is accepted (`--host FILE`).
Loading is strict: a snapshot that does not say exactly what it means is refused, never guessed at.
"""

from __future__ import annotations

import errno
import functools
import json
import re
from pathlib import Path
from typing import Any

from isogroup.core.address import PciAddress
from isogroup.core.drivers import DRIVER_NAME
from isogroup.core.model import Finding, Header, HostTopology, IommuGroup, PciFunction, UseCode
from isogroup.errors import InputError
from isogroup.files import FileRefused, read_regular
from isogroup.formats import jsondoc

FORMAT = "isogroup-host"
VERSION = 2  # 2 added config-space capabilities (PCIe port type, ACS) and host-use findings
READABLE_VERSIONS = (1, 2)
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
# A snapshot is an object of lists of flat objects (a finding's or a function's lists nest one level more).
MAX_DEPTH = 5
MAX_GROUP = 2**31 - 1  # the kernel numbers IOMMU groups with an int (drivers/iommu/iommu.c, ida_alloc)
MAX_TEXT = 4096  # a finding's subject or message is a line of text


def _function_to_json(f: PciFunction) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "address": str(f.address),
        "vendor": f"{f.vendor:04x}",
        "device": f"{f.device:04x}",
        "class": f"{f.class_code:06x}",
        "header": f.header.value,
        "multifunction": f.multifunction,
        "driver": f.driver,
        "driver_override": f.driver_override,
        "iommu_group": f.iommu_group,
        "parent": str(f.parent) if f.parent else None,
        "boot_vga": f.boot_vga,
        "physfn": str(f.physfn) if f.physfn else None,
        "sriov_totalvfs": f.sriov_totalvfs,
        "sriov_numvfs": f.sriov_numvfs,
        "capabilities_read": f.capabilities_read,
        "pcie_type": f.pcie_type,
        "acs_cap": f.acs_cap,
        "acs_ctrl": f.acs_ctrl,
    }
    # Optional, written only when known: a snapshot without them (an older isogroup's) reads back the same.
    if f.subsystem is not None:
        doc["subsystem"] = f"{f.subsystem[0]:04x}:{f.subsystem[1]:04x}"
    if f.reset_methods is not None:
        doc["reset_methods"] = list(f.reset_methods)
    return doc


def to_json(topology: HostTopology) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "iommu": topology.iommu,
        "functions": [_function_to_json(f) for f in topology.functions],
        "groups": [{"group": g.number, "members": [str(m) for m in g.members]} for g in topology.groups],
        "probed": topology.probed,
        "findings": [
            {"address": str(f.address), "code": f.code.value, "subject": f.subject, "message": f.message}
            for f in topology.findings
        ],
    }


def dumps(topology: HostTopology) -> str:
    return json.dumps(to_json(topology), indent=2) + "\n"


# The hex fields' grammars, by width: IDs (vendor, device) and the class code; a subsystem's vendor:device pair.
_HEX = {digits: re.compile(f"[0-9a-f]{{{digits}}}") for digits in (4, 6)}
_IDS = re.compile("[0-9a-f]{4}:[0-9a-f]{4}")


class _Reader:
    """Typed access to one JSON object, with errors that name the field."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected an object")
        self.obj: dict[str, object] = obj
        self.where = where

    def _get(self, key: str, kinds: tuple[type, ...], optional: bool) -> object:
        if key not in self.obj:
            if optional:
                return None
            raise InputError(f"{self.where}: missing {key!r}")
        value = self.obj[key]
        if value is None and optional:
            return None
        # bool is an int in Python; a snapshot that says `"vendor": true` is wrong, not 1.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise InputError(f"{self.where}: {key!r} has the wrong type")
        return value

    # Each accessor takes the exact JSON type at once (a snapshot of 4,096 functions reads some 80,000 fields);
    # anything else goes through `_get`, which accepts nothing more and says what is wrong.

    def text(self, key: str) -> str:
        value = self.obj.get(key)
        if type(value) is str:
            return value
        value = self._get(key, (str,), optional=False)
        assert isinstance(value, str)
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None or type(value) is str:
            return value
        value = self._get(key, (str,), optional=True)
        return value if isinstance(value, str) else None

    def line(self, key: str) -> str:
        """Free text that a report prints as part of one line: printable, bounded."""
        text = self.text(key)
        if len(text) > MAX_TEXT or not text.isprintable():
            raise InputError(f"{self.where}: {key!r} must be one line of printable text (at most {MAX_TEXT})")
        return text

    def driver(self, key: str) -> str | None:
        name = self.opt_text(key)
        if name is not None and not DRIVER_NAME.fullmatch(name):
            raise InputError(f"{self.where}: {key!r} is {_shown(name)}, not a kernel driver's name")
        return name

    def flag(self, key: str) -> bool:
        value = self.obj.get(key)
        if type(value) is bool:
            return value
        value = self._get(key, (bool,), optional=False)
        return value is True

    def opt_int(self, key: str) -> int | None:
        value = self.obj.get(key)
        if value is None or type(value) is int:  # exactly int: a bool is not a number here
            return value
        value = self._get(key, (int,), optional=True)
        return value if isinstance(value, int) else None

    def hex(self, key: str, digits: int) -> int:
        text = self.text(key)
        if not _HEX[digits].fullmatch(text):
            raise InputError(f"{self.where}: {key!r} must be {digits} lower-case hex digits")
        return int(text, 16)

    def opt_ids(self, key: str) -> tuple[int, int] | None:
        text = self.opt_text(key)
        if text is None:
            return None
        if not _IDS.fullmatch(text):
            raise InputError(f"{self.where}: {key!r} must be vvvv:dddd in lower-case hex")
        return int(text[:4], 16), int(text[5:], 16)

    def group(self, key: str) -> int | None:
        value = self.opt_int(key)
        if value is not None and not 0 <= value <= MAX_GROUP:
            raise InputError(f"{self.where}: {key!r} must be a non-negative integer (at most {MAX_GROUP})")
        return value

    def count(self, key: str) -> int | None:
        value = self.opt_int(key)
        if value is not None and value < 0:
            raise InputError(f"{self.where}: {key!r} must not be negative")
        return value

    def _parse_address(self, key: str, text: str) -> PciAddress:
        try:
            return _address(text)
        except InputError as exc:
            raise InputError(f"{self.where} {key!r}: {exc.message}") from None

    def address(self, key: str) -> PciAddress:
        return self._parse_address(key, self.text(key))

    def opt_address(self, key: str) -> PciAddress | None:
        text = self.opt_text(key)
        return self._parse_address(key, text) if text is not None else None

    def items(self, key: str) -> list[object]:
        value = self._get(key, (list,), optional=False)
        assert isinstance(value, list)
        return value


def _function_from_json(obj: object, index: int, version: int) -> PciFunction:
    r = _Reader(obj, f"functions[{index}]")
    v2 = version >= 2  # version 1 knew nothing of capabilities: they stay unknown
    header_text = r.text("header")
    try:
        header = Header(header_text)
    except ValueError:
        raise InputError(f"{r.where}: unknown header {header_text!r}") from None
    return PciFunction(
        address=r.address("address"),
        vendor=r.hex("vendor", 4),
        device=r.hex("device", 4),
        class_code=r.hex("class", 6),
        header=header,
        multifunction=r.flag("multifunction"),
        driver=r.driver("driver"),
        driver_override=r.driver("driver_override"),
        iommu_group=r.group("iommu_group"),
        parent=r.opt_address("parent"),
        boot_vga=r.flag("boot_vga"),
        physfn=r.opt_address("physfn"),
        sriov_totalvfs=r.count("sriov_totalvfs"),
        sriov_numvfs=r.count("sriov_numvfs"),
        capabilities_read=r.flag("capabilities_read") if v2 else False,
        pcie_type=r.count("pcie_type") if v2 else None,
        acs_cap=r.count("acs_cap") if v2 else None,
        acs_ctrl=r.count("acs_ctrl") if v2 else None,
        subsystem=r.opt_ids("subsystem"),  # optional in any version: snapshots before it stay readable
        reset_methods=_reset_methods(r),
    )


# A reset method's name as the kernel spells it (drivers/pci/pci.c pci_reset_fn_methods[]: "flr", "af_flr",
# "device_specific", "cxl_bus"); the kernel knows fewer than ten.
_RESET_METHOD = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_RESET_METHODS = 16


def _reset_methods(r: _Reader) -> tuple[str, ...] | None:
    """Optional (added within version 2; absent or null: not known)."""
    if r.obj.get("reset_methods") is None:
        return None
    items = r.items("reset_methods")
    if len(items) > _MAX_RESET_METHODS or not all(isinstance(m, str) and _RESET_METHOD.fullmatch(m) for m in items):
        raise InputError(f"{r.where}: 'reset_methods' must be a short list of reset method names")
    if len(set(items)) != len(items):
        raise InputError(f"{r.where}: 'reset_methods' lists a method twice")
    return tuple(str(m) for m in items)


def _finding_from_json(obj: object, index: int) -> Finding:
    r = _Reader(obj, f"findings[{index}]")
    code = r.text("code")
    try:
        use = UseCode(code)
    except ValueError:
        raise InputError(f"{r.where}: unknown code {code!r}") from None
    return Finding(r.address("address"), use, r.line("subject"), r.line("message"))


def from_json(doc: object, source: str = "") -> HostTopology:
    r = _Reader(doc, source or "snapshot")
    if r.obj.get("format") != FORMAT:
        raise InputError(f"{r.where}: not an isogroup host snapshot (format must be {FORMAT!r})")
    version = r.obj.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise InputError(f"{r.where}: snapshot version {version!r} is not supported (this isogroup reads {VERSION})")
    functions = [_function_from_json(f, i, version) for i, f in enumerate(r.items("functions"))]
    findings: list[Finding] = []
    probed = False
    if version >= 2:
        probed = r.flag("probed")
        findings = [_finding_from_json(f, i) for i, f in enumerate(r.items("findings"))]
    groups = []
    for i, g in enumerate(r.items("groups")):
        gr = _Reader(g, f"groups[{i}]")
        number = gr.group("group")
        if number is None:
            raise InputError(f"{gr.where}: 'group' must be a non-negative integer (at most {MAX_GROUP})")
        members = tuple(
            gr._parse_address("members", m) if isinstance(m, str) else _bad(gr.where) for m in gr.items("members")
        )
        if not members:
            raise InputError(f"{gr.where}: group {number} has no members")
        if len(set(members)) != len(members):
            raise InputError(f"{gr.where}: group {number} lists a member twice")
        groups.append(IommuGroup(number, members))
    topology = HostTopology.build(r.flag("iommu"), functions, groups, source=source, findings=findings, probed=probed)
    _check_consistent(topology, r.where)
    return topology


def _bad(where: str) -> PciAddress:
    raise InputError(f"{where}: members must be PCI address strings")


def _check_consistent(topology: HostTopology, where: str) -> None:
    """A snapshot is a claim about a kernel; refuse one no kernel could have produced."""
    if len(topology.by_address) != len(topology.functions):
        raise InputError(f"{where}: a PCI address is listed twice")
    if len(topology.by_group) != len(topology.groups):
        raise InputError(f"{where}: an IOMMU group is listed twice")
    if topology.groups and not topology.iommu:
        raise InputError(f"{where}: groups are listed but 'iommu' is false")
    for group in topology.groups:
        for member in group.members:
            func = topology.function(member)
            if func is None:
                raise InputError(f"{where}: group {group.number} lists {member}, which is not a function")
            if func.iommu_group != group.number:
                raise InputError(f"{where}: {member} is listed in group {group.number} but says {func.iommu_group}")
    for finding in topology.findings:
        if finding.address not in topology.by_address:
            raise InputError(f"{where}: a finding names {finding.address}, which is not a function")
    if topology.findings and not topology.probed:
        raise InputError(f"{where}: findings are listed but 'probed' is false")
    for func in topology.functions:
        if func.iommu_group is None:
            continue
        listed = topology.by_group.get(func.iommu_group)
        if listed is None:
            raise InputError(f"{where}: {func.address} names group {func.iommu_group}, which is not listed")
        if func.address not in listed.members:
            raise InputError(f"{where}: {func.address} names group {func.iommu_group}, which does not list it")


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> PciAddress:
    """Each address of a snapshot is written up to four times (the function, its group, its children's parent,
    a VF's physfn): parsed once. Cached across loads too; a PciAddress is immutable."""
    return PciAddress.parse(text)


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def loads(data: bytes, source: str) -> HostTopology:
    """The snapshot in `data`; InputError (one line naming `source`) for anything else."""
    try:
        doc = jsondoc.loads(data, max_depth=MAX_DEPTH)
    except jsondoc.JsonRefused as exc:
        raise InputError(f"host snapshot {source} is not valid JSON (as a snapshot takes it): {exc}") from None
    return from_json(doc, source=source)


def load(path: Path) -> HostTopology:
    try:
        data = read_regular(path, MAX_SNAPSHOT_BYTES)
    except FileRefused as exc:
        if exc.errno == errno.EFBIG:
            raise InputError(f"host snapshot {path} is {exc.strerror}") from None
        raise InputError(f"cannot read host snapshot {path}: {exc.strerror}") from None
    except OSError as exc:
        raise InputError(f"cannot read host snapshot {path}: {exc.strerror or exc}") from None
    return loads(data, str(path))
