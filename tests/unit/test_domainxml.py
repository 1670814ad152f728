"""Reading PCI requests out of libvirt domain XML: address forms, managed, the device kinds, and hostile input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes.hostfixtures import make_host, tree_digest
from isogroup.cli.main import main
from isogroup.core.address import PciAddress
from isogroup.core.domain import DomainSpec, MdevRequest, NetworkRequest, PciRequest, Source
from isogroup.errors import ExitCode, InputError
from isogroup.formats.domainxml import parse_device, parse_domain
from isogroup.formats.xml import MAX_XML_BYTES, parse_number
from isogroup.hook import run as hook
from testpaths import SAMPLES


def domain_xml(devices: str, *, name: str = "guest", extra: str = "") -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>0b3c9d6e-3f0a-4c55-9a0e-5d7f1c2b8e41</uuid>
  <memory unit='KiB'>4194304</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>{extra}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{devices}
  </devices>
</domain>
"""


def hostdev(address_attrs: str, managed: str | None = "yes") -> str:
    m = f" managed='{managed}'" if managed is not None else ""
    return f"<hostdev mode='subsystem' type='pci'{m}><source><address {address_attrs}/></source></hostdev>"


def parse(devices: str) -> DomainSpec:
    return parse_domain(domain_xml(devices))


def only_pci(devices: str) -> PciRequest:
    (request,) = parse(devices).pci
    return request


def refused(data: str | bytes) -> InputError:
    with pytest.raises(InputError) as info:
        parse_domain(data)
    message = str(info.value)
    assert "\n" not in message, f"error must be one line: {message!r}"
    return info.value


# ------------------------------------------------------------------------------------------------ address forms


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x1f", 31),
        ("0X1F", 31),
        ("0x0", 0),
        ("0x0000", 0),
        ("31", 31),
        ("0", 0),
        ("255", 255),
        # libvirt reads address attributes with virStrToLong_uip(..., base 0), i.e. strtoul: a leading 0 means
        # octal. isogroup implements that today; a separate research task is confirming it against libvirt's
        # source (virPCIDeviceAddressParseXML -> virXMLPropUInt(..., 0, ...)). If libvirt turns out to read
        # decimal, these two rows change, and so does pci-bridge-sound's hand-written address.
        ("010", 8),
        ("07", 7),
        ("00", 0),
    ],
)
def test_parse_number(text: str, value: int) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text", ["", "0x", "x1f", "1f", "0xg", "-1", "+1", "1.0", "08", "09", "0x-1", " 1", "1 ", "0_7"]
)
def test_parse_number_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_number(text)


# strtoul (and so libvirt) stops at the first character that is not a digit of the base, and libvirt refuses
# any leftover: none of these is a number to libvirt, though Python's int() accepts underscores, surrounding
# whitespace, a sign and non-ASCII digits.
@pytest.mark.parametrize("text", ["01_0", "0 7", "0+7", "\uff11", "0x\uff11", "\u0663"])
def test_parse_number_rejects_what_strtoul_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_number(text)


def test_hex_and_decimal_name_the_same_device() -> None:
    hexa = only_pci(hostdev("domain='0x0000' bus='0x81' slot='0x1f' function='0x7'")).address
    deci = only_pci(hostdev("domain='0' bus='129' slot='31' function='7'")).address
    assert hexa == deci == PciAddress(0, 0x81, 0x1F, 7)


def test_domain_attribute_absent_means_domain_0() -> None:
    assert only_pci(hostdev("bus='0x01' slot='0x00' function='0x1'")).address == PciAddress(0, 1, 0, 1)


def test_nonzero_pci_domain() -> None:
    assert only_pci(hostdev("domain='0x0001' bus='0' slot='0' function='0'")).address == PciAddress(1, 0, 0, 0)


def test_vmd_domain_above_16_bits() -> None:
    # Intel VMD puts its child devices in PCI domains from 0x10000 up; libvirt's domain is 32-bit.
    address = only_pci(hostdev("domain='0x10000' bus='0xe1' slot='0x00' function='0x0'")).address
    assert address == PciAddress(0x10000, 0xE1, 0, 0)
    assert str(address) == "10000:e1:00.0"


