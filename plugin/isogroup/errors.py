"""One error hierarchy for the whole project; the CLI and the hook map its classes to exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    REFUSED = 1  # isolation would be broken: the guest must not start
    INPUT = 2  # bad input or usage: malformed XML, unknown address, invalid snapshot or policy
    HOST = 3  # the host did not do what was asked (a sysfs write failed); everything was rolled back
    STATE = 4  # the ledger is unreadable, locked too long, or disagrees with itself
    SOFTWARE = 70  # an isogroup bug (os.EX_SOFTWARE); the hook refuses the start rather than run unprotected
    INTERRUPTED = 130  # interrupted by the user (SIGINT), as shells report it


@dataclass(frozen=True)
class Origin:
    """Where in which input an error is: a file (or "domain 'x' XML") and, where known, the line."""

    file: str
    line: int | None = None


class IsogroupError(Exception):
    """Root of every error isogroup raises on purpose. `str()` is one line a person can act on."""

    exit_code: ClassVar[ExitCode] = ExitCode.HOST

    def __init__(self, message: str, *, hint: str | None = None, origin: Origin | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.origin = origin

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def line(self) -> str:
        """The one line a person reads: on the CLI's stderr, and in virsh's "Hook script execution failed"."""
        return f"isogroup: {self}"


class InputError(IsogroupError, ValueError):
    """The input is wrong: nothing was read from or done to the host."""

    exit_code = ExitCode.INPUT


class RefusedError(IsogroupError):
    """Starting the guest would break isolation; nothing was changed. `codes` are the plan's problem codes
    (`ProblemCode` values, stable), so a caller can tell a group held by another guest from a missing device
    without parsing the message."""

    exit_code = ExitCode.REFUSED

    def __init__(
        self, message: str, *, domain: str | None = None, codes: tuple[str, ...] = (), hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.domain = domain
        self.codes = codes

    def line(self) -> str:
        return f"isogroup refused '{self.domain}': {self}" if self.domain is not None else f"isogroup refused: {self}"


class HostError(IsogroupError, OSError):
    """A write to the host failed or the kernel did not react as expected."""

    exit_code = ExitCode.HOST

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


class StateError(IsogroupError):
    """The ledger cannot be trusted or reached."""

    exit_code = ExitCode.STATE
