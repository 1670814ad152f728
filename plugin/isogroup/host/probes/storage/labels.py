"""On-disk labels, decoded from the first 256 KiB of a block device: the LVM2 physical-volume label and label 0
of a ZFS vdev (its pool name and state). Pure: bytes in, a verdict out; a malformed label is no label."""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
POOL_STATE_ACTIVE, POOL_STATE_SPARE, POOL_STATE_L2CACHE = 0, 3, 4
LABEL_BYTES = _ZFS_LABEL_SIZE  # what to read of a device: enough for both labels


@dataclass(frozen=True)
class ZfsLabel:
    pool: str | None
    state: int | None


@dataclass(frozen=True)
class Label:
    lvm: bool = False
    zfs: ZfsLabel | None = None


def decode(data: bytes) -> Label:
    """The labels in the first LABEL_BYTES of a device."""
    return Label(lvm=lvm_label(data), zfs=zfs_label(data))


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
