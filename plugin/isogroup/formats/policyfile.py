"""Reading policy: the host's file (`/etc/isogroup/policy.toml`) and a domain's `<metadata><isogroup:policy>`.

    mode = "expand"            # or "strict": only devices named in the domain XML may leave their drivers
    [allow]                    # devices that may move although a probe finds the host using them (warn only)
    addresses = ["0000:01:00.1"]
    ids = ["10de:10f0", "10de:*"]
    classes = ["0403"]         # hex prefix of the class code: "04" base class, "0403" subclass, "040300" full
    [deny]                     # devices that must never leave their drivers
    classes = ["0106", "0108"]
    [probes]                   # per probe family: "refuse" or "warn"; the default is "refuse" except for
    usb = "warn"               # the families core.policy.FAMILY_DEFAULTS lists (reset, acs, power: "warn")
    acs = "refuse"             # e.g. refuse groups that may lie (pcie_acs_override, groups finer than predicted)
    [domains]
    may_relax = false          # may a domain's <metadata> relax this policy (allow, warn, expand)? default: no

An invalid policy is an InputError naming the file and the key: never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lxml import etree

from isogroup.core.address import PciAddress
from isogroup.core.policy import DEFAULT, FAMILIES, DomainPolicy, Mode, Policy, ProbeAction, Selector
from isogroup.errors import InputError
from isogroup.files import read_regular
from isogroup.paths import DEFAULT_POLICY

DEFAULT_PATH = Path(DEFAULT_POLICY)
XMLNS = "https://isogroup.dev/xmlns/policy/1"
MAX_POLICY_BYTES = 1024 * 1024  # a policy is a few lines; this is generous


# -- parsing values, shared by TOML and XML --------------------------------------------------------------------
def _address(text: str, where: str) -> PciAddress:
    try:
        return PciAddress.parse(text)
    except InputError as exc:
        raise InputError(f"{where}: {exc.message}") from None


_HEX4 = re.compile(r"[0-9a-f]{4}")


def _ids(text: str, where: str) -> tuple[int, int | None]:
    """`VVVV:DDDD` or `VVVV:*`, four hex digits each, as lspci -n prints them: nothing else (no 0x, no sign)."""
    vendor, sep, device = text.lower().partition(":")
    if not sep or not _HEX4.fullmatch(vendor) or not (device == "*" or _HEX4.fullmatch(device)):
        raise InputError(f"{where}: {text!r} is not VENDOR:DEVICE in hex (e.g. 10de:10f0 or 10de:*)")
    return int(vendor, 16), None if device == "*" else int(device, 16)


def _class(text: str, where: str) -> str:
    prefix = text.lower().removeprefix("0x")
    if len(prefix) not in (2, 4, 6) or any(c not in "0123456789abcdef" for c in prefix):
        raise InputError(f"{where}: class {text!r} must be 2, 4 or 6 hex digits (e.g. 0106 for SATA)")
    return prefix


def _mode(text: object, where: str) -> Mode:
    try:
        return Mode(str(text)) if isinstance(text, str) else Mode("")
    except ValueError:
        raise InputError(f"{where}: mode must be 'expand' or 'strict', not {text!r}") from None


def _action(text: object, where: str) -> ProbeAction:
    try:
        return ProbeAction(str(text)) if isinstance(text, str) else ProbeAction("")
    except ValueError:
        raise InputError(f"{where}: must be 'refuse' or 'warn', not {text!r}") from None


def _family(name: str, where: str) -> str:
    if name not in FAMILIES:
        raise InputError(f"{where}: unknown probe family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return name


# -- TOML --------------------------------------------------------------------------------------------------------
def _strings(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}.{key}: must be a list of strings")
    return value


def _selector(table: object, where: str) -> Selector:
    if not isinstance(table, dict):
        raise InputError(f"{where}: must be a table")
    unknown = set(table) - {"addresses", "ids", "classes"}
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return Selector(
        frozenset(_address(a, f"{where}.addresses") for a in _strings(table, "addresses", where)),
        frozenset(_ids(i, f"{where}.ids") for i in _strings(table, "ids", where)),
        frozenset(_class(c, f"{where}.classes") for c in _strings(table, "classes", where)),
    )


def parse_toml(text: str, source: str) -> Policy:
    import tomllib  # noqa: PLC0415 - only hosts that have a policy file pay for it

    if len(text) > MAX_POLICY_BYTES:
        raise InputError(f"{source}: larger than {MAX_POLICY_BYTES} bytes; not a policy")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise InputError(f"{source}: not valid TOML: nested too deeply") from None
    unknown = set(doc) - {"mode", "allow", "deny", "probes", "domains"}
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    probes_table = doc.get("probes", {})
    if not isinstance(probes_table, dict):
        raise InputError(f"{source}: [probes] must be a table")
    domains = doc.get("domains", {})
    if not isinstance(domains, dict) or set(domains) - {"may_relax"}:
        raise InputError(f"{source}: [domains] takes only may_relax")
    may_relax = domains.get("may_relax", False)
    if not isinstance(may_relax, bool):
        raise InputError(f"{source}: domains.may_relax must be true or false")
    return Policy(
        mode=_mode(doc.get("mode", "expand"), f"{source}: mode"),
        allow=_selector(doc.get("allow", {}), f"{source}: allow"),
        deny=_selector(doc.get("deny", {}), f"{source}: deny"),
        probes={_family(k, f"{source}: probes"): _action(v, f"{source}: probes.{k}") for k, v in probes_table.items()},
        domains_may_relax=may_relax,
        source=source,
    )


def load(path: Path | None, *, required: bool) -> Policy:
    """`required`: the user named the file (--policy), so its absence is an error; the default path may be
    absent, and then the built-in defaults apply."""
    target = path or DEFAULT_PATH
    try:
        text = read_regular(target, MAX_POLICY_BYTES).decode()
    except FileNotFoundError:
        if required:
            raise InputError(f"policy file {target} does not exist") from None
        return DEFAULT
    except OSError as exc:
        raise InputError(f"cannot read policy file {target}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"cannot read policy file {target}: not UTF-8 text") from None
    return parse_toml(text, str(target))


def read_domain_policy(root: etree._Element, origin: str) -> DomainPolicy:
    element = root.find(f"metadata/{{{XMLNS}}}policy")
    if element is None:
        return DomainPolicy()
    where = f"{origin}: <isogroup:policy>"
    mode = _mode(element.get("mode"), where) if element.get("mode") is not None else None
    selectors: dict[str, list[tuple[str, str]]] = {"allow": [], "deny": []}
    probes: dict[str, ProbeAction] = {}
    for child in element.iterchildren(tag=etree.Element):  # elements only, not comments
        tag = etree.QName(child).localname
        if tag in selectors:
            attrs = [(str(k), str(v)) for k, v in child.attrib.items()]
            if len(attrs) != 1 or attrs[0][0] not in ("address", "ids", "class"):
                raise InputError(f"{where}: <{tag}> takes exactly one of address=, ids=, class=")
            selectors[tag].append(attrs[0])
        elif tag == "probe":
            family = _family(child.get("family", ""), f"{where} <probe family>")
            probes[family] = _action(child.get("action"), f"{where} <probe family='{family}'>")
        else:
            raise InputError(f"{where}: unknown element <{tag}>")
    return DomainPolicy(
        mode,
        _selector_from_pairs(selectors["allow"], f"{where} <allow>"),
        _selector_from_pairs(selectors["deny"], f"{where} <deny>"),
        probes,
    )


def _selector_from_pairs(pairs: Iterable[tuple[str, str]], where: str) -> Selector:
    return Selector(
        frozenset(_address(v, where) for k, v in pairs if k == "address"),
        frozenset(_ids(v, where) for k, v in pairs if k == "ids"),
        frozenset(_class(v, where) for k, v in pairs if k == "class"),
    )
