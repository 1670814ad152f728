"""The state ledger: which domain claims which IOMMU groups, and every device isogroup moved, with its original
driver. It is the only record that lets a device come home after a crash, so:

- an entry is written *before* the device it describes is touched (intent first);
- every write is atomic (temp file, fsync, rename, fsync of the directory);
- one lock serialises all hook runs: an flock on the ledger directory itself, which cannot be unlinked or
  swapped while it holds the claims (a lock *file* can be, and a second run would then lock a new one); the
  kernel drops it when a holder dies, so a claim still marked `preparing` or `releasing` when the lock is taken
  belongs to a dead run and must be finished or undone. The `lock` file is flocked too, after the directory,
  so that a run of an older isogroup (which locks only that file) stays excluded during an upgrade;
- the directory is root's alone (0700), symlinks are never followed, and a domain name can only ever address a
  file directly inside `claims/` (`paths.claim_filename`, an injective encoding of the name);
- what is read back is input like any other: a claim file is opened without following a symlink, without
  blocking, accepted only if regular and small, and parsed strictly (`formats.claimfile`). A file that fails
  any of this is a *corrupt claim*: it is reported with its path and reason (`LedgerView.corrupt`), never keeps
  another guest's release from restoring that guest's own devices, and refuses every planning that needs to
  know which groups are held (`holders()`), since nobody knows which groups it held. `isogroup forget FILE`
  removes one once an administrator has checked its devices.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

from isogroup.core.claims import Claim, GroupHolders, holders
from isogroup.errors import InputError, StateError
from isogroup.files import FileRefused, read_regular
from isogroup.formats.claimfile import MAX_CLAIM_BYTES, ClaimRefused, claim_to_json, parse
from isogroup.formats.claimfile import dumps as claim_dumps
from isogroup.paths import CLAIM_SUFFIX, CLAIMS, DEFAULT_LEDGER_DIR, claim_filename

__all__ = ["DEFAULT_DIR", "CorruptClaim", "Ledger", "LedgerSession", "LedgerView", "claim_to_json"]

DEFAULT_DIR = Path(DEFAULT_LEDGER_DIR)
LOCK = "lock"
LOCK_TIMEOUT_S = 120.0  # a prepare may wait for another guest's whole group to bind; hooks have no timeout
FORGET = "isogroup forget"  # the command that clears a corrupt claim (cli.main); named in every refusal

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def printable(text: str) -> str:
    """`text` with every non-printable character escaped: file names in claims/ are not ours to trust, and a
    newline in one must not forge a line of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class CorruptClaim:
    """A file in claims/ that is not a claim isogroup can trust: `path` exactly as on disk, `reason` in words."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{printable(self.path)} {self.reason}"

    @property
    def forget_command(self) -> str:
        return f"{FORGET} {printable(self.path)}"


@dataclass(frozen=True)
class LedgerView:
    """Every file in claims/: the claims that read back, and the files that did not."""

    claims: tuple[Claim, ...]
    corrupt: tuple[CorruptClaim, ...]

    def require_intact(self) -> None:
        """StateError naming the first corrupt file, when there is one: it may hold any group."""
        if not self.corrupt:
            return
        first = self.corrupt[0]
        more = f" (and {len(self.corrupt) - 1} more: see 'isogroup status')" if len(self.corrupt) > 1 else ""
        raise StateError(
            f"{first}{more}; nobody knows which IOMMU groups it held, so no guest gets a group until an "
            f"administrator checks its devices and runs '{first.forget_command}'"
        )

    def holders(self) -> GroupHolders:
        self.require_intact()
        return holders(self.claims)


def _state_error(what: str, path: Path | str, exc: OSError) -> StateError:
    return StateError(f"cannot {what} {printable(str(path))}: {exc.strerror or exc}")


class Ledger:
    def __init__(self, directory: Path | str = DEFAULT_DIR, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.dir = Path(directory)
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Ledger({str(self.dir)!r})"

    # -- cheap questions, asked without the lock --------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.lexists(self.dir / LOCK)

    # -- the directory ------------------------------------------------------------------------------------------
    def _open_private_dir(self, path: Path, parent_fd: int | None = None) -> int:
        """Create `path` (0700) if missing and open it without following a symlink; it must be a directory
        owned by us that nobody else may enter. With `parent_fd`, `path.name` is taken relative to it."""
        name: Path | str = path.name if parent_fd is not None else path
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except FileNotFoundError:
            try:
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                path.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _state_error("create the ledger directory", path, exc) from None
        except OSError as exc:
            raise _state_error("create the ledger directory", path, exc) from None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StateError(f"refusing to use {path}: it is not a plain directory (a symlink?)") from None
            raise _state_error("open", path, exc) from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            raise StateError(f"refusing to use {path}: it must be owned by uid {os.geteuid()} and mode 0700")
        return fd

    def _flock(self, fd: int, path: Path, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(
                        f"the ledger {self.dir} stayed locked for {self.lock_timeout:.0f} s: another isogroup "
                        "run is stuck (see 'isogroup status')"
                    ) from None
                time.sleep(0.02)
            except OSError as exc:
                raise _state_error("lock", path, exc) from None

    def _still_there(self, fd: int) -> bool:
        """Whether the ledger's path still names the directory `fd` was opened on (it may have been renamed or
        replaced while we waited for its lock)."""
        try:
            now = os.lstat(self.dir)
        except OSError:
            return False
        st = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _lock_directory(self, deadline: float) -> int:
        while True:
            fd = self._open_private_dir(self.dir)
            try:
                self._flock(fd, self.dir, deadline)
                if self._still_there(fd):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # replaced while we waited: lock the directory that is there now
            if time.monotonic() > deadline:
                raise StateError(f"the ledger directory {self.dir} keeps being replaced; refusing to use it")

    def _open_lock_file(self, dir_fd: int) -> int:
        path = self.dir / LOCK
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(LOCK, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"refusing to use {path}: it is a symlink") from None
            if exc.errno == errno.EISDIR:
                raise StateError(f"refusing to use {path}: it is a directory") from None
            raise _state_error("open", path, exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"refusing to use {path}: it is not a regular file")
        return fd

    @contextmanager
    def locked(self) -> Iterator[LedgerSession]:
        """Hold the ledger's lock; the session reads and writes claims."""
        deadline = time.monotonic() + self.lock_timeout
        dir_fd = self._lock_directory(deadline)
        try:
            lock_fd = self._open_lock_file(dir_fd)
            try:
                self._flock(lock_fd, self.dir / LOCK, deadline)
                claims_fd = self._open_private_dir(self.dir / CLAIMS, dir_fd)
                try:
                    yield LedgerSession(self, claims_fd)
                finally:
                    os.close(claims_fd)
            finally:
                os.close(lock_fd)
        finally:
            os.close(dir_fd)  # closing the descriptors drops the flocks

    def read_unlocked(self) -> LedgerView:
        """For `status` and planning hints: a consistent view without the lock (each file is replaced
        atomically), corrupt files included. Never creates anything."""
        try:
            dir_fd = self._open_existing_dir(self.dir, None)
        except FileNotFoundError:
            return LedgerView((), ())
        try:
            claims_fd = self._open_existing_dir(self.dir / CLAIMS, dir_fd)
        except FileNotFoundError:
            return LedgerView((), ())
        finally:
            os.close(dir_fd)
        try:
            return LedgerSession(self, claims_fd).scan()
        finally:
            os.close(claims_fd)

    def _open_existing_dir(self, path: Path, parent_fd: int | None) -> int:
        """Open a directory without following a symlink; FileNotFoundError when it is not there."""
        try:
            return os.open(path if parent_fd is None else path.name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StateError(f"refusing to use {path}: it is not a plain directory (a symlink?)") from None
            raise _state_error("open", path, exc) from None

    def read_all_unlocked(self) -> list[Claim]:
        """The claims without the lock; StateError when a file is corrupt (whoever plans with these claims
        cannot know which groups it held)."""
        view = self.read_unlocked()
        view.require_intact()
        return list(view.claims)

    def forget(self, file: Path | str) -> CorruptClaim:
        """`isogroup forget FILE`: remove one corrupt claim file, under the lock, once an administrator has put
        its devices right. `file` is the path `status` printed, or its bare name; a readable claim is refused
        (releasing is `recover --domain`'s job, which restores the devices first)."""
        text = str(file)
        claims_dir = self.dir / CLAIMS
        if "/" in text and os.path.abspath(os.path.dirname(text)) != os.path.abspath(claims_dir):
            raise InputError(f"{printable(text)} is not in {claims_dir}: give a file 'isogroup status' lists")
        if not os.path.lexists(claims_dir):  # nothing to forget: never create a ledger for it
            raise InputError(f"{printable(text)} does not exist: {claims_dir} has no claims")
        with self.locked() as session:
            return session.forget(os.path.basename(text))


class LedgerSession:
    """Reads and writes claims while the lock is held. Every path is relative to the claims/ descriptor."""

    def __init__(self, ledger: Ledger, claims_fd: int) -> None:
        self.ledger = ledger
        self._fd = claims_fd

    def _path(self, name: str) -> str:
        return f"{self.ledger.dir}/{CLAIMS}/{name}"

    def _read(self, name: str) -> Claim | None:
        """The claim in file `name`, None when there is none; ClaimRefused for anything isogroup cannot trust,
        including a claim whose recorded guest does not map to this file."""
        path = self._path(name)
        try:
            data = read_regular(name, MAX_CLAIM_BYTES, dir_fd=self._fd, follow=False)
        except FileNotFoundError:
            return None
        except FileRefused as exc:
            raise ClaimRefused(path, f"is {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ClaimRefused(path, "is a symlink; refusing to follow it") from None
            raise ClaimRefused(path, f"cannot be read ({exc.strerror})") from None
        claim = parse(data, path)
        if claim_filename(claim.domain) != name:
            raise ClaimRefused(path, f"records guest {claim.domain[:80]!r}, whose claim is another file")
        return claim

    def claim(self, domain: str) -> Claim | None:
        """The guest's claim (None: it has none). StateError when its file is corrupt, or records another
        guest: then nobody knows what this guest holds."""
        try:
            claim = self._read(claim_filename(domain))
        except ClaimRefused as exc:
            corrupt = CorruptClaim(exc.where, exc.reason)
            raise StateError(
                f"the claim of guest {domain!r}: {corrupt}",
                hint=f"check its devices, then '{corrupt.forget_command}'",
            ) from None
        if claim is not None and claim.domain != domain:  # the file name's encoding is injective; belt and braces
            raise StateError(f"{self._path(claim_filename(domain))} records guest {claim.domain!r}, not {domain!r}")
        return claim

    def scan(self) -> LedgerView:
        """Every claim file: those that read back, and the corrupt ones with their reasons."""
        try:
            names = sorted(os.listdir(self._fd))
        except OSError as exc:
            raise _state_error("list", f"{self.ledger.dir}/{CLAIMS}", exc) from None
        good: list[Claim] = []
        corrupt: list[CorruptClaim] = []
        for name in names:
            if not name.endswith(CLAIM_SUFFIX):
                continue  # a writer's temporary file (.NAME.PID.tmp) or something that is no claim
            try:
                claim = self._read(name)
            except ClaimRefused as exc:
                corrupt.append(CorruptClaim(exc.where, exc.reason))
                continue
            if claim is not None:
                good.append(claim)
        return LedgerView(tuple(good), tuple(corrupt))

    def claims(self) -> list[Claim]:
        """The claims that read back. A corrupt file is left out here (it cannot be acted on: `scan()` and
        `holders()` report it), so that it never keeps another guest's devices from going home."""
        return list(self.scan().claims)

    def holders(self) -> GroupHolders:
        """Group -> holding guest, for planning a start or an attach. StateError naming the file when a claim
        is corrupt: it may hold any group."""
        return self.scan().holders()

    def write(self, claim: Claim) -> Claim:
        """Atomically replace the domain's claim; returns what was written. A claim that would not read back
        (a driver name that is no plain name...) is refused before anything is written."""
        claim = replace(claim, updated=time.time())
        name = claim_filename(claim.domain)
        path = self._path(name)
        data = claim_dumps(claim, path)
        tmp = f".{name}.{os.getpid()}.tmp"
        try:
            # A run with this pid that died left its file, or something else sits there: never write through it.
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self._fd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=self._fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            os.fsync(self._fd)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)
            raise _state_error("write", path, exc) from None
        return claim

    def remove(self, domain: str) -> None:
        name = claim_filename(domain)
        try:
            os.unlink(name, dir_fd=self._fd)
            os.fsync(self._fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _state_error("remove", self._path(name), exc) from None

    def forget(self, name: str) -> CorruptClaim:
        """Remove the corrupt claim file `name` (a bare name in claims/); see `Ledger.forget`."""
        path = self._path(name)
        if not name.endswith(CLAIM_SUFFIX) or "/" in name or "\0" in name:
            raise InputError(f"{printable(path)} is not a claim file")
        try:
            claim = self._read(name)
        except ClaimRefused as exc:
            corrupt = CorruptClaim(exc.where, exc.reason)
        else:
            if claim is None:
                raise InputError(f"{printable(path)} does not exist")
            raise InputError(
                f"{printable(path)} is the readable claim of guest {claim.domain!r}: "
                f"'isogroup recover --domain NAME' restores its devices and removes it"
            )
        try:
            if stat.S_ISDIR(os.lstat(name, dir_fd=self._fd).st_mode):
                os.rmdir(name, dir_fd=self._fd)  # refused by the kernel unless empty: nothing else is lost
            else:
                os.unlink(name, dir_fd=self._fd)
            os.fsync(self._fd)
        except OSError as exc:
            raise _state_error("remove", printable(path), exc) from None
        return corrupt
