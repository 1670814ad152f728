"""Waiting for a bind on the live host through the kernel's uevents (pyudev), instead of polling sysfs."""

from __future__ import annotations

import logging
import select
import time
from typing import TYPE_CHECKING

from isogroup.core.address import PciAddress

if TYPE_CHECKING:
    from isogroup.host.sysfs import Sysfs

log = logging.getLogger("isogroup")


def wait_for_driver_event(
    sysfs: Sysfs, address: PciAddress, wanted: str | None, timeout: float
) -> tuple[str | None] | None:
    """(driver,) once the device's driver is `wanted` or the time is up; None when uevents cannot be had
    (no pyudev, no netlink socket), so the caller polls instead."""
    try:
        import pyudev  # noqa: PLC0415

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.filter_by("pci")
        monitor.start()
    except (ImportError, OSError, ValueError) as exc:
        log.debug("uevents unavailable (%s); polling", exc)
        return None
    deadline = time.monotonic() + timeout
    name = str(address)
    # The monitor runs before this look, so a bind that lands in between is seen here or as an event.
    while (current := sysfs.driver_of(address)) != wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([monitor], [], [], min(remaining, 0.25))
        if ready:
            while (device := monitor.poll(timeout=0)) is not None:
                if device.sys_name == name:
                    log.debug("uevent %s for %s", device.action, name)
    return (current,)
