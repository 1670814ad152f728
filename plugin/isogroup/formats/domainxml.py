"""Reads the PCI passthrough requests out of a libvirt domain XML document, safely.

The document may come from a user, a CI job or libvirt itself; it is parsed with no DTD, no entities and no
network, under a size limit, and anything this module cannot read exactly is an InputError naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from lxml import etree

from isogroup.core.address import PciAddress
from isogroup.core.policy import DomainPolicy, read_domain_policy
from isogroup.errors import InputError

MAX_XML_BYTES = 4 * 1024 * 1024  # libvirt's own domain documents are a few KiB; this is generous


class Source(StrEnum):
    """How the domain XML named the device."""

    HOSTDEV = "hostdev"  # <hostdev mode='subsystem' type='pci'>
    INTERFACE = "interface"  # <interface type='hostdev'>: an SR-IOV VF given as a NIC
    NETWORK = "network"  # <interface type='network'> whose hostdev pool libvirt already picked a VF from


@dataclass(frozen=True)
class PciRequest:
    address: PciAddress
    managed: bool
    source: Source
    line: int | None = None


@dataclass(frozen=True)
class MdevRequest:
    """A mediated device: its own IOMMU group, owned by the parent's driver; its parent is never detached."""

    uuid: str
    model: str | None


@dataclass(frozen=True)
class NetworkRequest:
    """An interface on a libvirt network: if that network is a hostdev pool, libvirt picks the VF after the
    prepare hook, so it can only be checked at `start begin`."""

    network: str


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str | None
    pci: tuple[PciRequest, ...]
    mdevs: tuple[MdevRequest, ...] = ()
    networks: tuple[NetworkRequest, ...] = ()
    policy: DomainPolicy = field(default_factory=DomainPolicy)  # the domain's <metadata><isogroup:policy>


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def _line(element: etree._Element) -> int | None:
    # lxml-stubs mistype sourceline; it is an int, or None for a tree built in memory.
    line = getattr(element, "sourceline", None)
    return line if isinstance(line, int) else None


def _where(origin: str, element: etree._Element | None) -> str:
    line = _line(element) if element is not None else None
    return f"{origin} line {line}" if line else origin


_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def parse_number(text: str) -> int:
    """An address attribute as libvirt reads it (strtoul, base 0): `0x1f` is hex, `010` octal, `31` decimal.
    ASCII digits only, no sign, no spaces, no underscores: exactly what libvirt's virStrToLong_uip accepts."""
    if not _NUMBER.fullmatch(text):
        raise InputError(f"{text!r} is not a number")
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if text.startswith("0"):
        return int(text, 8)
    return int(text, 10)


def _pci_address(element: etree._Element | None, origin: str, owner: etree._Element) -> PciAddress:
    if element is None:
        raise InputError(f"{_where(origin, owner)}: PCI hostdev has no <source><address .../>")
    values = {}
    for attr in ("domain", "bus", "slot", "function"):
        raw = element.get(attr)
        if raw is None:
            if attr == "domain":
                values[attr] = 0
                continue
            raise InputError(f"{_where(origin, element)}: <address> has no {attr!r} attribute")
        try:
            values[attr] = parse_number(raw)
        except InputError as exc:
            raise InputError(f"{_where(origin, element)}: address {attr}={raw!r}: {exc.message}") from None
    try:
        return PciAddress(**values)
    except InputError as exc:
        raise InputError(f"{_where(origin, element)}: {exc.message}") from None


def _managed(element: etree._Element, origin: str) -> bool:
    value = element.get("managed")
    if value is None:
        return False  # libvirt's default: the user detaches the device
    if value not in ("yes", "no"):
        raise InputError(f"{_where(origin, element)}: managed={value!r} must be 'yes' or 'no'")
    return value == "yes"


def parse_xml(data: bytes | str, origin: str) -> etree._Element:
    """The one way isogroup parses libvirt XML: a size limit, no DTD, no entities, no network, no DOCTYPE."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise InputError(f"{origin}: larger than {MAX_XML_BYTES} bytes; not a domain document")
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{origin}: malformed XML: {exc.msg}") from None
    tree = root.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise InputError(f"{origin}: a DOCTYPE is not allowed in a domain document")
    return root


def parse_domain(data: bytes | str, origin: str = "domain XML") -> DomainSpec:
    root = parse_xml(data, origin)
    if root.tag != "domain":
        raise InputError(f"{origin}: the root element is <{root.tag}>, not <domain>")
    return _read_domain(root, origin)


def parse_status(data: bytes, origin: str) -> DomainSpec | None:
    """A libvirt status file: `<domstatus>` around the running `<domain>`; None for other state files."""
    root = parse_xml(data, origin)
    domain = root.find("domain") if root.tag == "domstatus" else None
    return _read_domain(domain, origin) if domain is not None else None


def _read_domain(root: etree._Element, origin: str) -> DomainSpec:
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InputError(f"{origin}: the domain has no <name>")
    uuid = (root.findtext("uuid") or "").strip() or None

    pci: list[PciRequest] = []
    mdevs: list[MdevRequest] = []
    networks: list[NetworkRequest] = []
    for dev in root.iterfind("devices/*"):
        if dev.tag == "hostdev":
            if dev.get("mode", "subsystem") != "subsystem":
                continue
            kind = dev.get("type")
            if kind == "pci":
                address = _pci_address(dev.find("source/address"), origin, dev)
                pci.append(PciRequest(address, _managed(dev, origin), Source.HOSTDEV, _line(dev)))
            elif kind == "mdev":
                uuid_el = dev.find("source/address")
                mdev_uuid = uuid_el.get("uuid") if uuid_el is not None else None
                if not mdev_uuid:
                    raise InputError(f"{_where(origin, dev)}: mdev hostdev has no <source><address uuid=.../>")
                mdevs.append(MdevRequest(mdev_uuid, dev.get("model")))
        elif dev.tag == "interface":
            kind = dev.get("type")
            if kind == "hostdev":
                address = _pci_address(dev.find("source/address"), origin, dev)
                pci.append(PciRequest(address, _managed(dev, origin), Source.INTERFACE, _line(dev)))
            elif kind == "network":
                _read_network_interface(dev, origin, pci, networks)

    seen: dict[PciAddress, PciRequest] = {}
    for request in pci:
        if request.address in seen:
            raise InputError(
                f"{origin} line {request.line}: {request.address} is already assigned at line "
                f"{seen[request.address].line}"
            )
        seen[request.address] = request
    return DomainSpec(name, uuid, tuple(pci), tuple(mdevs), tuple(networks), read_domain_policy(root, origin))


def _read_network_interface(
    dev: etree._Element, origin: str, pci: list[PciRequest], networks: list[NetworkRequest]
) -> None:
    source = dev.find("source")
    network = source.get("network", "") if source is not None else ""
    # In live and status XML libvirt records the device it picked as <actual type='hostdev'>.
    actual = dev.find("actual")
    if actual is not None and actual.get("type") == "hostdev":
        address = _pci_address(actual.find("source/address"), origin, actual)
        pci.append(PciRequest(address, _managed(actual, origin), Source.NETWORK, _line(actual)))
    else:
        networks.append(NetworkRequest(network))
