"""Block devices in sysfs and how they stack: what is below a PCI function (/sys/class/block entries under it),
what sits on each (`holders/`: dm, md, bcache), and for each device above, which of the function's own it rests
on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from isogroup.host.probes.base import ProbeContext, devname, listdir, listing, printable, read_attr


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


def holders(ctx: ProbeContext, block: Block) -> list[Block]:
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


@dataclass
class Stack:
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


def stack_up(ctx: ProbeContext, own: list[Block]) -> tuple[dict[str, Stack], dict[str, list[Block]]]:
    """Every device on the function's own or stacked above them, by kernel name, each with the function's own
    beneath it; and each own device's direct holders."""
    stacks: dict[str, Stack] = {}
    direct: dict[str, list[Block]] = {}
    for block in own:
        stacks.setdefault(block.name, Stack(block)).own.append(block)
        direct[block.name] = holders(ctx, block)
        todo, seen = list(direct[block.name]), {block.name}
        while todo:
            upper = todo.pop()
            if upper.name in seen:
                continue
            seen.add(upper.name)
            above = stacks.setdefault(upper.name, Stack(upper))
            if block not in above.own:
                above.own.append(block)
            todo.extend(holders(ctx, upper))
    return stacks, direct
