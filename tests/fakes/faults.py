"""What goes wrong in the simulated kernel, and the record of every write: the faults a test installs (persisted
in `.sim/faults.json`, so every process driving one tree sees them) and the kill that ends a writer."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, NoReturn


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

    def fails_modprobe(self, module: str) -> bool:
        return any(fnmatchcase(module, pattern) for pattern in self.fail_modprobe)

    def injected_errno(self, n: int, rel: str, value: str, hits: dict[str, int]) -> int | None:
        """The errno a fault gives write number `n` of `value` to `rel`, or None. `hits` counts how often each
        FailPath fired (it persists with the simulation's state) and is updated here."""
        for nth in self.fail_nth:
            if nth.n == n:
                return nth.errno
        for index, fp in enumerate(self.fail_paths):
            if not (fnmatchcase(rel, fp.pattern) and fnmatchcase(value, fp.value)):
                continue
            fired = hits.get(str(index), 0)
            if fp.times is None or fired < fp.times:
                hits[str(index)] = fired + 1
                return fp.errno
        return None

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


def die() -> NoReturn:
    """A KillAt fault: the writing process dies at once, as from `kill -9`."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL to oneself lands on the way back from kill(2); this is never reached
    os._exit(137)
