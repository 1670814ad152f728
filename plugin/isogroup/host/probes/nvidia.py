"""Holders that hang: processes holding the proprietary (or open) nvidia driver's device nodes.

nv_pci_remove (kernel-open/nvidia/nv-pci.c) loops, os_delay(500), until the GPU's usage count reaches zero: a
write to the driver's `unbind` hangs while any process holds the GPU open, and the hook and libvirtd with it.
sysfs does not link these nodes to the PCI function (the driver registers its char devices itself), so the
open-nodes probe cannot see them. They are:
- /dev/nvidia<minor>, char 195:<minor>, where the minor is "Device Minor:" in
  /proc/driver/nvidia/gpus/<domain:bus:slot.fn>/information (nv-procfs.c nv_procfs_read_gpu_info);
- /dev/nvidiactl (195:255) and /dev/nvidia-modeset (195:254), shared by every GPU
  (kernel-open/common/inc/nv-chardev-numbers.h), and /dev/nvidia-uvm(-tools), minors 0 and 1 of the major
  /proc/devices calls "nvidia-uvm" (nvidia-uvm/uvm.c): counted when the GPUs being probed are all the GPUs
  the driver has, so that none is left for them;
- nvidia-persistenced holds /dev/nvidia<minor> of each GPU in persistence mode (nvidia-persistenced.c
  set_device_mode -> nvCfgOpenPciDevice), so it shows up as a holder like any other process.

The open files are found by the open-nodes probe's one /proc/PID/fd scan (nodes.scan_open_files), run only
when a probed function is on the nvidia driver.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from isogroup.core.model import UseCode
from isogroup.host.probes.base import (
    Collector,
    ProbeContext,
    Target,
    Unreadable,
    listdir,
    listing,
    printable,
    read_attr,
)
from isogroup.host.probes.nodes import Index, Node, scan_open_files

DRIVER = "nvidia"
NV_MAJOR = 195
NV_MINOR_REGULAR_MAX = 247
NV_MINOR_MODESET = 254
NV_MINOR_CONTROL = 255
_MINOR = re.compile(r"^Device Minor:\s*(\d+)\s*$", re.MULTILINE)
_UVM = re.compile(r"^\s*(\d+) nvidia-uvm$", re.MULTILINE)
_PERSISTENCED = "nvidia-persiste"  # /proc/PID/comm keeps 15 characters of "nvidia-persistenced"


def _minor(ctx: ProbeContext, target: Target) -> int:
    text = ctx.read_proc(f"driver/nvidia/gpus/{target.address}/information")
    m = _MINOR.search(text)
    if m is None or int(m.group(1)) > NV_MINOR_REGULAR_MAX:
        raise Unreadable(f"{ctx.proc(f'driver/nvidia/gpus/{target.address}/information')} (no Device Minor)", None)
    return int(m.group(1))


def _uvm_major(ctx: ProbeContext) -> int | None:
    try:
        m = _UVM.search(ctx.read_proc("devices"))
    except Unreadable:
        return None
    return int(m.group(1)) if m else None


def probe(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    gpus = [t for t in targets if t.driver == DRIVER]
    if not gpus:
        return
    index = Index()
    for target in gpus:
        try:
            minor = _minor(ctx, target)
        except Unreadable as exc:
            out.could_not_tell(target, "holder", "nvidia", "processes hold the nvidia driver's nodes", exc.why)
            continue
        index.add(Node(target, f"/dev/nvidia{minor}", "char", f"{NV_MAJOR}:{minor}", False))
    on_driver = set(listdir(str(ctx.proc("driver/nvidia/gpus"))))
    if on_driver and on_driver <= {str(t.address) for t in gpus}:
        last = gpus[0]  # every GPU the driver has is leaving: its shared nodes go with them
        shared = [("nvidiactl", NV_MAJOR, NV_MINOR_CONTROL), ("nvidia-modeset", NV_MAJOR, NV_MINOR_MODESET)]
        uvm = _uvm_major(ctx)
        if uvm is not None:
            shared += [("nvidia-uvm", uvm, 0), ("nvidia-uvm-tools", uvm, 1)]
        for name, major, minor in shared:
            index.add(Node(last, f"/dev/{name}", "char", f"{major}:{minor}", False))
    if not index.by_path:
        return
    try:
        scan = scan_open_files(ctx, index)
    except Unreadable as exc:
        for target in gpus:
            out.could_not_tell(target, "holder", "nvidia", "processes hold the nvidia driver's nodes", exc.why)
        return
    for path, pids in sorted(scan.holders.items()):
        node = index.by_path[path]
        comms = {pid: read_attr(str(ctx.proc(f"{pid}/comm"))) or "?" for pid in sorted(pids)}
        who = listing([f"{printable(c)} (pid {p})" for p, c in comms.items()])
        hint = ""
        if any(c == _PERSISTENCED for c in comms.values()):
            hint = (
                f"; for nvidia-persistenced: nvidia-smi -i {node.target.address} -pm 0, or stop the "
                "nvidia-persistenced service"
            )
        text = (
            f"has {path} held open by {who}: unbinding the nvidia driver would hang until they close it "
            f"(nv_pci_remove waits for every user); stop them first{hint}"
        )
        out.use(node.target, UseCode.HOLDER_NVIDIA, path, text)
    if scan.denied:
        why = f"the open files of {scan.denied} processes are not readable" + (
            "; run as root" if os.geteuid() != 0 else ""
        )
        for target in gpus:
            out.could_not_tell(target, "holder", "nvidia", "processes hold the nvidia driver's nodes", why)
