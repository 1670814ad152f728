"""Reads the PCI passthrough requests out of a libvirt domain XML document, safely.

The document may come from a user, a CI job or libvirt itself; it is parsed with no DTD, no entities and no
network, under a size limit, and anything this module cannot read exactly is an InputError naming the line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from isogroup.core.address import PciAddress
from isogroup.core.domain import DomainSpec, MdevRequest, NetworkRequest, PciRequest, Source
from isogroup.core.drivers import DRIVER_NAME
from isogroup.errors import InputError, Origin
from isogroup.formats.policyfile import read_domain_policy
from isogroup.formats.xml import line as _line
from isogroup.formats.xml import parse_number, parse_xml


def _where(origin: str, element: etree._Element | None) -> str:
    line = _line(element) if element is not None else None
    return f"{origin} line {line}" if line else origin


def _bad(origin: str, element: etree._Element | None, what: str) -> InputError:
    """`what` is wrong at `element` of the document `origin`: one line naming the place, and the place as data."""
    return InputError(f"{_where(origin, element)}: {what}", origin=Origin(origin, _line(element)))


def _pci_address(element: etree._Element | None, origin: str, owner: etree._Element) -> PciAddress:
    if element is None:
        raise _bad(origin, owner, "PCI hostdev has no <source><address .../>")
    values = {}
    for attr in ("domain", "bus", "slot", "function"):
        raw = element.get(attr)
        if raw is None:
            # libvirt's virPCIDeviceAddressParseXML leaves an absent attribute 0 (its schema makes each optional).
            values[attr] = 0
            continue
        try:
            values[attr] = parse_number(raw)
        except InputError as exc:
            raise _bad(origin, element, f"address {attr}={exc.message}") from None
    try:
        return PciAddress(**values)
    except InputError as exc:
        raise _bad(origin, element, exc.message) from None


def _managed(element: etree._Element, origin: str) -> bool:
    value = element.get("managed")
    if value is None:
        return False  # libvirt's default: the user detaches the device
    if value not in ("yes", "no"):
        raise _bad(origin, element, f"managed={value!r} must be 'yes' or 'no'")
    return value == "yes"


def _model(element: etree._Element, origin: str) -> str | None:
    """`<driver model='NAME'/>` of a PCI hostdev (or of an <interface type='hostdev'> or its <actual>): the one
    hostdevDriver element of libvirt's schema (src/conf/schemas/basictypes.rng: attributes name = kvm|vfio|xen
    and model, a genericName), read by virDeviceHostdevPCIDriverInfoParseXML (src/conf/device_conf.c). The
    name goes into sysfs paths (drivers/NAME/bind), so it must be a driver name."""
    driver = element.find("driver")
    model = driver.get("model") if driver is not None else None
    if model is None:
        return None
    if DRIVER_NAME.fullmatch(model) is None:
        raise _bad(origin, driver, f"<driver model={model[:80]!r}/> is not a driver name")
    return model


def parse_domain(data: bytes | str, origin: str = "domain XML") -> DomainSpec:
    return read_domain(parse_xml(data, origin), origin)


def read_domain(root: etree._Element, origin: str) -> DomainSpec:
    """The domain document already parsed by `parse_xml`, so that a caller which also validates it (`check`
    against libvirt's schema) parses each file once."""
    if root.tag != "domain":
        raise InputError(f"{origin}: the root element is <{root.tag}>, not <domain>")
    return _read_domain(root, origin)


@dataclass(frozen=True)
class Device:
    """A device document as given to `virsh attach-device` / `detach-device`: its text, to hand to libvirt,
    and its PCI requests under the guest's name."""

    xml: str
    spec: DomainSpec

    @property
    def addresses(self) -> frozenset[PciAddress]:
        return self.spec.addresses


def parse_device(data: bytes, where: str, domain: DomainSpec | str, uuid: str | None = None) -> Device:
    """One device element (`<hostdev>`, `<interface>`, ...) as `virsh attach-device` takes it, read with the
    same parser as a domain document and by the same field readers, in place: line numbers are the
    element's own. `domain`: the guest it goes to (its name, uuid and <metadata> policy carry over), or just
    a name."""
    guest = domain if isinstance(domain, DomainSpec) else DomainSpec(domain, uuid, ())
    root = parse_xml(data, where, kind="device")
    if root.tag == "domain":
        raise InputError(f"{where}: this is a whole domain; give one device element (e.g. <hostdev>)")
    pci, mdevs, networks = _read_devices([root], where)
    spec = DomainSpec(guest.name, guest.uuid, pci, mdevs, networks, guest.policy)
    return Device(etree.tostring(root, encoding="unicode"), spec)


def parse_status(data: bytes, origin: str) -> DomainSpec | None:
    """A libvirt status file: `<domstatus>` around the running `<domain>`; None for other state files."""
    root = parse_xml(data, origin)
    domain = root.find("domain") if root.tag == "domstatus" else None
    return _read_domain(domain, origin) if domain is not None else None


def _read_domain(root: etree._Element, origin: str) -> DomainSpec:
    # Exactly as written, spaces included: libvirt keeps them, and a guest is identified by its name byte for byte.
    name = root.findtext("name") or ""
    if not name.strip():
        raise InputError(f"{origin}: the domain has no <name>")
    uuid = (root.findtext("uuid") or "").strip() or None

    pci, mdevs, networks = _read_devices(root.iterfind("devices/*"), origin)
    return DomainSpec(name, uuid, pci, mdevs, networks, read_domain_policy(root, origin))


def _read_devices(
    devices: Iterable[etree._Element], origin: str
) -> tuple[tuple[PciRequest, ...], tuple[MdevRequest, ...], tuple[NetworkRequest, ...]]:
    """The requests among `devices` (the children of a domain's <devices>, or one device document's root)."""
    pci: list[PciRequest] = []
    mdevs: list[MdevRequest] = []
    networks: list[NetworkRequest] = []
    for dev in devices:
        if dev.tag == "hostdev":
            if dev.get("mode", "subsystem") != "subsystem":
                continue
            kind = dev.get("type")
            if kind == "pci":
                address = _pci_address(dev.find("source/address"), origin, dev)
                pci.append(PciRequest(address, _managed(dev, origin), Source.HOSTDEV, _line(dev), _model(dev, origin)))
            elif kind == "mdev":
                uuid_el = dev.find("source/address")
                mdev_uuid = uuid_el.get("uuid") if uuid_el is not None else None
                if not mdev_uuid:
                    raise _bad(origin, dev, "mdev hostdev has no <source><address uuid=.../>")
                mdevs.append(MdevRequest(mdev_uuid, dev.get("model")))
        elif dev.tag == "interface":
            kind = dev.get("type")
            if kind == "hostdev":
                address = _pci_address(dev.find("source/address"), origin, dev)
                pci.append(
                    PciRequest(address, _managed(dev, origin), Source.INTERFACE, _line(dev), _model(dev, origin))
                )
            elif kind == "network":
                _read_network_interface(dev, origin, pci, networks)

    seen: dict[PciAddress, PciRequest] = {}
    for request in pci:
        if request.address in seen:
            raise InputError(
                f"{origin} line {request.line}: {request.address} is already assigned at line "
                f"{seen[request.address].line}",
                origin=Origin(origin, request.line),
            )
        seen[request.address] = request
    return tuple(pci), tuple(mdevs), tuple(networks)


def _read_network_interface(
    dev: etree._Element, origin: str, pci: list[PciRequest], networks: list[NetworkRequest]
) -> None:
    source = dev.find("source")
    network = source.get("network", "") if source is not None else ""
    # In live and status XML libvirt records the device it picked as <actual type='hostdev'>.
    actual = dev.find("actual")
    if actual is not None and actual.get("type") == "hostdev":
        address = _pci_address(actual.find("source/address"), origin, actual)
        pci.append(PciRequest(address, _managed(actual, origin), Source.NETWORK, _line(actual), _model(actual, origin)))
    else:
        networks.append(NetworkRequest(network))