def test_guest_address_is_not_the_host_address() -> None:
    xml = (
        "<hostdev mode='subsystem' type='pci' managed='yes'>"
        "<source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>"
        "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>"
        "</hostdev>"
    )
    assert only_pci(xml).address == PciAddress(0, 1, 0, 0)


FIELDS = ("domain", "bus", "slot", "function")
LIMITS = {"domain": 0xFFFFFFFF, "bus": 0xFF, "slot": 0x1F, "function": 7}


def _forms(value: int) -> st.SearchStrategy[str]:
    forms = [f"{value}", f"{value:#x}", f"0x{value:04x}", f"0X{value:X}"]
    if value:
        forms.append(f"0{value:o}")  # leading-zero octal: see test_parse_number
    return st.sampled_from(forms)


@st.composite
def written_addresses(draw: st.DrawFn) -> tuple[PciAddress, str]:
    values = {f: draw(st.integers(0, LIMITS[f])) for f in FIELDS}
    attrs = []
    for field in FIELDS:
        if field == "domain" and values[field] == 0 and draw(st.booleans()):
            continue  # absent domain = 0
        attrs.append(f"{field}='{draw(_forms(values[field]))}'")
    order = draw(st.permutations(attrs))
    return PciAddress(**values), " ".join(order)


@given(written_addresses())
def test_address_round_trip(case: tuple[PciAddress, str]) -> None:
    address, attrs = case
    assert only_pci(hostdev(attrs)).address == address
    assert PciAddress.parse(str(address)) == address


@given(
    st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), st.integers(LIMITS[f] + 1, LIMITS[f] * 16 + 0xF)))
)
def test_out_of_range_address_is_refused(case: tuple[str, int]) -> None:
    field, value = case
    values = {"domain": "0", "bus": "1", "slot": "0", "function": "0", field: f"{value:#x}"}
    error = refused(domain_xml(hostdev(" ".join(f"{k}='{v}'" for k, v in values.items()))))
    assert f"PCI {field}" in str(error) and "out of range" in str(error)


# ------------------------------------------------------------------------------------------------------ managed


@pytest.mark.parametrize(("managed", "expected"), [("yes", True), ("no", False), (None, False)])
def test_managed(managed: str | None, expected: bool) -> None:
    assert only_pci(hostdev("bus='1' slot='0' function='0'", managed)).managed is expected


@pytest.mark.parametrize("managed", ["YES", "true", "1", "", "on"])
def test_managed_invalid(managed: str) -> None:
    error = refused(domain_xml(hostdev("bus='1' slot='0' function='0'", managed)))
    assert "managed=" in str(error) and "line" in str(error)


# ------------------------------------------------------------------------------------------------- device kinds


def test_hostdev_request() -> None:
    request = only_pci(hostdev("domain='0x0000' bus='0x01' slot='0x00' function='0x0'"))
    assert request == PciRequest(PciAddress(0, 1, 0, 0), True, Source.HOSTDEV, request.line)
    assert request.line is not None and request.line > 1


def test_interface_hostdev_is_a_pci_request() -> None:
    xml = """<interface type='hostdev' managed='yes'>
      <mac address='52:54:00:6d:90:02'/>
      <driver name='vfio'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x0'/></source>
      <vlan><tag id='42'/></vlan>
    </interface>"""
    request = only_pci(xml)
    assert (request.address, request.managed, request.source) == (PciAddress(0, 0x3B, 2, 0), True, Source.INTERFACE)


def test_interface_hostdev_managed_absent_is_no() -> None:
    xml = (
        "<interface type='hostdev'>"
        "<source><address type='pci' bus='0x3b' slot='0x02' function='0x1'/></source>"
        "</interface>"
    )
    assert only_pci(xml).managed is False


