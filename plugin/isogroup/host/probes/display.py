"""The boot VGA device's console: the VGA text console, or a framebuffer (efifb, simpledrm, vesafb, or its own
DRM driver's) with the framebuffer console on it.

Sources: the function's `boot_vga`, /sys/class/vtconsole/vtcon*/{name,bind}, /sys/class/graphics/fb*/name and
where each fb hangs: below the function (its own DRM driver's fbdev) or below a firmware framebuffer platform
device (sysfb's efi-framebuffer.N, simple-framebuffer.N, vesa-framebuffer.N), which is the boot VGA device's
memory seen through the firmware.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from isogroup.core.model import UseCode
from isogroup.host.probes.base import Collector, ProbeContext, Target, listdir, printable, read_attr

FAMILY = "display"

# Platform devices through which the firmware's framebuffer of the boot display is driven (drivers/firmware/
# sysfb.c, drivers/video/fbdev/vga16fb.c), and the driver a person knows each by.
FIRMWARE_DISPLAYS = {
    "efi-framebuffer": "efifb",
    "simple-framebuffer": "simplefb",
    "vesa-framebuffer": "vesafb",
    "vga-framebuffer": "vga16fb",
    "vga16fb": "vga16fb",
}
_FB = re.compile(r"^fb\d+$")
_CARD = re.compile(r"^card\d+$")


def firmware_display(path: str) -> str | None:
    """The firmware framebuffer driver a sysfs path is below (`efifb`), or None."""
    for part in path.split("/"):
        base = part.split(".", 1)[0]
        if base in FIRMWARE_DISPLAYS:
            return FIRMWARE_DISPLAYS[base]
    return None


def _consoles(ctx: ProbeContext) -> tuple[bool, bool]:
    """(framebuffer console bound, VGA text console bound)."""
    fbcon = vgacon = False
    base = ctx.sys("class/vtconsole")
    for entry in listdir(base):
        name = read_attr(os.path.join(base, entry, "name")) or ""
        if read_attr(os.path.join(base, entry, "bind")) != "1":
            continue
        fbcon = fbcon or "frame buffer" in name
        vgacon = vgacon or "VGA+" in name
    return fbcon, vgacon


def probe(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        if target.boot_vga:
            _probe_boot_vga(ctx, target, out)


def _probe_boot_vga(ctx: ProbeContext, target: Target, out: Collector) -> None:
    fbcon, vgacon = _consoles(ctx)
    console = ", with the framebuffer console on it" if fbcon else ""
    if vgacon:
        out.use(target, UseCode.DISPLAY_CONSOLE, "vgacon", "is the boot VGA device and shows the VGA text console")
    firmware_fbs: set[str] = set()
    for name, path in ctx.class_members("graphics"):
        if not _FB.match(name):
            continue
        fb_name = printable(read_attr(os.path.join(path, "name")) or "?")
        driver = firmware_display(path)
        if driver is not None:
            if "simpledrm" in fb_name:
                driver = "simpledrm"
            firmware_fbs.add(name)
            text = f"is the boot VGA device and {driver} still drives it ({name}: {fb_name}){console}"
            out.use(target, UseCode.DISPLAY_CONSOLE, name, text)
        elif target.owns(path) and fbcon:
            text = f"is the boot VGA device with the framebuffer console on {name} ({fb_name})"
            out.use(target, UseCode.DISPLAY_CONSOLE, name, text)
    # simpledrm without fbdev emulation shows only a DRM card below the firmware framebuffer.
    for name, path in ctx.class_members("drm"):
        if _CARD.match(name) and firmware_display(path) is not None and not firmware_fbs:
            text = f"is the boot VGA device and simpledrm still drives it ({name}){console}"
            out.use(target, UseCode.DISPLAY_CONSOLE, name, text)
