"""Moving one PCI function to vfio-pci and back, with the same sysfs writes libvirt uses
(driver_override, unbind, drivers_probe), each checked. Both operations are idempotent: they start from
whatever state the device is in, so a run that died half-way can simply be repeated."""

from __future__ import annotations

from isogroup.core.address import PciAddress
from isogroup.core.drivers import VFIO_PCI, is_vfio_driver
from isogroup.errors import HostError
from isogroup.host.sysfs import Sysfs
from isogroup.log import log

DRIVERS_PROBE = "bus/pci/drivers_probe"


def _describe(driver: str | None) -> str:
    return f"on {driver}" if driver else "unbound"


def move_to_vfio(kernel: Sysfs, address: PciAddress, timeout: float) -> None:
    current = kernel.driver_of(address)
    if is_vfio_driver(current):
        return
    kernel.write(Sysfs.device(address, "driver_override"), VFIO_PCI)
    if current is not None:
        kernel.write(Sysfs.driver_dir(current, "unbind"), str(address))
        log.info("%s: unbound from %s", address, current)
    kernel.write(DRIVERS_PROBE, str(address))
    got = kernel.wait_for_driver(address, VFIO_PCI, timeout)
    if got != VFIO_PCI:
        raise HostError(f"{address} did not bind to {VFIO_PCI} within {timeout:g} s (it is {_describe(got)})")
    log.info("%s: bound to %s", address, VFIO_PCI)


def restore(kernel: Sysfs, address: PciAddress, driver: str | None, override: str | None, timeout: float) -> bool:
    """Put the device back on `driver` with `override`. False when the device is gone (nothing to restore)."""
    if not kernel.exists(Sysfs.device(address)):
        log.warning("%s: gone from the host; nothing to restore", address)
        return False
    # The override first: the probe below must be free to pick the original driver.
    current_override = kernel.read(Sysfs.device(address, "driver_override"))
    if current_override in ("", "(null)"):
        current_override = None
    if current_override != override:
        kernel.write(Sysfs.device(address, "driver_override"), override if override is not None else "\n")

    current = kernel.driver_of(address)
    if current == driver:
        return True
    if current is not None:
        kernel.write(Sysfs.driver_dir(current, "unbind"), str(address))
        log.info("%s: unbound from %s", address, current)
    if driver is None:
        return True

    kernel.write(DRIVERS_PROBE, str(address))
    got = kernel.wait_for_driver(address, driver, timeout)
    if got != driver:
        # The probe picked another driver (two drivers claim the ID), or none: bind the original explicitly.
        if got is not None:
            kernel.write(Sysfs.driver_dir(got, "unbind"), str(address))
        if not kernel.exists(Sysfs.driver_dir(driver)):
            raise HostError(f"cannot give {address} back to {driver}: that driver is not loaded")
        kernel.write(Sysfs.driver_dir(driver, "bind"), str(address))
        got = kernel.wait_for_driver(address, driver, timeout)
        if got != driver:
            raise HostError(f"{address} did not come back to {driver} (it is {_describe(got)})")
    log.info("%s: restored to %s", address, driver)
    return True
