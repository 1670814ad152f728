"""Moving one PCI function to vfio-pci (or a vfio variant driver) and back, with the same sysfs writes libvirt uses
(driver_override, unbind, drivers_probe), each checked. Both operations are idempotent: they start from
whatever state the device is in, so a run that died half-way can simply be repeated."""

from __future__ import annotations

from isogroup.core.address import PciAddress
from isogroup.core.drivers import VFIO_PCI, is_vfio_driver
from isogroup.errors import HostError
from isogroup.host.kmod import make_available
from isogroup.host.sysfs import Sysfs
from isogroup.log import log

DRIVERS_PROBE = "bus/pci/drivers_probe"


def _describe(driver: str | None) -> str:
    return f"on {driver}" if driver else "unbound"


def move_to_vfio(kernel: Sysfs, address: PciAddress, timeout: float, driver: str = VFIO_PCI) -> str:
    """Bind the device to the VFIO driver `driver` (vfio-pci, or the variant `core.variants.choose` picked) and
    return the driver it is on. A variant that is absent (`kmod.make_available`) or does not take the device
    (its probe refused it, or it never bound) is given up for vfio-pci, as libvirt's own user would by writing
    `<driver model='vfio-pci'/>`; only vfio-pci failing too is an error. A device already on a vfio driver stays."""
    current = kernel.driver_of(address)
    if is_vfio_driver(current):
        return current or VFIO_PCI
    if driver != VFIO_PCI and make_available(kernel, driver):
        got = _bind_by_override(kernel, address, current, driver, timeout)
        if got == driver:
            log.info("%s: bound to %s", address, driver)
            return driver
        log.warning("%s: %s did not take it (it is %s); using %s", address, driver, _describe(got), VFIO_PCI)
        current = got
    got = _bind_by_override(kernel, address, current, VFIO_PCI, timeout)
    if got != VFIO_PCI:
        raise HostError(f"{address} did not bind to {VFIO_PCI} within {timeout:g} s (it is {_describe(got)})")
    log.info("%s: bound to %s", address, VFIO_PCI)
    return VFIO_PCI


def _bind_by_override(
    kernel: Sysfs, address: PciAddress, current: str | None, driver: str, timeout: float
) -> str | None:
    """libvirt's way (virPCIDeviceBindWithDriverOverride): driver_override, unbind, drivers_probe; the driver the
    device is on in the end. The variant drivers match only through driver_override, so this is also the only
    way to bind one."""
    kernel.write(Sysfs.device(address, "driver_override"), driver)
    if current is not None:
        kernel.write(Sysfs.driver_dir(current, "unbind"), str(address))
        log.info("%s: unbound from %s", address, current)
    kernel.write(DRIVERS_PROBE, str(address))
    return kernel.wait_for_driver(address, driver, timeout)


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
