"""The driver core's answers to the attributes isogroup writes, on the simulated kernel's record: the store
methods of `driver_override` (drivers/base/driver.c), `bind`/`unbind`/`drivers_probe` (drivers/base/bus.c,
dd.c) and `new_id`/`remove_id` with ID matching (drivers/pci/pci-driver.c), vfio-pci's probe refusals
(drivers/vfio/pci/vfio_pci_core.c) and DMA ownership (drivers/iommu/iommu.c). Each change to the record is
drawn on the tree at once (layout.Tree) and /dev/vfio follows (vfio.py)."""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from pathlib import Path

from fakes.faults import Faults
from fakes.layout import Tree
from fakes.refusals import KernelWouldBlock, Refused
from fakes.state import DynId, SimState
from fakes.vfio import VFIO_PCI, is_vfio_driver, manages_own_dma, sync_group_nodes
from isogroup.core.model import Header, HostTopology

PCI_STUB = "pci-stub"
_PAGE_SIZE = 4096


def module_driver(module: str) -> str:
    """The driver a module registers: `modprobe vfio_pci` and `modprobe vfio-pci` both load driver vfio-pci."""
    aliases = {"vfio_pci": VFIO_PCI, "pci_stub": PCI_STUB}
    return aliases.get(module, module)


def initial_drivers(topology: HostTopology, natives: Mapping[str, str | None], vfio_loaded: bool) -> list[str]:
    """Host drivers load at boot, before vfio-pci: that is the order drivers_probe tries them in."""
    names = {f.driver for f in topology.functions} | set(natives.values())
    host = sorted(n for n in names if n is not None and n not in (VFIO_PCI, PCI_STUB))
    return [*host, PCI_STUB, *([VFIO_PCI] if vfio_loaded else [])]


