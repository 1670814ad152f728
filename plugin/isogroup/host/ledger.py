"""The state ledger: which domain claims which IOMMU groups, and every device isogroup moved, with its original
driver. It is the only record that lets a device come home after a crash, so:

- an entry is written *before* the device it describes is touched (intent first);
- every write is atomic (temp file, fsync, rename, fsync of the directory);
- one lock (flock on `lock`) serialises all hook runs; the kernel drops it when a holder dies, so a claim still
  marked `preparing` or `releasing` when the lock is taken belongs to a dead run and must be finished or undone;
- the directory is root's alone (0700), symlinks are never followed, and a domain name can only ever address a
  file directly inside `claims/`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, GroupHolders, MovedDevice, Phase, holders
from isogroup.errors import InputError, StateError
from isogroup.paths import CLAIMS, DEFAULT_LEDGER_DIR, claim_filename

DEFAULT_DIR = Path(DEFAULT_LEDGER_DIR)
VERSION = 1
LOCK_TIMEOUT_S = 120.0  # a prepare may wait for another guest's whole group to bind; hooks have no timeout


def claim_to_json(claim: Claim) -> dict[str, Any]:
    return {
        "version": VERSION,
        "domain": claim.domain,
        "uuid": claim.uuid,
        "phase": claim.phase.value,
        "groups": list(claim.groups),
        "devices": [
            {
                "address": str(d.address),
                "group": d.group,
                "original_driver": d.original_driver,
                "original_override": d.original_override,
                "state": d.state.value,
            }
            for d in claim.devices
        ],
        "updated": claim.updated,
    }


def _claim_from_json(doc: Any, where: str) -> Claim:
    try:
        if doc["version"] != VERSION:
            raise StateError(f"{where}: ledger version {doc['version']!r} is not {VERSION}")
        devices = tuple(
            MovedDevice(
                address=PciAddress.parse(d["address"]),
                group=int(d["group"]),
                original_driver=d["original_driver"],
                original_override=d["original_override"],
                state=DeviceState(d["state"]),
            )
            for d in doc["devices"]
        )
        return Claim(
            domain=str(doc["domain"]),
            phase=Phase(doc["phase"]),
            groups=tuple(int(g) for g in doc["groups"]),
            devices=devices,
            uuid=doc.get("uuid"),
            updated=float(doc.get("updated", 0.0)),
        )
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise StateError(
            f"{where}: unreadable claim ({exc}); fix or remove it by hand after checking the devices"
        ) from None


class Ledger:
    def __init__(self, directory: Path | str = DEFAULT_DIR, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.dir = Path(directory)
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Ledger({str(self.dir)!r})"

    # -- cheap questions, asked without the lock --------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.lexists(self.dir / "lock")

    def has_claim(self, domain: str) -> bool:
        return os.path.lexists(self.dir / CLAIMS / claim_filename(domain))

    # -- the directory ------------------------------------------------------------------------------------------
    def _ensure_private_dir(self, path: Path) -> None:
        try:
            path.mkdir(mode=0o700, parents=False)
        except FileExistsError:
            pass
        except FileNotFoundError:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the ledger directory {path}: {exc.strerror}") from None
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise StateError(f"refusing to use {path}: it is not a plain directory (a symlink?)")
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise StateError(f"refusing to use {path}: it must be owned by uid {os.geteuid()} and mode 0700")

    def _open_dir(self, path: Path) -> int:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    @contextmanager
    def locked(self) -> Iterator[LedgerSession]:
        """Hold the ledger's lock; the session reads and writes claims."""
        self._ensure_private_dir(self.dir)
        self._ensure_private_dir(self.dir / CLAIMS)
        lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StateError(
                            f"the ledger {self.dir} stayed locked for {self.lock_timeout:.0f} s: another isogroup "
                            "run is stuck (see 'isogroup status')"
                        ) from None
                    time.sleep(0.02)
            claims_fd = self._open_dir(self.dir / CLAIMS)
            try:
                yield LedgerSession(self, claims_fd)
            finally:
                os.close(claims_fd)
        finally:
            os.close(lock_fd)  # closing the descriptor drops the flock

    def read_all_unlocked(self) -> list[Claim]:
        """For `status`: a consistent view without the lock (each file is replaced atomically)."""
        path = self.dir / CLAIMS
        if not path.is_dir():
            return []
        fd = self._open_dir(path)
        try:
            return LedgerSession(self, fd).claims()
        finally:
            os.close(fd)


class LedgerSession:
    """Reads and writes claims while the lock is held. Every path is relative to the claims/ descriptor."""

    def __init__(self, ledger: Ledger, claims_fd: int) -> None:
        self.ledger = ledger
        self._fd = claims_fd

    def _read_file(self, name: str) -> Claim | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"{self.ledger.dir}/{CLAIMS}/{name} is a symlink; refusing to follow it") from None
            raise StateError(f"cannot read {self.ledger.dir}/{CLAIMS}/{name}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.ledger.dir}/{CLAIMS}/{name} is not valid JSON ({exc})") from None
        return _claim_from_json(doc, f"{self.ledger.dir}/{CLAIMS}/{name}")

    def claim(self, domain: str) -> Claim | None:
        return self._read_file(claim_filename(domain))

    def claims(self) -> list[Claim]:
        names = sorted(n for n in os.listdir(self._fd) if n.endswith(".json"))
        return [c for n in names if (c := self._read_file(n)) is not None]

    def holders(self) -> GroupHolders:
        return holders(self.claims())

    def write(self, claim: Claim) -> Claim:
        """Atomically replace the domain's claim; returns what was written."""
        claim = replace(claim, updated=time.time())
        name = claim_filename(claim.domain)
        tmp = f".{name}.{os.getpid()}.tmp"
        data = (json.dumps(claim_to_json(claim), separators=(",", ":")) + "\n").encode()  # written often: compact
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._fd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        os.fsync(self._fd)
        return claim

    def remove(self, domain: str) -> None:
        try:
            os.unlink(claim_filename(domain), dir_fd=self._fd)
        except FileNotFoundError:
            return
        os.fsync(self._fd)
