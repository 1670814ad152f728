"""Reads the `vfio_pci:` aliases out of a kernel's modules.alias (written by depmod from the modules' alias
tables; the PCI ones by scripts/mod/file2alias.c `do_pci_entry`).

The file is hostile like every input: bounded in size (8 MiB, the limit libvirt's
`virPCIDeviceFindBestVFIOVariant` reads it with; Debian's 6.1 kernel's is 1.3 MB), only the lines starting
`alias vfio_pci:` are looked at (libvirt too finds them by that prefix), and each of those must be exactly what
file2alias writes: a line that is not is an InputError naming it, because the driver libvirt picks from such a
file cannot be predicted, and a plan that guessed would not be what happens.
"""

from __future__ import annotations

import re

from isogroup.core.variants import VariantTable, VfioAlias
from isogroup.errors import InputError, Origin

MAX_BYTES = 8 * 1024 * 1024
MAX_ALIASES = 65536  # Linux 6.12 has a few dozen vfio_pci: lines; far more is not a modules.alias

_PREFIX = b"alias vfio_pci:"
# do_pci_entry's ADD(): "%s%0*X" with the field's width (8 hex digits for the 32-bit IDs, 2 for each class byte)
# or "%s*"; then add_wildcard() appends "*" unless the alias already ends in one. Lower-case hex is accepted too:
# nothing writes it, and it names the same number.
_ID = r"([0-9A-Fa-f]{8}|\*)"
_BYTE = r"([0-9A-Fa-f]{2}|\*)"
_PATTERN = re.compile(rf"v{_ID}d{_ID}sv{_ID}sd{_ID}bc{_BYTE}sc{_BYTE}i{_BYTE}\*?")
# A module name as depmod writes it (KBUILD_MODNAME: [A-Za-z0-9_], a '-' in a file name turns into '_').
_MODULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def parse_modules_alias(data: bytes, origin: str) -> VariantTable:
    if len(data) > MAX_BYTES:
        raise InputError(f"{origin}: larger than {MAX_BYTES} bytes; not a modules.alias")
    aliases: list[VfioAlias] = []
    # Find the lines by their prefix, as libvirt does with strstr(): the file has some 25,000 lines for other
    # buses, which need not be split or decoded.
    pos, line, counted = 0, 1, 0
    while True:
        if data.startswith(_PREFIX, pos):
            start = pos
        else:
            hit = data.find(b"\n" + _PREFIX, pos)
            if hit < 0:
                break
            start = hit + 1
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line += data.count(b"\n", counted, start)
        counted = start
        if len(aliases) >= MAX_ALIASES:
            raise InputError(f"{origin}: more than {MAX_ALIASES} vfio_pci aliases; not a modules.alias")
        aliases.append(_alias(data[start:end], origin, line))
        pos = end
    return VariantTable(tuple(aliases), origin, read=True)


def _alias(raw: bytes, origin: str, line: int) -> VfioAlias:
    def bad(what: str) -> InputError:
        return InputError(f"{origin} line {line}: {what}", origin=Origin(origin, line))

    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise bad("a vfio_pci alias that is not ASCII") from None
    parts = text[len("alias vfio_pci:") :].rstrip("\r").split(" ")
    if len(parts) != 2:
        raise bad("a vfio_pci alias must be 'alias vfio_pci:PATTERN MODULE'")
    pattern, module = parts
    m = _PATTERN.fullmatch(pattern)
    if m is None:
        raise bad(f"vfio_pci:{pattern[:80]!r} is not a PCI alias as the kernel writes them (vNdNsvNsdNbcNscNiN)")
    if _MODULE.fullmatch(module) is None:
        raise bad(f"{module[:80]!r} is not a module name")
    v, d, sv, sd, bc, sc, i = (None if f == "*" else int(f, 16) for f in m.groups())
    return VfioAlias(module, v, d, sv, sd, bc, sc, i, line=line)