class DriverCore:
    """One locked transaction's view of the driver core: the record, the faults in force, the tree to draw on
    and the simulated /dev."""

    def __init__(self, state: SimState, faults: Faults, tree: Tree, devfs: Path) -> None:
        self.state = state
        self.faults = faults
        self.tree = tree
        self.devfs = devfs

    # --- store methods ---------------------------------------------------------------------------------

    def set_override(self, bdf: str, value: str) -> None:
        """driver_set_override(): up to the first newline; "\\n" or a string starting with NUL clears it."""
        if len(value.encode()) >= _PAGE_SIZE - 1:
            raise Refused(errno.EINVAL)
        text = value.split("\0", 1)[0]  # the kernel takes strlen() of the buffer
        name = text.split("\n", 1)[0] or None
        self.state.set_function(bdf, driver_override=name)
        self.tree.show_override(self.state.device(bdf), name)

    def bind(self, driver: str, value: str) -> None:
        """bind_store(): find the device, match it, then device_driver_attach()."""
        bdf = self.find_device(value)
        if bdf is None or not self._matches(driver, bdf):
            raise Refused(errno.ENODEV)
        if self.state.driver(bdf) is not None:
            raise Refused(errno.EBUSY)  # __driver_probe_device(): dev->driver is set
        result = self._really_probe(driver, bdf)
        if result != 0:
            raise Refused(abs(result))  # probe errors come back as plain negative errnos

    def unbind(self, driver: str, value: str) -> None:
        """unbind_store(): only the driver the device is bound to can let it go."""
        bdf = self.find_device(value)
        if bdf is None or self.state.driver(bdf) != driver:
            raise Refused(errno.ENODEV)
        self.detach(bdf)

    def drivers_probe(self, value: str) -> None:
        """drivers_probe_store(): device_attach() on an unbound device. Probe failures are swallowed (the next
        driver gets its turn), but an error before probe (DMA ownership) makes the write fail with EINVAL."""
        bdf = self.find_device(value)
        if bdf is None:
            raise Refused(errno.ENODEV)
        if self.state.driver(bdf) is not None:
            return
        if self._device_attach(bdf) < 0:
            raise Refused(errno.EINVAL)

    def new_id(self, driver: str, value: str) -> None:
        """new_id_store(): add a dynamic ID (EEXIST if the driver already matches it), then driver_attach()."""
        fields = _scan_hex(value, 7)
        if len(fields) < 2:
            raise Refused(errno.EINVAL)
        dynid = DynId(*fields[:6])
        if len(fields) != 7 and self._driver_matches_ids(driver, dynid):
            raise Refused(errno.EEXIST)
        self.state.dynids.setdefault(driver, []).append(dynid)
        self.driver_attach(driver)

    def remove_id(self, driver: str, value: str) -> None:
        """remove_id_store(): drop an identical dynamic ID; bound devices stay bound."""
        fields = _scan_hex(value, 6)
        if len(fields) < 2:
            raise Refused(errno.EINVAL)
        wanted = DynId(*fields)
        ids = self.state.dynids.get(driver, [])
        if wanted not in ids:
            raise Refused(errno.ENODEV)
        ids.remove(wanted)

    # --- the driver core -------------------------------------------------------------------------------

    def find_device(self, value: str) -> str | None:
        """bus_find_device_by_name(): an exact name, but sysfs_streq() forgives one trailing newline."""
        name = value[:-1] if value.endswith("\n") else value
        return name if _is_bdf(name) and name in self.state.devices else None

    def _matches(self, driver: str, bdf: str) -> bool:
        """pci_match_device(): an override admits only its driver; then dynamic IDs, the static table, and a
        matching override on its own (vfio-pci's table is override-only)."""
        func = self.state.device(bdf).function
        override = func.driver_override
        if override is not None and override != driver:
            return False
        if any(d.matches(func.vendor, func.device, func.class_code) for d in self.state.dynids.get(driver, [])):
            return True
        return self.state.native.get(bdf) == driver or override == driver

    def _driver_matches_ids(self, driver: str, dynid: DynId) -> bool:
        """new_id's EEXIST check: would `driver` already match a device with these IDs?"""
        if any(d.matches(dynid.vendor, dynid.device, dynid.class_code) for d in self.state.dynids.get(driver, [])):
            return True
        return any(
            self.state.native.get(bdf) == driver
            and (d.function.vendor, d.function.device) == (dynid.vendor, dynid.device)
            for bdf, d in self.state.devices.items()
        )

    def _really_probe(self, driver: str, bdf: str) -> int:
        """0 when bound; -errno when refused before probe (the caller stops); +errno when the driver's probe()
        refused (drivers_probe then tries the next driver)."""
        func = self.state.device(bdf).function
        group = func.iommu_group
        if not manages_own_dma(driver) and group in self.state.owned_groups:
            return -errno.EBUSY  # iommu_device_use_default_domain(): the group has another DMA owner
        if is_vfio_driver(driver):
            if func.header is not Header.ENDPOINT:
                return errno.EINVAL  # vfio_pci_core_register_device(): hdr_type != PCI_HEADER_TYPE_NORMAL
            if func.sriov_numvfs:
                return errno.EBUSY  # "Cannot bind to PF with SR-IOV enabled"
            if group is None:
                return errno.EINVAL  # vfio_group_find_or_alloc(): no IOMMU group (and no noiommu mode)
        if self.faults.never_binds(bdf, driver):
            return 0
        self._attach(bdf, driver)
        return 0

    def _device_attach(self, bdf: str) -> int:
        """__device_attach(): every loaded driver in registration order; 1 bound, 0 none, <0 error."""
        for driver in self.state.drivers:
            if not self._matches(driver, bdf):
                continue
            result = self._really_probe(driver, bdf)
            if result < 0:
                return result
            if result == 0:
                return 1
        return 0

    def driver_attach(self, driver: str) -> None:
        """driver_attach(): offer every unbound matching device to `driver`, ignoring failures."""
        for bdf in sorted(self.state.devices):
            if self.state.driver(bdf) is None and self._matches(driver, bdf):
                self._really_probe(driver, bdf)

    def _attach(self, bdf: str, driver: str) -> None:
        self.state.set_function(bdf, driver=driver)
        self.tree.bind(self.state.device(bdf), driver)
        sync_group_nodes(self.state, self.devfs)

    def detach(self, bdf: str) -> None:
        driver = self.state.driver(bdf)
        if driver is None:
            return
        group = self.state.group(bdf)
        if is_vfio_driver(driver) and group in self.state.owned_groups:
            # vfio_unregister_group_dev() waits for the user to release the device: the write would hang.
            raise KernelWouldBlock(f"unbinding {bdf} from {driver} blocks while QEMU holds group {group}")
        self.tree.unbind(self.state.device(bdf), driver)
        self.state.set_function(bdf, driver=None)
        sync_group_nodes(self.state, self.devfs)


def _scan_hex(value: str, limit: int) -> list[int]:
    """sscanf(buf, "%x %x ..."): leading hex fields, each with an optional 0x; stops at the first non-hex."""
    fields = []
    for token in value.split()[:limit]:
        try:
            fields.append(int(token, 16))
        except ValueError:
            break
    return fields


def _is_bdf(name: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", name) is not None
