"""The bed's initramfs: a static busybox, the few modules needed to mount the host's root over 9p, and /init.

/init mounts the host root (9p, read-only) under an overlay with a tmpfs upper layer, mounts the run's shared
directory, moves /dev, /proc and /sys into the new root and runs the run's job script there with chroot. All
other modules are loaded later by the host's own `modprobe` inside the chroot, from the fetched kernel's tree
(bed.py bind-mounts it at /lib/modules/VERSION), so the image stays small and needs rebuilding only when the
kernel, busybox or this file changes. The image is written in the kernel's "newc" cpio format by hand: no
cpio or gzip tool needed, and the archive is byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Just enough to reach the host root: virtio-pci transport, the 9p stack, overlayfs.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

# 9p2000.L with a large msize is markedly faster than the default 8 KiB for Python imports over 9p.
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=512000"

# The kernel command line carries the run's shared directory (vmbed_out=PATH); busybox sh parses it.
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() {{ echo "vmbed-init: $*"; }}
die() {{ say "FATAL: $*"; sync; reboot -f; sleep 5; echo o > /proc/sysrq-trigger; }}
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" || die "insmod $m failed"; done
OUT=""
for word in $(cat /proc/cmdline); do
    case "$word" in vmbed_out=*) OUT="${{word#vmbed_out=}}" ;; esac
done
[ -n "$OUT" ] || die "no vmbed_out= on the kernel command line"
mkdir -p /lower /rw /newroot
# cache=loose: the host root is read-only for the guest and does not change during a run.
mount -t 9p -o {NINEP_OPTS},ro,cache=loose hostroot /lower || die "cannot mount the host root over 9p"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || die "overlay failed"
mkdir -p "/newroot$OUT"
# No caching on the shared directory: the host reads what the guest writes there.
mount -t 9p -o {NINEP_OPTS} vmbedout "/newroot$OUT" || die "cannot mount the shared directory"
for d in dev proc sys; do mount --move "/$d" "/newroot/$d" || die "cannot move /$d"; done
say "root ready"
echo ready > "/newroot$OUT/booted"
chroot /newroot /bin/sh "$OUT/job.sh"
echo "$?" > "/newroot$OUT/job.rc"
sync
umount "/newroot$OUT"
say "powering off"
reboot -f
"""


def _is_static_elf(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header (no dynamic loader needed)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only: the bed is x86_64
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Module files (relative to `modules_dir`) for `wanted` and their dependencies, dependencies first,
    from depmod's modules.dep. Names match with '-' and '_' treated alike, as modprobe does."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        by_name[Path(target).name.split(".ko")[0].replace("-", "_")] = target
    order: list[str] = []

    def visit(target: str) -> None:
        if target in order:
            return
        for dep in deps[target]:
            visit(dep)
        order.append(target)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise FileNotFoundError(f"module {name} not in {modules_dir}/modules.dep")
        visit(by_name[key])
    return order


def _module_bytes(path: Path) -> bytes:
    # busybox insmod takes plain .ko files; newer Debian kernels compress modules with xz or zstd.
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".zst":
        raise RuntimeError(f"{path}: zstd-compressed modules are not supported by the bed's initramfs")
    return path.read_bytes()


class _Cpio:
    """Writer for the "newc" format (see the kernel's Documentation/driver-api/early-userspace)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 0

    def _entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self.parts.append(blob)

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, b"", (major, minor))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return b"".join(self.parts)


def build_initramfs(kernel_root: Path, version: str, busybox: Path, cache_dir: Path) -> Path:
    """Returns a cached gzip'd initramfs for the kernel unpacked at `kernel_root`, building it if needed."""
    if not _is_static_elf(busybox):
        raise RuntimeError(f"{busybox} is not a static x86_64 binary: install busybox-static")
    modules_dir = kernel_root / "lib" / "modules" / version
    order = module_load_order(modules_dir, BOOT_MODULES)
    busybox_bytes = busybox.read_bytes()
    key = hashlib.sha256()
    for part in (version.encode(), INIT_SCRIPT.encode(), busybox_bytes, "\n".join(order).encode()):
        key.update(hashlib.sha256(part).digest())
    image = cache_dir / f"initramfs-{key.hexdigest()[:16]}.cpio.gz"
    if image.exists():
        return image

    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "proc", "sys", "lib", "lib/modules"):
        cpio.directory(d)
    # The kernel opens /dev/console for init's stdio before /init could mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    made = {"lib/modules"}
    for rel in order:
        parent = Path(rel).parent
        for p in reversed((parent, *parent.parents)):
            name = f"lib/modules/{p}"
            if p != Path(".") and name not in made:
                cpio.directory(name)
                made.add(name)
        target = rel.removesuffix(".xz")
        cpio.file(f"lib/modules/{target}", _module_bytes(modules_dir / rel))
    cpio.file("etc/modules.order", "".join(r.removesuffix(".xz") + "\n" for r in order).encode())
    cpio.file("bin/busybox", busybox_bytes, 0o755)
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)

    cache_dir.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, then rename: two test sessions may build the same image at once.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".initramfs-")
    with os.fdopen(fd, "wb") as f:
        f.write(gzip.compress(cpio.finish(), compresslevel=1, mtime=0))
    Path(tmp).chmod(0o644)
    Path(tmp).replace(image)
    return image


# The nested guest's whole OS (tests/vm/guest_hotplug_scenarios.py): the bed's kernel with this as its /init.
# ACPI PCI hotplug (acpiphp) and the PCI core are built into Debian's kernel, so acknowledging a hot-unplug
# needs no module and no userspace: init only says it is up and sleeps.
IDLE_READY = "isogroup-nested: ready"
IDLE_INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "{IDLE_READY}"
while :; do /bin/busybox sleep 3600; done
"""


def build_idle_initramfs(busybox: Path, dest: Path) -> Path:
    """Writes an uncompressed initramfs holding only a static busybox and IDLE_INIT_SCRIPT as /init to `dest`."""
    if not _is_static_elf(busybox):
        raise RuntimeError(f"{busybox} is not a static x86_64 binary: install busybox-static")
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys"):
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.file("init", IDLE_INIT_SCRIPT.encode(), 0o755)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(cpio.finish())
    return dest
