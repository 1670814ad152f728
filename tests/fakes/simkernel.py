"""A simulated Linux kernel behind isogroup's sysfs seam.

`SimKernel.materialize(root, topology)` lays out a real directory tree shaped like `/sys` (`devices/`,
`bus/pci/`, `kernel/iommu_groups/`), so every read goes through the ordinary `Sysfs` code against real files.
`SimKernel.write` then makes the tree react the way the kernel does to the attributes isogroup writes:
`driver_override` (drivers/base/driver.c), `bind`/`unbind`/`drivers_probe` (drivers/base/bus.c, dd.c),
`new_id`/`remove_id` and ID matching (drivers/pci/pci-driver.c), vfio-pci's probe refusals
(drivers/vfio/pci/vfio_pci_core.c) and DMA ownership (drivers/iommu/iommu.c, drivers/vfio/group.c).
Like libvirt's virpcimock, but it also models group viability and a group held by QEMU.

Several processes (forked hook runs) may drive one tree at once, so the simulation keeps no state in Python
memory: what the kernel shows lives in the tree itself, the rest (native drivers, dynamic IDs, groups held by
QEMU, faults, the write log) in `ROOT/.sim/`, and every change holds an flock on `.sim/lock`: the kernel's
device lock, serialising writes the way device_lock() does.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NoReturn

from isogroup.core.address import PciAddress
from isogroup.core.kernel.configspace import CONFIG_SPACE_SIZE
from isogroup.core.model import Header, HostTopology, IommuGroup, PciFunction
from isogroup.errors import HostError
from isogroup.host.hostscan import read_topology
from isogroup.host.sysfs import IOMMU_GROUPS, PCI_DEVICES, PCI_DRIVERS, Sysfs

VFIO_PCI = "vfio-pci"
PCI_STUB = "pci-stub"
SIM_DIR = ".sim"
DRIVERS_PROBE = "bus/pci/drivers_probe"

# Drivers whose pci_driver sets `.driver_managed_dma = true`: pci_dma_configure() does not make them users of
# the group's default domain, so they neither make a group unviable nor are refused in a group VFIO owns.
# In-tree today: pcieport (drivers/pci/pcie/portdrv.c), pci-stub (drivers/pci/pci-stub.c), vfio-pci and the
# vfio_pci_core variant drivers, whose names are KBUILD_MODNAME and so always end in "_vfio_pci".
_MANAGES_OWN_DMA = frozenset({"pcieport", PCI_STUB})

# Mode bits of the kernel's attributes (0444 read-only, 0200 write-only, 0644/0664 read-write).
_RO, _WO, _RW = 0o444, 0o200, 0o644
_DRIVER_ATTRS = ("bind", "unbind", "new_id", "remove_id")
_PAGE_SIZE = 4096
_PCI_ANY_ID = 0xFFFFFFFF
_HEADER_TYPE = {Header.ENDPOINT: 0, Header.BRIDGE: 1, Header.CARDBUS: 2}
CONVENTIONAL_CONFIG_SIZE = 256  # what root reads from a conventional PCI function's sysfs config
_VGA_CLASSES = (0x0300, 0x0001)  # pci_is_vga(): VGA display, and pre-2.0 "not defined, VGA compatible"
_NAME = re.compile(r"^[A-Za-z0-9_.:+-]+$")


def is_vfio_driver(name: str | None) -> bool:
    """vfio-pci or a vfio_pci_core variant: binding one creates /dev/vfio/N."""
    return name is not None and (name == VFIO_PCI or name.endswith("_vfio_pci"))


def manages_own_dma(name: str | None) -> bool:
    """The kernel's viability list: True when a member bound to `name` (or unbound) leaves its group usable."""
    return name is None or name in _MANAGES_OWN_DMA or is_vfio_driver(name)


def module_driver(module: str) -> str:
    """The driver a module registers: `modprobe vfio_pci` and `modprobe vfio-pci` both load driver vfio-pci."""
    aliases = {"vfio_pci": VFIO_PCI, "pci_stub": PCI_STUB}
    return aliases.get(module, module)


class SimulationError(AssertionError):
    """The code under test did something the simulation does not model: a test bug or a gap to fill, never a
    kernel answer. An AssertionError so that code catching OSError or IsogroupError cannot swallow it."""


class KernelWouldBlock(SimulationError):
    """The real kernel would block here (e.g. unbinding vfio-pci from a device QEMU still holds)."""


# ---------------------------------------------------------------------------------------------------------
# Faults


class KillWhen(StrEnum):
    BEFORE = "before"  # the process dies and the write never takes effect
    AFTER = "after"  # the write takes effect, then the process dies before it can record anything


@dataclass(frozen=True)
class FailNth:
    """The `n`th write (1-based, counting every write through the tree since the faults were installed) fails."""

    n: int
    errno: int


@dataclass(frozen=True)
class FailPath:
    """Writes whose path (as written, relative to the root) and value match these globs fail with `errno`;
    only the first `times` of them when `times` is set (e.g. one EBUSY, then the retry succeeds)."""

    pattern: str
    errno: int
    value: str = "*"
    times: int | None = None


@dataclass(frozen=True)
class NeverBind:
    """Probes of matching devices by matching drivers "succeed" but nothing binds: the bind never comes."""

    address: str = "*"
    driver: str = "*"


@dataclass(frozen=True)
class KillAt:
    """SIGKILL the writing process just before or just after the `n`th write takes effect."""

    n: int
    when: KillWhen


