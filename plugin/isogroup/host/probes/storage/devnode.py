"""What a block device's node tells: its labels (udev's blkid record when there is one, else the first 256 KiB
read from its /dev node), on the live host whether the kernel refuses an exclusive open, and the major:minor
behind a /dev path. Read-only; nothing is written and no open is kept."""

from __future__ import annotations

import errno
import os
import stat

from isogroup.host.probes.base import ProbeContext, Unreadable
from isogroup.host.probes.storage.blocks import Block
from isogroup.host.probes.storage.labels import LABEL_BYTES, POOL_STATE_ACTIVE, Label, ZfsLabel, decode


def udev_label(ctx: ProbeContext, block: Block) -> Label | None:
    """What udev's blkid run recorded for the device (`E:ID_FS_TYPE=...` in /run/udev/data/bMAJ:MIN), or None
    when udev has no record of it. Readable without root and costs the disk nothing."""
    if ctx.seams.udev is None:
        return None
    try:
        text = (ctx.seams.udev / f"b{block.majmin}").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    props = dict(line[2:].split("=", 1) for line in text.splitlines() if line.startswith("E:") and "=" in line)
    kind = props.get("ID_FS_TYPE")
    if kind == "zfs_member":
        return Label(zfs=ZfsLabel(props.get("ID_FS_LABEL"), POOL_STATE_ACTIVE if props.get("ID_FS_LABEL") else None))
    return Label(lvm=kind == "LVM2_member")


def read_label(ctx: ProbeContext, block: Block) -> Label | Unreadable:
    known = udev_label(ctx, block)
    if known is not None:
        return known
    path = ctx.dev_path(block.devname)
    if path is None:
        return Unreadable(f"/dev/{block.devname} (no /dev for this tree)", None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        return Unreadable(str(path), exc.errno)
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode) and ctx.seams.live:
            return Unreadable(f"{path} (not a block device)", None)
        data = os.pread(fd, LABEL_BYTES, 0)
    except OSError as exc:
        if exc.errno in (errno.ENOMEDIUM, errno.ENXIO):
            return Label()  # no medium: nothing on it
        return Unreadable(str(path), exc.errno)
    finally:
        os.close(fd)
    return decode(data)


def refused_exclusive(ctx: ProbeContext, block: Block) -> bool | Unreadable:
    """Live host only: does the kernel refuse an exclusive open (EBUSY: mounted, swapped on, claimed by a
    holder, a ZFS pool, another namespace's mount)? Read-only, so closing it makes udev re-probe nothing."""
    path = ctx.dev_path(block.devname)
    assert path is not None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        if exc.errno in (errno.ENOMEDIUM, errno.ENXIO):
            return False
        return Unreadable(str(path), exc.errno)
    os.close(fd)
    return False


def rdev(ctx: ProbeContext, path: str) -> str | None:
    """On the live host, the major:minor of a device node a name did not match (a /dev/disk/by-* link)."""
    if not ctx.seams.live:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None
