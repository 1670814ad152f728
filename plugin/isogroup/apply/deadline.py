"""One deadline for a whole run. libvirt gives its hooks no timeout and waits for them with its own locks held,
so a run that waits for a bind that never comes must not wait for ever, nor once per device: every wait of a run
(each bind, the ledger's lock) is the smaller of its own timeout and the time the run has left."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    seconds: float  # the run's whole budget, for the message that says it ran out
    at: float  # the time.monotonic() instant it runs out

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def clip(self, timeout: float) -> float:
        """How long a wait of `timeout` seconds may last: never past the deadline, and 0 once it passed (a
        wait of 0 still looks once: the kernel binds within the write, see Context.wait)."""
        return max(0.0, min(timeout, self.remaining()))
