"""Guest-side helpers for scripts run by bed.run_in_vm: find devices, move them between drivers, ask VFIO
whether a group is viable, and record scenario results for the host.

Only for the bed's own scenarios: the project has its own sysfs and VFIO code, which these helpers check
against. Every sysfs write here is the plain kernel interface, so a failure is the kernel's answer.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import struct
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PCI = Path("/sys/bus/pci")
IOMMU_GROUPS = Path("/sys/kernel/iommu_groups")
DEV_VFIO = Path("/dev/vfio")

# From include/uapi/linux/vfio.h: VFIO_TYPE is ';', VFIO_BASE is 100, and the group ioctls are plain _IO
# numbers (no size or direction bits): _IO(type, nr) == (type << 8) | nr (include/uapi/asm-generic/ioctl.h).
VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _io(kind: int, nr: int) -> int:
    return (kind << 8) | nr


VFIO_GET_API_VERSION = _io(VFIO_TYPE, VFIO_BASE + 0)
VFIO_GROUP_GET_STATUS = _io(VFIO_TYPE, VFIO_BASE + 3)  # struct vfio_group_status {u32 argsz; u32 flags}
VFIO_GROUP_SET_CONTAINER = _io(VFIO_TYPE, VFIO_BASE + 4)  # arg: pointer to the container's fd (s32)
VFIO_GROUP_UNSET_CONTAINER = _io(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

# BDF -> (driver, driver_override) of every PCI function: see pci_state().
PciState = dict[str, tuple[str | None, str | None]]

_BDF = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"

# What a guest script's scenarios take besides their Scenario: the Job, or the script's own context.
C = TypeVar("C")


# --------------------------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Job:
    """What the host passed in (bed.py writes it as job.json)."""

    topology: str
    checkout: Path
    out: Path
    args: tuple[str, ...]
    paths: dict[str, tuple[tuple[int, int], ...]]
    models: dict[str, str]

    def bdf(self, name: str) -> str:
        """The guest BDF of the topology's function `name`."""
        return resolve_path(self.paths[name])


def load_job() -> Job:
    data: dict[str, Any] = json.loads(Path(os.environ["VMBED_JOB"]).read_text())
    devices: dict[str, dict[str, Any]] = data["devices"]
    return Job(
        topology=data["topology"],
        checkout=Path(data["checkout"]),
        out=Path(data["out"]),
        args=tuple(data["args"]),
        paths={name: tuple((int(d), int(f)) for d, f in dev["path"]) for name, dev in devices.items()},
        models={name: str(dev["model"]) for name, dev in devices.items()},
    )


def resolve_path(path: Sequence[tuple[int, int]], domain: int = 0) -> str:
    """BDF for a path of (device, function) hops from the root bus (see topology.py). Each hop after the first
    is looked up among the previous bridge's children, which sysfs lists as subdirectories of the bridge."""
    dev, fn = path[0]
    bdf = f"{domain:04x}:00:{dev:02x}.{fn}"
    here = PCI / "devices" / bdf
    if not here.exists():
        raise LookupError(f"no PCI device {bdf} on the root bus")
    for dev, fn in path[1:]:
        here = here.resolve()
        pattern = re.compile(rf"^[0-9a-f]{{4}}:[0-9a-f]{{2}}:{dev:02x}\.{fn}$")
        children = [child.name for child in here.iterdir() if pattern.match(child.name)]
        if len(children) != 1:
            raise LookupError(f"no single device {dev:02x}.{fn} behind {here.name}: {children}")
        bdf = children[0]
        here = here / bdf
    return bdf


# ------------------------------------------------------------------------------------------ sysfs and drivers


def device_dir(bdf: str) -> Path:
    return PCI / "devices" / bdf


def driver(bdf: str) -> str | None:
    link = device_dir(bdf) / "driver"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def vendor_device(bdf: str) -> str:
    d = device_dir(bdf)
    return f"{(d / 'vendor').read_text().strip()[2:]}:{(d / 'device').read_text().strip()[2:]}"


def iommu_group(bdf: str) -> int:
    return int(Path(os.readlink(device_dir(bdf) / "iommu_group")).name)


