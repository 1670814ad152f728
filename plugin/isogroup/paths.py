"""Names and paths shared by the hook's fast path and the ledger. Imports nothing heavy: the fast path runs
for every guest start on the host."""

from __future__ import annotations

# tmpfs: a reboot forgets the claims together with the bindings they describe.
DEFAULT_LEDGER_DIR = "/run/isogroup"
DEFAULT_POLICY = "/etc/isogroup/policy.toml"
CLAIMS = "claims"


def claim_filename(domain: str) -> str:
    """A file name only this domain maps to: never `.` or `..`, never containing `/`. Every byte outside
    [A-Za-z0-9_-] (and a leading dot) is %-escaped; very long names fall back to a digest."""
    out = []
    for i, byte in enumerate(domain.encode()):
        ch = chr(byte)
        if (ch.isascii() and (ch.isalnum() or ch in "_-")) or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append(f"%{byte:02X}")
    name = "".join(out)
    if not name or len(name) > 200:
        import hashlib  # noqa: PLC0415 - rare path; keep the fast path's imports minimal

        name = "sha256-" + hashlib.sha256(domain.encode()).hexdigest()
    return name + ".json"
