"""The one safe way isogroup parses XML, and the one grammar for numbers in libvirt's documents.

Every libvirt document isogroup reads (domain, device, status file, node device) and libvirt's own schemas go
through `parse_xml`: a size limit, no DTD, no entities, no network, no DOCTYPE. A document may come from a user,
a CI job or libvirt itself, and is hostile until parsed.
"""

from __future__ import annotations

import re

from lxml import etree

from isogroup.errors import InputError
from isogroup.limits import MAX_XML_BYTES

__all__ = ["MAX_XML_BYTES", "line", "parse_file", "parse_number", "parse_xml"]  # MAX_XML_BYTES: the limit enforced here


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def parse_xml(data: bytes | str, origin: str, *, kind: str = "domain") -> etree._Element:
    """The root element of the document; InputError (one line naming `origin`) for anything else. `kind` names
    the document in messages ("domain", "device", "node device")."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise InputError(f"{origin}: larger than {MAX_XML_BYTES} bytes; not a {kind} document")
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        # libxml2's messages can span lines ("...range\n, line 1, column 26"): one line, always.
        raise InputError(f"{origin}: malformed XML: {' '.join(str(exc.msg).split())}") from None
    tree = root.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise InputError(f"{origin}: a DOCTYPE is not allowed in a {kind} document")
    return root


def parse_file(path: str) -> etree._ElementTree:
    """A trusted file of libvirt's own (its RelaxNG schemas, with their includes), with the same safe parser."""
    return etree.parse(path, _parser())


def line(element: etree._Element | None) -> int | None:
    # lxml-stubs mistype sourceline; it is an int, or None for a tree built in memory.
    found = getattr(element, "sourceline", None)
    return found if isinstance(found, int) and found > 0 else None


_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
# No field of libvirt's is wider than 64 bits; a longer number is an attack on int(), not an address.
_MAX_DIGITS = 24


def parse_number(text: str) -> int:
    """A number as libvirt reads it (strtoul, base 0): `0x1f` is hex, `010` octal, `31` decimal. ASCII digits
    only, no sign, no spaces, no underscores: exactly what libvirt's virStrToLong_uip accepts."""
    if len(text) > _MAX_DIGITS or not _NUMBER.fullmatch(text):
        shown = text if len(text) <= _MAX_DIGITS else f"{text[:_MAX_DIGITS]}... ({len(text)} characters)"
        raise InputError(f"{shown!r} is not a number")
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if text.startswith("0"):
        return int(text, 8)
    return int(text, 10)
