"""Isolation beyond the group, as facts of the running kernel: a command line that weakens ACS, a firmware
framebuffer holding memory inside a function's BARs, a function in D3cold.

Sources: /proc/cmdline (mode 0444, fs/proc/cmdline.c); /proc/iomem (kernel/resource.c r_show:
"%*s%0*llx-%0*llx : %s", two spaces of indent per level, inclusive ends; a reader without CAP_SYS_ADMIN sees
every address as 0 but the names and the nesting); the function's sysfs `resource` (drivers/pci/pci-sysfs.c
resource_show: "0x%016llx 0x%016llx 0x%016llx" start, end, flags per line; lines 0-5 the BARs, 6 the ROM) and
`power_state` (pci_power_name: D0 .. D3cold, "unknown" without a PM capability; v5.11+).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from isogroup.core.model import UseCode
from isogroup.host.probes.base import Collector, ProbeContext, Target, Unreadable, printable, read_attr

# -- acs: the command line --------------------------------------------------------------------------------------

# The out-of-tree ACS override patch (pcie_acs_override=downstream,multifunction,id:VVVV:DDDD) and the upstream
# pci= options whose documentation says they "may put more devices in an IOMMU group" or remove isolation
# (Documentation/admin-guide/kernel-parameters.txt: disable_acs_redir, v4.19+; config_acs, v6.11+).
_PCI_ACS_OPTIONS = ("disable_acs_redir=", "config_acs=")


def weakening_options(cmdline: str) -> list[str]:
    found = []
    for word in cmdline.split():
        if word.startswith("pcie_acs_override="):
            found.append(word)
        elif word.startswith("pci="):
            found += [f"pci={o}" for o in word[4:].split(",") if o.startswith(_PCI_ACS_OPTIONS)]
    return found


def probe_acs(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    wanted = list(targets)
    try:
        cmdline = ctx.read_proc("cmdline")
    except Unreadable as exc:
        for target in wanted:
            out.could_not_tell(target, "acs", "cmdline", "the kernel command line weakens ACS", exc.why)
        return
    options = weakening_options(cmdline)
    if not options:
        return
    shown = printable(" ".join(options))
    for target in wanted:
        text = (
            f"may not be isolated by its IOMMU group: the kernel was booted with {shown}, which makes groups "
            "finer than the hardware isolates; the guest could reach host devices behind the same ports by "
            "peer-to-peer DMA (`isogroup explain` names the hardware's groups)"
        )
        out.use(target, UseCode.ACS_OVERRIDE, options[0], text)


# -- display: a boot framebuffer inside the BARs -----------------------------------------------------------------

# Who claims the firmware framebuffer's memory in /proc/iomem (drivers/firmware/sysfb_simplefb.c "BOOTFB";
# efifb.c, vesafb.c, simplefb.c request_mem_region names; simpledrm's driver name) and how it is released: the
# platform device to unbind (sysfb.c names it) and the boot option that keeps it from binding.
_RELEASE = {
    "efifb": ("efi-framebuffer", "video=efifb:off"),
    "vesafb": ("vesa-framebuffer", "video=vesafb:off"),
    "BOOTFB": ("simple-framebuffer", "initcall_blacklist=sysfb_init"),
    "simplefb": ("simple-framebuffer", "initcall_blacklist=sysfb_init"),
    "simple-framebuffer": ("simple-framebuffer", "initcall_blacklist=sysfb_init"),
    "simpledrm": ("simple-framebuffer", "initcall_blacklist=sysfb_init"),
}
_IOMEM = re.compile(r"^( *)([0-9a-f]+)-([0-9a-f]+) : (.*)$")
_PCI_NAME = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_IORESOURCE_MEM = 0x200
_MAX_IOMEM_LINES = 65536
_PCI_CLASS_DISPLAY = 0x03


@dataclass(frozen=True)
class Framebuffer:
    name: str  # the outermost framebuffer name on its chain: BOOTFB, efifb, vesafb, ...
    start: int
    end: int
    owner: str | None  # the PCI function whose BAR line it is nested under


def framebuffers(iomem: str) -> list[Framebuffer]:
    found = []
    stack: list[str] = []  # names by nesting depth
    for line in iomem.splitlines()[:_MAX_IOMEM_LINES]:
        m = _IOMEM.match(line)
        if m is None:
            continue
        depth = len(m.group(1)) // 2
        name = m.group(4)
        del stack[depth:]
        above = list(stack)
        stack.append(name)
        if name in _RELEASE and not any(a in _RELEASE for a in above):
            owner = next((a for a in reversed(above) if _PCI_NAME.match(a)), None)
            found.append(Framebuffer(name, int(m.group(2), 16), int(m.group(3), 16), owner))
    return found


def _bars(path: str) -> list[tuple[int, int, int]] | None:
    """(index, start, end) of the memory BARs and ROM; None when `resource` cannot be read."""
    text = read_attr(os.path.join(path, "resource"))
    if text is None:
        return None
    bars = []
    for index, line in enumerate(text.splitlines()[:7]):
        try:
            start, end, flags = (int(v, 16) for v in line.split())
        except ValueError:
            return None
        if flags & _IORESOURCE_MEM and end > start:
            bars.append((index, start, end))
    return bars


def _release(fb: Framebuffer) -> str:
    device, option = _RELEASE[fb.name]
    return (
        f"release it with `echo {device}.0 > /sys/bus/platform/drivers/{device}/unbind` before the start, or boot "
        f"with {option}"
    )


def probe_framebuffer(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    wanted = list(targets)
    try:
        iomem = ctx.read_proc("iomem")
    except Unreadable as exc:
        for target in wanted:
            if _is_display(target):
                whether = "a boot framebuffer holds memory in its BARs"
                out.could_not_tell(target, "display", "iomem", whether, exc.why)
        return
    fbs = framebuffers(iomem)
    for target in wanted:
        for fb in fbs:
            _check(target, fb, out)


def _is_display(target: Target) -> bool:
    text = read_attr(os.path.join(target.path, "class")) or ""
    try:
        return int(text, 16) >> 16 == _PCI_CLASS_DISPLAY
    except ValueError:
        return False


def _check(target: Target, fb: Framebuffer, out: Collector) -> None:
    hidden = fb.start == 0 and fb.end == 0  # not root: r_show zeroes the addresses
    region = "addresses hidden: not root" if hidden else f"{fb.start:x}-{fb.end:x}"
    consequence = 'vfio-pci would fail to reserve it ("BAR N: can\'t reserve") after the start was allowed'
    if fb.owner is not None:
        if fb.owner != str(target.address):
            return
        text = (
            f"has memory in its BARs held by the boot framebuffer {fb.name} ({region}): {consequence}; {_release(fb)}"
        )
        out.use(target, UseCode.DISPLAY_FRAMEBUFFER, fb.name, text)
        return
    if hidden:
        if _is_display(target):
            whether = f"the boot framebuffer {fb.name} holds memory in its BARs"
            why = "/proc/iomem shows its addresses to root only; run as root"
            out.could_not_tell(target, "display", fb.name, whether, why)
        return
    bars = _bars(target.path)
    if bars is None:
        if _is_display(target):
            whether = f"the boot framebuffer {fb.name} ({region}) is in its BARs"
            out.could_not_tell(target, "display", fb.name, whether, f"cannot read {target.path}/resource")
        return
    for index, start, end in bars:
        if fb.start <= end and fb.end >= start:
            bar = f"BAR {index}" if index < 6 else "its ROM"
            text = (
                f"has {bar} ({start:x}-{end:x}) overlapped by the boot framebuffer {fb.name} ({region}): "
                f"{consequence.replace('BAR N', bar)}; {_release(fb)}"
            )
            out.use(target, UseCode.DISPLAY_FRAMEBUFFER, fb.name, text)
            return


# -- power -------------------------------------------------------------------------------------------------------


def probe_power(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        if read_attr(os.path.join(target.path, "power_state")) == "D3cold":
            text = (
                "is in D3cold (power_state): it is often unreachable until woken, and the guest may find it "
                f"absent or reading all ones; wake it first (echo on > /sys/bus/pci/devices/{target.address}/"
                "power/control)"
            )
            out.use(target, UseCode.POWER_D3COLD, "power_state", text)
