"""Reading a file that may be hostile: the one way isogroup opens the files it is given or finds.

A FIFO, a device node or a socket where a file is expected would block `open()` or `read()` for ever (and a hook
that blocks blocks libvirtd with it), so the file is opened non-blocking, without following a final symlink
when asked, and accepted only if it is a regular file; at most `limit` bytes are read, so a huge file costs
`limit`, not its size.
"""

from __future__ import annotations

import errno
import os
import stat


class FileRefused(OSError):
    """The path exists but is not a regular file of acceptable size; `str()` says why, in a few words."""


def read_regular(path: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None, follow: bool = True) -> bytes:
    """The file's bytes. OSError as `open` raises it (FileNotFoundError, PermissionError, ELOOP for a symlink
    when `follow` is False); FileRefused for a file that is not regular or is larger than `limit` bytes."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