def test_interface_hostdev_without_address_is_refused() -> None:
    error = refused(
        domain_xml("<interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:01'/></interface>")
    )
    assert "<source><address" in str(error)


def test_mdev_is_noted_not_planned() -> None:
    xml = """<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'>
      <source><address uuid='4b20d080-1b54-4048-85b3-a6a62d165c01'/></source>
    </hostdev>"""
    spec = parse(xml)
    assert spec.pci == ()
    assert spec.mdevs == (MdevRequest("4b20d080-1b54-4048-85b3-a6a62d165c01", "vfio-pci"),)


def test_mdev_without_uuid_is_refused() -> None:
    refused(domain_xml("<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address/></source></hostdev>"))


def test_network_interface_without_actual_is_a_network_request() -> None:
    xml = "<interface type='network'><source network='x710-vf-pool'/><model type='virtio'/></interface>"
    spec = parse(xml)
    assert spec.pci == ()
    assert spec.networks == (NetworkRequest("x710-vf-pool"),)


def test_network_interface_with_actual_hostdev_is_a_pci_request() -> None:
    xml = """<interface type='network'>
      <source network='x710-vf-pool'/>
      <actual type='hostdev' managed='yes'>
        <driver name='vfio'/>
        <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>
      </actual>
    </interface>"""
    spec = parse(xml)
    assert spec.networks == ()
    (request,) = spec.pci
    assert (request.address, request.managed, request.source) == (PciAddress(0, 0x3B, 2, 1), True, Source.NETWORK)


def test_network_interface_with_actual_bridge_is_not_pci() -> None:
    xml = """<interface type='network'>
      <source network='default'/>
      <actual type='bridge'><source bridge='virbr0'/></actual>
    </interface>"""
    spec = parse(xml)
    assert spec.pci == ()
    assert spec.networks == (NetworkRequest("default"),)


@pytest.mark.parametrize(
    "xml",
    [
        "<hostdev mode='subsystem' type='usb' managed='yes'><source><vendor id='0x046d'/><product id='0xc52b'/>"
        "</source></hostdev>",
        "<hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/>"
        "<address bus='0' target='0' unit='0'/></source></hostdev>",
        "<hostdev mode='subsystem' type='scsi_host'><source protocol='vhost' wwpn='naa.5001405df3e54061'/></hostdev>",
        "<hostdev mode='capabilities' type='storage'><source><block>/dev/sdf1</block></source></hostdev>",
        # mode='capabilities' is never PCI assignment, whatever the type says
        "<hostdev mode='capabilities' type='pci'><source><address bus='1' slot='0' function='0'/></source></hostdev>",
        "<interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>",
        "<interface type='direct'><source dev='eno1' mode='bridge'/></interface>",
        "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/a.qcow2'/>"
        "<target dev='vda' bus='virtio'/><address type='pci' domain='0x0000' bus='0x04' slot='0x00' "
        "function='0x0'/></disk>",
        "<!-- <hostdev mode='subsystem' type='pci'><source><address bus='1' slot='0' function='0'/></source>"
        "</hostdev> -->",
    ],
    ids=["usb", "scsi", "scsi_host", "capabilities-storage", "capabilities-pci", "bridge", "direct", "disk", "comment"],
)
def test_other_devices_are_ignored(xml: str) -> None:
    spec = parse(xml)
    assert (spec.pci, spec.mdevs, spec.networks) == ((), (), ())


def test_name_and_uuid() -> None:
    # Exactly as written: libvirt keeps spaces in a name, and the hook identifies a guest by it byte for byte.
    spec = parse_domain(domain_xml("", name="  win10  "))
    assert (spec.name, spec.uuid) == ("  win10  ", "0b3c9d6e-3f0a-4c55-9a0e-5d7f1c2b8e41")


def test_every_sample_domain_parses() -> None:
    for path in sorted((SAMPLES / "domains").glob("*.xml")):
        spec = parse_domain(path.read_bytes(), str(path))
        assert spec.name == path.stem


# ---------------------------------------------------------------------------------------------- bad addresses


