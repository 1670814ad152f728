"""Storage under a PCI function: mounted filesystems (directly or through dm, md, bcache holders; btrfs by its
member list), active swap (partitions and files), LVM physical volumes, ZFS pool members, and on the live host
any block device the kernel refuses to open exclusively.

Sources: /sys/class/block (what is below the function), `holders/` (what sits on it), /proc/self/mountinfo
(major:minor of each mount), /proc/swaps, /sys/fs/btrfs/*/devices, /proc/spl/kstat/zfs/POOL (imported ZFS
pools), and the first 256 KiB of each unclaimed device (the LVM label, the ZFS vdev label).

The modules, bottom up: blocks (block devices in sysfs and how they stack), tables (mountinfo, swaps, btrfs
members, imported pools), labels (the LVM and ZFS label decoders: bytes in, no I/O), devnode (a device's
node: udev's record or its label read, the exclusive open), probe (the findings).
"""

from __future__ import annotations

from isogroup.host.probes.storage.probe import FAMILY, probe

__all__ = ["FAMILY", "probe"]
