"""Validating domain XML against libvirt's own RelaxNG schemas, as `virsh define --validate` does, so that CI
catches a document libvirt's schema rejects before anyone runs it.

The schemas ship with libvirt (Debian: package libvirt0, /usr/share/libvirt/schemas/domain.rng). When they are
not installed there is nothing to validate against and validation is skipped. A parsed schema is kept for the
life of the process: compiling domain.rng and its includes costs more than validating many documents.

The schema is what `--validate` enforces; plain `virsh define` does not consult it (libvirt's own parser is
laxer in places, stricter in others), so a rejection says which libvirt's schema it was and no more.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

from lxml import etree

from isogroup.errors import InputError
from isogroup.files import read_regular
from isogroup.formats.xml import line, parse_file, parse_xml

DEFAULT_SCHEMA_DIRS = (Path("/usr/share/libvirt/schemas"), Path("/usr/local/share/libvirt/schemas"))
DOMAIN_SCHEMA = "domain.rng"
DPKG_DIR = Path("/var/lib/dpkg")

# libxml2's errors that only say "something below here is wrong"; a more specific one is preferred.
_VAGUE = frozenset({"RELAXNG_ERR_CONTENTVALID", "RELAXNG_ERR_INTEREXTRA", "RELAXNG_ERR_INTERSEQ"})
# A container whose empty form is already invalid (it needs some child) is searched by trying the document
# without each child in turn: a full validation per child, so only for a few children.
_REMOVAL_SEARCH_MAX = 16
_MAX_DPKG_FILE = 64 * 1024 * 1024


def find_domain_schema(dirs: Iterable[Path] = DEFAULT_SCHEMA_DIRS) -> Path | None:
    """libvirt's domain.rng, or None when libvirt's schemas are not installed."""
    for directory in dirs:
        candidate = directory / DOMAIN_SCHEMA
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def load_schema(path: Path) -> etree.RelaxNG:
    """The compiled schema, once per process and path."""
    try:
        return etree.RelaxNG(parse_file(str(path)))
    except (OSError, etree.XMLSyntaxError, etree.RelaxNGParseError) as exc:
        raise InputError(f"cannot load libvirt's schema {path}: {exc}") from None


@functools.cache
def schema_version(path: Path, dpkg_dir: Path = DPKG_DIR) -> str | None:
    """Which libvirt the schema file comes from, as its package manager recorded it: the schema files carry
    no version of their own. dpkg lists each package's files in info/PACKAGE.list and its version in status
    (Debian: "libvirt0 9.0.0-4+deb12u2"). None when no dpkg package owns the file (an RPM system, a build
    from source): then nobody can say."""
    wanted = f"{path.resolve()}\n".encode()
    try:
        lists = sorted((dpkg_dir / "info").glob("*.list"))
    except OSError:
        return None
    owner = None
    for listing in lists:
        try:
            if wanted in b"\n" + read_regular(listing, _MAX_DPKG_FILE):
                owner = listing.name.removesuffix(".list")
                break
        except OSError:
            continue
    if owner is None:
        return None
    package, _, arch = owner.partition(":")
    try:
        status = read_regular(dpkg_dir / "status", _MAX_DPKG_FILE).decode("utf-8", "replace")
    except OSError:
        return None
    for stanza in status.split("\n\n"):
        fields = dict(f.split(": ", 1) for f in stanza.splitlines() if ": " in f and not f.startswith(" "))
        if fields.get("Package") == package and (not arch or fields.get("Architecture") in (arch, "all")):
            version = fields.get("Version")
            return f"{package} {version}" if version else None
    return None


def _without_status_only(root: etree._Element) -> etree._Element:
    """The document without what libvirt writes only in live and status XML, which its domain schema does not
    describe: the device it picked for an interface on a network (`<interface><actual>`). Such documents reach
    isogroup from the hook and from `virsh dumpxml` of a running guest; everything else must be valid as it
    is. A copy when there is something to drop: the caller's tree is never changed."""
    if root.find("devices/interface/actual") is None:
        return root
    trial = copy.deepcopy(root)  # keeps each element's sourceline
    for actual in trial.iterfind("devices/interface/actual"):
        parent = actual.getparent()
        if parent is not None:
            parent.remove(actual)
    return trial


