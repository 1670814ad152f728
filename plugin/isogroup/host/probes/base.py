"""What every host-use probe shares: the seams it reads through, the functions being probed, and the collector
its findings go to.

Paths inside sysfs are handled as real (resolved) absolute strings under the tree's real root: a class link
(`class/block/sda2 -> ../../devices/pci0000:00/0000:00:17.0/ata1/.../sda2`) is normalised without following
further links, and "belongs to a PCI function" means "its path is below the function's directory".
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from isogroup.core.address import PciAddress
from isogroup.core.model import Finding, UseCode
from isogroup.host.sysfs import Sysfs

# Could-not-tell, per probe family (see the package docstring): reported as the family's `<family>-unknown` code,
# so that the policy for that family (refuse or warn) covers it too. The message always starts "could not tell
# whether".
UNKNOWN_CODES: dict[str, UseCode] = {code.family: code for code in UseCode if code.unknown}
UNKNOWN_PREFIX = "could not tell whether"
# How sysfs names a PCI function's directory (domain of 4 or more hex digits: VMD uses 5).
_PCI_NAME = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True)
class ProbeSeams:
    """Where the probes read: a sysfs tree, the matching /proc and /dev, udev's database, and whether this is
    the running kernel (then netlink may be asked, block devices opened exclusively and device nodes stat'ed).

    `dev` None: no /dev for this tree, so on-disk labels cannot be read (could-not-tell where it matters).
    `udev`: udev's database (/run/udev/data), where blkid's verdict on each block device (ID_FS_TYPE) is kept:
    asked before reading a disk, which needs root and would spin up a sleeping drive. None: read the disk."""

    sysfs: Sysfs
    proc: Path = Path("/proc")
    dev: Path | None = Path("/dev")
    live: bool = False
    udev: Path | None = None

    @classmethod
    def live_host(cls, sysfs: Sysfs | None = None) -> ProbeSeams:
        sysfs = sysfs if sysfs is not None else Sysfs.live_host()
        return cls(sysfs, Path("/proc"), Path("/dev"), live=True, udev=Path("/run/udev/data"))

    @classmethod
    def tree(cls, sysfs: Sysfs, proc: Path, dev: Path | None = None, udev: Path | None = None) -> ProbeSeams:
        """A captured or hand-built host: files only, no kernel to ask."""
        return cls(sysfs, proc, dev, live=False, udev=udev)


class Unreadable(Exception):
    """A source a probe needs could not be read: `why` says which and how, for a could-not-tell finding."""

    def __init__(self, what: str, err: int | None) -> None:
        self.what = what
        self.errno = err
        super().__init__(self.why)

    @property
    def why(self) -> str:
        reason = os.strerror(self.errno) if self.errno else "unreadable"
        hint = "; run as root" if self.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0 else ""
        return f"cannot read {self.what}: {reason.lower()}{hint}"


@dataclass(frozen=True)
class Target:
    """A PCI function being probed: `path` is its real directory in the tree."""

    address: PciAddress
    path: str
    driver: str | None
    boot_vga: bool

    @property
    def who(self) -> str:
        return f"{self.address} ({self.driver})" if self.driver else str(self.address)

    def owns(self, path: str) -> bool:
        """Whether a sysfs device path is this function's: below its directory and not below another PCI
        function that is (a bridge's directory holds the devices behind it, which are functions of their own)."""
        if not path.startswith(self.path + "/"):
            return False
        return not any(_PCI_NAME.match(part) for part in path[len(self.path) + 1 :].split("/"))


def printable(text: str) -> str:
    """A name from the host (interface, mount point, input device) made safe for a one-line message."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def listing(items: Iterable[str], limit: int = 3) -> str:
    """'a, b, c and 2 more'."""
    seq = list(items)
    shown = ", ".join(seq[:limit])
    return f"{shown} and {len(seq) - limit} more" if len(seq) > limit else shown


@dataclass
class Collector:
    """Findings in the order the probes make them, one per (function, code, subject)."""

    uses: dict[tuple[PciAddress, UseCode, str], Finding] = field(default_factory=dict)
    unknown: dict[tuple[PciAddress, str, str], Finding] = field(default_factory=dict)

    def use(self, target: Target, code: UseCode, subject: str, text: str) -> None:
        key = (target.address, code, subject)
        if key not in self.uses:
            self.uses[key] = Finding(target.address, code, subject, f"{target.who} {text}")

    def could_not_tell(self, target: Target, family: str, subject: str, whether: str, why: str) -> None:
        key = (target.address, family, subject)
        if key not in self.unknown:
            message = f"{target.who}: {UNKNOWN_PREFIX} {whether} ({why})"
            self.unknown[key] = Finding(target.address, UNKNOWN_CODES[family], subject, message)


class ProbeContext:
    """One probe run: the seams plus what several probes read, each read at most once."""

    def __init__(self, seams: ProbeSeams) -> None:
        self.seams = seams
        self.root = os.path.realpath(seams.sysfs.root)
        self._cache: dict[str, object] = {}

    # --- sysfs --------------------------------------------------------------------------------------------

    def sys(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def target(self, address: PciAddress) -> Target | None:
        link = self.sys(Sysfs.device(address))
        if not os.path.lexists(link):
            return None
        path = os.path.realpath(link)
        driver = link_name(os.path.join(path, "driver"))
        return Target(address, path, driver, read_attr(os.path.join(path, "boot_vga")) == "1")

    def class_members(self, cls: str) -> list[tuple[str, str]]:
        """(name, real path) of every device of a sysfs class (`class/net/*`), read once."""
        key = f"class:{cls}"
        if key not in self._cache:
            self._cache[key] = list(self._links(self.sys(f"class/{cls}")))
        members = self._cache[key]
        assert isinstance(members, list)
        return members

    def below(self, target: Target, cls: str) -> list[tuple[str, str]]:
        return [(name, path) for name, path in self.class_members(cls) if self.owned_by(target, path)]

    def owned_by(self, target: Target, path: str) -> bool:
        """Whether a device belongs to the function: below it, or an NVMe namespace of a subsystem one of whose
        controllers is below it (with native NVMe multipath, the kernel puts nvme0n1 below the virtual
        nvme-subsystem device, not below any PCI function)."""
        return target.owns(path) or any(target.owns(c) for c in self.nvme_controllers(path))

    def nvme_controllers(self, path: str) -> list[str]:
        marker = "/devices/virtual/nvme-subsystem/"
        at = path.find(marker)
        if at < 0:
            return []
        rest = path[at + len(marker) :].split("/", 1)[0]
        subsystem = path[: at + len(marker)] + rest
        key = f"nvme:{subsystem}"
        if key not in self._cache:
            self._cache[key] = [
                self.follow(os.path.join(subsystem, name))
                for name in listdir(subsystem)
                if re.fullmatch(r"nvme\d+", name) and os.path.islink(os.path.join(subsystem, name))
            ]
        found = self._cache[key]
        assert isinstance(found, list)
        return found

    def _links(self, directory: str) -> Iterator[tuple[str, str]]:
        for name in listdir(directory):
            yield name, self.follow(os.path.join(directory, name))

    def follow(self, link: str) -> str:
        """Where a sysfs link points, as a real path, without resolving anything past its target."""
        try:
            target = os.readlink(link)
        except OSError:
            return os.path.realpath(link)
        return os.path.normpath(os.path.join(os.path.dirname(link), target))

    # --- /proc and /dev -------------------------------------------------------------------------------------

    def proc(self, rel: str) -> Path:
        return self.seams.proc / rel

    def read_proc(self, rel: str, *, absent: str | None = None) -> str:
        """A /proc file's text. Unreadable when it cannot be read; `absent` is what a file the running kernel
        does not have means (swap or IPv6 compiled out), on the live host only: a tree must have its files."""
        key = f"proc:{rel}"
        if key not in self._cache:
            try:
                with open(self.proc(rel), "rb") as f:
                    value: object = f.read().decode("utf-8", "surrogateescape")
            except OSError as exc:
                if absent is not None and self.seams.live and exc.errno == errno.ENOENT:
                    value = absent
                else:
                    value = Unreadable(str(self.proc(rel)), exc.errno)
            self._cache[key] = value
        value = self._cache[key]
        if isinstance(value, Unreadable):
            raise value
        assert isinstance(value, str)
        return value

    def memo(self, key: str) -> object | None:
        return self._cache.get(key)

    def remember(self, key: str, value: object) -> None:
        self._cache[key] = value

    def dev_path(self, devname: str) -> Path | None:
        return self.seams.dev / devname if self.seams.dev is not None else None

    @cached_property
    def own_pid(self) -> int | None:
        return os.getpid() if self.seams.live else None


def read_attr(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def uevent(path: str) -> dict[str, str]:
    text = read_attr(os.path.join(path, "uevent")) or ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def devname(path: str) -> str:
    """The device node's name below /dev (`sda2`, `dri/card0`, `bus/usb/001/002`), as the kernel names it."""
    return uevent(path).get("DEVNAME") or os.path.basename(path)
