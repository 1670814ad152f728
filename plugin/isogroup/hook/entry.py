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
) -> int:
    argv = sys.argv if argv is None else argv
    if len(argv) < 3:
        sys.stderr.write("isogroup hook: usage: qemu DOMAIN OPERATION SUB-OPERATION EXTRA (called by libvirt)\n")
        return 2
    name, operation = argv[1], argv[2]
    sub = argv[3] if len(argv) > 3 else "-"
    extra = argv[4] if len(argv) > 4 else "-"
    # Read all of stdin even when there is nothing to do, so libvirt never writes into a closed pipe.
    xml = (stdin or sys.stdin.buffer).read()
    if not needs_work(name, operation, sub, xml, ledger_dir):
        return 0
    from isogroup.hook.run import run  # noqa: PLC0415 - the slow path's imports are paid only when needed

    return run(name, operation, sub, extra, xml, ledger_dir=ledger_dir, sysfs_root=sysfs_root, policy_path=policy_path)
