"""How the simulated kernel says no: the errors the real Sysfs seam raises for a refused write (built the same
way; test_simkernel checks them against it), and the simulation's own complaints, which are never kernel
answers."""

from __future__ import annotations

import os
from pathlib import Path

from isogroup.errors import HostError


class SimulationError(AssertionError):
    """The code under test did something the simulation does not model: a test bug or a gap to fill, never a
    kernel answer. An AssertionError so that code catching OSError or IsogroupError cannot swallow it."""


class KernelWouldBlock(SimulationError):
    """The real kernel would block here (e.g. unbinding vfio-pci from a device QEMU still holds)."""


class Refused(Exception):
    """The kernel answers this write with an error, at open(2) or at write(2)."""

    def __init__(self, err: int, *, at_open: bool = False) -> None:
        super().__init__(os.strerror(err))
        self.err = err
        self.at_open = at_open


def open_error(path: Path, err: int) -> HostError:
    return HostError(f"cannot open {path}: {os.strerror(err)}", errno=err)


def store_error(path: Path, value: str, err: int) -> HostError:
    return HostError(f"writing {value.strip()!r} to {path} failed: {os.strerror(err)}", errno=err)


def modprobe_error(module: str) -> HostError:
    return HostError(f"modprobe {module} failed: modprobe: FATAL: Module {module} not found in directory")
