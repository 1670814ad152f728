"""The simulated kernel's own record, in `.sim/state.json`: every device as the kernel knows it (its IDs, where it
sits, its group, the driver it is bound to, its override), the loaded drivers, dynamic IDs, groups a simulated
QEMU holds and the write counters. The sysfs tree is drawn from this record (layout.py); the record is what the
fake *is*, so `SimKernel.topology()` reads it and never the tree: a fake checked through the code under test
(isogroup's scanner) would check nothing.

Several processes (forked hook runs) may drive one tree at once, so nothing lives in Python memory between
calls: every change loads the record, changes it and saves it under an flock on `.sim/lock`, the kernel's
device lock, serialising writes the way device_lock() does.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fakes.refusals import SimulationError
from isogroup.core.address import PciAddress
from isogroup.core.model import Header, HostTopology, IommuGroup, PciFunction

PCI_ANY_ID = 0xFFFFFFFF
_ADDRESS_FIELDS = frozenset({"address", "parent", "physfn"})


@dataclass(frozen=True)
class DynId:
    """A `new_id` entry (struct pci_dynid). Subsystem IDs are not modelled: only PCI_ANY_ID ones match."""

    vendor: int
    device: int
    subvendor: int = PCI_ANY_ID
    subdevice: int = PCI_ANY_ID
    class_code: int = 0
    class_mask: int = 0

    def matches(self, vendor: int, device: int, class_code: int) -> bool:
        return (
            self.vendor in (vendor, PCI_ANY_ID)
            and self.device in (device, PCI_ANY_ID)
            and self.subvendor == PCI_ANY_ID
            and self.subdevice == PCI_ANY_ID
            and (class_code & self.class_mask) == (self.class_code & self.class_mask)
        )


@dataclass(frozen=True)
class Device:
    """One PCI device as the kernel knows it (`function.driver` and `.driver_override` are kept current) and
    its directory under the root (`devices/pci0000:00/0000:00:01.0/0000:01:00.0`)."""

    function: PciFunction
    path: str

    @property
    def bdf(self) -> str:
        return str(self.function.address)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for f in fields(PciFunction):
            value = getattr(self.function, f.name)
            doc[f.name] = str(value) if isinstance(value, PciAddress | Header) else value
        return {"function": doc, "path": self.path}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Device:
        values = dict(doc["function"])
        for name in _ADDRESS_FIELDS:
            if values[name] is not None:
                values[name] = PciAddress.parse(values[name])
        values["header"] = Header(values["header"])
        for name in ("subsystem", "reset_methods"):  # JSON has no tuples
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(PciFunction(**values), doc["path"])


@dataclass
class SimState:
    """The working copy of `.sim/state.json` inside one locked transaction (hence mutable)."""

    iommu: bool
    devices: dict[str, Device]  # BDF -> the device
    drivers: list[str]  # loaded drivers in registration order: the order bus_for_each_drv() tries them
    native: dict[str, str | None]  # BDF -> the driver whose static ID table matches it
    dynids: dict[str, list[DynId]] = field(default_factory=dict)
    owned_groups: list[int] = field(default_factory=list)  # groups a simulated QEMU holds
    writes: int = 0  # every write since materialize
    armed_at: int = 0  # `writes` when the current faults were installed
    fault_hits: dict[str, int] = field(default_factory=dict)  # FailPath index -> times it fired

    # --- the record's own answers ----------------------------------------------------------------------

    def device(self, bdf: str) -> Device:
        found = self.devices.get(bdf)
        if found is None:
            raise SimulationError(f"there is no device {bdf}")
        return found

    def driver(self, bdf: str) -> str | None:
        return self.device(bdf).function.driver

    def group(self, bdf: str) -> int | None:
        return self.device(bdf).function.iommu_group

    def members(self, group: int) -> list[str]:
        """Group `group`'s devices; a group exists while it has one (the last device's removal drops it)."""
        found = sorted(bdf for bdf, d in self.devices.items() if d.function.iommu_group == group)
        if not found:
            raise SimulationError(f"there is no IOMMU group {group}")
        return found

    def groups(self) -> set[int]:
        return {d.function.iommu_group for d in self.devices.values() if d.function.iommu_group is not None}

    def set_function(self, bdf: str, **changes: Any) -> None:
        device = self.device(bdf)
        self.devices[bdf] = replace(device, function=replace(device.function, **changes))

    def topology(self) -> HostTopology:
        """The record as a HostTopology: what a correct scanner reads from the tree drawn from it."""
        funcs = [d.function for d in self.devices.values()]
        groups = [IommuGroup(n, tuple(PciAddress.parse(m) for m in self.members(n))) for n in self.groups()]
        return HostTopology.build(self.iommu, funcs, groups)

    # --- JSON ------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        # Field by field: asdict() would deep-copy every PciFunction first, on every write.
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["devices"] = {bdf: d.to_json() for bdf, d in self.devices.items()}
        doc["dynids"] = {driver: [asdict(d) for d in ids] for driver, ids in self.dynids.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SimState:
        return cls(
            iommu=doc["iommu"],
            devices={bdf: Device.from_json(d) for bdf, d in doc["devices"].items()},
            drivers=list(doc["drivers"]),
            native=dict(doc["native"]),
            dynids={k: [DynId(**d) for d in v] for k, v in doc["dynids"].items()},
            owned_groups=list(doc["owned_groups"]),
            writes=doc["writes"],
            armed_at=doc["armed_at"],
            fault_hits=dict(doc["fault_hits"]),
        )


class StateFile:
    """`.sim/state.json` and `.sim/lock` of one tree, as one object may hold them (the lock is re-entrant within
    the object: a second flock from this process would deadlock)."""

    def __init__(self, sim_dir: Path) -> None:
        self.dir = sim_dir
        self.path = sim_dir / "state.json"
        self._lock_held = False

    def load(self) -> SimState:
        return SimState.from_json(load_json(self.path))

    def save(self, state: SimState) -> None:
        save_json(self.path, state.to_json())

    @contextmanager
    def locked(self) -> Iterator[None]:
        if self._lock_held:
            yield
            return
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
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
    def transaction(self) -> Iterator[SimState]:
        """Under the lock: load the state, let the caller change it, save it whatever happens (a failed write
        still counts)."""
        with self.locked():
            state = self.load()
            try:
                yield state
            finally:
                self.save(state)


def save_json(path: Path, doc: object) -> None:
    """Atomic replace: a reader in another process sees the old state or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def load_json(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise SimulationError(f"{path} is damaged")
    return doc
