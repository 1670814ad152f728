"""Storage under a PCI function: mounted filesystems (directly or through dm, md, bcache holders; btrfs by its
member list), active swap (partitions and files), LVM physical volumes, ZFS pool members, and on the live host
any block device the kernel refuses to open exclusively.

Sources: /sys/class/block (what is below the function), `holders/` (what sits on it), /proc/self/mountinfo
(major:minor of each mount), /proc/swaps, /sys/fs/btrfs/*/devices, /proc/spl/kstat/zfs/POOL (imported ZFS
pools), and the first 256 KiB of each unclaimed device (the LVM label, the ZFS vdev label).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from isogroup.core.model import UseCode
from isogroup.host.probes.base import (
    Collector,
    Context,
    Target,
    Unreadable,
    devname,
    listdir,
    listing,
    printable,
    read_attr,
)

FAMILY = "storage"

# LVM2 (lib/label/label.h): a 32-byte label header in one of the first four 512-byte sectors.
_LVM_LABEL_ID = b"LABELONE"
_LVM_TYPE = b"LVM2 001"
_SECTOR = 512
_LVM_SCAN_SECTORS = 4
# ZFS (include/sys/vdev_impl.h): vdev label 0 is the first 256 KiB; its packed nvlist (XDR) starts at 16 KiB,
# the uberblock ring at 128 KiB (1 KiB slots, magic 0x00bab10c in the pool's byte order).
_ZFS_LABEL_SIZE = 256 * 1024
_ZFS_NVLIST = 16 * 1024
_ZFS_NVLIST_SIZE = 112 * 1024
_ZFS_UBERBLOCKS = 128 * 1024
_ZFS_UBERBLOCK_SIZE = 1024
_ZFS_UB_MAGIC = 0x00BAB10C
_NV_ENCODE_XDR = 1
_DATA_TYPE_UINT64 = 8
_DATA_TYPE_STRING = 9
# include/sys/fs/zfs.h pool_state_t
_POOL_STATE_ACTIVE, _POOL_STATE_SPARE, _POOL_STATE_L2CACHE = 0, 3, 4
_READ_SIZE = _ZFS_LABEL_SIZE


@dataclass(frozen=True)
class Block:
    name: str  # kernel name: sda2, dm-0, md127
    path: str  # real sysfs directory
    majmin: str  # "8:2"
    devname: str  # below /dev: sda2, dm-0
    node: str  # what a person recognises: /dev/sda2, /dev/mapper/vg0-root
    partition: bool

    @property
    def disk(self) -> str:
        """The whole disk's kernel name (the partition's parent directory), or its own."""
        return os.path.basename(os.path.dirname(self.path)) if self.partition else self.name


def block_at(path: str) -> Block | None:
    majmin = read_attr(os.path.join(path, "dev"))
    if majmin is None:
        return None
    name = os.path.basename(path)
    dev = devname(path)
    dm_name = read_attr(os.path.join(path, "dm", "name"))
    node = f"/dev/mapper/{printable(dm_name)}" if dm_name else f"/dev/{printable(dev)}"
    return Block(name, path, majmin, dev, node, os.path.exists(os.path.join(path, "partition")))


def holders(ctx: Context, block: Block) -> list[Block]:
    directory = os.path.join(block.path, "holders")
    found = []
    for name in listdir(directory):
        holder = block_at(ctx.follow(os.path.join(directory, name)))
        if holder is not None:
            found.append(holder)
    return found


def describe_holder(holder: Block) -> str:
    uuid = read_attr(os.path.join(holder.path, "dm", "uuid")) or ""
    dm_name = read_attr(os.path.join(holder.path, "dm", "name"))
    if dm_name is not None:
        kind = next(
            (
                k
                for prefix, k in (("LVM-", "LVM logical volume"), ("CRYPT-", "dm-crypt mapping"))
                if uuid.startswith(prefix)
            ),
            "multipath map" if "mpath-" in uuid else "device-mapper device",
        )
        return f"{kind} {printable(dm_name)} ({holder.name})"
    level = read_attr(os.path.join(holder.path, "md", "level"))
    if level is not None:
        return f"md array {holder.node} ({printable(level)})"
    if os.path.isdir(os.path.join(holder.path, "bcache")):
        return f"bcache device {holder.node}"
    return holder.node


# --- /proc/self/mountinfo and /proc/swaps -------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    majmin: str
    point: str
    fstype: str
    source: str


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


@dataclass(frozen=True)
class Swap:
    filename: str
    kind: str  # "partition" or "file"


def parse_swaps(text: str) -> list[Swap]:
    swaps = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            swaps.append(Swap(unescape(fields[0]), fields[1]))
    return swaps


def mounts(ctx: Context) -> list[Mount]:
    return parse_mountinfo(ctx.read_proc("self/mountinfo"))


def swaps(ctx: Context) -> list[Swap]:
    return parse_swaps(ctx.read_proc("swaps", absent="Filename Type Size Used Priority\n"))


def btrfs_members(ctx: Context) -> list[set[str]]:
    """The block devices of each btrfs filesystem the kernel knows (its mounts show an anonymous 0:N)."""
    base = ctx.sys("fs/btrfs")
    return [set(listdir(os.path.join(base, fs, "devices"))) for fs in listdir(base)]


def zfs_pools(ctx: Context) -> set[str] | Unreadable:
    """Imported ZFS pools: OpenZFS keeps a kstat directory per pool in /proc/spl/kstat/zfs."""
    base = ctx.proc("spl/kstat/zfs")
    try:
        return {entry.name for entry in os.scandir(base) if entry.is_dir()}
    except FileNotFoundError:
        return set()  # no ZFS module loaded (or none captured): no imported pool
    except OSError as exc:
        return Unreadable(str(base), exc.errno)


# --- on-disk labels ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZfsLabel:
    pool: str | None
    state: int | None


@dataclass(frozen=True)
class Label:
    lvm: bool = False
    zfs: ZfsLabel | None = None


def lvm_label(data: bytes) -> bool:
    for sector in range(_LVM_SCAN_SECTORS):
        at = sector * _SECTOR
        if data[at : at + 8] == _LVM_LABEL_ID and data[at + 24 : at + 32] == _LVM_TYPE:
            return True
    return False


def zfs_label(data: bytes) -> ZfsLabel | None:
    """Label 0 of a ZFS vdev: at least one uberblock magic and a packed XDR nvlist; its `name` and `state`."""
    magic_le, magic_be = struct.pack("<Q", _ZFS_UB_MAGIC), struct.pack(">Q", _ZFS_UB_MAGIC)
    ring = data[_ZFS_UBERBLOCKS:_ZFS_LABEL_SIZE]
    if not any(ring[i : i + 8] in (magic_le, magic_be) for i in range(0, len(ring) - 7, _ZFS_UBERBLOCK_SIZE)):
        return None
    nvlist = data[_ZFS_NVLIST : _ZFS_NVLIST + _ZFS_NVLIST_SIZE]
    if len(nvlist) < 12 or nvlist[0] != _NV_ENCODE_XDR:
        return None
    values = _xdr_nvpairs(nvlist, 12)
    if values is None:
        return None
    pool = values.get("name")
    state = values.get("state")
    return ZfsLabel(pool if isinstance(pool, str) else None, state if isinstance(state, int) else None)


def _xdr_nvpairs(buf: bytes, at: int) -> dict[str, str | int] | None:
    """Top-level string and uint64 pairs of a packed XDR nvlist (OpenZFS nvpair.c: each pair is encoded size,
    decoded size, name, type, element count, value; a zero size ends the list). None if it is malformed."""
    values: dict[str, str | int] = {}
    while at + 8 <= len(buf):
        (size,) = struct.unpack_from(">I", buf, at)
        if size == 0:
            return values
        end = at + size
        if size < 16 or end > len(buf):
            return None
        (name_len,) = struct.unpack_from(">I", buf, at + 8)
        name_at = at + 12
        value_at = name_at + (name_len + 3) // 4 * 4
        if value_at + 8 > end:
            return None
        name = buf[name_at : name_at + name_len].decode("utf-8", "replace")
        kind, _count = struct.unpack_from(">II", buf, value_at)
        if kind == _DATA_TYPE_UINT64 and value_at + 16 <= end:
            values[name] = struct.unpack_from(">Q", buf, value_at + 8)[0]
        elif kind == _DATA_TYPE_STRING and value_at + 12 <= end:
            (length,) = struct.unpack_from(">I", buf, value_at + 8)
            if value_at + 12 + length <= end:
                values[name] = buf[value_at + 12 : value_at + 12 + length].decode("utf-8", "replace")
        at = end
    return None


def udev_label(ctx: Context, block: Block) -> Label | None:
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
        return Label(zfs=ZfsLabel(props.get("ID_FS_LABEL"), _POOL_STATE_ACTIVE if props.get("ID_FS_LABEL") else None))
    return Label(lvm=kind == "LVM2_member")


def read_label(ctx: Context, block: Block) -> Label | Unreadable:
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
        data = os.pread(fd, _READ_SIZE, 0)
    except OSError as exc:
        if exc.errno in (errno.ENOMEDIUM, errno.ENXIO):
            return Label()  # no medium: nothing on it
        return Unreadable(str(path), exc.errno)
    finally:
        os.close(fd)
    return Label(lvm=lvm_label(data), zfs=zfs_label(data))


def refused_exclusive(ctx: Context, block: Block) -> bool | Unreadable:
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


# --- the probe -------------------------------------------------------------------------------------------------


@dataclass
class _Stack:
    """A block device on this function, or one that sits on some of them, with the function's own beneath."""

    block: Block
    own: list[Block] = field(default_factory=list)

    def holds(self) -> str:
        """'holds /dev/sda2', or 'holds /dev/sda3, under /dev/mapper/vg0-root,' for a device stacked on it."""
        nodes = [b.node for b in self.own]
        if nodes == [self.block.node]:
            return f"holds {self.block.node}"
        return f"holds {listing(nodes)}, under {self.block.node},"

    def holds_with(self, what: str) -> str:
        """'holds /dev/sda3, active swap' or 'holds /dev/sda3, under /dev/mapper/vg0-swap, active swap'."""
        text = self.holds()
        return f"{text} {what}" if text.endswith(",") else f"{text}, {what}"