@pytest.mark.parametrize(
    ("attrs", "address"),
    [
        ("slot='0' function='0'", "0000:00:00.0"),
        ("bus='1' function='0'", "0000:01:00.0"),
        ("bus='1' slot='0'", "0000:01:00.0"),
        ("bus='2' slot='3' function='1'", "0000:02:03.1"),
        ("", "0000:00:00.0"),
    ],
)
def test_an_absent_address_attribute_is_0_as_for_libvirt(attrs: str, address: str) -> None:
    """virPCIDeviceAddressParseXML leaves an absent domain, bus, slot or function 0, and libvirt 9.0's schema
    makes each optional: such a domain starts, so isogroup must plan for the device it names."""
    xml = f"<domain><name>g</name><devices><hostdev mode='subsystem' type='pci'><source><address {attrs}/>"
    xml += "</source></hostdev></devices></domain>"
    assert [str(r.address) for r in parse_domain(xml).pci] == [address]


@pytest.mark.parametrize(
    ("attrs", "says"),
    [
        ("bus='one' slot='0' function='0'", "bus='one'"),
        ("bus='0x' slot='0' function='0'", "bus='0x'"),
        ("bus='' slot='0' function='0'", "bus=''"),
        ("bus='-1' slot='0' function='0'", "bus='-1'"),
        ("bus='1.5' slot='0' function='0'", "bus='1.5'"),
        ("bus='1' slot='0' function='08'", "function='08'"),
        ("bus='256' slot='0' function='0'", "out of range"),
        ("bus='1' slot='0x20' function='0'", "out of range"),
        ("bus='1' slot='0' function='8'", "out of range"),
        ("domain='0x100000000' bus='1' slot='0' function='0'", "out of range"),
    ],
)
def test_bad_address(attrs: str, says: str) -> None:
    error = refused(domain_xml(hostdev(attrs)))
    assert says in str(error)
    assert "line " in str(error), "the message should say where"


def test_hostdev_without_source_address() -> None:
    error = refused(domain_xml("<hostdev mode='subsystem' type='pci' managed='yes'><source/></hostdev>"))
    assert "no <source><address" in str(error)


def test_duplicated_address_in_two_spellings() -> None:
    devices = (
        hostdev("domain='0x0000' bus='0x01' slot='0x00' function='0x0'")
        + "\n"
        + hostdev("bus='1' slot='0' function='0'")
    )
    error = refused(domain_xml(devices))
    assert "0000:01:00.0 is already assigned" in str(error)


def test_duplicated_address_across_hostdev_and_interface() -> None:
    devices = (
        hostdev("bus='0x3b' slot='0x02' function='0x0'")
        + "\n<interface type='hostdev' managed='yes'><source><address type='pci' bus='0x3b' slot='0x02' "
        "function='0x0'/></source></interface>"
    )
    assert "already assigned" in str(refused(domain_xml(devices)))


@pytest.mark.parametrize("name", ["", "   "])
def test_missing_name(name: str) -> None:
    assert "no <name>" in str(refused(domain_xml("", name=name)))


def test_no_name_element() -> None:
    assert "no <name>" in str(refused("<domain type='kvm'><devices/></domain>"))


# ----------------------------------------------------------------------------------------------- hostile input

SECRET = "isogroup-test-secret-7f3a9c"


def billion_laughs() -> str:
    entities = "<!ENTITY lol0 'lol'>" + "".join(f"<!ENTITY lol{i} '{f'&lol{i - 1};' * 10}'>" for i in range(1, 10))
    return f"<?xml version='1.0'?><!DOCTYPE domain [{entities}]><domain><name>&lol9;</name></domain>"


