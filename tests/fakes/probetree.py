"""Hand-built hosts for the host-use probe tests: a sysfs tree (the PCI part laid out by the simulated kernel,
then block, net, input, drm, graphics and vtconsole entries added the way the kernel shows them), a /proc tree
(mountinfo, swaps, net/*, processes with fd links) and a /dev tree (regular files standing in for disks, so
that on-disk labels can be read).

Every attribute is a real file and every link a relative symlink, as in sysfs, so the probes read them through
the same code as on a live host. Nothing here knows what the probes conclude.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fakes.simkernel import SimKernel
from isogroup.core.address import PciAddress
from isogroup.core.model import HostTopology
from isogroup.host.probes import ProbeSeams


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def _attrs(directory: Path, attrs: Mapping[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in attrs.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(value + "\n")


def _ipv4_hex(address: str) -> str:
    """As /proc/net/route prints it: the network-order address read as a host-order u32, %08X."""
    (value,) = struct.unpack("=I", bytes(int(p) for p in address.split(".")))
    return f"{value:08X}"


@dataclass
class HostTree:
    root: Path
    kernel: SimKernel
    mounts: list[str] = field(default_factory=list)
    swaps: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    routes6: list[str] = field(default_factory=list)
    inet6: list[str] = field(default_factory=list)
    fib_local: list[str] = field(default_factory=list)
    # /proc/cmdline and /proc/iomem as a live host has them (see fakes.isolationtree for the shapes).
    cmdline: str = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-57-amd64 root=/dev/sda2 ro quiet"
    iomem: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, root: Path, topology: HostTopology) -> HostTree:
        kernel = SimKernel.materialize(root / "sys", topology)
        tree = cls(root, kernel)
        for d in ("class/block", "class/net", "class/input", "class/drm", "class/graphics", "dev/char", "dev/block"):
            (tree.sys / d).mkdir(parents=True, exist_ok=True)
        (tree.proc / "self").mkdir(parents=True)
        (tree.proc / "net").mkdir(parents=True)
        tree.dev.mkdir(parents=True)
        tree.mount("0:21", "/proc", "proc", "proc")
        tree.write_proc()
        return tree

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    def seams(self) -> ProbeSeams:
        return ProbeSeams.tree(self.kernel, self.proc, self.dev)

    def pci(self, address: str) -> Path:
        return (self.sys / "bus/pci/devices" / address).resolve()

    # --- sysfs -----------------------------------------------------------------------------------------------

    def device(
        self,
        cls: str,
        directory: Path,
        name: str,
        *,
        majmin: str | None = None,
        devname: str | None = None,
        attrs: Mapping[str, str] | None = None,
        kind: str = "char",
    ) -> Path:
        """A class device at `directory/name`, linked from class/CLS/name (and dev/KIND/MAJ:MIN)."""
        path = directory / name
        uevent = [f"DEVNAME={devname or name}"] if majmin else []
        _attrs(path, {"uevent": "\n".join(uevent), **(attrs or {})})
        if majmin is not None:
            (path / "dev").write_text(majmin + "\n")
            _link(self.sys / "dev" / kind / majmin, path)
        _link(self.sys / "class" / cls / name, path)
        return path

    def disk(
        self, address: str, name: str, majmin: str, partitions: Mapping[str, str] = {}, *, port: str = "ata1"
    ) -> Path:
        """A SCSI disk below a storage controller (ataN/hostN/targetN:0:0/N:0:0:0/block/sdX), with partitions
        as its subdirectories; /dev gets a zero-filled file for each."""
        scsi = self.pci(address) / port / "host0" / "target0:0:0" / "0:0:0:0" / "block"
        disk = self.device("block", scsi, name, majmin=majmin, kind="block")
        (disk / "holders").mkdir()
        self.dev_file(name)
        for part, part_majmin in partitions.items():
            path = self.device("block", disk, part, majmin=part_majmin, kind="block", attrs={"partition": "1"})
            (path / "holders").mkdir()
            self.dev_file(part)
        return disk

    def block(self, name: str) -> Path:
        return (self.sys / "class/block" / name).resolve()

    def holder(
        self, name: str, majmin: str, slaves: Iterable[str], *, dm: tuple[str, str] | None = None, md: str = ""
    ) -> Path:
        """A virtual block device (dm-N with (name, uuid), or mdN with its raid level) on `slaves`."""
        attrs = {}
        if dm is not None:
            attrs = {"dm/name": dm[0], "dm/uuid": dm[1]}
        elif md:
            attrs = {"md/level": md}
        path = self.device("block", self.sys / "devices/virtual/block", name, majmin=majmin, kind="block", attrs=attrs)
        (path / "holders").mkdir()
        for slave in slaves:
            _link(path / "slaves" / slave, self.block(slave))
            _link(self.block(slave) / "holders" / name, path)
        return path

    def netdev(self, address: str, name: str, *, up: bool = True, ifindex: int = 2, under: str = "net") -> Path:
        flags = "0x1003" if up else "0x1002"
        attrs = {"flags": flags, "operstate": "up" if up else "down", "ifindex": str(ifindex)}
        return self.device("net", self.pci(address) / under, name, attrs=attrs)

    def virtual_netdev(self, name: str, devtype: str, *, up: bool = True, ifindex: int = 10) -> Path:
        attrs = {"flags": "0x1003" if up else "0x1002", "ifindex": str(ifindex), "uevent": f"DEVTYPE={devtype}"}
        path = self.device("net", self.sys / "devices/virtual/net", name, attrs=attrs)
        if devtype in ("bridge", "bond"):
            (path / ("bridge" if devtype == "bridge" else "bonding")).mkdir()
        return path

    def enslave(self, port: str, master: str) -> None:
        """`master` and `upper_MASTER` on the port, `lower_PORT` on the master, as netdev_master_upper_dev_link."""
        port_dir, master_dir = (self.sys / "class/net" / port).resolve(), (self.sys / "class/net" / master).resolve()
        _link(port_dir / "master", master_dir)
        _link(port_dir / f"upper_{master}", master_dir)
        _link(master_dir / f"lower_{port}", port_dir)

    def stack(self, lower: str, upper: str) -> None:
        """An upper device without mastership (a VLAN, a macvlan)."""
        lower_dir, upper_dir = (self.sys / "class/net" / lower).resolve(), (self.sys / "class/net" / upper).resolve()
        _link(lower_dir / f"upper_{upper}", upper_dir)
        _link(upper_dir / f"lower_{lower}", lower_dir)

    def input(self, parent: Path, name: str, label: str, caps: Mapping[str, str]) -> Path:
        attrs = {"name": label, **{f"capabilities/{k}": v for k, v in caps.items()}}
        return self.device("input", parent, name, attrs=attrs)

    def usb_device(self, address: str, port: str = "1-1") -> Path:
        """A USB device below a host controller: usbN/N-M/N-M:1.0 (the interface), where its class devices go."""
        path = self.pci(address) / "usb1" / port / f"{port}:1.0"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def vtcon(self, index: int, name: str, bound: bool) -> None:
        path = self.sys / "devices/virtual/vtconsole" / f"vtcon{index}"
        _attrs(path, {"name": name, "bind": "1" if bound else "0"})
        _link(self.sys / "class/vtconsole" / f"vtcon{index}", path)

    def framebuffer(self, parent: Path, name: str, label: str, majmin: str) -> Path:
        return self.device("graphics", parent / "graphics", name, majmin=majmin, attrs={"name": label})

    def platform(self, name: str) -> Path:
        path = self.sys / "devices/platform" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- /dev ------------------------------------------------------------------------------------------------

    def dev_file(self, name: str, data: bytes = b"") -> Path:
        path = self.dev / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(data)
            f.truncate(max(len(data), 512 * 1024))
        return path

    # --- /proc -----------------------------------------------------------------------------------------------

    def mount(self, majmin: str, point: str, fstype: str, source: str) -> None:
        n = len(self.mounts) + 20
        self.mounts.append(f"{n} 1 {majmin} / {point} rw,relatime shared:{n} - {fstype} {source} rw")
        self.write_proc()

    def swap(self, filename: str, kind: str = "partition") -> None:
        self.swaps.append(f"{filename}\t{kind}\t1048572\t0\t-2")
        self.write_proc()

    def route(self, iface: str, dest: str, mask: str, gateway: str = "0.0.0.0", flags: int = 0x1) -> None:
        fields = [iface, _ipv4_hex(dest), _ipv4_hex(gateway), f"{flags:04X}", "0", "0", "0", _ipv4_hex(mask)]
        self.routes.append("\t".join([*fields, "0", "0", "0"]))
        self.write_proc()

    def route6(self, iface: str, dest: str, plen: int, flags: int = 0x1) -> None:
        zero = "0" * 32
        self.routes6.append(f"{dest} {plen:02x} {zero} 00 {zero} 00000100 00000001 00000000 {flags:08x} {iface:>8}")
        self.write_proc()

    def address6(self, iface: str, hex_address: str, plen: int, scope: int, ifindex: int = 2) -> None:
        self.inet6.append(f"{hex_address} {ifindex:02x} {plen:02x} {scope:02x} 80 {iface:>8}")
        self.write_proc()

    def local4(self, address: str) -> None:
        self.fib_local.append(address)
        self.write_proc()

    def write_proc(self) -> None:
        (self.proc / "self/mountinfo").write_text("".join(line + "\n" for line in self.mounts))
        header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        (self.proc / "swaps").write_text(header + "".join(line + "\n" for line in self.swaps))
        route_header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        (self.proc / "net/route").write_text(route_header + "".join(line + "\n" for line in self.routes))
        (self.proc / "net/ipv6_route").write_text("".join(line + "\n" for line in self.routes6))
        (self.proc / "net/if_inet6").write_text("".join(line + "\n" for line in self.inet6))
        trie = ["Main:", "  +-- 0.0.0.0/0 3 0 5"]
        for address in ["127.0.0.1", *self.fib_local]:
            trie += [f"     |-- {address}", "        /32 host LOCAL"]
        (self.proc / "net/fib_trie").write_text("\n".join(trie) + "\n")
        (self.proc / "cmdline").write_text(self.cmdline + "\n")
        (self.proc / "iomem").write_text("".join(line + "\n" for line in self.iomem))

    def process(self, pid: int, comm: str, fds: Mapping[int, str]) -> Path:
        """A process whose fd N links to `fds[N]` (the text the kernel shows: `/dev/sdb`, `socket:[123]`)."""
        base = self.proc / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "comm").write_text(comm + "\n")
        for fd, target in fds.items():
            os.symlink(target, base / "fd" / str(fd))
        return base


def address(text: str) -> PciAddress:
    return PciAddress.parse(text)


AHCI, XHCI, NIC, NIC2, IGPU, DGPU, PF, VF0, VF1 = (
    "0000:00:17.0",
    "0000:00:14.0",
    "0000:03:00.0",
    "0000:03:00.1",
    "0000:00:02.0",
    "0000:01:00.0",
    "0000:04:00.0",
    "0000:04:10.0",
    "0000:04:10.2",
)


def workstation() -> HostTopology:
    """SATA, USB, a dual-port NIC, the boot iGPU, a second GPU, an SR-IOV PF with two VFs (one bound)."""
    from fakes.simkernel import make_function, make_topology

    return make_topology(
        [
            make_function(AHCI, class_code=0x010601, driver="ahci", group=5),
            make_function(XHCI, class_code=0x0C0330, driver="xhci_hcd", group=3),
            make_function(NIC, driver="igb", group=7, multifunction=True),
            make_function(NIC2, driver="igb", group=7, multifunction=True),
            make_function(IGPU, class_code=0x030000, driver="i915", group=1, boot_vga=True),
            make_function(DGPU, class_code=0x030000, driver="nouveau", group=2, vendor=0x10DE),
            make_function(PF, driver="ixgbe", group=8, sriov_totalvfs=8, sriov_numvfs=2),
            make_function(VF0, driver="ixgbevf", group=9, physfn=PF),
            make_function(VF1, driver=None, group=10, physfn=PF),
        ]
    )


def zfs_label(nvpairs: Mapping[str, str | int], *, uberblock: bool = True) -> bytes:
    """Label 0 of a ZFS vdev as OpenZFS writes it (vdev_impl.h): blank and boot areas, the packed nvlist at
    16 KiB in XDR encoding (nvpair.c: header, version, flags, then encoded size, decoded size, name, type,
    element count and value per pair, four zero bytes at the end), the uberblock ring at 128 KiB."""
    label = bytearray(256 * 1024)
    stream = bytearray(bytes((1, 1, 0, 0)) + struct.pack(">iI", 0, 1))
    for name, value in nvpairs.items():
        encoded_name = name.encode()
        body = struct.pack(">I", len(encoded_name)) + encoded_name + b"\0" * (-len(encoded_name) % 4)
        if isinstance(value, int):
            body += struct.pack(">iiQ", 8, 1, value)
        else:
            encoded = value.encode()
            body += struct.pack(">iiI", 9, 1, len(encoded)) + encoded + b"\0" * (-len(encoded) % 4)
        stream += struct.pack(">ii", 8 + len(body), 8 + len(body)) + body
    stream += b"\0" * 8
    label[16 * 1024 : 16 * 1024 + len(stream)] = stream
    if uberblock:
        label[132 * 1024 : 132 * 1024 + 8] = struct.pack("<Q", 0x00BAB10C)
    return bytes(label)


def lvm_label() -> bytes:
    """The first sectors of an LVM2 physical volume: a label header in sector 1 (lib/label/label.h)."""
    data = bytearray(4096)
    data[512:544] = b"LABELONE" + struct.pack("<QI", 1, 0) + struct.pack("<I", 32) + b"LVM2 001"
    data[544:576] = b"pvUUIDpvUUIDpvUUIDpvUUIDpvUUIDpv"
    return bytes(data)
