"""The one seam through which isogroup reads and writes the kernel's sysfs.

Rooted at an injectable path (`/sys` on a live host, a captured or simulated tree in tests). A simulated kernel
subclasses this and overrides `write` to react the way the kernel does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from isogroup.address import PciAddress
from isogroup.errors import HostError

PCI_DEVICES = "bus/pci/devices"
PCI_DRIVERS = "bus/pci/drivers"
IOMMU_GROUPS = "kernel/iommu_groups"


class Sysfs:
    def __init__(self, root: Path | str = "/sys") -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Sysfs({str(self.root)!r})"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str | None:
        """An attribute's value without its trailing newline; None when it does not exist or cannot be read."""
        try:
            with open(self.root / rel, "rb") as f:
                return f.read().decode("utf-8", "replace").rstrip("\n")
        except OSError:
            return None

    def read_bytes(self, rel: str, limit: int) -> bytes | None:
        try:
            with open(self.root / rel, "rb") as f:
                return f.read(limit)
        except OSError:
            return None

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (`driver` -> `e1000e`); None when there is no link."""
        try:
            return os.path.basename(os.readlink(self.root / rel))
        except OSError:
            return None

    def resolve(self, rel: str) -> Path:
        return (self.root / rel).resolve()

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / rel))
        except OSError:
            return []

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.root / rel)

    def write(self, rel: str, value: str) -> None:
        """One write(2) of `value`, as the kernel expects for an attribute; errors become HostError."""
        try:
            fd = os.open(self.root / rel, os.O_WRONLY)
        except OSError as exc:
            raise HostError(
                f"cannot open {self.root / rel}: {os.strerror(exc.errno or errno.EIO)}", errno=exc.errno
            ) from exc
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise HostError(
                f"writing {value.strip()!r} to {self.root / rel} failed: {os.strerror(exc.errno or 0)}",
                errno=exc.errno,
            ) from exc
        finally:
            os.close(fd)

    # Paths of the attributes isogroup uses, in one place.
    @staticmethod
    def device(address: PciAddress, attr: str = "") -> str:
        return f"{PCI_DEVICES}/{address}/{attr}" if attr else f"{PCI_DEVICES}/{address}"

    @staticmethod
    def driver_dir(name: str, attr: str = "") -> str:
        return f"{PCI_DRIVERS}/{name}/{attr}" if attr else f"{PCI_DRIVERS}/{name}"
