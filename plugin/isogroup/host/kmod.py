"""The kernel's module index, as far as VFIO needs it: the vfio_pci: aliases of the running kernel's
modules.alias (which variant driver a device may go to), and making a chosen driver available.

The file is a seam like sysfs: the live host's is /lib/modules/$(uname -r)/modules.alias (the path libvirt's
`virPCIDeviceFindBestVFIOVariant` reads), chosen by the caller (`running_kernel()`); a test or a snapshot check
names another. A file that is not there is not an error: the table is then unread, and every device goes to
vfio-pci as far as isogroup can tell.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from isogroup.core.drivers import VFIO_PCI
from isogroup.core.variants import NO_VARIANTS, VariantTable
from isogroup.errors import HostError, InputError
from isogroup.files import FileRefused, read_regular
from isogroup.formats.modalias import MAX_BYTES, parse_modules_alias
from isogroup.host.sysfs import Sysfs
from isogroup.log import log


def running_kernel() -> Path:
    return Path("/lib/modules") / os.uname().release / "modules.alias"


def read_variants(path: Path | None) -> VariantTable:
    """The vfio_pci: aliases in `path`; NO_VARIANTS for None or a file that does not exist. Unreadable or
    malformed: InputError (a plan must not guess which driver libvirt will pick)."""
    if path is None:
        return NO_VARIANTS
    try:
        data = read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        log.debug("%s: not found; no vfio variant drivers known", path)
        return VariantTable(source=str(path))
    except FileRefused as exc:
        raise InputError(f"{path}: {exc}; not a modules.alias") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {os.strerror(exc.errno or errno.EIO)}") from None
    return parse_modules_alias(data, str(path))


def make_available(kernel: Sysfs, driver: str) -> bool:
    """Whether the PCI driver `driver` is registered, loading its module when it is not. "Absent" is decided by
    the kernel, not guessed: the driver is there when /sys/bus/pci/drivers/DRIVER exists, after `modprobe DRIVER`
    if it did not (a variant's module has its driver's name, KBUILD_MODNAME). A failed modprobe is logged and
    answers False: the caller falls back to vfio-pci."""
    if kernel.exists(Sysfs.driver_dir(driver)):
        return True
    try:
        kernel.modprobe(driver)
    except HostError as exc:
        log.warning("%s is not available (%s); using %s", driver, exc, VFIO_PCI)
        return False
    if not kernel.exists(Sysfs.driver_dir(driver)):
        log.warning("modprobe %s registered no PCI driver of that name; using %s", driver, VFIO_PCI)
        return False
    return True
