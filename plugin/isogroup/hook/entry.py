"""The libvirt qemu hook's entry point: `HOOK NAME OPERATION SUB-OPERATION EXTRA`, domain XML on stdin.

This module is the fast path, run for every guest on the host: it imports only modules the interpreter has
loaded already (not even `typing`, which alone would double the cost) and decides from the raw bytes whether
there is anything to do. Nothing is ever printed on stdout: for migrate and restore
libvirt would take it as replacement XML.
"""

from __future__ import annotations

import io
import os
import sys

from isogroup.limits import HOOK_TIMEOUT_S, MAX_XML_BYTES
from isogroup.paths import CLAIMS, DEFAULT_LEDGER_DIR, DEFAULT_POLICY, claim_filename

# (operation, sub-operation) pairs that may need work; every other call succeeds doing nothing.
OPERATIONS = {
    ("prepare", "begin"),
    ("start", "begin"),
    ("release", "end"),
    ("reconnect", "begin"),
    ("migrate", "begin"),
    ("restore", "begin"),
}


# What libvirt could send beyond the limit is drained, not kept, so that it never writes into a closed pipe (a
# write error would fail the guest's start); past this much a hand-fed stream is abandoned.
_DRAIN_LIMIT = 16 * MAX_XML_BYTES
_CHUNK = 1 << 16


def read_stdin(stream: io.BufferedIOBase | None) -> bytes | None:
    """The domain XML: at most MAX_XML_BYTES + 1 bytes are kept (the parser refuses a larger document), the rest
    is read and dropped. None when there is no stdin to read (closed, or a read error)."""
    if stream is None:
        return None
    kept = bytearray()
    total = 0
    try:
        while total <= _DRAIN_LIMIT:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if len(kept) <= MAX_XML_BYTES:
                kept += chunk[: MAX_XML_BYTES + 1 - len(kept)]
    except (OSError, ValueError):  # EBADF/EIO, or a closed file object
        return None
    return bytes(kept)


def needs_work(name: str, operation: str, sub: str, xml: bytes, ledger_dir: str) -> bool:
    if (operation, sub) not in OPERATIONS:
        return False
    # Every form of PCI passthrough in domain XML says "hostdev": <hostdev>, <interface type='hostdev'>, and a
    # hostdev network's VF once libvirt records it (<actual type='hostdev'>). A claim may outlive the XML that
    # made it (the device was hot-unplugged): release and reconnect look at the ledger too.
    return b"hostdev" in xml or os.path.lexists(os.path.join(ledger_dir, CLAIMS, claim_filename(name)))


def main(
    argv: list[str] | None = None,
    *,
    stdin: io.BufferedIOBase | None = None,
    ledger_dir: str = DEFAULT_LEDGER_DIR,
    sysfs_root: str | None = None,  # None: the live host's /sys; a tree only in tests
    policy_path: str = DEFAULT_POLICY,
    timeout: float = HOOK_TIMEOUT_S,
) -> int:
    argv = sys.argv if argv is None else argv
    if len(argv) < 3:
        sys.stderr.write("isogroup hook: usage: qemu DOMAIN OPERATION SUB-OPERATION EXTRA (called by libvirt)\n")
        return 2
    name, operation = argv[1], argv[2]
    sub = argv[3] if len(argv) > 3 else "-"
    extra = argv[4] if len(argv) > 4 else "-"
    # Read stdin even when there is nothing to do, so libvirt never writes into a closed pipe.
    xml = read_stdin(stdin if stdin is not None else getattr(sys.stdin, "buffer", None))
    if xml is None:
        if (operation, sub) not in OPERATIONS or operation == "release":  # release needs only the name
            xml = b""
        else:  # fail closed: without the XML nobody can tell whether the guest has PCI devices
            sys.stderr.write(f"isogroup: cannot read the domain XML on stdin for {operation} {sub}\n")
            return 2
    if not needs_work(name, operation, sub, xml, ledger_dir):
        return 0
    from isogroup.hook.run import run  # noqa: PLC0415 - the slow path's imports are paid only when needed

    return run(
        name,
        operation,
        sub,
        extra,
        xml,
        ledger_dir=ledger_dir,
        sysfs_root=sysfs_root,
        policy_path=policy_path,
        timeout=timeout,
    )