@dataclass(frozen=True)
class Faults:
    """What goes wrong, persisted in .sim/faults.json so that every process using the tree sees it. Install with
    `materialize(..., faults=)`, `SimKernel(root, faults=)` or `set_faults()`; write numbers count from then."""

    fail_nth: tuple[FailNth, ...] = ()
    fail_paths: tuple[FailPath, ...] = ()
    never_bind: tuple[NeverBind, ...] = ()
    kill: tuple[KillAt, ...] = ()
    fail_modprobe: tuple[str, ...] = ()  # globs on module names whose `modprobe` fails

    def kills(self, n: int, when: KillWhen) -> bool:
        return any(k.n == n and k.when is when for k in self.kill)

    def never_binds(self, address: str, driver: str) -> bool:
        return any(fnmatchcase(address, nb.address) and fnmatchcase(driver, nb.driver) for nb in self.never_bind)

    def to_json(self) -> dict[str, Any]:
        return {
            "fail_nth": [asdict(f) for f in self.fail_nth],
            "fail_paths": [asdict(f) for f in self.fail_paths],
            "never_bind": [asdict(f) for f in self.never_bind],
            "kill": [{"n": k.n, "when": k.when.value} for k in self.kill],
            "fail_modprobe": list(self.fail_modprobe),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Faults:
        return cls(
            fail_nth=tuple(FailNth(**f) for f in doc.get("fail_nth", ())),
            fail_paths=tuple(FailPath(**f) for f in doc.get("fail_paths", ())),
            never_bind=tuple(NeverBind(**f) for f in doc.get("never_bind", ())),
            kill=tuple(KillAt(k["n"], KillWhen(k["when"])) for k in doc.get("kill", ())),
            fail_modprobe=tuple(doc.get("fail_modprobe", ())),
        )


@dataclass(frozen=True)
class WriteRecord:
    """One write through the tree. `n` counts from materialize; `errno` is set when the write failed."""

    n: int
    path: str
    value: str
    pid: int
    # "ok"; "failed" (the kernel refused); "injected" (a Faults entry); "killed" (before its effect);
    # "unsimulated" (a SimulationError: the write did something the simulation does not model)
    outcome: str
    errno: int | None = None


# ---------------------------------------------------------------------------------------------------------
# Simulation state kept in .sim/state.json


@dataclass(frozen=True)
class DynId:
    """A `new_id` entry (struct pci_dynid). Subsystem IDs are not modelled: only PCI_ANY_ID ones match."""

    vendor: int
    device: int
    subvendor: int = _PCI_ANY_ID
    subdevice: int = _PCI_ANY_ID
    class_code: int = 0
    class_mask: int = 0

    def matches(self, vendor: int, device: int, class_code: int) -> bool:
        return (
            self.vendor in (vendor, _PCI_ANY_ID)
            and self.device in (device, _PCI_ANY_ID)
            and self.subvendor == _PCI_ANY_ID
            and self.subdevice == _PCI_ANY_ID
            and (class_code & self.class_mask) == (self.class_code & self.class_mask)
        )


@dataclass
class _State:
    """The working copy of `.sim/state.json` inside one locked transaction (hence mutable)."""

    drivers: list[str]  # loaded drivers in registration order: the order bus_for_each_drv() tries them
    native: dict[str, str | None]  # BDF -> the driver whose static ID table matches it
    dynids: dict[str, list[DynId]] = field(default_factory=dict)
    owned_groups: list[int] = field(default_factory=list)  # groups a simulated QEMU holds
    writes: int = 0  # every write since materialize
    armed_at: int = 0  # `writes` when the current faults were installed
    fault_hits: dict[str, int] = field(default_factory=dict)  # FailPath index -> times it fired

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # recurses into the DynId lists

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> _State:
        return cls(
            drivers=list(doc["drivers"]),
            native=dict(doc["native"]),
            dynids={k: [DynId(**d) for d in v] for k, v in doc["dynids"].items()},
            owned_groups=list(doc["owned_groups"]),
            writes=doc["writes"],
            armed_at=doc["armed_at"],
            fault_hits=dict(doc["fault_hits"]),
        )


class _Refused(Exception):
    """The kernel answers this write with an error, at open(2) or at write(2)."""

    def __init__(self, err: int, *, at_open: bool = False) -> None:
        super().__init__(os.strerror(err))
        self.err = err
        self.at_open = at_open


# The exceptions the real Sysfs.write raises, built the same way (test_simkernel checks them against it).
def open_error(path: Path, err: int) -> HostError:
    return HostError(f"cannot open {path}: {os.strerror(err)}", errno=err)


def store_error(path: Path, value: str, err: int) -> HostError:
    return HostError(f"writing {value.strip()!r} to {path} failed: {os.strerror(err)}", errno=err)


def modprobe_error(module: str) -> HostError:
    return HostError(f"modprobe {module} failed: modprobe: FATAL: Module {module} not found in directory")


def _die() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL to oneself lands on the way back from kill(2); this is never reached
    os._exit(137)


# ---------------------------------------------------------------------------------------------------------
# The kernel


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
        self._lock_held = False
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
        """Lay out `topology` as the kernel would show it under an empty `root`. Each device's native driver
        (what a probe binds without an override) is its driver in the topology unless `native` says otherwise."""
        root = Path(root)
        _check_kernel_shaped(topology, vfio_loaded)
        if root.exists() and any(root.iterdir()):
            raise SimulationError(f"{root} is not empty")
        natives = {str(f.address): f.driver for f in topology.functions}
        natives.update({str(a): d for a, d in (native or {}).items()})
        paths = _device_paths(topology)

        (root / SIM_DIR / "dev" / "vfio").mkdir(parents=True)
        (root / PCI_DEVICES).mkdir(parents=True)
        (root / IOMMU_GROUPS).mkdir(parents=True)
        _write_attr(root / DRIVERS_PROBE, "", _WO)
        drivers = _initial_drivers(topology, natives, vfio_loaded)
        for name in drivers:
            _make_driver_dir(root, name)
        for func in topology.functions:
            _make_device(root, topology, func, paths)
        for group in topology.groups:
            _make_group(root, group, paths)

        state = _State(drivers=drivers, native=natives)
        _save_json(root / SIM_DIR / "state.json", state.to_json())
        sim = cls(root, faults=faults or Faults())
        with sim._transaction():
            sim._sync_devfs(state)
        return sim

    # --- the seam: writes ------------------------------------------------------------------------------

    def write(self, rel: str, value: str) -> None:
        """One write(2) of `value` to the attribute `rel`, answered the way the kernel answers it."""
        path = self.root / rel
        with self._transaction() as state:
            state.writes += 1
            n = state.writes - state.armed_at  # faults count from when they were installed
            faults = self.faults()
            record = WriteRecord(state.writes, rel, value, os.getpid(), "ok")
            if faults.kills(n, KillWhen.BEFORE):
                self._log(replace(record, outcome="killed"))
                self._save_state(state)
                _die()
            injected = self._injected_errno(state, faults, n, rel, value)
            if injected is not None:
                self._log(replace(record, outcome="injected", errno=injected))
                raise store_error(path, value, injected)
            try:
                self._store(state, faults, rel, value)
            except SimulationError:
                self._log(replace(record, outcome="unsimulated"))
                raise
            except _Refused as refusal:
                self._log(replace(record, outcome="failed", errno=refusal.err))
                cause = OSError(refusal.err, os.strerror(refusal.err))
                raise (
                    open_error(path, refusal.err) if refusal.at_open else store_error(path, value, refusal.err)
                ) from cause
            self._log(record)
            if faults.kills(n, KillWhen.AFTER):
                self._save_state(state)
                _die()

    def _log(self, record: WriteRecord) -> None:
        with open(self._sim / "writes.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(record)) + "\n")

    def _injected_errno(self, state: _State, faults: Faults, n: int, rel: str, value: str) -> int | None:
        for nth in faults.fail_nth:
            if nth.n == n:
                return nth.errno
        for index, fp in enumerate(faults.fail_paths):
            if not (fnmatchcase(rel, fp.pattern) and fnmatchcase(value, fp.value)):
                continue
            hits = state.fault_hits.get(str(index), 0)
            if fp.times is None or hits < fp.times:
                state.fault_hits[str(index)] = hits + 1
                return fp.errno
        return None

    def _store(self, state: _State, faults: Faults, rel: str, value: str) -> None:
        """Open the attribute as kernfs would, then call its store method."""
        real = Path(os.path.realpath(self.root / rel))
        try:
            parts = real.relative_to(self._real_root).parts
        except ValueError:
            raise SimulationError(f"{rel} resolves outside the simulated tree") from None
        if parts[:1] == (SIM_DIR,):
            raise SimulationError(f"{rel} is the simulation's own state, not a kernel attribute")
        if not real.exists():
            raise _Refused(errno.ENOENT, at_open=True)
        if real.is_dir():
            raise _Refused(errno.EISDIR, at_open=True)
        if not real.stat().st_mode & 0o222:
            raise _Refused(errno.EACCES, at_open=True)  # kernfs_fop_open: no store method, even for root
        if value == "":
            return  # sysfs_kf_write(): a zero-length write never reaches the store method

        if parts == tuple(DRIVERS_PROBE.split("/")):
            self._drivers_probe(state, faults, value)
        elif len(parts) == 5 and parts[:3] == tuple(PCI_DRIVERS.split("/")) and parts[4] in _DRIVER_ATTRS:
            driver, attr = parts[3], parts[4]
            if attr == "bind":
                self._bind(state, faults, driver, value)
            elif attr == "unbind":
                self._unbind(state, driver, value)
            elif attr == "new_id":
                self._new_id(state, faults, driver, value)
            else:
                self._remove_id(state, driver, value)
        elif parts[0] == "devices" and parts[-1] == "driver_override":
            self._set_override(parts[-2], value)
        else:
            raise SimulationError(f"writing {'/'.join(parts)} is not simulated")

    # --- store methods ---------------------------------------------------------------------------------

    def _set_override(self, bdf: str, value: str) -> None:
        """driver_set_override(): up to the first newline; "\\n" or a string starting with NUL clears it."""
        if len(value.encode()) >= _PAGE_SIZE - 1:
            raise _Refused(errno.EINVAL)
        text = value.split("\0", 1)[0]  # the kernel takes strlen() of the buffer
        name = text.split("\n", 1)[0]
        self._write_override(bdf, name or None)

    def _bind(self, state: _State, faults: Faults, driver: str, value: str) -> None:
        """bind_store(): find the device, match it, then device_driver_attach()."""
        bdf = self._find_device(value)
        if bdf is None or not self._matches(state, driver, bdf):
            raise _Refused(errno.ENODEV)
        if self.link_name(Sysfs.device(_addr(bdf), "driver")) is not None:
            raise _Refused(errno.EBUSY)  # __driver_probe_device(): dev->driver is set
        result = self._really_probe(state, faults, driver, bdf)
        if result != 0:
            raise _Refused(abs(result))  # probe errors come back as plain negative errnos

    def _unbind(self, state: _State, driver: str, value: str) -> None:
        """unbind_store(): only the driver the device is bound to can let it go."""
        bdf = self._find_device(value)
        if bdf is None or self.link_name(Sysfs.device(_addr(bdf), "driver")) != driver:
            raise _Refused(errno.ENODEV)
        self._detach(state, bdf)

    def _drivers_probe(self, state: _State, faults: Faults, value: str) -> None:
        """drivers_probe_store(): device_attach() on an unbound device. Probe failures are swallowed (the next
        driver gets its turn), but an error before probe (DMA ownership) makes the write fail with EINVAL."""
        bdf = self._find_device(value)
        if bdf is None:
            raise _Refused(errno.ENODEV)
        if self.link_name(Sysfs.device(_addr(bdf), "driver")) is not None:
            return
        if self._device_attach(state, faults, bdf) < 0:
            raise _Refused(errno.EINVAL)

    def _new_id(self, state: _State, faults: Faults, driver: str, value: str) -> None:
        """new_id_store(): add a dynamic ID (EEXIST if the driver already matches it), then driver_attach()."""
        fields = _scan_hex(value, 7)
        if len(fields) < 2:
            raise _Refused(errno.EINVAL)
        dynid = DynId(*fields[:6])
        if len(fields) != 7 and self._driver_matches_ids(state, driver, dynid):
            raise _Refused(errno.EEXIST)
        state.dynids.setdefault(driver, []).append(dynid)
        self._driver_attach(state, faults, driver)

    def _remove_id(self, state: _State, driver: str, value: str) -> None:
        """remove_id_store(): drop an identical dynamic ID; bound devices stay bound."""
        fields = _scan_hex(value, 6)
        if len(fields) < 2:
            raise _Refused(errno.EINVAL)
        wanted = DynId(*fields)
        ids = state.dynids.get(driver, [])
        if wanted not in ids:
            raise _Refused(errno.ENODEV)
        ids.remove(wanted)

    # --- driver core -----------------------------------------------------------------------------------

    def _matches(self, state: _State, driver: str, bdf: str) -> bool:
        """pci_match_device(): an override admits only its driver; then dynamic IDs, the static table, and a
        matching override on its own (vfio-pci's table is override-only)."""
        override = self._override(bdf)
        if override is not None and override != driver:
            return False
        vendor, device, class_code = self._ids(bdf)
        if any(d.matches(vendor, device, class_code) for d in state.dynids.get(driver, [])):
            return True
        return state.native.get(bdf) == driver or override == driver

    def _driver_matches_ids(self, state: _State, driver: str, dynid: DynId) -> bool:
        """new_id's EEXIST check: would `driver` already match a device with these IDs?"""
        if any(d.matches(dynid.vendor, dynid.device, dynid.class_code) for d in state.dynids.get(driver, [])):
            return True
        return any(
            state.native.get(bdf) == driver and self._ids(bdf)[:2] == (dynid.vendor, dynid.device)
            for bdf in self._devices()
        )

    def _really_probe(self, state: _State, faults: Faults, driver: str, bdf: str) -> int:
        """0 when bound; -errno when refused before probe (the caller stops); +errno when the driver's probe()
        refused (drivers_probe then tries the next driver)."""
        group = self._group(bdf)
        if not manages_own_dma(driver) and group in state.owned_groups:
            return -errno.EBUSY  # iommu_device_use_default_domain(): the group has another DMA owner
        if is_vfio_driver(driver):
            if self._header(bdf) is not Header.ENDPOINT:
                return errno.EINVAL  # vfio_pci_core_register_device(): hdr_type != PCI_HEADER_TYPE_NORMAL
            if self._numvfs(bdf):
                return errno.EBUSY  # "Cannot bind to PF with SR-IOV enabled"
            if group is None:
                return errno.EINVAL  # vfio_group_find_or_alloc(): no IOMMU group (and no noiommu mode)
        if faults.never_binds(bdf, driver):
            return 0
        self._attach(state, bdf, driver)
        return 0

    def _device_attach(self, state: _State, faults: Faults, bdf: str) -> int:
        """__device_attach(): every loaded driver in registration order; 1 bound, 0 none, <0 error."""
        for driver in state.drivers:
            if not self._matches(state, driver, bdf):
                continue
            result = self._really_probe(state, faults, driver, bdf)
            if result < 0:
                return result
            if result == 0:
                return 1
        return 0

    def _driver_attach(self, state: _State, faults: Faults, driver: str) -> None:
        """driver_attach(): offer every unbound matching device to `driver`, ignoring failures."""
        for bdf in self._devices():
            if self.link_name(Sysfs.device(_addr(bdf), "driver")) is None and self._matches(state, driver, bdf):
                self._really_probe(state, faults, driver, bdf)

    def _attach(self, state: _State, bdf: str, driver: str) -> None:
        dev = self._dev_dir(bdf)
        drv = self.root / Sysfs.driver_dir(driver)
        _symlink(dev / "driver", drv)
        _symlink(drv / bdf, dev)
        self._sync_devfs(state)

    def _detach(self, state: _State, bdf: str) -> None:
        driver = self.link_name(Sysfs.device(_addr(bdf), "driver"))
        if driver is None:
            return
        group = self._group(bdf)
        if is_vfio_driver(driver) and group in state.owned_groups:
            # vfio_unregister_group_dev() waits for the user to release the device: the write would hang.
            raise KernelWouldBlock(f"unbinding {bdf} from {driver} blocks while QEMU holds group {group}")
        (self._dev_dir(bdf) / "driver").unlink()
        (self.root / Sysfs.driver_dir(driver, bdf)).unlink(missing_ok=True)
        self._sync_devfs(state)

    def _sync_devfs(self, state: _State) -> None:
        """/dev/vfio/N exists while a member of group N is on a vfio driver (vfio_create_group() on the first,
        cdev removal in vfio_device_remove_group() on the last). A group whose node goes is no longer held."""
        wanted = {
            group
            for bdf in self._devices()
            if is_vfio_driver(self.link_name(Sysfs.device(_addr(bdf), "driver")))
            and (group := self._group(bdf)) is not None
        }
        vfio_dir = self.devfs / "vfio"
        for node in vfio_dir.iterdir():
            if node.name.isdigit() and int(node.name) not in wanted:
                node.unlink()
        for group in wanted:
            (vfio_dir / str(group)).touch()
        state.owned_groups = [g for g in state.owned_groups if g in wanted]

    # --- reading the tree ------------------------------------------------------------------------------

    def _devices(self) -> list[str]:
        return [name for name in self.listdir(PCI_DEVICES) if _is_bdf(name)]

    def _find_device(self, value: str) -> str | None:
        """bus_find_device_by_name(): an exact name, but sysfs_streq() forgives one trailing newline."""
        name = value[:-1] if value.endswith("\n") else value
        return name if _is_bdf(name) and self.exists(Sysfs.device(_addr(name))) else None

    def _dev_dir(self, bdf: str) -> Path:
        return Path(os.path.realpath(self.root / Sysfs.device(_addr(bdf))))

    def _override(self, bdf: str) -> str | None:
        value = self.read(Sysfs.device(_addr(bdf), "driver_override"))
        return None if value in (None, "(null)") else value

    def _write_override(self, bdf: str, name: str | None) -> None:
        path = self._dev_dir(bdf) / "driver_override"
        path.write_text(f"{name if name is not None else '(null)'}\n", encoding="utf-8")

    def _ids(self, bdf: str) -> tuple[int, int, int]:
        config = self.read_bytes(Sysfs.device(_addr(bdf), "config"), 64) or bytes(64)
        vendor, device = struct.unpack_from("<HH", config, 0)
        return vendor, device, int.from_bytes(config[0x09:0x0C], "little")

    def _header(self, bdf: str) -> Header:
        config = self.read_bytes(Sysfs.device(_addr(bdf), "config"), 64) or bytes(64)
        return {0: Header.ENDPOINT, 2: Header.CARDBUS}.get(config[0x0E] & 0x7F, Header.BRIDGE)

    def _numvfs(self, bdf: str) -> int:
        text = self.read(Sysfs.device(_addr(bdf), "sriov_numvfs"))
        return int(text) if text and text.isdigit() else 0

    def _group(self, bdf: str) -> int | None:
        name = self.link_name(Sysfs.device(_addr(bdf), "iommu_group"))
        return int(name) if name is not None and name.isdigit() else None

    def _members(self, group: int) -> list[str]:
        if not self.exists(f"{IOMMU_GROUPS}/{group}"):
            raise SimulationError(f"there is no IOMMU group {group}")
        return [m for m in self.listdir(f"{IOMMU_GROUPS}/{group}/devices") if _is_bdf(m)]

    # --- state files and the device lock ---------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """flock on .sim/lock, re-entrant within this object (a second flock from this process would deadlock)."""
        if self._lock_held:
            yield
            return
        fd = os.open(self._sim / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_held = True
            try:
                yield
            finally:
                self._lock_held = False
        finally:
            os.close(fd)  # releases the flock; so does the death of a killed writer

    @contextmanager
    def _transaction(self) -> Iterator[_State]:
        """Under the lock: load the state, let the caller change it, save it whatever happens (a failed write
        still counts)."""
        with self._locked():
            state = _State.from_json(_load_json(self._sim / "state.json"))
            try:
                yield state
            finally:
                self._save_state(state)

    def _save_state(self, state: _State) -> None:
        _save_json(self._sim / "state.json", state.to_json())

    # --- public API for tests --------------------------------------------------------------------------

    @property
    def devfs(self) -> Path:
        """The simulated /dev: `devfs / "vfio" / "N"` exists while group N has a member on a vfio driver."""
        return self._sim / "dev"

    def faults(self) -> Faults:
        path = self._sim / "faults.json"
        return Faults.from_json(_load_json(path)) if path.exists() else Faults()

    def set_faults(self, faults: Faults) -> None:
        """Install faults for every process using this tree; FailNth and KillAt count writes from now."""
        with self._transaction() as state:
            _save_json(self._sim / "faults.json", faults.to_json())
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
        return _State.from_json(_load_json(self._sim / "state.json")).writes

    def topology(self) -> HostTopology:
        """What isogroup's scanner sees now."""
        return read_topology(self)

    def driver(self, address: PciAddress | str) -> str | None:
        return self.link_name(Sysfs.device(_address(address), "driver"))

    def native_driver(self, address: PciAddress | str) -> str | None:
        state = _State.from_json(_load_json(self._sim / "state.json"))
        return state.native.get(str(_address(address)))

    def set_native_driver(self, address: PciAddress | str, driver: str | None) -> None:
        """The driver whose ID table matches the device (None: no driver claims it). Binds nothing by itself."""
        with self._transaction() as state:
            state.native[str(_address(address))] = driver

    def loaded_drivers(self) -> list[str]:
        return list(_State.from_json(_load_json(self._sim / "state.json")).drivers)

    def load_driver(self, name: str) -> None:
        """Register a driver (its dir appears) and let it claim unbound matching devices, as module load does."""
        with self._transaction() as state:
            if name in state.drivers:
                return
            _make_driver_dir(self.root, name)
            state.drivers.append(name)
            self._driver_attach(state, self.faults(), name)

    def modprobe(self, module: str) -> None:
        """`modprobe MODULE` through the seam: loads the module's driver (nothing happens when it is loaded);
        fails with the real seam's HostError when `Faults.fail_modprobe` names the module."""
        if any(fnmatchcase(module, pattern) for pattern in self.faults().fail_modprobe):
            raise modprobe_error(module)
        self.load_driver(module_driver(module))

    def unload_driver(self, name: str) -> None:
        """rmmod: every bound device is released, then the driver and its dynamic IDs disappear."""
        with self._transaction() as state:
            if name not in state.drivers:
                return
            for bdf in self._devices():
                if self.link_name(Sysfs.device(_addr(bdf), "driver")) == name:
                    self._detach(state, bdf)
            shutil.rmtree(self.root / Sysfs.driver_dir(name))
            state.drivers.remove(name)
            state.dynids.pop(name, None)

    def remove_device(self, address: PciAddress | str) -> None:
        """Hot-unplug: the device, everything below it and its VFs disappear, from their groups too."""
        with self._transaction() as state:
            start = str(_address(address))
            if self._find_device(start) is None:
                raise SimulationError(f"there is no device {start}")
            top = self._dev_dir(start)
            doomed = {b for b in self._devices() if self._dev_dir(b).is_relative_to(top)}
            doomed |= {b for b in self._devices() if self.link_name(Sysfs.device(_addr(b), "physfn")) in doomed}
            # Deepest first, as pci_stop_and_remove_bus_device() does: a parent's directory holds its children.
            for bdf in sorted(doomed, key=lambda b: len(self._dev_dir(b).parts), reverse=True):
                self._unplug(state, bdf)
            self._sync_devfs(state)

    def _unplug(self, state: _State, bdf: str) -> None:
        dev = self._dev_dir(bdf)
        driver = self.link_name(Sysfs.device(_addr(bdf), "driver"))
        if driver is not None:
            (self.root / Sysfs.driver_dir(driver, bdf)).unlink(missing_ok=True)
        group = self._group(bdf)
        if group is not None:
            (self.root / IOMMU_GROUPS / str(group) / "devices" / bdf).unlink()
            if not self.listdir(f"{IOMMU_GROUPS}/{group}/devices"):
                shutil.rmtree(self.root / IOMMU_GROUPS / str(group))  # the last device drops the group
        (self.root / PCI_DEVICES / bdf).unlink()
        shutil.rmtree(dev, ignore_errors=True)
        state.native.pop(bdf, None)

    def group_members(self, group: int) -> list[PciAddress]:
        return [_addr(m) for m in self._members(group)]

    def group_viable(self, group: int) -> bool:
        """VFIO_GROUP_FLAGS_VIABLE: no member is bound to a driver that uses the kernel's DMA API."""
        return all(manages_own_dma(self.link_name(Sysfs.device(_addr(m), "driver"))) for m in self._members(group))

    def vfio_group_exists(self, group: int) -> bool:
        return (self.devfs / "vfio" / str(group)).exists()

    def vfio_group_viable(self, group: int) -> bool | None:
        """The seam's VFIO_GROUP_GET_STATUS answer: None without /dev/vfio/N or while QEMU holds it open
        (vfio_group_fops_open() allows one opener), else whether the group is viable."""
        if not self.vfio_group_exists(group) or self.group_owned(group):
            return None
        return self.group_viable(group)

    def open_group(self, group: int) -> None:
        """A simulated QEMU opens /dev/vfio/N and sets its container, claiming the group's DMA ownership.
        Raises OSError as the kernel would: ENOENT without the node, EBUSY if already open or not viable."""
        with self._transaction() as state:
            if not self.vfio_group_exists(group):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.devfs / "vfio" / str(group)))
            if group in state.owned_groups:
                raise OSError(errno.EBUSY, "the group is already open")  # vfio_group_fops_open()
            if not self.group_viable(group):
                raise OSError(errno.EBUSY, f"group {group} is not viable")  # iommu_group_claim_dma_owner()
            state.owned_groups.append(group)

    def close_group(self, group: int) -> None:
        with self._transaction() as state:
            if group not in state.owned_groups:
                raise SimulationError(f"group {group} is not open")
            state.owned_groups.remove(group)

    def group_owned(self, group: int) -> bool:
        return group in _State.from_json(_load_json(self._sim / "state.json")).owned_groups


# ---------------------------------------------------------------------------------------------------------
# Laying out a tree


def _check_kernel_shaped(topology: HostTopology, vfio_loaded: bool) -> None:
    """Refuse a topology no kernel could show: the tree would have to lie, and the round trip would too."""
    if len(topology.by_address) != len(topology.functions):
        raise ValueError("a PCI address is listed twice")
    if topology.groups and not topology.iommu:
        raise ValueError("IOMMU groups are listed but iommu is false")
    for group in topology.groups:
        for member in group.members:
            func = topology.function(member)
            if func is None or func.iommu_group != group.number:
                raise ValueError(f"group {group.number} lists {member}, which does not say it is in it")
    for func in topology.functions:
        where = str(func.address)
        if (
            func.iommu_group is not None
            and func.address not in topology.by_group.get(func.iommu_group, _NO_GROUP).members
        ):
            raise ValueError(f"{where} names group {func.iommu_group}, which does not list it")
        if func.boot_vga and func.class_code >> 8 not in _VGA_CLASSES:
            raise ValueError(f"{where}: the kernel shows boot_vga only on VGA devices")
        for name in (func.driver, func.driver_override):
            if name is not None and (not _NAME.match(name) or name in (".", "..")):
                raise ValueError(f"{where}: {name!r} cannot be a driver name")
        if func.driver == VFIO_PCI and not vfio_loaded:
            raise ValueError(f"{where} is bound to vfio-pci, which is not loaded")
    for func in topology.functions:
        _check_capabilities(func)
    for func in topology.functions:
        seen = {func.address}
        parent = func.parent
        while parent is not None:
            if parent in seen:
                raise ValueError(f"{func.address}: its parent chain loops")
            seen.add(parent)
            parent_func = topology.function(parent)
            parent = parent_func.parent if parent_func else None


def _check_capabilities(func: PciFunction) -> None:
    """Config-space facts the tree can show: a read that stopped at 64 bytes shows none, a conventional function
    has no ACS capability, and the ACS control word exists only with the capability."""
    where = str(func.address)
    known = (func.pcie_type, func.acs_cap, func.acs_ctrl)
    if not func.capabilities_read and known != (None, None, None):
        raise ValueError(f"{where}: capabilities are set but capabilities_read is false")
    if func.pcie_type is not None and not 0 <= func.pcie_type <= 0xF:
        raise ValueError(f"{where}: PCIe device/port type {func.pcie_type} does not fit in 4 bits")
    if func.pcie_type is None and (func.acs_cap, func.acs_ctrl) != (None, None):
        raise ValueError(f"{where}: a conventional PCI function has no ACS extended capability")
    if func.acs_cap is None and func.acs_ctrl is not None:
        raise ValueError(f"{where}: an ACS control word without an ACS capability")
    for value in (func.acs_cap, func.acs_ctrl):
        if value is not None and not 0 <= value <= 0xFFFF:
            raise ValueError(f"{where}: ACS registers are 16 bits, not {value:#x}")


_NO_GROUP = IommuGroup(-1, ())


def _device_paths(topology: HostTopology) -> dict[PciAddress, str]:
    """Each function's directory: devices/pci{domain}:{bus}/ then the bridge chain down to it. An ancestor
    missing from the topology (a scoped capture) still gets its directory, so `parent` reads back."""
    paths = {}
    for func in topology.functions:
        chain = [func.address]
        parent = func.parent
        while parent is not None:
            chain.append(parent)
            parent_func = topology.function(parent)
            parent = parent_func.parent if parent_func else None
        top = chain[-1]
        paths[func.address] = "/".join(
            ["devices", f"pci{top.domain:04x}:{top.bus:02x}", *(str(a) for a in reversed(chain))]
        )
    return paths


def _initial_drivers(topology: HostTopology, natives: Mapping[str, str | None], vfio_loaded: bool) -> list[str]:
    """Host drivers load at boot, before vfio-pci: that is the order drivers_probe tries them in."""
    names = {f.driver for f in topology.functions} | set(natives.values())
    host = sorted(n for n in names if n is not None and n not in (VFIO_PCI, PCI_STUB))
    return [*host, PCI_STUB, *([VFIO_PCI] if vfio_loaded else [])]


def _make_driver_dir(root: Path, name: str) -> None:
    path = root / Sysfs.driver_dir(name)
    path.mkdir(parents=True)
    for attr in _DRIVER_ATTRS:
        _write_attr(path / attr, "", _WO)


def _make_device(root: Path, topology: HostTopology, func: PciFunction, paths: Mapping[PciAddress, str]) -> None:
    dev = root / paths[func.address]
    dev.mkdir(parents=True, exist_ok=True)
    _write_attr(dev / "vendor", f"0x{func.vendor:04x}\n", _RO)
    _write_attr(dev / "device", f"0x{func.device:04x}\n", _RO)
    _write_attr(dev / "class", f"0x{func.class_code:06x}\n", _RO)
    secondary, subordinate = _bus_range(topology, func)
    (dev / "config").write_bytes(config_space(func, secondary, subordinate))
    (dev / "config").chmod(_RW)
    _write_attr(dev / "driver_override", f"{func.driver_override or '(null)'}\n", _RW)
    if func.class_code >> 8 in _VGA_CLASSES:
        _write_attr(dev / "boot_vga", "1\n" if func.boot_vga else "0\n", _RO)
    if func.sriov_totalvfs is not None:
        _write_attr(dev / "sriov_totalvfs", f"{func.sriov_totalvfs}\n", _RO)
    if func.sriov_numvfs is not None:
        _write_attr(dev / "sriov_numvfs", f"{func.sriov_numvfs}\n", 0o664)
    if func.reset_methods:  # drivers/pci/pci.c: the file is hidden when the kernel has no reset for it
        _write_attr(dev / "reset_method", " ".join(func.reset_methods) + "\n", _RW)
        _write_attr(dev / "reset", "", _WO)
    if func.is_bridge:
        _write_attr(dev / "secondary_bus_number", f"{secondary}\n", _RO)
        _write_attr(dev / "subordinate_bus_number", f"{subordinate}\n", _RO)
    if func.physfn is not None:
        pf = topology.function(func.physfn)
        pf_dir = root / paths[pf.address] if pf else dev.parent / str(func.physfn)
        _symlink(dev / "physfn", pf_dir)
    vfs = sorted(f.address for f in topology.functions if f.physfn == func.address)
    for index, vf in enumerate(vfs):
        _symlink(dev / f"virtfn{index}", root / paths[vf])
    _symlink(root / PCI_DEVICES / str(func.address), dev)
    if func.driver is not None:
        drv = root / Sysfs.driver_dir(func.driver)
        _symlink(dev / "driver", drv)
        _symlink(drv / str(func.address), dev)
    if func.iommu_group is not None:
        _symlink(dev / "iommu_group", root / IOMMU_GROUPS / str(func.iommu_group))


def _make_group(root: Path, group: IommuGroup, paths: Mapping[PciAddress, str]) -> None:
    devices = root / IOMMU_GROUPS / str(group.number) / "devices"
    devices.mkdir(parents=True)
    for member in group.members:
        _symlink(devices / str(member), root / paths[member])


def _bus_range(topology: HostTopology, func: PciFunction) -> tuple[int, int]:
    """A bridge's secondary and subordinate bus numbers, from the functions below it."""
    below = [f.address.bus for f in topology.functions if _is_below(topology, f, func.address)]
    secondary = min((f.address.bus for f in topology.functions if f.parent == func.address), default=None)
    if secondary is None:
        secondary = min(func.address.bus + 1, 0xFF)
    return secondary, max([secondary, *below])


def _is_below(topology: HostTopology, func: PciFunction, ancestor: PciAddress) -> bool:
    parent = func.parent
    seen: set[PciAddress] = set()
    while parent is not None and parent not in seen:
        if parent == ancestor:
            return True
        seen.add(parent)
        parent_func = topology.function(parent)
        parent = parent_func.parent if parent_func else None
    return False


def config_space(func: PciFunction, secondary: int = 0, subordinate: int = 0) -> bytes:
    """The config space a read of sysfs `config` returns: the 64 bytes an unprivileged read gets when the
    topology does not know the capabilities (`capabilities_read` False); otherwise what root reads, 256 bytes for
    a conventional function, 4096 for a PCIe one, with its PCIe capability and ACS extended capability."""
    if not func.capabilities_read:
        config = bytearray(64)
    elif func.pcie_type is None:
        config = bytearray(CONVENTIONAL_CONFIG_SIZE)
    else:
        config = bytearray(CONFIG_SPACE_SIZE)
    struct.pack_into("<HH", config, 0x00, func.vendor, func.device)
    config[0x09:0x0C] = func.class_code.to_bytes(3, "little")  # prog-if, subclass, base class
    config[0x0E] = _HEADER_TYPE[func.header] | (0x80 if func.multifunction else 0)
    if func.is_bridge:
        config[0x18:0x1B] = bytes((func.address.bus, secondary, subordinate))
    if func.capabilities_read:
        _capabilities(config, func)
    return bytes(config)


def _capabilities(config: bytearray, func: PciFunction) -> None:
    """The capability list (PCI 6.7: status bit 4, pointer at 0x34) and, for PCIe, the extended capabilities from
    0x100 (PCIe 7.6.3): power management at 0x40, then PCIe at 0x50 with the device/port type in bits 7:4 of its
    flags; AER at 0x100, then ACS at 0x148 with its capability and control words at +4 and +6."""
    struct.pack_into("<H", config, 0x06, 0x0010)  # status: capabilities list
    config[0x34] = 0x40
    config[0x40:0x44] = bytes((0x01, 0x50 if func.pcie_type is not None else 0x00, 0x03, 0x00))  # PM, version 3
    if func.pcie_type is None:
        return
    config[0x50:0x52] = bytes((0x10, 0x00))  # PCI Express, end of list
    struct.pack_into("<H", config, 0x52, (func.pcie_type << 4) | 0x2)  # flags: type, capability version 2
    acs = 0x148
    struct.pack_into("<I", config, 0x100, 0x0001 | 2 << 16 | (acs if func.acs_cap is not None else 0) << 20)
    if func.acs_cap is not None:
        struct.pack_into("<IHH", config, acs, 0x000D | 1 << 16, func.acs_cap, func.acs_ctrl or 0)


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def _symlink(link: Path, target: Path) -> None:
    """A relative link, as sysfs makes them (`driver -> ../../../bus/pci/drivers/e1000e`)."""
    os.symlink(os.path.relpath(target, link.parent), link)


def _write_attr(path: Path, text: str, mode: int) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _save_json(path: Path, doc: object) -> None:
    """Atomic replace: a reader in another process sees the old state or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _load_json(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise SimulationError(f"{path} is damaged")
    return doc


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


def _addr(bdf: str) -> PciAddress:
    return PciAddress.parse(bdf)


def _address(address: PciAddress | str) -> PciAddress:
    return address if isinstance(address, PciAddress) else PciAddress.parse(address)


# ---------------------------------------------------------------------------------------------------------
# Building topologies for tests


def make_function(
    address: str,
    *,
    class_code: int = 0x020000,
    driver: str | None = None,
    group: int | None = None,
    parent: str | None = None,
    vendor: int = 0x8086,
    device: int = 0x1234,
    header: Header = Header.ENDPOINT,
    multifunction: bool = False,
    driver_override: str | None = None,
    boot_vga: bool = False,
    physfn: str | None = None,
    sriov_totalvfs: int | None = None,
    sriov_numvfs: int | None = None,
) -> PciFunction:
    """A PciFunction with test-friendly defaults (an Intel NIC endpoint) and addresses as strings."""
    return PciFunction(
        address=PciAddress.parse(address),
        vendor=vendor,
        device=device,
        class_code=class_code,
        header=header,
        driver=driver,
        driver_override=driver_override,
        iommu_group=group,
        parent=PciAddress.parse(parent) if parent else None,
        multifunction=multifunction,
        boot_vga=boot_vga,
        physfn=PciAddress.parse(physfn) if physfn else None,
        sriov_totalvfs=sriov_totalvfs,
        sriov_numvfs=sriov_numvfs,
    )


def make_topology(functions: Iterable[PciFunction], *, iommu: bool = True) -> HostTopology:
    """A HostTopology whose groups are read off the functions' `iommu_group`."""
    funcs = list(functions)
    members: dict[int, list[PciAddress]] = {}
    for func in funcs:
        if func.iommu_group is not None:
            members.setdefault(func.iommu_group, []).append(func.address)
    groups = [IommuGroup(n, tuple(m)) for n, m in members.items()]
    return HostTopology.build(iommu, funcs, groups)


__all__ = [
    "PCI_STUB",
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
