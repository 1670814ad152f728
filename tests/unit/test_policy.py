"""The policy: TOML parsing that refuses anything it does not understand, selectors, a domain's <metadata>, and
what the merge lets a domain tighten or relax."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.simkernel import make_function
from isogroup.core.address import PciAddress
from isogroup.core.model import UseCode
from isogroup.core.policy import DEFAULT, DomainPolicy, Mode, ProbeAction, Selector, merge
from isogroup.errors import InputError
from isogroup.formats.domainxml import parse_domain
from isogroup.formats.policyfile import load, parse_toml

SATA = make_function("0000:00:17.0", class_code=0x010601, driver="ahci", vendor=0x8086, device=0xA352)
HDA = make_function("0000:01:00.1", class_code=0x040300, driver="snd_hda_intel", vendor=0x10DE, device=0x10F0)


def test_a_full_policy_parses() -> None:
    p = parse_toml(
        """
        mode = "strict"
        [allow]
        addresses = ["0000:01:00.1"]
        ids = ["10de:*", "8086:a352"]
        classes = ["0403"]
        [deny]
        classes = ["0106", "0x0108"]
        [probes]
        usb = "warn"
        storage = "refuse"
        [domains]
        may_relax = false
        """,
        "policy.toml",
    )
    assert p.mode is Mode.STRICT and not p.domains_may_relax
    assert p.allow.matches(HDA) and p.allow.matches(SATA)
    assert p.deny.matches(SATA) and not p.deny.matches(HDA)
    assert p.probe_action(UseCode.USB_INPUT) is ProbeAction.WARN
    assert p.probe_action(UseCode.STORAGE_MOUNTED) is ProbeAction.REFUSE
    assert p.probe_action(UseCode.NETWORK_ROUTE) is ProbeAction.REFUSE  # unnamed families refuse


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode = 'lenient'", "mode must be 'expand' or 'strict'"),
        ("mode = 3", "mode must be 'expand' or 'strict'"),
        ("colour = 'red'", "unknown key(s) colour"),
        ("[allow]\naddresses = ['01:00']", "is not a PCI address"),
        ("[allow]\naddresses = '0000:01:00.0'", "must be a list of strings"),
        ("[allow]\nids = ['10de']", "is not VENDOR:DEVICE"),
        ("[allow]\nids = ['10de:10f']", "is not VENDOR:DEVICE"),
        ("[allow]\nnames = ['gpu']", "unknown key(s) names"),
        ("[deny]\nclasses = ['1']", "must be 2, 4 or 6 hex digits"),
        ("[deny]\nclasses = ['01g6']", "must be 2, 4 or 6 hex digits"),
        ("[probes]\nusb = 'ignore'", "must be 'refuse' or 'warn'"),
        ("[probes]\nkeyboard = 'warn'", "unknown probe family 'keyboard'"),
        ("[domains]\nmay_relax = 'yes'", "may_relax must be true or false"),
        ("[domains]\nsomething = true", "takes only may_relax"),
        ("mode = ", "not valid TOML"),
    ],
)
def test_an_invalid_policy_is_a_clear_error_never_a_default(text: str, message: str) -> None:
    with pytest.raises(InputError) as error:
        parse_toml(text, "/etc/isogroup/policy.toml")
    assert message in str(error.value) and str(error.value).startswith("/etc/isogroup/policy.toml")
    assert "\n" not in str(error.value)


def test_loading(tmp_path: Path) -> None:
    assert load(tmp_path / "absent.toml", required=False) is DEFAULT
    with pytest.raises(InputError, match="does not exist"):
        load(tmp_path / "absent.toml", required=True)
    (tmp_path / "p.toml").write_text("[probes]\ndisplay = 'warn'\n")
    assert load(tmp_path / "p.toml", required=True).probe_action(UseCode.DISPLAY_CONSOLE) is ProbeAction.WARN
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="cannot read policy"):
        load(tmp_path / "bin.toml", required=True)


def _domain(metadata: str) -> DomainPolicy:
    xml = (
        "<domain><name>g</name><metadata>"
        f"<isogroup:policy xmlns:isogroup='https://isogroup.dev/xmlns/policy/1' {metadata}</isogroup:policy>"
        "</metadata><devices/></domain>"
    )
    return parse_domain(xml).policy


def test_a_domain_policy_is_read_from_metadata() -> None:
    d = _domain(
        "mode='strict'><!-- why --><isogroup:allow ids='10de:*'/><isogroup:deny class='0106'/>"
        "<isogroup:deny address='0000:00:17.0'/><isogroup:probe family='usb' action='warn'/>"
    )
    assert d.mode is Mode.STRICT
    assert d.allow == Selector(ids=frozenset({(0x10DE, None)}))
    assert d.deny == Selector(addresses=frozenset({PciAddress.parse("0000:00:17.0")}), classes=frozenset({"0106"}))
    assert d.probes == {"usb": ProbeAction.WARN}
    assert parse_domain("<domain><name>g</name><devices/></domain>").policy.empty


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("mode='loose'>", "mode must be"),
        ("><isogroup:allow/>", "takes exactly one of"),
        ("><isogroup:allow ids='10de:*' class='03'/>", "takes exactly one of"),
        ("><isogroup:deny vendor='10de'/>", "takes exactly one of"),
        ("><isogroup:probe family='mouse' action='warn'/>", "unknown probe family"),
        ("><isogroup:probe family='usb' action='maybe'/>", "must be 'refuse' or 'warn'"),
        ("><isogroup:colour/>", "unknown element <colour>"),
    ],
)
def test_a_bad_domain_policy_is_bad_input(metadata: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _domain(metadata)


def test_a_domain_may_always_tighten() -> None:
    host = parse_toml("[domains]\nmay_relax = false", "p")
    merged, ignored = merge(host, _domain("mode='strict'><isogroup:deny class='0106'/>"))
    assert merged.mode is Mode.STRICT and merged.deny.matches(SATA) and ignored == []


def test_a_domain_relaxes_only_where_the_host_lets_it() -> None:
    wish = _domain("mode='expand'><isogroup:allow class='0106'/><isogroup:probe family='storage' action='warn'/>")
    strict = parse_toml("mode = 'strict'\n[domains]\nmay_relax = false", "p")
    merged, ignored = merge(strict, wish)
    assert merged.mode is Mode.STRICT and not merged.allow.matches(SATA)
    assert merged.probe_action(UseCode.STORAGE_MOUNTED) is ProbeAction.REFUSE
    assert ignored == ["mode='expand'", "<allow>", "<probe family='storage' action='warn'>"]
    assert merge(parse_toml("mode = 'strict'", "p"), wish)[1] == ignored  # the default grants nothing
    lenient = parse_toml("mode = 'strict'\n[domains]\nmay_relax = true", "p")
    merged, ignored = merge(lenient, wish)
    assert merged.mode is Mode.EXPAND and merged.allow.matches(SATA) and ignored == []
    assert merged.probe_action(UseCode.STORAGE_MOUNTED) is ProbeAction.WARN