def hostile_inputs(secret: Path, dtd: Path) -> dict[str, bytes]:
    """`secret` holds SECRET and `dtd` declares an entity reading it (see the `hostile` fixture)."""
    return {
        "malformed": b"<domain><name>x</name>",
        "not-xml": b"this is not xml",
        "empty": b"",
        "whitespace": b"   \n",
        "not-utf8": b"<domain><name>\xff\xfe</name></domain>",
        "wrong-root": b"<domstatus state='running'><domain><name>x</name></domain></domstatus>",
        "namespaced-root": b"<domain xmlns='http://libvirt.org/schemas/domain/1.0'><name>x</name></domain>",
        "doctype": b"<!DOCTYPE domain><domain><name>x</name></domain>",
        "internal-entity": b"<!DOCTYPE domain [<!ENTITY n 'guest'>]><domain><name>&n;</name></domain>",
        "billion-laughs": billion_laughs().encode(),
        "xxe-passwd": b"<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
        b"<domain><name>&x;</name></domain>",
        "xxe-file": f"<!DOCTYPE domain [<!ENTITY x SYSTEM 'file://{secret}'>]><domain><name>&x;</name></domain>".encode(),
        "xxe-parameter-entity": f"<!DOCTYPE domain [<!ENTITY % ext SYSTEM 'file://{dtd}'> %ext;]>"
        f"<domain><name>&leak;</name></domain>".encode(),
        "external-dtd": f"<!DOCTYPE domain SYSTEM 'file://{dtd}'><domain><name>&leak;</name></domain>".encode(),
        "undefined-entity": b"<domain><name>&x;</name></domain>",
        "oversized": domain_xml("<!-- " + "x" * MAX_XML_BYTES + " -->").encode(),
    }


