"""The one place isogroup talks to libvirt (libvirt-python), for the CLI's virsh-like workflows only.

The hook never imports this module: a hook that calls back into libvirt is likely to deadlock the daemon
(FIELD.md §1). `libvirt` itself is imported on first use, so importing the CLI stays cheap, and libvirt's
default error handler (which prints every error on stderr) is replaced: each failure becomes one IsogroupError.

Never call into libvirt while holding the ledger's lock: libvirtd may be running a hook that waits for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from lxml import etree

from isogroup.core.address import PciAddress
from isogroup.errors import HostError, InputError, IsogroupError

# libvirt's constants (include/libvirt/libvirt-domain.h, virterror.h), stable ABI: named here so that code
# which only formats or classifies does not need the module.
AFFECT_CURRENT = 0
AFFECT_LIVE = 1
AFFECT_CONFIG = 2
XML_INACTIVE = 2
LIST_NODE_DEVICES_CAP_PCI_DEV = 2

ERR_NO_DOMAIN = 42
# Errors that say the request itself was wrong, not that the host failed to carry it out.
_INPUT_ERRORS = frozenset(
    {
        8,  # VIR_ERR_INVALID_ARG
        27,  # VIR_ERR_XML_ERROR
        35,  # VIR_ERR_XML_DETAIL
        55,  # VIR_ERR_OPERATION_INVALID (e.g. the domain is not running)
        67,  # VIR_ERR_CONFIG_UNSUPPORTED
        74,  # VIR_ERR_ARGUMENT_UNSUPPORTED
        99,  # VIR_ERR_DEVICE_MISSING
    }
)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's error callback: the error is raised as libvirtError anyway; do not print it too."""


_module: Any = None


def _libvirt() -> Any:
    global _module  # noqa: PLW0603 - the module is loaded once per process, on first use
    if _module is None:
        try:
            import libvirt  # noqa: PLC0415 - lazy: only the virsh-like commands pay for it
        except ImportError:
            raise InputError(
                "libvirt-python is not installed: run scripts/setup.sh (pip install libvirt-python)"
            ) from None
        libvirt.registerErrorHandler(_quiet, None)
        _module = libvirt
    return _module


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    text = get() if callable(get) else None
    return " ".join(str(text or exc).split())  # one line


def _code(exc: Exception) -> int | None:
    get = getattr(exc, "get_error_code", None)
    code = get() if callable(get) else None
    return code if isinstance(code, int) else None


def failure(exc: Exception, doing: str) -> IsogroupError:
    """A libvirt error as isogroup's error: a wrong request is InputError (exit 2), anything else HostError."""
    text = f"libvirt refused to {doing}: {_message(exc)}"
    return InputError(text) if _code(exc) in _INPUT_ERRORS else HostError(text)


@dataclass(frozen=True)
class LibvirtDomain:
    """A domain as libvirt shows it: `xml` is the live definition of a running domain, the persistent one
    of a domain that is shut off."""

    name: str
    active: bool
    persistent: bool
    xml: bytes


@dataclass(frozen=True)
class NodeDevice:
    """A PCI node device: libvirt's view of one function and its IOMMU group."""

    name: str
    address: PciAddress
    iommu_group: int | None
    group_members: tuple[PciAddress, ...]
    driver: str | None  # None when libvirt does not say (its test driver never does)