def group_members(group: int) -> list[str]:
    return sorted(p.name for p in (IOMMU_GROUPS / str(group) / "devices").iterdir())


def _write(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)


def unbind(bdf: str) -> None:
    current = driver(bdf)
    if current is not None:
        _write(PCI / "drivers" / current / "unbind", bdf)


def bind_override(bdf: str, target: str) -> str | None:
    """Moves the device to driver `target` the way libvirt does: driver_override, unbind, drivers_probe.
    Returns the driver bound afterwards (which the caller should check)."""
    _write(device_dir(bdf) / "driver_override", target)
    unbind(bdf)
    _write(PCI / "drivers_probe", bdf)
    return driver(bdf)


def bind_vfio(bdf: str) -> str | None:
    return bind_override(bdf, "vfio-pci")


def restore_host_driver(bdf: str) -> str | None:
    """Gives the device back to whatever host driver claims it: unbind, clear driver_override ("\\n" reads
    back as "(null)"), drivers_probe. Returns the driver bound afterwards."""
    unbind(bdf)
    _write(device_dir(bdf) / "driver_override", "\n")
    _write(PCI / "drivers_probe", bdf)
    return driver(bdf)


def driver_override(bdf: str) -> str | None:
    value = (device_dir(bdf) / "driver_override").read_text().strip()
    return None if value == "(null)" else value


def pci_state() -> PciState:
    """Every PCI function of the machine: BDF -> (driver, driver_override). Two snapshots compare whole-host
    state: a step that should change nothing must leave this exactly as it was."""
    return {bdf.name: (driver(bdf.name), driver_override(bdf.name)) for bdf in sorted((PCI / "devices").iterdir())}


def state_diff(before: PciState, after: PciState) -> list[str]:
    """What changed between two pci_state() snapshots, one line per function: 'BDF: (driver, override) -> ...'."""
    return [
        f"{bdf}: {before.get(bdf)} -> {after.get(bdf)}"
        for bdf in sorted(set(before) | set(after))
        if before.get(bdf) != after.get(bdf)
    ]


def put_home(home: PciState) -> None:
    """Best effort after a failed scenario, so that one failure does not fail the scenarios after it: every
    function still present that is not as in `home` goes back to its recorded driver and driver_override with
    plain sysfs writes (unbind, driver_override, drivers_probe). Prints what it changes, what it could not,
    and what is still not as in `home`."""
    for bdf, (drv, override) in home.items():
        if device_dir(bdf).exists() and (driver(bdf), driver_override(bdf)) != (drv, override):
            print(f"reset: {bdf} is {(driver(bdf), driver_override(bdf))}, was {(drv, override)}", flush=True)
            try:
                unbind(bdf)
                (device_dir(bdf) / "driver_override").write_text(override or "\n")
                if drv is not None:
                    (PCI / "drivers_probe").write_text(bdf)
            except OSError as exc:
                print(f"reset: {bdf}: {exc}", flush=True)
    left = state_diff(home, pci_state())
    if left:
        print(f"reset: still not home: {left}", flush=True)


def net_interfaces(bdf: str) -> list[str]:
    """Network interfaces of the device: net/ directly (e1000e) or under its virtio child (virtio-net)."""
    d = device_dir(bdf)
    found = [p.name for p in d.glob("net/*")] + [p.name for p in d.glob("virtio*/net/*")]
    return sorted(found)