HOSTILE = sorted(hostile_inputs(Path("secret.txt"), Path("evil.dtd")))


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, bytes]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f"<!ENTITY leak SYSTEM 'file://{secret}'>")
    return hostile_inputs(secret, dtd)


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_input_is_refused(kind: str, hostile: dict[str, bytes]) -> None:
    data = hostile[kind]
    started = time.monotonic()
    error = refused(data)
    assert time.monotonic() - started < 5
    assert SECRET not in str(error) and "root:" not in str(error)


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_input_via_cli(
    kind: str, hostile: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "domain.xml"
    path.write_bytes(hostile[kind])
    host = SAMPLES / "hosts" / "desktop-gpu.json"
    code = main(["check", "--host", str(host), str(path)])
    out, err = capsys.readouterr()
    assert code == ExitCode.INPUT
    assert out == ""
    assert err.startswith("isogroup: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert SECRET not in err and "root:x:" not in err


def test_just_under_the_size_limit_is_read() -> None:
    xml = domain_xml(hostdev("bus='1' slot='0' function='0'"))
    padding = MAX_XML_BYTES - len(xml.encode()) - len("<!--  -->")
    big = xml.replace("<devices>", "<devices><!-- " + "x" * padding + " -->")
    assert len(big.encode()) == MAX_XML_BYTES
    assert parse_domain(big).pci[0].address == PciAddress(0, 1, 0, 0)


def test_error_names_origin_and_line() -> None:
    xml = domain_xml(hostdev("bus='1' slot='0' function='9'"))
    with pytest.raises(InputError) as info:
        parse_domain(xml, origin="win10.xml")
    line = next(i for i, text in enumerate(xml.splitlines(), 1) if "function='9'" in text)
    assert str(info.value).startswith(f"win10.xml line {line}:")


@pytest.mark.parametrize(
    "devices",
    [
        "<hostdev mode='subsystem' type='pci' managed='yes'><source/></hostdev>",
        hostdev("bus='0xzz' slot='0' function='0'"),
        hostdev("bus='1' slot='32' function='0'"),
        hostdev("bus='1' slot='0' function='0'") + hostdev("bus='0x01' slot='0x00' function='0x0'"),
        hostdev("bus='1' slot='0' function='0'", managed="always"),
    ],
    ids=["no-address", "malformed", "out-of-range", "duplicated", "bad-managed"],
)
def test_bad_domain_via_cli(devices: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "guest.xml"
    path.write_text(domain_xml(devices))
    code = main(["check", "--host", str(SAMPLES / "hosts" / "desktop-gpu.json"), "--format", "json", str(path)])
    out, err = capsys.readouterr()
    assert err.startswith(f"isogroup: {path} line ") and err.count("\n") == 1, err
    # With --format json the error is a JSON document on stdout too, so that a CI job reading stdout gets one.
    assert code == ExitCode.INPUT
    error = json.loads(out)["error"]
    assert (error["exit"], error["kind"], error["file"]) == (2, "input", str(path))
    assert isinstance(error["line"], int) and err == f"isogroup: {error['message']}\n"


def test_missing_name_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "guest.xml"
    path.write_text(domain_xml(hostdev("bus='1' slot='0' function='0'"), name=""))
    code = main(["check", "--host", str(SAMPLES / "hosts" / "desktop-gpu.json"), str(path)])
    out, err = capsys.readouterr()
    assert (code, out, err) == (ExitCode.INPUT, "", f"isogroup: {path}: the domain has no <name>\n")


# ------------------------------------------------------------------------------ one device element, in place


def test_a_device_element_is_read_in_place_with_its_own_lines() -> None:
    data = (
        b"<?xml version='1.0'?>\n<!-- the GPU's audio -->\n\n"
        b"<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n"
        b"    <address domain='0' bus='1' slot='0' function='1'/>\n  </source>\n</hostdev>\n"
    )
    device = parse_device(data, "audio.xml", "win10", "some-uuid")
    (request,) = device.spec.pci
    assert (request.address, request.managed, request.line) == (PciAddress(0, 1, 0, 1), False, 4)
    assert (device.spec.name, device.spec.uuid) == ("win10", "some-uuid")
    assert device.xml.startswith('<hostdev mode="subsystem"') and "the GPU's audio" not in device.xml
    with pytest.raises(InputError, match=r"^audio\.xml line 6: address bus="):
        parse_device(data.replace(b"bus='1'", b"bus='0x1" + b"0" * 5000 + b"'"), "audio.xml", "win10")


def test_a_device_carries_the_guests_policy_and_reads_interfaces() -> None:
    guest = parse_domain(domain_xml(""))
    vf = (
        b"<interface type='hostdev' managed='yes'><source>"
        b"<address domain='0' bus='3' slot='0x10' function='2'/></source></interface>"
    )
    vf_address = PciAddress(0, 3, 0x10, 2)
    device = parse_device(vf, "vf.xml", guest)
    assert [(r.address, r.source) for r in device.spec.pci] == [(vf_address, Source.INTERFACE)]
    assert (device.spec.uuid, device.spec.policy, device.addresses) == (
        guest.uuid,
        guest.policy,
        frozenset({vf_address}),
    )


# ----------------------------------------------------------------- a number too long is bad input, everywhere

HUGE = "1" * 5000


def test_a_5000_digit_address_is_exit_2_and_one_line_for_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.xml"
    path.write_text(domain_xml(hostdev(f"domain='0' bus='{HUGE}' slot='0' function='0'")))
    code = main(["check", "--host", str(SAMPLES / "hosts" / "desktop-gpu.json"), str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (ExitCode.INPUT, "")
    assert err.startswith(f"isogroup: {path} line ") and err.count("\n") == 1 and len(err) < 300, err


def test_a_5000_digit_address_is_exit_2_and_one_line_for_the_hook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ctx = make_host(tmp_path)
    before = tree_digest(tmp_path)
    xml = domain_xml(hostdev(f"domain='0' bus='1' slot='{HUGE}' function='0'"), name="g").encode()
    assert hook.run("g", "prepare", "begin", "-", xml, ledger_dir="", sysfs_root="", ctx=ctx) == ExitCode.INPUT
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "(5000 characters)" in err and len(err) < 300, err
    assert tree_digest(tmp_path) == before


def test_libxml2s_multi_line_messages_become_one_line() -> None:
    """libxml2 says "Char 0x0 out of allowed range\n, line 1, column 26": found by the hostile-input suite."""
    refused(b"<domain><name>\x00</name></domain>")
