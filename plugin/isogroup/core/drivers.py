"""Which host drivers leave a device safe for VFIO. The kernel keeps this as code, not sysfs: we keep it as data.

Source of truth: drivers/vfio/group.c (`vfio_dev_driver_allowed`) and the vfio-pci variant drivers.
"""

from __future__ import annotations

import re

VFIO_PCI = "vfio-pci"

# A driver's name is a directory under /sys/bus/pci/drivers (snd_hda_intel, ehci-pci, mlx5_core...) and goes into
# sysfs paths like drivers/NAME/bind and into report lines: no slash, no space, no control character, never `.` or
# `..`. Every driver name read from an input (a snapshot, a claim) must match it.
DRIVER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

# Drivers that do no DMA on the device's behalf, so the kernel lets VFIO own a group that contains them.
_DMA_SAFE = frozenset({"pci-stub", "pcieport"})


def is_vfio_driver(driver: str | None) -> bool:
    """vfio-pci and its variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, nvgrace_gpu_vfio_pci, ...)."""
    return driver is not None and (driver == VFIO_PCI or driver.endswith(("_vfio_pci", "-vfio-pci")))


def is_viable_driver(driver: str | None) -> bool:
    """True when a group member on this driver (or on none) does not stop VFIO from using the group."""
    return driver is None or driver in _DMA_SAFE or is_vfio_driver(driver)
