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

from isogroup.core.address import PciAddress
from isogroup.errors import HostError, InputError, IsogroupError
from isogroup.formats.xml import parse_number, parse_xml

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

    def node_devices(self) -> list[NodeDevice | UnreadableNodeDevice]:
        """Every PCI node device libvirt knows, with the IOMMU group it reports, sorted by address; then those
        whose documents isogroup cannot read, by name (`agreement.compare` reports them)."""
        libvirt = _libvirt()
        try:
            devices = self._conn.listAllDevices(LIST_NODE_DEVICES_CAP_PCI_DEV)
            docs = [(str(d.name()), str(d.XMLDesc(0))) for d in devices]
        except libvirt.libvirtError as exc:
            raise HostError(f"cannot list the node devices at {self.uri}: {_message(exc)}") from None
        read: list[NodeDevice] = []
        unreadable: list[UnreadableNodeDevice] = []
        for name, doc in docs:
            try:
                node = parse_node_device(doc, f"libvirt's node device {name!r}")
            except InputError as exc:
                unreadable.append(UnreadableNodeDevice(name, exc.message))
                continue
            if node is None:  # listed as PCI, yet no PCI capability: as unknown as a broken document
                unreadable.append(UnreadableNodeDevice(name, f"libvirt's node device {name!r} has no PCI capability"))
            else:
                read.append(node)
        return [*sorted(read, key=lambda n: n.address), *sorted(unreadable, key=lambda u: u.name)]

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


@dataclass(frozen=True)
class UnreadableNodeDevice:
    """A node device libvirt listed as PCI whose document isogroup could not read: reported, never dropped,
    since a device left out would look removed from the host (a false `device-gone`)."""

    name: str
    reason: str  # one line


def _field(name: str, text: str | None, origin: str) -> int:
    if text is None:
        raise InputError(f"{origin}: no {name}")
    try:
        return parse_number(text)
    except InputError as exc:
        raise InputError(f"{origin}: {name} {exc.message}") from None


def _address(origin: str, fields: dict[str, str | None]) -> PciAddress:
    values = [_field(f, fields[f], origin) for f in ("domain", "bus", "slot", "function")]
    try:
        return PciAddress(*values)
    except InputError as exc:
        raise InputError(f"{origin}: {exc.message}") from None


def parse_node_device(xml: str | bytes, origin: str = "node device") -> NodeDevice | None:
    """A `<device>` document with a `<capability type='pci'>` (libvirt's virNodeDeviceDefFormat: decimal
    <domain>/<bus>/<slot>/<function>, hex address attributes in <iommuGroup>), through the one parser and the
    one number grammar; None for a device that is not PCI. InputError for anything it cannot read exactly."""
    root = parse_xml(xml, origin, kind="node device")
    cap = root.find("capability[@type='pci']")
    if root.tag != "device" or cap is None:
        return None
    address = _address(origin, {f: cap.findtext(f) for f in ("domain", "bus", "slot", "function")})
    group = cap.find("iommuGroup")
    number = members = None
    if group is not None:
        number = _field("iommuGroup number", group.get("number"), origin)
        members = tuple(
            _address(f"{origin} <iommuGroup>", {f: e.get(f) for f in ("domain", "bus", "slot", "function")})
            for e in group.iterfind("address")
        )
    driver = (root.findtext("driver/name") or "").strip() or None
    return NodeDevice((root.findtext("name") or "").strip(), address, number, members or (), driver)
