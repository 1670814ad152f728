"""Where isogroup's log goes: syslog (the journal picks it up) with the identifier `isogroup`."""

from __future__ import annotations

import logging
import os

SYSLOG_SOCKET = "/dev/log"


def to_syslog(level: int = logging.INFO) -> None:
    """Log every action to syslog/journal. Without a syslog socket (a container, a test VM) logging stays
    silent rather than failing the operation it describes."""
    logger = logging.getLogger("isogroup")
    logger.setLevel(level)
    if logger.handlers:
        return
    # Python's last-resort handler would print records on stderr, where libvirt shows the hook's stderr to the
    # user as the refusal: without syslog the records go nowhere instead.
    handler: logging.Handler = logging.NullHandler()
    if os.path.exists(SYSLOG_SOCKET):
        from logging.handlers import SysLogHandler  # noqa: PLC0415 - costly at hook start; only where syslog is

        class QuietSysLogHandler(SysLogHandler):
            """A record syslog cannot take (the socket vanished mid-run) is dropped: logging's own handleError
            would print a traceback on stderr, which libvirt shows the user as the hook's refusal."""

            def handleError(self, record: logging.LogRecord) -> None:
                pass

        try:
            handler = QuietSysLogHandler(address=SYSLOG_SOCKET, facility=SysLogHandler.LOG_DAEMON)
            handler.ident = "isogroup: "
            handler.setFormatter(logging.Formatter("[%(process)d] %(message)s"))
        except OSError:
            pass
    logger.addHandler(handler)
