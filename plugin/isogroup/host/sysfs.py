"""The one seam through which isogroup reads and writes the kernel's sysfs.

Rooted at an injectable path (`/sys` on a live host, a captured or simulated tree in tests). A simulated kernel
subclasses this and overrides `write` to react the way the kernel does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from isogroup.core.address import PciAddress
from isogroup.errors import HostError

PCI_DEVICES = "bus/pci/devices"
PCI_DRIVERS = "bus/pci/drivers"
IOMMU_GROUPS = "kernel/iommu_groups"


# include/uapi/linux/vfio.h: VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE ';', VFIO_BASE 100 + 3) on
# struct vfio_group_status { __u32 argsz; __u32 flags; }, flag VFIO_GROUP_FLAGS_VIABLE = 1 << 0.
_VFIO_GROUP_GET_STATUS = (ord(";") << 8) | (100 + 3)
_VFIO_GROUP_FLAGS_VIABLE = 1

# The hook runs with a minimal PATH; look in the usual places too.
_MODPROBE_DIRS = "/usr/sbin:/sbin:/usr/bin:/bin"


class Sysfs:
    """A sysfs tree. `dev` is the matching /dev, for /dev/vfio/N (None: there is none, the viability ioctl cannot
    be asked). `live`: this is the running kernel's own sysfs, whose uevents announce binds; chosen by the
    caller (`Sysfs.live_host()`), never guessed from the path."""

    def __init__(self, root: Path | str, dev: Path | str | None = None, *, live: bool = False) -> None:
        self.root = Path(root)
        self.dev = Path(dev) if dev is not None else None
        self.live = live
        # Attribute paths are joined as strings: a prepare reads and writes a few hundred of them, and building
        # a Path for each cost more than the reads themselves under emulation (tests/vm prepare_overhead).
        self._prefix = os.fspath(self.root).rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self._prefix}/{rel}"

    @classmethod
    def live_host(cls) -> Sysfs:
        return cls("/sys", "/dev", live=True)

    def __repr__(self) -> str:
        return f"Sysfs({str(self.root)!r}{', live' if self.live else ''})"

    def read(self, rel: str) -> str | None:
        """An attribute's value without its trailing newline; None when it does not exist or cannot be read."""
        try:
            with open(self._path(rel), "rb") as f:
                return f.read().decode("utf-8", "replace").rstrip("\n")
        except OSError:
            return None

    def read_bytes(self, rel: str, limit: int) -> bytes | None:
        try:
            with open(self._path(rel), "rb") as f:
                return f.read(limit)
        except OSError:
            return None

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (`driver` -> `e1000e`); None when there is no link."""
        try:
            return os.path.basename(os.readlink(self._path(rel)))
        except OSError:
            return None

    def resolve(self, rel: str) -> Path:
        return Path(os.path.realpath(self._path(rel)))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(rel)))
        except OSError:
            return []

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._path(rel))

    def write(self, rel: str, value: str) -> None:
        """One write(2) of `value`, as the kernel expects for an attribute; errors become HostError."""
        try:
            fd = os.open(self._path(rel), os.O_WRONLY)
        except OSError as exc:
            raise HostError(
                f"cannot open {self._path(rel)}: {os.strerror(exc.errno or errno.EIO)}", errno=exc.errno
            ) from exc
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise HostError(
                f"writing {value.strip()!r} to {self._path(rel)} failed: {os.strerror(exc.errno or 0)}",
                errno=exc.errno,
            ) from exc
        finally:
            os.close(fd)

    def modprobe(self, module: str) -> None:
        """Load a kernel module (vfio-pci before the first move). Failure is a HostError naming the module."""
        import shutil  # noqa: PLC0415 - loaded by the first move only: the hook's refusals never need it
        import subprocess  # noqa: PLC0415

        exe = shutil.which("modprobe", path=os.environ.get("PATH", "") + ":" + _MODPROBE_DIRS)
        if exe is None:
            raise HostError(f"cannot load {module}: modprobe not found")
        done = subprocess.run([exe, module], capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise HostError(f"modprobe {module} failed: {detail}")

    def driver_of(self, address: PciAddress) -> str | None:
        return self.link_name(self.device(address, "driver"))

    def wait_for_driver(self, address: PciAddress, wanted: str | None, timeout: float) -> str | None:
        """Wait until the device's driver is `wanted` (None: unbound), at most `timeout` seconds; returns the
        driver it has in the end. drivers_probe binds synchronously for most drivers, so the first look usually
        settles it; otherwise the live host waits for the kernel's uevents and any other tree polls."""
        current = self.driver_of(address)
        if current == wanted or timeout <= 0:
            return current
        if self.live:
            from isogroup.host.uevents import UeventsUnavailable, wait_for_driver_event  # noqa: PLC0415 - pyudev

            try:
                return wait_for_driver_event(address, wanted, timeout, lambda: self.driver_of(address))
            except UeventsUnavailable:
                pass  # poll below
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            current = self.driver_of(address)
            if current == wanted or time.monotonic() >= deadline:
                return current
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def vfio_group_viable(self, group: int) -> bool | None:
        """The kernel's own verdict, from the VFIO group status ioctl on /dev/vfio/N. None when it cannot be
        asked: no /dev for this tree, no /dev/vfio/N (no member on a vfio driver), or the group is open
        elsewhere (a running QEMU holds it: EBUSY)."""
        if self.dev is None:
            return None
        try:
            fd = os.open(self.dev / "vfio" / str(group), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            buf = bytearray(struct.pack("=II", 8, 0))
            fcntl.ioctl(fd, _VFIO_GROUP_GET_STATUS, buf, True)
        except OSError:
            return None
        finally:
            os.close(fd)
        _, flags = struct.unpack("=II", buf)
        return bool(flags & _VFIO_GROUP_FLAGS_VIABLE)

    # Paths of the attributes isogroup uses, in one place.
    @staticmethod
    def device(address: PciAddress, attr: str = "") -> str:
        return f"{PCI_DEVICES}/{address}/{attr}" if attr else f"{PCI_DEVICES}/{address}"

    @staticmethod
    def driver_dir(name: str, attr: str = "") -> str:
        return f"{PCI_DRIVERS}/{name}/{attr}" if attr else f"{PCI_DRIVERS}/{name}"