def block_devices(bdf: str) -> list[str]:
    """Whole-disk block devices below a storage controller (AHCI: ataN/hostN/targetN/N:0:0:0/block/sdX)."""
    return sorted(p.name for p in device_dir(bdf).glob("ata*/host*/target*/*/block/*"))


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.1) -> bool:
    """Polls `predicate()` until true; drivers probe asynchronously (netdev, SCSI scan)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------------------------------------------ VFIO


def group_status(group: int) -> int:
    """VFIO_GROUP_GET_STATUS flags of /dev/vfio/GROUP (exists only while a member is bound to vfio-pci)."""
    fd = os.open(DEV_VFIO / str(group), os.O_RDWR)
    try:
        reply = fcntl.ioctl(fd, VFIO_GROUP_GET_STATUS, struct.pack("=II", 8, 0))
        return int(struct.unpack("=II", reply)[1])
    finally:
        os.close(fd)


def group_viable(group: int) -> bool:
    return bool(group_status(group) & VFIO_GROUP_FLAGS_VIABLE)


def container_attach_errno(group: int) -> int:
    """Tries what QEMU does first with a group: attach it to a new container. 0 on success (then detaches
    again), else the errno: EPERM for a group that is not viable."""
    container = os.open(DEV_VFIO / "vfio", os.O_RDWR)
    try:
        fd = os.open(DEV_VFIO / str(group), os.O_RDWR)
        try:
            try:
                fcntl.ioctl(fd, VFIO_GROUP_SET_CONTAINER, struct.pack("=i", container))
            except OSError as e:
                return e.errno or errno.EIO
            fcntl.ioctl(fd, VFIO_GROUP_UNSET_CONTAINER)
            return 0
        finally:
            os.close(fd)
    finally:
        os.close(container)


# ---------------------------------------------------------------------------------------------- processes


def run(command: Sequence[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs a command with a bounded time, output captured and echoed to the script log."""
    print(f"$ {' '.join(command)}", flush=True)
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    for line in (done.stdout + done.stderr).splitlines():
        print(f"  {line}", flush=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {done.returncode}: {done.stderr.strip()}")
    return done


# ------------------------------------------------------------------------------------------------ results


class CheckFailed(AssertionError):
    pass


@dataclass
class Scenario:
    name: str
    log: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)
        self.log.append(message)

    def check(self, condition: bool, message: str) -> None:
        """Records the check; raises CheckFailed when it does not hold (ends the scenario)."""
        self.note(("ok: " if condition else "FAILED: ") + message)
        if not condition:
            raise CheckFailed(message)

    def equal(self, actual: object, expected: object, what: str) -> None:
        self.check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


class Recorder:
    """Collects scenario results into $VMBED_OUT/result.json, rewritten after every scenario so that a crash
    or timeout later still leaves the earlier results for the host."""

    def __init__(self, out: Path) -> None:
        self.path = out / "result.json"
        self.data: dict[str, Any] = {"scenarios": {}, "meta": {}}
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)

    def meta(self, key: str, value: object) -> None:
        self.data["meta"][key] = value
        self._save()

    @contextmanager
    def scenario(self, name: str) -> Iterator[Scenario]:
        """`with recorder.scenario("x") as s:` records ok, or the failure and traceback, and goes on."""
        record = Scenario(name)
        start = time.monotonic()
        error: str | None = None
        try:
            yield record
        except Exception as e:  # a scenario's failure is data for the host, not the end of the batch
            error = f"{type(e).__name__}: {e}"
            record.log.append(traceback.format_exc())
            print(f"[{name}] ERROR {error}", flush=True)
        self.data["scenarios"][name] = {
            "ok": error is None,
            "error": error,
            "log": record.log,
            "seconds": round(time.monotonic() - start, 2),
        }
        self._save()

    def failed(self) -> bool:
        """Whether a scenario recorded so far failed."""
        return not all(r["ok"] for r in self.data["scenarios"].values())

    def run(
        self,
        scenarios: Mapping[str, Callable[[C, Scenario], None]],
        ctx: C,
        wanted: Sequence[str] = (),
        *,
        reset: Callable[[C], None] | None = None,
    ) -> None:
        """Runs the scenarios named in `wanted` (every one, in order, when it is empty: the job's args), each
        recorded by scenario(); after one that failed, `reset(ctx)` puts the machine back for the next. The
        time they took together is meta scenarios_seconds."""
        started = time.monotonic()
        for name in wanted or tuple(scenarios):
            with self.scenario(name) as s:
                scenarios[name](ctx, s)
            if reset is not None and not self.data["scenarios"][name]["ok"]:
                reset(ctx)
        self.meta("scenarios_seconds", round(time.monotonic() - started, 1))
