"""Devices that hang off a PCI function: input devices a person works with (keyboard, mouse, touchpad,
tablet: USB controllers above all), an SR-IOV PF's VFs that are in use, and an mdev parent's active mediated
devices.

Sources: /sys/class/input/inputN (below the function; `name`, `capabilities/{ev,key,rel,abs}`), the PF's
`virtfnN` links and each VF's `driver`, /sys/bus/mdev/devices/UUID and the function's
`mdev_supported_types/*/devices/`.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable

from isogroup.core.model import UseCode
from isogroup.host.probes.base import Collector, ProbeContext, Target, link_name, listdir, printable, read_attr

# include/uapi/linux/input-event-codes.h
EV_KEY, EV_REL, EV_ABS = 0x01, 0x02, 0x03
REL_X, REL_Y = 0x00, 0x01
ABS_X, ABS_Y = 0x00, 0x01
BTN_LEFT = 0x110
BTN_TOOL_PEN, BTN_TOOL_FINGER, BTN_TOUCH = 0x140, 0x145, 0x14A
# The kernel prints capability bitmaps as words of its `long`, most significant first; same ABI as ours.
_LONG_BITS = struct.calcsize("l") * 8
_INPUT = re.compile(r"^input\d+$")
_VIRTFN = re.compile(r"^virtfn\d+$")


def bitmap(text: str | None) -> int:
    """A capabilities file ("1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe") as one int."""
    value = 0
    for word in (text or "").split():
        try:
            value = (value << _LONG_BITS) | int(word, 16)
        except ValueError:
            return 0
    return value


def input_kind(path: str) -> str | None:
    """What an input device is to a person, the way udev's input_id sorts them; None for switches, buttons,
    media keys, jacks and the like, which losing does not cost the host its keyboard or pointer."""
    caps = os.path.join(path, "capabilities")
    ev = bitmap(read_attr(os.path.join(caps, "ev")))
    key = bitmap(read_attr(os.path.join(caps, "key")))
    kinds = []
    # udev: a keyboard has all of KEY_ESC..KEY_D (bits 1-31 of the first word).
    if ev >> EV_KEY & 1 and key & 0xFFFFFFFE == 0xFFFFFFFE:
        kinds.append("keyboard")
    rel = bitmap(read_attr(os.path.join(caps, "rel")))
    absolute = bitmap(read_attr(os.path.join(caps, "abs")))
    if ev >> EV_REL & 1 and rel >> REL_X & 1 and rel >> REL_Y & 1 and key >> BTN_LEFT & 1:
        kinds.append("mouse")
    elif ev >> EV_ABS & 1 and absolute >> ABS_X & 1 and absolute >> ABS_Y & 1:
        if key >> BTN_TOOL_PEN & 1:
            kinds.append("tablet")
        elif key >> BTN_TOOL_FINGER & 1:
            kinds.append("touchpad")
        elif key >> BTN_TOUCH & 1:
            kinds.append("touchscreen")
        elif key >> BTN_LEFT & 1:
            kinds.append("pointing device")
    return " and ".join(kinds) or None


def probe_input(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        for name, path in ctx.below(target, "input"):
            if not _INPUT.match(name):
                continue
            kind = input_kind(path)
            if kind is None:
                continue
            label = printable(read_attr(os.path.join(path, "name")) or "unnamed")
            article = "an" if kind[0] in "aeiou" else "a"
            text = f"has {article} {kind} attached: {label} ({name})"
            out.use(target, UseCode.USB_INPUT, name, text)


def probe_sriov(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        for entry in listdir(target.path):
            if not _VIRTFN.match(entry):
                continue
            vf = ctx.follow(os.path.join(target.path, entry))
            driver = link_name(os.path.join(vf, "driver"))
            if driver is not None:
                bdf = os.path.basename(vf)
                out.use(target, UseCode.SRIOV_VFS, bdf, f"has its VF {bdf} in use on {printable(driver)}")


def probe_mdev(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    bus = ctx.sys("bus/mdev/devices")
    on_bus = [ctx.follow(os.path.join(bus, uuid)) for uuid in listdir(bus)]
    for target in targets:
        found = {path for path in on_bus if os.path.dirname(path) == target.path}
        types = os.path.join(target.path, "mdev_supported_types")
        for kind in listdir(types):
            for uuid in listdir(os.path.join(types, kind, "devices")):
                found.add(os.path.join(target.path, uuid))
        for path in sorted(found):
            uuid = os.path.basename(path)
            kind_dir = ctx.follow(os.path.join(path, "mdev_type"))
            kind_name = link_name(os.path.join(path, "mdev_type")) or "unknown type"
            pretty = read_attr(os.path.join(kind_dir, "name"))
            shown = f"{printable(kind_name)}, {printable(pretty)}" if pretty else printable(kind_name)
            text = f"is the parent of the active mediated device {printable(uuid)} ({shown})"
            out.use(target, UseCode.MDEV_ACTIVE, uuid, text)