class Virt:
    """One connection. Use `Virt.open(uri)` as a context manager."""

    def __init__(self, conn: Any, uri: str) -> None:
        self._conn = conn
        self.uri = uri

    @classmethod
    @contextmanager
    def open(cls, uri: str | None, *, read_only: bool) -> Iterator[Virt]:
        libvirt = _libvirt()
        shown = uri or "libvirt's default URI"
        try:
            conn = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise InputError(f"cannot connect to libvirt at {shown}: {_message(exc)}") from None
        try:
            yield cls(conn, str(conn.getURI()))
        finally:
            with suppress(libvirt.libvirtError):
                conn.close()

    def _lookup(self, name: str) -> Any:
        libvirt = _libvirt()
        try:
            return self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == ERR_NO_DOMAIN:
                raise InputError(f"libvirt at {self.uri} has no domain '{name}'") from None
            raise HostError(f"cannot look up domain '{name}' at {self.uri}: {_message(exc)}") from None

    def _describe(self, dom: Any, inactive: bool = False) -> LibvirtDomain:
        libvirt = _libvirt()
        try:
            active = bool(dom.isActive())
            xml = dom.XMLDesc(XML_INACTIVE if inactive or not active else 0)
            return LibvirtDomain(str(dom.name()), active, bool(dom.isPersistent()), str(xml).encode())
        except libvirt.libvirtError as exc:
            raise HostError(f"cannot read domain '{dom.name()}' from {self.uri}: {_message(exc)}") from None

    def domain(self, name: str, *, inactive: bool = False) -> LibvirtDomain:
        """The domain called `name`; InputError when libvirt has none. `inactive`: its persistent definition
        even while it runs."""
        return self._describe(self._lookup(name), inactive)

    def domains(self, *, active_only: bool = False) -> list[LibvirtDomain]:
        """Every domain libvirt knows, defined and running (or only the running ones), sorted by name.
        A domain that disappears while being read is left out."""
        libvirt = _libvirt()
        try:
            found = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0)
        except libvirt.libvirtError as exc:
            raise HostError(f"cannot list the domains at {self.uri}: {_message(exc)}") from None
        out = []
        for dom in found:
            try:
                out.append(self._describe(dom))
            except HostError:
                if self._still_there(dom):
                    raise
        return sorted(out, key=lambda d: d.name)

    def _still_there(self, dom: Any) -> bool:
        libvirt = _libvirt()
        try:
            dom.info()
        except libvirt.libvirtError:
            return False
        return True

    def node_devices(self) -> list[NodeDevice]:
        """Every PCI node device libvirt knows, with the IOMMU group it reports."""
        libvirt = _libvirt()
        try:
            devices = self._conn.listAllDevices(LIST_NODE_DEVICES_CAP_PCI_DEV)
            docs = [str(d.XMLDesc(0)) for d in devices]
        except libvirt.libvirtError as exc:
            raise HostError(f"cannot list the node devices at {self.uri}: {_message(exc)}") from None
        return sorted((n for doc in docs if (n := parse_node_device(doc)) is not None), key=lambda n: n.address)

    def attach(self, name: str, device_xml: str, flags: int) -> None:
        self._change(name, device_xml, flags, attach=True)

    def detach(self, name: str, device_xml: str, flags: int) -> None:
        self._change(name, device_xml, flags, attach=False)

    def _change(self, name: str, device_xml: str, flags: int, *, attach: bool) -> None:
        libvirt = _libvirt()
        dom = self._lookup(name)
        try:
            if attach:
                dom.attachDeviceFlags(device_xml, flags)
            else:
                dom.detachDeviceFlags(device_xml, flags)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"{'attach the device to' if attach else 'detach the device from'} '{name}'") from None


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    try:
        return int(text[2:], 16) if text[:2] in ("0x", "0X") else int(text, 10)
    except ValueError:
        return None


def _address_of(element: etree._Element) -> PciAddress | None:
    values = [_number(element.get(f)) for f in ("domain", "bus", "slot", "function")]
    if any(v is None for v in values):
        return None
    domain, bus, slot, function = (v or 0 for v in values)
    try:
        return PciAddress(domain, bus, slot, function)
    except InputError:
        return None


def parse_node_device(xml: str | bytes) -> NodeDevice | None:
    """A `<device>` document with a `<capability type='pci'>`; None for anything else."""
    try:
        root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _parser())
    except etree.XMLSyntaxError:
        return None
    cap = root.find("capability[@type='pci']")
    if root.tag != "device" or cap is None:
        return None
    fields = [_number(cap.findtext(f)) for f in ("domain", "bus", "slot", "function")]
    if any(f is None for f in fields):
        return None
    domain, bus, slot, function = (f or 0 for f in fields)
    try:
        address = PciAddress(domain, bus, slot, function)
    except InputError:
        return None
    group = cap.find("iommuGroup")
    number = _number(group.get("number")) if group is not None else None
    members = tuple(a for e in group.iterfind("address") if (a := _address_of(e))) if group is not None else ()
    driver = (root.findtext("driver/name") or "").strip() or None
    return NodeDevice((root.findtext("name") or "").strip(), address, number, members, driver)
