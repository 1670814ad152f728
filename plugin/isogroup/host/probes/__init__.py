"""Host-use probes: before a device leaves its host driver, find whether the host is using it.

    seams = ProbeSeams.live_host()                      # /sys, /proc, /dev and netlink of the running kernel
    seams = ProbeSeams.tree(Sysfs(tree), proc, dev)     # a captured or hand-built host: files only
    findings = probe(seams, addresses)                  # tuple[Finding, ...], canonical order

Each probe is a small function over the functions being probed (see its module for what it reads):
  storage  (storage/)    mounted filesystems, directly or through dm/md/bcache/btrfs; active swap; LVM PVs;
                         ZFS pool members; live host: block devices the kernel refuses to open exclusively
  network  (network.py)  interfaces (and those stacked on them) up with addresses, carrying routes, enslaved
  display  (display.py)  the boot VGA device with the VGA or framebuffer console, efifb or simpledrm on it
  usb      (devices.py)  keyboards and pointing devices below the function
  sriov    (devices.py)  a PF whose VFs are bound to a driver
  mdev     (devices.py)  an mdev parent with active mediated devices
  open     (nodes.py)    device nodes held open by processes; DRM nodes count as display-clients
  holder   (nvidia.py)   processes holding the nvidia driver's /dev/nvidia* nodes (its unbind would hang)
  acs      (isolation.py) a kernel command line that weakens ACS (pcie_acs_override, pci=disable_acs_redir)
  display  (isolation.py) a boot framebuffer (efifb, vesafb, simplefb/simpledrm, BOOTFB) inside the BARs
  power    (isolation.py) a function in D3cold
Reset reach and groups finer than predicted are not probes: core.reset and core.isolation derive them from the
topology (reset_method, which hostscan reads) when planning.

Nothing is run, nothing written: sysfs, /proc and udev's database are read; a block device nothing else
explains has its first 256 KiB read (LVM and ZFS labels) unless udev already recorded what is on it; on the
live host, netlink is asked for the interface addresses and each such device is opened once exclusively
(read-only, closed at once).

Could not tell. A probe that cannot read what it needs (/proc/PID/fd of other users without root, a block
device it may not open, a missing /proc file on a tree) never reports "unused" and never raises: it adds a
finding in the family concerned whose message starts "could not tell whether", naming what it could not read.
Such a finding refuses or warns exactly like a use of its family under the policy. `ProbeReport.unknown` keeps
them apart from the uses; see base.UNKNOWN_CODES for their codes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from isogroup.core.address import PciAddress
from isogroup.core.model import Finding
from isogroup.host.probes.base import UNKNOWN_CODES, UNKNOWN_PREFIX, Collector, ProbeContext, ProbeSeams, Target

Probe = Callable[[ProbeContext, Iterable[Target], Collector], None]


@functools.cache
def probes() -> tuple[tuple[str, Probe], ...]:
    """Every probe, by family. Their modules (netlink, /proc scans, label decoders) are imported on the first
    probe, not with this package: ProbeSeams is needed wherever a host is read, a probe only where one runs, and
    a hook refusing a device that is not there pays for none of them."""
    from isogroup.host.probes import devices, display, isolation, network, nodes, nvidia, storage  # noqa: PLC0415

    return (
        ("storage", storage.probe),
        ("network", network.probe),
        ("display", display.probe),
        ("usb", devices.probe_input),
        ("sriov", devices.probe_sriov),
        ("mdev", devices.probe_mdev),
        ("open", nodes.probe),
        ("holder", nvidia.probe),
        ("acs", isolation.probe_acs),
        ("framebuffer", isolation.probe_framebuffer),
        ("power", isolation.probe_power),
    )


def _order(finding: Finding) -> tuple[PciAddress, str, str]:
    return (finding.address, finding.code.value, finding.subject)


@dataclass(frozen=True)
class ProbeReport:
    uses: tuple[Finding, ...]  # what the host uses
    unknown: tuple[Finding, ...]  # what the probes could not tell ("could not tell whether ...")

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Both, in HostTopology's canonical order: what a topology records and the planner weighs."""
        return tuple(sorted(self.uses + self.unknown, key=_order))


def probe_report(seams: ProbeSeams, addresses: Iterable[PciAddress]) -> ProbeReport:
    """Probe the PCI functions at `addresses` (absent ones are skipped: the topology has no function for them)."""
    ctx = ProbeContext(seams)
    targets = [t for a in sorted(set(addresses)) if (t := ctx.target(a)) is not None]
    out = Collector()
    if targets:
        for _family, run in probes():
            run(ctx, targets, out)
    return ProbeReport(tuple(sorted(out.uses.values(), key=_order)), tuple(sorted(out.unknown.values(), key=_order)))


def probe(seams: ProbeSeams, addresses: Iterable[PciAddress]) -> tuple[Finding, ...]:
    return probe_report(seams, addresses).findings


__all__ = ["UNKNOWN_CODES", "UNKNOWN_PREFIX", "ProbeReport", "ProbeSeams", "probe", "probe_report", "probes"]
