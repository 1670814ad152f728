"""Device nodes of a PCI function held open by processes: its DRM nodes (display-clients) and any other
(open-nodes: a disk opened raw, a USB device, a sound card, a video device).

A node belongs to a function when its sysfs device (/sys/dev/{char,block}/MAJ:MIN) is below the function; a
device-mapper or md device stacked on the function's disks belongs to it too, and so do the DRM nodes of the
firmware framebuffer (simpledrm) for the boot VGA device. VFIO's own device nodes (`vfio-dev`) do not count:
they are how a guest holds a device, not how the host uses it.

Open files come from /proc/PID/fd/*: the link text names the node (`/dev/dri/card0`); on the live host a link
no name matches (another mount namespace's /dev, a deleted node) is stat'ed for its device number. This is the
expensive probe: one readlink per open file of every process, done once per probe run for all functions.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from isogroup.core.model import UseCode
from isogroup.host.probes.base import (
    Collector,
    ProbeContext,
    Target,
    Unreadable,
    devname,
    listdir,
    listing,
    printable,
    read_attr,
)
from isogroup.host.probes.display import firmware_display

_VIRTUAL_BLOCK = "/devices/virtual/block/"


@dataclass(frozen=True)
class Node:
    target: Target
    path: str  # /dev/dri/card0
    kind: str  # "char" or "block"
    majmin: str
    drm: bool


@dataclass
class Index:
    by_path: dict[str, Node] = field(default_factory=dict)
    by_number: dict[tuple[str, str], Node] = field(default_factory=dict)

    def add(self, node: Node) -> None:
        self.by_path.setdefault(node.path, node)
        self.by_number.setdefault((node.kind, node.majmin), node)

    def of(self, target: Target) -> list[Node]:
        return [n for n in self.by_path.values() if n.target.address == target.address]


def build_index(ctx: ProbeContext, targets: list[Target]) -> Index:
    index = Index()
    boot_vga = next((t for t in targets if t.boot_vga), None)
    virtual: list[tuple[str, str, str]] = []
    owned_blocks: dict[str, Target] = {}  # kernel block name -> owner
    for kind in ("char", "block"):
        base = ctx.sys(f"dev/{kind}")
        for majmin in listdir(base):
            path = ctx.follow(os.path.join(base, majmin))
            if "/vfio-dev/" in path:
                continue
            owner = next((t for t in targets if ctx.owned_by(t, path)), None)
            if owner is None and boot_vga is not None and firmware_display(path) is not None:
                owner = boot_vga
            if owner is None:
                if kind == "block" and _VIRTUAL_BLOCK in path:
                    virtual.append((kind, majmin, path))
                continue
            if kind == "block":
                owned_blocks[os.path.basename(path)] = owner
            index.add(_node(owner, kind, majmin, path))
    # dm and md devices stacked on the functions' disks, through their `slaves/`.
    for kind, majmin, path in virtual:
        owner = _stacked_owner(ctx, path, owned_blocks, set())
        if owner is not None:
            index.add(_node(owner, kind, majmin, path))
    return index


def _node(owner: Target, kind: str, majmin: str, path: str) -> Node:
    return Node(owner, f"/dev/{devname(path)}", kind, majmin, "/drm/" in path)


def _stacked_owner(ctx: ProbeContext, path: str, owned: dict[str, Target], seen: set[str]) -> Target | None:
    if path in seen:
        return None
    seen.add(path)
    slaves = os.path.join(path, "slaves")
    for name in listdir(slaves):
        if name in owned:
            return owned[name]
        below = ctx.follow(os.path.join(slaves, name))
        if _VIRTUAL_BLOCK in below and (owner := _stacked_owner(ctx, below, owned, seen)) is not None:
            return owner
    return None


@dataclass
class Scan:
    holders: dict[str, set[int]] = field(default_factory=dict)  # node path -> pids
    denied: int = 0  # processes whose open files could not be read


def scan_open_files(ctx: ProbeContext, index: Index) -> Scan:
    """Which of the index's nodes each process holds open. Raises Unreadable when /proc cannot be listed."""
    proc = ctx.seams.proc
    try:
        pids = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError as exc:
        raise Unreadable(str(proc), exc.errno) from None
    result = Scan()
    own_pid = str(ctx.own_pid) if ctx.own_pid is not None else None
    numbers: dict[str, tuple[str, str] | None] = {}
    for pid in pids:
        if pid == own_pid:
            continue
        # One open directory per process, each link read relative to it: a third cheaper than full paths.
        try:
            fd_dir = os.open(os.path.join(proc, pid, "fd"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            result.denied += 1
            continue
        except OSError:
            continue  # the process is gone
        try:
            held = _held_nodes(ctx, index, fd_dir, numbers)
        finally:
            os.close(fd_dir)
        for path in held:
            result.holders.setdefault(path, set()).add(int(pid))
    return result


def _held_nodes(ctx: ProbeContext, index: Index, fd_dir: int, numbers: dict[str, tuple[str, str] | None]) -> set[str]:
    held: set[str] = set()
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return held
    for fd in fds:
        try:
            target = os.readlink(fd, dir_fd=fd_dir)
        except OSError:
            continue
        if not target.startswith("/dev/"):
            continue
        node = index.by_path.get(target)
        if node is None and ctx.seams.live:
            node = _by_number(index, fd, fd_dir, target, numbers)
        if node is not None:
            held.add(node.path)
    return held


def _by_number(
    index: Index, fd: str, fd_dir: int, target: str, numbers: dict[str, tuple[str, str] | None]
) -> Node | None:
    """The node an open file is, by device number: what the fd itself refers to, whatever name it shows. Cached
    per name, except for deleted nodes, whose names say nothing."""
    if target in numbers:
        number = numbers[target]
    else:
        try:
            st = os.stat(fd, dir_fd=fd_dir)
        except OSError:
            return None
        number = None
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
            number = (kind, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        if not target.endswith(" (deleted)"):
            numbers[target] = number
    return index.by_number.get(number) if number is not None else None


def _who(ctx: ProbeContext, pids: set[int]) -> str:
    shown = []
    for pid in sorted(pids):
        comm = read_attr(str(ctx.proc(f"{pid}/comm"))) or "?"
        shown.append(f"{printable(comm)} (pid {pid})")
    return listing(shown)


def probe(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    wanted = list(targets)
    index = build_index(ctx, wanted)
    if not index.by_path:
        return
    try:
        scan = scan_open_files(ctx, index)
    except Unreadable as exc:
        _could_not_tell(index, wanted, out, exc.why)
        return
    for path, pids in sorted(scan.holders.items()):
        node = index.by_path[path]
        code = UseCode.DISPLAY_CLIENTS if node.drm else UseCode.OPEN_NODES
        out.use(node.target, code, node.path, f"has {printable(node.path)} held open by {_who(ctx, pids)}")
    if scan.denied:
        why = f"the open files of {scan.denied} processes are not readable" + (
            "; run as root" if os.geteuid() != 0 else ""
        )
        _could_not_tell(index, wanted, out, why)


def _could_not_tell(index: Index, targets: list[Target], out: Collector, why: str) -> None:
    for target in targets:
        nodes = index.of(target)
        for drm, family in ((True, "display"), (False, "open")):
            mine = [printable(n.path) for n in nodes if n.drm is drm]
            if mine:
                whether = f"processes hold {listing(mine)} open"
                out.could_not_tell(target, family, "open files", whether, why)