def probe(ctx: Context, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        # A hidden disk (an NVMe multipath path, nvme0c0n1) is reached only through its namespace's device.
        own = [
            b
            for _, path in ctx.below(target, "block")
            if read_attr(os.path.join(path, "hidden")) != "1" and (b := block_at(path)) is not None
        ]
        if own:
            _probe_function(ctx, target, own, out)


def _probe_function(ctx: Context, target: Target, own: list[Block], out: Collector) -> None:
    stacks: dict[str, _Stack] = {}
    direct: dict[str, list[Block]] = {}
    for block in own:
        stacks.setdefault(block.name, _Stack(block)).own.append(block)
        direct[block.name] = holders(ctx, block)
        todo, seen = list(direct[block.name]), {block.name}
        while todo:
            upper = todo.pop()
            if upper.name in seen:
                continue
            seen.add(upper.name)
            stack = stacks.setdefault(upper.name, _Stack(upper))
            if block not in stack.own:
                stack.own.append(block)
            todo.extend(holders(ctx, upper))

    explained: set[str] = set()

    def explain(stack: _Stack) -> None:
        explained.update(b.name for b in stack.own)

    _mounted(ctx, target, stacks, out, explain)
    _swapped(ctx, target, stacks, out, explain)
    for block in own:
        if direct[block.name]:
            users = listing(describe_holder(h) for h in direct[block.name])
            out.use(target, UseCode.STORAGE_HELD, block.node, f"holds {block.node}, used by {users}")
            explained.add(block.name)
    disks_with_partitions = {b.disk for b in own if b.partition}
    pools = zfs_pools(ctx)
    for block in own:
        if block.name in explained or block.name in disks_with_partitions:
            continue
        _labelled(ctx, target, block, pools=pools, out=out, explained=explained)
    if ctx.seams.live:
        _busy(ctx, target, own, out, explained)


Explain = Callable[[_Stack], None]


def _on_mount(mount: Mount, members: list[set[str]], stacks: dict[str, _Stack]) -> list[str]:
    """Which of `stacks` a mount is on: by major:minor, or for btrfs (an anonymous 0:N) by its source device
    and the other devices of that filesystem."""
    found = [name for name, s in stacks.items() if s.block.majmin == mount.majmin]
    if not found and mount.fstype == "btrfs" and mount.source.startswith("/dev/"):
        by_devname = {s.block.devname: name for name, s in stacks.items()}
        source = os.path.basename(mount.source)
        for fs in members:
            if source in fs:
                found += [by_devname[d] for d in sorted(fs) if d in by_devname]
    return found


def _mounted(ctx: Context, target: Target, stacks: dict[str, _Stack], out: Collector, explain: Explain) -> None:
    try:
        table = mounts(ctx)
    except Unreadable as exc:
        out.could_not_tell(target, FAMILY, "mounts", "its disks hold mounted filesystems", exc.why)
        return
    points: dict[str, list[str]] = {}
    members = btrfs_members(ctx) if any(m.fstype == "btrfs" for m in table) else []
    for mount in table:
        for name in _on_mount(mount, members, stacks):
            points.setdefault(name, []).append(mount.point)
    for name, where in points.items():
        stack = stacks[name]
        shown = listing(printable(p) for p in dict.fromkeys(where))
        out.use(target, UseCode.STORAGE_MOUNTED, stack.block.node, f"{stack.holds()} mounted at {shown}")
        explain(stack)


def _swapped(ctx: Context, target: Target, stacks: dict[str, _Stack], out: Collector, explain: Explain) -> None:
    try:
        active = swaps(ctx)
        table = mounts(ctx) if any(s.kind != "partition" for s in active) else []
    except Unreadable as exc:
        out.could_not_tell(target, FAMILY, "swap", "its disks hold active swap", exc.why)
        return
    by_majmin = {s.block.majmin: name for name, s in stacks.items()}
    by_node = {s.block.node: name for name, s in stacks.items()}
    by_node.update({f"/dev/{s.block.devname}": name for name, s in stacks.items()})
    files: dict[str, list[str]] = {}
    for swap in active:
        if swap.kind == "partition":
            name = by_node.get(swap.filename) or by_majmin.get(_rdev(ctx, swap.filename) or "")
            if name is not None:
                stack = stacks[name]
                out.use(target, UseCode.STORAGE_SWAP, stack.block.node, stack.holds_with("active swap"))
                explain(stack)
            continue
        holder = _mount_of(table, swap.filename)
        members = btrfs_members(ctx) if holder is not None and holder.fstype == "btrfs" else []
        for name in _on_mount(holder, members, stacks) if holder is not None else []:
            files.setdefault(name, []).append(swap.filename)
    for name, names in files.items():
        stack = stacks[name]
        text = f"{stack.holds()} with the active swap file {listing(printable(f) for f in names)}"
        out.use(target, UseCode.STORAGE_SWAP, stack.block.node, text)
        explain(stack)


def _rdev(ctx: Context, path: str) -> str | None:
    """On the live host, the major:minor of a device node a name did not match (a /dev/disk/by-* link)."""
    if not ctx.seams.live:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None


def _mount_of(table: list[Mount], path: str) -> Mount | None:
    """The mount a file lives on: the last-mounted one with the longest mount point that is a prefix."""
    best: Mount | None = None
    for mount in table:
        point = mount.point.rstrip("/") + "/"
        if (path + "/").startswith(point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best


def _labelled(
    ctx: Context, target: Target, block: Block, *, pools: set[str] | Unreadable, out: Collector, explained: set[str]
) -> None:
    label = read_label(ctx, block)
    if isinstance(label, Unreadable):
        whether = f"{block.node} is an LVM physical volume or a ZFS pool member"
        out.could_not_tell(target, FAMILY, block.node, whether, label.why)
        explained.add(block.name)
        return
    if label.lvm:
        text = f"holds {block.node}, an LVM physical volume (none of its logical volumes is active)"
        out.use(target, UseCode.STORAGE_HELD, block.node, text)
        explained.add(block.name)
    zfs = label.zfs
    if zfs is None:
        return
    if isinstance(pools, Unreadable):
        whether = f"the ZFS pool on {block.node} is imported"
        out.could_not_tell(target, FAMILY, block.node, whether, pools.why)
        explained.add(block.name)
        return
    if zfs.state == _POOL_STATE_ACTIVE and zfs.pool in pools:
        text = f"holds {block.node}, a member of ZFS pool {printable(zfs.pool)}"
    elif zfs.pool is None and pools and zfs.state in (_POOL_STATE_SPARE, _POOL_STATE_L2CACHE, None):
        # A spare or cache device's label names no pool (and udev's record says neither which nor what).
        roles = {_POOL_STATE_SPARE: "spare", _POOL_STATE_L2CACHE: "cache device"}
        role = roles.get(zfs.state, "spare or cache") if zfs.state is not None else "spare or cache"
        text = f"holds {block.node}, a ZFS {role} while pools {listing(sorted(pools))} are imported"
    else:
        return
    out.use(target, UseCode.STORAGE_ZFS, block.node, text)
    explained.add(block.name)


def _busy(ctx: Context, target: Target, own: list[Block], out: Collector, explained: set[str]) -> None:
    # A disk whose partition is claimed, or a partition of a claimed disk, is busy for that reason.
    disks_with_explained_partitions = {b.disk for b in own if b.partition and b.name in explained}
    for block in own:
        if block.name in explained or block.disk in (explained if block.partition else disks_with_explained_partitions):
            continue
        refused = refused_exclusive(ctx, block)
        if isinstance(refused, Unreadable):
            whether = f"something holds {block.node} exclusively"
            out.could_not_tell(target, FAMILY, block.node, whether, refused.why)
        elif refused:
            text = (
                f"holds {block.node}, which the kernel reports busy: something holds it exclusively (a mount in "
                "another mount namespace, a ZFS pool, a running guest)"
            )
            out.use(target, UseCode.STORAGE_BUSY, block.node, text)
