"""isogroup's log: every action goes to syslog (the journal picks it up) as `isogroup[PID]: message`.

Not the standard `logging` package: importing it (with the handlers syslog needs) costs the hook's slow path
more than the rest of a refused start, and the hook runs on every guest start. This is the whole of what
isogroup needs of it: %-style messages, a level, one sink. Nothing is ever written to stdout or stderr: libvirt
shows the hook's stderr to the user as the refusal, and takes its stdout as replacement XML.
"""

from __future__ import annotations

import os
import sys
from enum import IntEnum
from typing import Protocol

SYSLOG_SOCKET = "/dev/log"
_LOG_DAEMON = 3  # syslog facility (RFC 5424): system daemons


class Level(IntEnum):
    """syslog severities (RFC 5424), lower is more severe."""

    ERROR = 3
    WARNING = 4
    INFO = 6
    DEBUG = 7


class Sink(Protocol):
    def emit(self, level: Level, text: str) -> None: ...


class SyslogSink:
    """Datagrams to the syslog socket. A record the socket cannot take (none there, it vanished mid-run, the
    daemon is slow) is dropped: logging must never fail, or block, the operation it describes."""

    def __init__(self, address: str = SYSLOG_SOCKET) -> None:
        self.address = address
        self._socket: object | None = None

    def emit(self, level: Level, text: str) -> None:
        data = f"<{_LOG_DAEMON * 8 + level}>isogroup[{os.getpid()}]: {text}".encode("utf-8", "replace")
        try:
            if self._socket is None:
                # The C module: socket.py's enum set-up alone costs the hook milliseconds.
                import _socket  # noqa: PLC0415

                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(self.address)
                self._socket = sock
            self._socket.send(data)  # type: ignore[attr-defined]
        except OSError:
            self._socket = None


class Log:
    """`log.info("%s: moving %s", name, address)`; records below `level` or without a sink are dropped."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.level = Level.INFO

    def _emit(self, level: Level, message: str, args: tuple[object, ...]) -> None:
        if self.sink is None or level > self.level:
            return
        try:
            text = message % args if args else message
        except (TypeError, ValueError):  # a bad format string is a bug, but never one that fails an operation
            text = f"{message} {args!r}"
        self.sink.emit(level, text)

    def debug(self, message: str, *args: object) -> None:
        self._emit(Level.DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        self._emit(Level.INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._emit(Level.WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        self._emit(Level.ERROR, message, args)

    def exception(self, message: str, *args: object) -> None:
        """An error with the traceback of the exception being handled (for bugs: exit 70)."""
        if self.sink is None:
            return
        import traceback  # noqa: PLC0415 - only when a bug is being reported

        trace = "".join(traceback.format_exception(*sys.exc_info())).rstrip()
        self._emit(Level.ERROR, message + "\n%s", (*args, trace))


log = Log()


def to_syslog(level: Level = Level.INFO) -> None:
    """Send every action to syslog from now on (the hook, recover, hotplug). Without a syslog socket (a
    container, a test VM) records go nowhere rather than to stderr."""
    log.level = level
    if log.sink is None:
        log.sink = SyslogSink(SYSLOG_SOCKET)
