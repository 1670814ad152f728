"""A simulated Linux kernel behind isogroup's sysfs seam.

`SimKernel.materialize(root, topology)` records the topology as the kernel's own state (state.py) and draws it as
a real directory tree shaped like `/sys` (`devices/`, `bus/pci/`, `kernel/iommu_groups/`: layout.py), so every
read of the code under test goes through the ordinary `Sysfs` code against real files. `SimKernel.write` then
answers the attributes isogroup writes the way the kernel does (drivercore.py, vfio.py), changing the record and
redrawing the tree, and injects the faults a test installed (faults.py). Like libvirt's virpcimock, but it also
models group viability and a group held by QEMU.

The fake's answers to "what is bound where" (`topology()`, `driver()`, `group_viable()`...) come from its record,
never from reading the tree back through isogroup's scanner: comparing the scanner's `read_topology(sim)` with
`sim.topology()` is a check of the scanner (and of the drawing), not a tautology.

This module is the entry point: every name a test imports from `fakes.simkernel` is here.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

from fakes.drivercore import PCI_STUB, DriverCore, initial_drivers, module_driver
from fakes.faults import FailNth, FailPath, Faults, KillAt, KillWhen, NeverBind, WriteRecord, die
from fakes.layout import (
    CONVENTIONAL_CONFIG_SIZE,
    DRIVER_ATTRS,
    DRIVERS_PROBE,
    WO,
    Tree,
    check_kernel_shaped,
    config_space,
    device_paths,
    make_device,
    make_group,
    write_attr,
)
from fakes.refusals import (
    KernelWouldBlock,
    Refused,
    SimulationError,
    modprobe_error,
    open_error,
    store_error,
)
from fakes.state import Device, DynId, SimState, StateFile, load_json, save_json
from fakes.topologies import make_function, make_topology
from fakes.vfio import (
    VFIO_PCI,
    close_group,
    group_viable,
    is_vfio_driver,
    manages_own_dma,
    open_group,
    sync_group_nodes,
    vfio_groups,
)
from isogroup.core.address import PciAddress
from isogroup.core.model import HostTopology
from isogroup.host.sysfs import IOMMU_GROUPS, PCI_DEVICES, PCI_DRIVERS, Sysfs

SIM_DIR = ".sim"


class SimKernel(Sysfs):
    """A Sysfs whose tree reacts to writes like the kernel. Reads are the plain Sysfs ones, on real files."""

    def __init__(self, root: Path | str, faults: Faults | None = None) -> None:
        """Attach to a tree made by `materialize` (in this process or another); `faults` replaces the
        persisted ones when given."""
        super().__init__(root, dev=Path(root) / SIM_DIR / "dev")
        self._real_root = Path(os.path.realpath(self.root))
        self._sim = self.root / SIM_DIR
        if not (self._sim / "state.json").is_file():
            raise SimulationError(f"{self.root} is not a simulated tree (make one with SimKernel.materialize)")
        self._state = StateFile(self._sim)
        self._tree = Tree(self.root)
        if faults is not None:
            self.set_faults(faults)

    def __repr__(self) -> str:
        return f"SimKernel({str(self.root)!r})"

    # --- building a tree -------------------------------------------------------------------------------

    @classmethod
    def materialize(
        cls,
        root: Path | str,
        topology: HostTopology,
        *,
        vfio_loaded: bool = True,
        native: Mapping[PciAddress, str | None] | None = None,
        faults: Faults | None = None,
    ) -> SimKernel:
        """Record `topology` as the kernel's state and lay it out as the kernel would show it under an empty
        `root`. Each device's native driver (what a probe binds without an override) is its driver in the
        topology unless `native` says otherwise."""
        root = Path(root)
        check_kernel_shaped(topology, vfio_loaded)
        if root.exists() and any(root.iterdir()):
            raise SimulationError(f"{root} is not empty")
        natives = {str(f.address): f.driver for f in topology.functions}
        natives.update({str(a): d for a, d in (native or {}).items()})
        paths = device_paths(topology)

        (root / SIM_DIR / "dev" / "vfio").mkdir(parents=True)
        (root / PCI_DEVICES).mkdir(parents=True)
        (root / IOMMU_GROUPS).mkdir(parents=True)
        write_attr(root / DRIVERS_PROBE, "", WO)
        drivers = initial_drivers(topology, natives, vfio_loaded)
        tree = Tree(root)
        for name in drivers:
            tree.add_driver(name)
        for func in topology.functions:
            make_device(root, topology, func, paths)
        for group in topology.groups:
            make_group(root, group, paths)

        devices = {str(f.address): Device(f, paths[f.address]) for f in topology.functions}
        state = SimState(iommu=topology.iommu, devices=devices, drivers=drivers, native=natives)
        sync_group_nodes(state, root / SIM_DIR / "dev")
        save_json(root / SIM_DIR / "state.json", state.to_json())
        return cls(root, faults=faults or Faults())

    # --- the seam: writes ------------------------------------------------------------------------------

    def write(self, rel: str, value: str) -> None:
        """One write(2) of `value` to the attribute `rel`, answered the way the kernel answers it."""
        path = self.root / rel
        with self._state.transaction() as state:
            state.writes += 1
            n = state.writes - state.armed_at  # faults count from when they were installed
            faults = self.faults()
            record = WriteRecord(state.writes, rel, value, os.getpid(), "ok")
            if faults.kills(n, KillWhen.BEFORE):
                self._log(replace(record, outcome="killed"))
                self._state.save(state)
                die()
            injected = faults.injected_errno(n, rel, value, state.fault_hits)
            if injected is not None:
                self._log(replace(record, outcome="injected", errno=injected))
                raise store_error(path, value, injected)
            try:
                self._store(self._core(state, faults), rel, value)
            except SimulationError:
                self._log(replace(record, outcome="unsimulated"))
                raise
            except Refused as refusal:
                self._log(replace(record, outcome="failed", errno=refusal.err))
                cause = OSError(refusal.err, os.strerror(refusal.err))
                raise (
                    open_error(path, refusal.err) if refusal.at_open else store_error(path, value, refusal.err)
                ) from cause
            self._log(record)
            if faults.kills(n, KillWhen.AFTER):
                self._state.save(state)
                die()

    def _core(self, state: SimState, faults: Faults | None = None) -> DriverCore:
        return DriverCore(state, faults if faults is not None else self.faults(), self._tree, self.devfs)

    def _log(self, record: WriteRecord) -> None:
        with open(self._sim / "writes.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(record)) + "\n")

    def _store(self, core: DriverCore, rel: str, value: str) -> None:
        """Open the attribute as kernfs would, then call its store method."""
        real = Path(os.path.realpath(self.root / rel))
        try:
            parts = real.relative_to(self._real_root).parts
        except ValueError:
            raise SimulationError(f"{rel} resolves outside the simulated tree") from None
        if parts[:1] == (SIM_DIR,):
            raise SimulationError(f"{rel} is the simulation's own state, not a kernel attribute")
        if not real.exists():
            raise Refused(errno.ENOENT, at_open=True)
        if real.is_dir():
            raise Refused(errno.EISDIR, at_open=True)
        if not real.stat().st_mode & 0o222:
            raise Refused(errno.EACCES, at_open=True)  # kernfs_fop_open: no store method, even for root
        if value == "":
            return  # sysfs_kf_write(): a zero-length write never reaches the store method

        if parts == tuple(DRIVERS_PROBE.split("/")):
            core.drivers_probe(value)
        elif len(parts) == 5 and parts[:3] == tuple(PCI_DRIVERS.split("/")) and parts[4] in DRIVER_ATTRS:
            driver, attr = parts[3], parts[4]
            if attr == "bind":
                core.bind(driver, value)
            elif attr == "unbind":
                core.unbind(driver, value)
            elif attr == "new_id":
                core.new_id(driver, value)
            else:
                core.remove_id(driver, value)
        elif parts[0] == "devices" and parts[-1] == "driver_override" and parts[-2] in core.state.devices:
            core.set_override(parts[-2], value)
        else:
            raise SimulationError(f"writing {'/'.join(parts)} is not simulated")

    # --- public API for tests: the fake's own record ---------------------------------------------------

    @property
    def devfs(self) -> Path:
        """The simulated /dev: `devfs / "vfio" / "N"` exists while group N has a member on a vfio driver."""
        return self._sim / "dev"

    def _record(self) -> SimState:
        return self._state.load()

    def faults(self) -> Faults:
        path = self._sim / "faults.json"
        return Faults.from_json(load_json(path)) if path.exists() else Faults()

    def set_faults(self, faults: Faults) -> None:
        """Install faults for every process using this tree; FailNth and KillAt count writes from now."""
        with self._state.transaction() as state:
            save_json(self._sim / "faults.json", faults.to_json())
            state.armed_at = state.writes
            state.fault_hits = {}

    def write_log(self) -> list[WriteRecord]:
        path = self._sim / "writes.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [WriteRecord(**json.loads(line)) for line in lines if line]

    def writes(self) -> list[tuple[str, str]]:
        """Every write attempted through this tree, in order, as (path as written, value)."""
        return [(r.path, r.value) for r in self.write_log()]

    def write_count(self) -> int:
        return self._record().writes

    def topology(self) -> HostTopology:
        """What the kernel knows now, from the simulation's own record (drivers and overrides included); the
        tree is drawn from it, and isogroup's scanner must read the same from the tree."""
        return self._record().topology()

    def driver(self, address: PciAddress | str) -> str | None:
        state = self._record()
        bdf = str(_address(address))
        return state.driver(bdf) if bdf in state.devices else None

    def native_driver(self, address: PciAddress | str) -> str | None:
        return self._record().native.get(str(_address(address)))

    def set_native_driver(self, address: PciAddress | str, driver: str | None) -> None:
        """The driver whose ID table matches the device (None: no driver claims it). Binds nothing by itself."""
        with self._state.transaction() as state:
            state.native[str(_address(address))] = driver

    def loaded_drivers(self) -> list[str]:
        return list(self._record().drivers)

    def load_driver(self, name: str) -> None:
        """Register a driver (its dir appears) and let it claim unbound matching devices, as module load does."""
        with self._state.transaction() as state:
            if name in state.drivers:
                return
            self._tree.add_driver(name)
            state.drivers.append(name)
            self._core(state).driver_attach(name)

    def modprobe(self, module: str) -> None:
        """`modprobe MODULE` through the seam: loads the module's driver (nothing happens when it is loaded);
        fails with the real seam's HostError when `Faults.fail_modprobe` names the module."""
        if self.faults().fails_modprobe(module):
            raise modprobe_error(module)
        self.load_driver(module_driver(module))

    def unload_driver(self, name: str) -> None:
        """rmmod: every bound device is released, then the driver and its dynamic IDs disappear."""
        with self._state.transaction() as state:
            if name not in state.drivers:
                return
            core = self._core(state)
            for bdf in sorted(state.devices):
                if state.driver(bdf) == name:
                    core.detach(bdf)
            self._tree.remove_driver(name)
            state.drivers.remove(name)
            state.dynids.pop(name, None)

    def remove_device(self, address: PciAddress | str) -> None:
        """Hot-unplug: the device, everything below it and its VFs disappear, from their groups too."""
        with self._state.transaction() as state:
            start = str(_address(address))
            if start not in state.devices:
                raise SimulationError(f"there is no device {start}")
            top = Path(state.devices[start].path)
            doomed = {b for b, d in state.devices.items() if Path(d.path).is_relative_to(top)}
            doomed |= {b for b, d in state.devices.items() if str(d.function.physfn) in doomed}
            # Deepest first, as pci_stop_and_remove_bus_device() does: a parent's directory holds its children.
            for bdf in sorted(doomed, key=lambda b: len(Path(state.devices[b].path).parts), reverse=True):
                device = state.devices.pop(bdf)
                group = device.function.iommu_group
                last = group is not None and group not in state.groups()
                self._tree.unplug(device, last_in_group=last)
                state.native.pop(bdf, None)
            sync_group_nodes(state, self.devfs)

    def group_members(self, group: int) -> list[PciAddress]:
        return [PciAddress.parse(m) for m in self._record().members(group)]

    def group_viable(self, group: int) -> bool:
        """VFIO_GROUP_FLAGS_VIABLE: no member is bound to a driver that uses the kernel's DMA API."""
        return group_viable(self._record(), group)

    def vfio_group_exists(self, group: int) -> bool:
        return group in vfio_groups(self._record())

    def vfio_group_viable(self, group: int) -> bool | None:
        """The seam's VFIO_GROUP_GET_STATUS answer: None without /dev/vfio/N or while QEMU holds it open
        (vfio_group_fops_open() allows one opener), else whether the group is viable."""
        state = self._record()
        if group not in vfio_groups(state) or group in state.owned_groups:
            return None
        return group_viable(state, group)

    def open_group(self, group: int) -> None:
        """A simulated QEMU opens /dev/vfio/N and sets its container, claiming the group's DMA ownership.
        Raises OSError as the kernel would: ENOENT without the node, EBUSY if already open or not viable."""
        with self._state.transaction() as state:
            open_group(state, self.devfs, group)

    def close_group(self, group: int) -> None:
        with self._state.transaction() as state:
            close_group(state, group)

    def group_owned(self, group: int) -> bool:
        return group in self._record().owned_groups


def _address(address: PciAddress | str) -> PciAddress:
    return address if isinstance(address, PciAddress) else PciAddress.parse(address)


__all__ = [
    "CONVENTIONAL_CONFIG_SIZE",
    "PCI_STUB",
    "SIM_DIR",
    "VFIO_PCI",
    "DynId",
    "FailNth",
    "FailPath",
    "Faults",
    "KernelWouldBlock",
    "KillAt",
    "KillWhen",
    "NeverBind",
    "SimKernel",
    "SimulationError",
    "WriteRecord",
    "config_space",
    "is_vfio_driver",
    "make_function",
    "make_topology",
    "manages_own_dma",
    "modprobe_error",
    "module_driver",
    "open_error",
    "store_error",
]
