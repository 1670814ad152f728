"""Where isogroup's log goes: syslog (the journal picks it up) with the identifier `isogroup`."""

from __future__ import annotations

import logging
import logging.handlers
import os

SYSLOG_SOCKET = "/dev/log"


def to_syslog(level: int = logging.INFO) -> None:
    """Log every action to syslog/journal. Without a syslog socket (a container, a test VM) logging stays
    silent rather than failing the operation it describes."""
    logger = logging.getLogger("isogroup")
    logger.setLevel(level)
    if any(isinstance(h, logging.handlers.SysLogHandler) for h in logger.handlers):
        return
    if os.path.exists(SYSLOG_SOCKET):
        try:
            handler = logging.handlers.SysLogHandler(
                address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
        except OSError:
            return
        handler.ident = "isogroup: "
        handler.setFormatter(logging.Formatter("[%(process)d] %(message)s"))
        logger.addHandler(handler)
