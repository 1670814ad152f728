"""Validating domain XML against libvirt's own RelaxNG schemas, as `virsh define --validate` does, so that CI
catches a document libvirt would reject before anyone runs it.

The schemas ship with libvirt (Debian: package libvirt0, /usr/share/libvirt/schemas/domain.rng). When they are
not installed there is nothing to validate against and validation is skipped. A parsed schema is kept for the
life of the process: compiling domain.rng and its includes costs more than validating many documents.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

from lxml import etree

from isogroup.errors import InputError
from isogroup.formats.xml import MAX_XML_BYTES

DEFAULT_SCHEMA_DIRS = (Path("/usr/share/libvirt/schemas"), Path("/usr/local/share/libvirt/schemas"))
DOMAIN_SCHEMA = "domain.rng"

# libxml2's errors that only say "something below here is wrong"; a more specific one is preferred.
_VAGUE = frozenset({"RELAXNG_ERR_CONTENTVALID", "RELAXNG_ERR_INTEREXTRA", "RELAXNG_ERR_INTERSEQ"})


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


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
        return etree.RelaxNG(etree.parse(str(path), _parser()))
    except (OSError, etree.XMLSyntaxError, etree.RelaxNGParseError) as exc:
        raise InputError(f"cannot load libvirt's schema {path}: {exc}") from None


def _status_only(root: etree._Element) -> None:
    """Drop what libvirt writes only in live and status XML, which its domain schema does not describe: the
    device it picked for an interface on a network (`<interface><actual>`). Such documents reach isogroup
    from the hook and from `virsh dumpxml` of a running guest; everything else must be valid as it is."""
    for actual in root.iterfind("devices/interface/actual"):
        parent = actual.getparent()
        if parent is not None:
            parent.remove(actual)


def _line(element: etree._Element | None) -> int | None:
    line = getattr(element, "sourceline", None)
    return line if isinstance(line, int) and line > 0 else None


def _without(tree: etree._ElementTree, path: str, drop: Iterable[int]) -> etree._ElementTree:
    """A copy of `tree` without the element children of `path` whose indexes are in `drop`."""
    trial = copy.deepcopy(tree)
    found = trial.xpath(path)
    assert isinstance(found, list) and isinstance(found[0], etree._Element)
    children = [c for c in found[0] if isinstance(c.tag, str)]
    for index in drop:
        found[0].remove(children[index])
    return trial


def _culprit(schema: etree.RelaxNG, tree: etree._ElementTree, path: str | None) -> etree._Element | None:
    """libxml2 often blames a container ("Element domain failed to validate content" at /domain/devices).
    Find the child of that container to fix: the one whose removal makes the document valid, else (several
    are wrong) the first one that makes a valid prefix of the children invalid."""
    if not path:
        return None
    try:
        found = tree.xpath(path)
    except etree.XPathError:
        return None
    if not isinstance(found, list) or not found or not isinstance(found[0], etree._Element):
        return None
    container = found[0]
    children = [c for c in container if isinstance(c.tag, str)]
    count = len(children)
    for index in range(count):
        if schema.validate(_without(tree, path, [index])):
            return children[index]
    if schema.validate(_without(tree, path, range(count))):
        for keep in range(1, count + 1):
            if not schema.validate(_without(tree, path, range(keep, count))):
                return children[keep - 1]
    return container


def _describe(schema: etree.RelaxNG, tree: etree._ElementTree) -> tuple[int | None, str]:
    """Where the document goes wrong and what to say: libxml2's most specific error, or else the element
    to fix, found by trying without it."""
    errors: Sequence[etree._LogEntry] = list(schema.error_log)
    specific = [e for e in errors if e.line > 0 and e.type_name not in _VAGUE]
    if specific:
        return specific[0].line, f"libvirt's schema rejects the domain: {specific[0].message}"
    vague = next((e for e in reversed(errors) if e.path), errors[-1] if errors else None)
    culprit = _culprit(schema, tree, vague.path if vague is not None else None)
    if culprit is not None:
        return _line(culprit), f"libvirt's schema rejects this <{culprit.tag}>"
    message = vague.message if vague is not None else "it does not validate"
    return (
        vague.line if vague is not None and vague.line > 0 else None
    ), f"libvirt's schema rejects the domain: {message}"


def validate_domain(data: bytes, origin: str, schema_path: Path | None) -> None:
    """InputError naming the line when libvirt's schema rejects the domain document; nothing when it is valid
    or `schema_path` is None (libvirt's schemas are not installed)."""
    if schema_path is None:
        return
    schema = load_schema(schema_path)
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"{origin}: larger than {MAX_XML_BYTES} bytes; not a domain document")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{origin}: malformed XML: {exc.msg}") from None
    _status_only(root)
    tree = root.getroottree()
    if schema.validate(tree):
        return
    line, message = _describe(schema, tree)
    where = f"{origin} line {line}" if line else origin
    raise InputError(
        f"{where}: {message}",
        hint=f"{schema_path}; libvirt would refuse it; --no-schema skips this check",
    )
