"""Waiting for a bind on the live host through the kernel's uevents (pyudev), instead of polling sysfs."""

from __future__ import annotations

import select
import time
from collections.abc import Callable

from isogroup.core.address import PciAddress
from isogroup.log import log


class UeventsUnavailable(Exception):
    """No pyudev or no netlink socket here: the caller polls instead."""


def wait_for_driver_event(
    address: PciAddress, wanted: str | None, timeout: float, current_driver: Callable[[], str | None]
) -> str | None:
    """The device's driver once it is `wanted` or the time is up, woken by the kernel's uevents for PCI devices;
    `current_driver` reads it from sysfs. UeventsUnavailable when uevents cannot be had."""
    try:
        import pyudev  # noqa: PLC0415

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.filter_by("pci")
        monitor.start()
    except (ImportError, OSError, ValueError) as exc:
        log.debug("uevents unavailable (%s); polling", exc)
        raise UeventsUnavailable(str(exc)) from None
    deadline = time.monotonic() + timeout
    name = str(address)
    # The monitor runs before this look, so a bind that lands in between is seen here or as an event.
    while (current := current_driver()) != wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([monitor], [], [], min(remaining, 0.25))
        if ready:
            while (device := monitor.poll(timeout=0)) is not None:
                if device.sys_name == name:
                    log.debug("uevent %s for %s", device.action, name)
    return current
