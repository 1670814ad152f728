"""The kernel's tables of what its filesystems use: /proc/self/mountinfo (major:minor of each mount),
/proc/swaps, the member devices of each btrfs filesystem (/sys/fs/btrfs/*/devices: its mounts show an anonymous
0:N) and the imported ZFS pools (/proc/spl/kstat/zfs)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from isogroup.host.probes.base import ProbeContext, Unreadable, listdir


@dataclass(frozen=True)
class Mount:
    majmin: str
    point: str
    fstype: str
    source: str


@dataclass(frozen=True)
class Swap:
    filename: str
    kind: str  # "partition" or "file"


_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(text: str) -> str:
    """seq_file's octal escapes (`\\040` for a space) in mountinfo and swaps."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or len(fields) < 10:
            continue
        dash = fields.index("-", 6)
        if len(fields) < dash + 3:
            continue
        mounts.append(Mount(fields[2], unescape(fields[4]), fields[dash + 1], unescape(fields[dash + 2])))
    return mounts


def parse_swaps(text: str) -> list[Swap]:
    swaps = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            swaps.append(Swap(unescape(fields[0]), fields[1]))
    return swaps


def mounts(ctx: ProbeContext) -> list[Mount]:
    return parse_mountinfo(ctx.read_proc("self/mountinfo"))


def swaps(ctx: ProbeContext) -> list[Swap]:
    return parse_swaps(ctx.read_proc("swaps", absent="Filename Type Size Used Priority\n"))


def btrfs_members(ctx: ProbeContext) -> list[set[str]]:
    """The block devices of each btrfs filesystem the kernel knows (its mounts show an anonymous 0:N)."""
    base = ctx.sys("fs/btrfs")
    return [set(listdir(os.path.join(base, fs, "devices"))) for fs in listdir(base)]


def zfs_pools(ctx: ProbeContext) -> set[str] | Unreadable:
    """Imported ZFS pools: OpenZFS keeps a kstat directory per pool in /proc/spl/kstat/zfs."""
    base = ctx.proc("spl/kstat/zfs")
    try:
        return {entry.name for entry in os.scandir(base) if entry.is_dir()}
    except FileNotFoundError:
        return set()  # no ZFS module loaded (or none captured): no imported pool
    except OSError as exc:
        return Unreadable(str(base), exc.errno)


def mount_of(table: list[Mount], path: str) -> Mount | None:
    """The mount a file lives on: the last-mounted one with the longest mount point that is a prefix."""
    best: Mount | None = None
    for mount in table:
        point = mount.point.rstrip("/") + "/"
        if (path + "/").startswith(point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best
