"""The storage probe: for each function, its block devices and what stacks on them, then each finding in turn:
mounted (directly, through a holder, or as a btrfs member), swapped on (a partition or a swap file on a mount),
held by a holder, labelled as an LVM physical volume or a member of an imported ZFS pool, and on the live host
busy by the kernel's word (an exclusive open refused). A device is reported for the first reason that explains
it; what the probe cannot read becomes "could not tell"."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from isogroup.core.model import UseCode
from isogroup.host.probes.base import Collector, ProbeContext, Target, Unreadable, listing, printable, read_attr
from isogroup.host.probes.storage.blocks import Block, Stack, block_at, describe_holder, stack_up
from isogroup.host.probes.storage.devnode import rdev, read_label, refused_exclusive
from isogroup.host.probes.storage.labels import POOL_STATE_ACTIVE, POOL_STATE_L2CACHE, POOL_STATE_SPARE
from isogroup.host.probes.storage.tables import Mount, btrfs_members, mount_of, mounts, swaps, zfs_pools

FAMILY = "storage"


def probe(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        # A hidden disk (an NVMe multipath path, nvme0c0n1) is reached only through its namespace's device.
        own = [
            b
            for _, path in ctx.below(target, "block")
            if read_attr(os.path.join(path, "hidden")) != "1" and (b := block_at(path)) is not None
        ]
        if own:
            _probe_function(ctx, target, own, out)


def _probe_function(ctx: ProbeContext, target: Target, own: list[Block], out: Collector) -> None:
    stacks, direct = stack_up(ctx, own)
    explained: set[str] = set()

    def explain(s: Stack) -> None:
        explained.update(b.name for b in s.own)

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


Explain = Callable[[Stack], None]


def _on_mount(mount: Mount, members: list[set[str]], stacks: dict[str, Stack]) -> list[str]:
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


def _mounted(ctx: ProbeContext, target: Target, stacks: dict[str, Stack], out: Collector, explain: Explain) -> None:
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


def _swapped(ctx: ProbeContext, target: Target, stacks: dict[str, Stack], out: Collector, explain: Explain) -> None:
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
            name = by_node.get(swap.filename) or by_majmin.get(rdev(ctx, swap.filename) or "")
            if name is not None:
                stack = stacks[name]
                out.use(target, UseCode.STORAGE_SWAP, stack.block.node, stack.holds_with("active swap"))
                explain(stack)
            continue
        holder = mount_of(table, swap.filename)
        members = btrfs_members(ctx) if holder is not None and holder.fstype == "btrfs" else []
        for name in _on_mount(holder, members, stacks) if holder is not None else []:
            files.setdefault(name, []).append(swap.filename)
    for name, names in files.items():
        stack = stacks[name]
        text = f"{stack.holds()} with the active swap file {listing(printable(f) for f in names)}"
        out.use(target, UseCode.STORAGE_SWAP, stack.block.node, text)
        explain(stack)


def _labelled(
    ctx: ProbeContext,
    target: Target,
    block: Block,
    *,
    pools: set[str] | Unreadable,
    out: Collector,
    explained: set[str],
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
    if zfs.state == POOL_STATE_ACTIVE and zfs.pool in pools:
        text = f"holds {block.node}, a member of ZFS pool {printable(zfs.pool)}"
    elif zfs.pool is None and pools and zfs.state in (POOL_STATE_SPARE, POOL_STATE_L2CACHE, None):
        # A spare or cache device's label names no pool (and udev's record says neither which nor what).
        roles = {POOL_STATE_SPARE: "spare", POOL_STATE_L2CACHE: "cache device"}
        role = roles.get(zfs.state, "spare or cache") if zfs.state is not None else "spare or cache"
        text = f"holds {block.node}, a ZFS {role} while pools {listing(sorted(pools))} are imported"
    else:
        return
    out.use(target, UseCode.STORAGE_ZFS, block.node, text)
    explained.add(block.name)


def _busy(ctx: ProbeContext, target: Target, own: list[Block], out: Collector, explained: set[str]) -> None:
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