def _culprit(schema: etree.RelaxNG, root: etree._Element, path: str | None) -> etree._Element | None:
    """libxml2 often blames a container ("Element domain failed to validate content" at /domain/devices).
    Find the child of that container to fix: the last child of the shortest invalid prefix of its children,
    which with one wrong child is that child, and with children wrong only together (a second <emulator>)
    the one that makes the prefix invalid.

    Linear in the document: one copy, then a binary search over prefixes, each a validation of the document
    with the container holding only that prefix (a few thousand <input>s cost a dozen validations, not one
    per child)."""
    if not path:
        return None
    trial = copy.deepcopy(root)
    try:
        found = trial.getroottree().xpath(path)
    except etree.XPathError:
        return None
    if not isinstance(found, list) or not found or not isinstance(found[0], etree._Element):
        return None
    container = found[0]
    children = [c for c in container if isinstance(c.tag, str)]
    for child in children:
        container.remove(child)

    def valid_with(kept: Sequence[etree._Element]) -> bool:
        container.extend(kept)
        try:
            return bool(schema.validate(trial))
        finally:
            for child in kept:
                container.remove(child)

    if not valid_with(()):
        # The container needs some child: no prefix is a baseline. Try without each child, for a few only.
        if len(children) > _REMOVAL_SEARCH_MAX:
            return container
        for index in range(len(children)):
            if valid_with(children[:index] + children[index + 1 :]):
                return children[index]
        return container
    if valid_with(children):
        return container  # the copy validates: the container was not the problem
    low, high = 0, len(children)  # invariant: prefix `low` is valid, prefix `high` is not
    while high - low > 1:
        middle = (low + high) // 2
        if valid_with(children[:middle]):
            low = middle
        else:
            high = middle
    return children[high - 1]


def _describe(schema: etree.RelaxNG, root: etree._Element) -> tuple[int | None, str]:
    """Where the document goes wrong and what to say: libxml2's most specific error, or else the element
    to fix, found by trying without it."""
    errors: Sequence[etree._LogEntry] = list(schema.error_log)
    specific = [e for e in errors if e.line > 0 and e.type_name not in _VAGUE]
    if specific:
        return specific[0].line, f"libvirt's schema rejects the domain: {' '.join(specific[0].message.split())}"
    vague = next((e for e in reversed(errors) if e.path), errors[-1] if errors else None)
    culprit = _culprit(schema, root, vague.path if vague is not None else None)
    if culprit is not None:
        return line(culprit), f"libvirt's schema rejects this <{culprit.tag}>"
    message = " ".join(vague.message.split()) if vague is not None else "it does not validate"
    return (
        vague.line if vague is not None and vague.line > 0 else None
    ), f"libvirt's schema rejects the domain: {message}"


def validate_tree(root: etree._Element, origin: str, schema_path: Path | None) -> None:
    """InputError naming the line when libvirt's schema rejects the parsed domain document (from
    `formats.xml.parse_xml`, the same tree the domain reader reads: each file is parsed once); nothing when
    it is valid or `schema_path` is None (libvirt's schemas are not installed). `root` is not changed."""
    if schema_path is None:
        return
    schema = load_schema(schema_path)
    checked = _without_status_only(root)
    if schema.validate(checked):
        return
    where_line, message = _describe(schema, checked)
    where = f"{origin} line {where_line}" if where_line else origin
    version = schema_version(schema_path)
    whose = f"{version}'s schema" if version else "libvirt's schema (its version unknown: no dpkg package owns it)"
    raise InputError(
        f"{where}: {message}",
        hint=f"{whose} {schema_path}: 'virsh define --validate' refuses it, plain 'virsh define' may still "
        "accept it; --no-schema skips this check",
    )


def validate_domain(data: bytes, origin: str, schema_path: Path | None) -> None:
    """`validate_tree` for a document not parsed yet."""
    if schema_path is not None:
        validate_tree(parse_xml(data, origin), origin, schema_path)
