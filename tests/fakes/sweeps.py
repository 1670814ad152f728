"""The kill sweep shared by the engine's tests: a run in a child process, SIGKILLed by the simulated kernel at
each of its writes in turn, on a fresh host each time."""

from __future__ import annotations

import errno
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fakes.hostfixtures import make_host
from fakes.simkernel import FailNth, Faults, KillAt, KillWhen, SimKernel
from isogroup.apply.transaction import Context


def killed_at_every_write(
    tmp_path: Path,
    total: int,
    when: KillWhen,
    child: Callable[[str], None],
    *,
    host: Callable[[Path], tuple[SimKernel, Context]] = make_host,
) -> Iterator[tuple[Path, SimKernel, Context]]:
    """For n in 1..total: a fresh host under tmp_path/kN (built by `host`), `child(root)` run in a forked
    process and killed at write n (`when` it happens); yields (root, sim, ctx) with the faults cleared, for the
    caller to recover and assert that nothing is stranded."""
    fork = multiprocessing.get_context("fork")
    for n in range(1, total + 1):
        root = tmp_path / f"k{n}"
        sim, ctx = host(root)
        sim.set_faults(Faults(kill=(KillAt(n, when),)))
        process = fork.Process(target=child, args=(str(root),))
        process.start()
        process.join(30)
        assert process.exitcode == -9, f"write {n}: the child was not killed (exit {process.exitcode})"
        sim.set_faults(Faults())
        yield root, sim, ctx


# The errnos a sysfs write fails with in the fault sweeps: a driver that refuses (EBUSY), a device that left (ENODEV).
SWEEP_ERRNOS = (errno.EBUSY, errno.ENODEV)


@contextmanager
def failing_at(sim: SimKernel, n: int, err: int) -> Iterator[None]:
    """The simulated kernel fails its n-th write with `err` inside the block, and writes normally after it."""
    sim.set_faults(Faults(fail_nth=(FailNth(n, err),)))
    try:
        yield
    finally:
        sim.set_faults(Faults())
