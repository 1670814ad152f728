"""Names and paths shared by the hook's fast path and the ledger. Imports nothing heavy: the fast path runs
for every guest start on the host."""

from __future__ import annotations

# tmpfs: a reboot forgets the claims together with the bindings they describe.
DEFAULT_LEDGER_DIR = "/run/isogroup"
DEFAULT_POLICY = "/etc/isogroup/policy.toml"
CLAIMS = "claims"
CLAIM_SUFFIX = ".json"

# Longest literal (escaped) stem; a longer one is replaced by its digest, so that the file name stays well
# under NAME_MAX (255 bytes) with the suffix and the writer's temporary-file decorations around it.
_MAX_LITERAL = 200
# The digest's prefix starts with "%s": the literal encoding writes "%" only before two upper-case hex digits,
# so no guest's literal file name can ever equal a digest's.
DIGEST_PREFIX = "%sha256-"


def claim_filename(domain: str) -> str:
    """The claim file of the guest named `domain`, exactly as libvirt passes the name (spaces, tabs, `\\r`, any
    Unicode kept): an injective encoding, never `.` or `..`, never containing `/`, never starting with a dot.
    Every byte outside [A-Za-z0-9_-] (and a leading dot) is %-escaped with upper-case hex digits; a name whose
    encoding is longer than 200 characters maps to `%sha256-<hex>` instead, which no literal encoding produces.
    The name is encoded as UTF-8 with lone surrogates passed through (what Python's argv decoding makes of
    bytes that are not UTF-8), which is injective on every `str`."""
    raw = domain.encode("utf-8", "surrogatepass")
    out = []
    for i, byte in enumerate(raw):
        if (48 <= byte <= 57) or (65 <= byte <= 90) or (97 <= byte <= 122) or byte in (45, 95) or (byte == 46 and i):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    name = "".join(out)
    if not name or len(name) > _MAX_LITERAL:
        import hashlib  # noqa: PLC0415 - rare path; keep the fast path's imports minimal

        name = DIGEST_PREFIX + hashlib.sha256(raw).hexdigest()
    return name + CLAIM_SUFFIX
