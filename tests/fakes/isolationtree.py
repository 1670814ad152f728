"""Hosts shaped like the real ones for the isolation findings (issue 11): a multifunction NIC whose functions
have ACS and so groups of their own, one of them without FLR; an nvidia GPU host; firmware framebuffers in
/proc/iomem. The facts each shape rests on are cited where it is built; the trees are laid out by
fakes.probetree.HostTree, so the probes read them through the live host's code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fakes.probetree import HostTree
from fakes.simkernel import make_function, make_topology
from isogroup.core.address import PciAddress
from isogroup.core.model import Header, HostTopology, PciFunction

PORT, NIC0, NIC1, AHCI = "0000:00:1c.0", "0000:02:00.0", "0000:02:00.1", "0000:00:17.0"
GPU, GPU_AUDIO, GPU2 = "0000:01:00.0", "0000:01:00.1", "0000:03:00.0"


def shared_bus_nic() -> HostTopology:
    """A PCH root port with a dual-port NIC behind it, each function in its own group (Intel's 82576/i350
    functions carry ACS, so the kernel separates them: drivers/iommu/iommu.c pci_device_group). Function 0
    has FLR; function 1's FLR is hidden by a quirk, so the kernel leaves it only `bus`, which its probe lists for
    function 0 as well although pci_parent_bus_reset() refuses a device that is not alone on its bus
    (drivers/pci/pci.c; the probe runs before the function joins the bus list: drivers/pci/probe.c)."""
    return make_topology(
        [
            replace(
                make_function(PORT, class_code=0x060400, driver="pcieport", group=8, header=Header.BRIDGE),
                reset_methods=("pm", "bus"),
            ),
            replace(
                make_function(NIC0, driver="igb", group=9, parent=PORT, multifunction=True),
                reset_methods=("flr", "bus"),
            ),
            replace(
                make_function(NIC1, driver="igb", group=10, parent=PORT, multifunction=True),
                reset_methods=("bus",),
            ),
            replace(make_function(AHCI, class_code=0x010601, driver="ahci", group=5), reset_methods=()),
        ]
    )


def matisse_onchip() -> HostTopology:
    """AMD Matisse's internal GPP bridge 00:08.1 [1022:1484] (a root port with ACS, cap 0x5f ctrl 0x1d as the
    amd-b450 sample's GPP ports) and its on-chip functions on bus 0e, each with ACS (cap 0x1f, ctrl 0x1d) and so a
    group of its own: 0e:00.0 [1022:148a], the PSP/CCP 0e:00.1 [1022:1485], the xHCI 0e:00.3 [1022:149c], the
    HD Audio 0e:00.4 [1022:1487]. drivers/pci/quirks.c quirk_no_flr removes FLR from 1487 and 149c; their PM reset
    is taken as unavailable (assumed), so the kernel has no method of their own for them; 0e:00.0, probed first,
    shows the stale "bus"."""
    acs = {"capabilities_read": True, "pcie_type": 0, "acs_cap": 0x1F, "acs_ctrl": 0x1D}

    def onchip(
        addr: str, cls: int, driver: str | None, group: int, device: int, methods: tuple[str, ...]
    ) -> PciFunction:
        f = make_function(
            addr,
            class_code=cls,
            driver=driver,
            group=group,
            parent="0000:00:08.1",
            multifunction=True,
            vendor=0x1022,
            device=device,
        )
        return replace(f, reset_methods=methods, **acs)  # type: ignore[arg-type]

    host_bridge = make_function("0000:00:00.0", class_code=0x060000, vendor=0x1022, device=0x1480)
    port = make_function(
        "0000:00:08.1",
        class_code=0x060400,
        driver="pcieport",
        group=21,
        header=Header.BRIDGE,
        vendor=0x1022,
        device=0x1484,
    )
    return make_topology(
        [
            replace(host_bridge, capabilities_read=True),
            replace(port, capabilities_read=True, pcie_type=4, acs_cap=0x5F, acs_ctrl=0x1D, reset_methods=("pm",)),
            onchip("0000:0e:00.0", 0x130000, None, 22, 0x148A, ("bus",)),
            onchip("0000:0e:00.1", 0x108000, "ccp", 23, 0x1485, ("pm",)),
            onchip("0000:0e:00.3", 0x0C0330, "xhci_hcd", 24, 0x149C, ()),
            onchip("0000:0e:00.4", 0x040300, "snd_hda_intel", 25, 0x1487, ()),
        ]
    )


def nvidia_host(root: Path, *, second_gpu: bool = False, topology: HostTopology | None = None) -> HostTree:
    """A desktop with a GeForce on the proprietary driver (10de:2484 VGA + 10de:228b HDA audio). The driver's
    /proc/driver/nvidia/gpus/<BDF>/information is laid out as nv-procfs.c nv_procfs_read_gpu_info prints it
    (one "Key: \\t value" per line, Device Minor after Bus Location); its nodes are 195:<minor>,
    195:254 (nvidia-modeset), 195:255 (nvidiactl) (nv-chardev-numbers.h); nvidia-uvm has its own major,
    listed in /proc/devices (uvm.c)."""
    funcs = [
        make_function(GPU, class_code=0x030000, driver="nvidia", group=1, vendor=0x10DE, device=0x2484),
        make_function(GPU_AUDIO, class_code=0x040300, driver="snd_hda_intel", group=1, vendor=0x10DE, device=0x228B),
    ]
    gpus = [(GPU, 0)]
    if second_gpu:
        funcs.append(make_function(GPU2, class_code=0x030000, driver="nvidia", group=2, vendor=0x10DE, device=0x1F82))
        gpus.append((GPU2, 1))
    tree = HostTree.build(root, topology or make_topology(funcs))
    for bdf, minor in gpus:
        info = tree.proc / "driver/nvidia/gpus" / bdf / "information"
        info.parent.mkdir(parents=True)
        info.write_text(
            "Model: \t\t NVIDIA GeForce RTX 3060 Ti\nIRQ:   \t\t 145\n"
            "GPU UUID: \t GPU-5d3e0c1a-0f1b-2c3d-4e5f-60718293a4b5\nVideo BIOS: \t 94.04.3a.00.d6\n"
            "Bus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n"
            f"Bus Location: \t {bdf}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"
        )
    (tree.proc / "devices").write_text(
        "Character devices:\n  1 mem\n  4 /dev/vc/0\n195 nvidia-frontend\n195 nvidia\n"
        "195 nvidia-modeset\n508 nvidia-uvm\n\nBlock devices:\n  8 sd\n"
    )
    return tree


# /proc/iomem as root sees it (kernel/resource.c r_show), measured in the VM bed on Debian 6.1: efifb under
# OVMF, nested under the bochs VGA's BAR 0; simplefb's BOOTFB (sysfb_simplefb.c) on a Fedora-style kernel.
IOMEM_EFIFB = [
    "00000000-00000fff : Reserved",
    "80000000-afffffff : PCI Bus 0000:00",
    "  c0000000-c0ffffff : 0000:00:04.0",
    "    c0000000-c03e7fff : efifb",
    "  c1000000-c1000fff : 0000:00:04.0",
]
IOMEM_BOOTFB_TOP = [
    "80000000-dfffffff : PCI Bus 0000:00",
    "  e0000000-efffffff : PCI Bus 0000:01",
    "    e0000000-e07e8fff : BOOTFB",
    "      e0000000-e07e8fff : simple-framebuffer",
]
VGA = "0000:00:04.0"


def vga_resource(bar0: tuple[int, int]) -> str:
    """drivers/pci/pci-sysfs.c resource_show: 13 lines of start, end, flags (0x40200: MEM | SIZEALIGN)."""
    lines = [f"0x{bar0[0]:016x} 0x{bar0[1]:016x} 0x{0x40200:016x}"]
    lines += [f"0x{0:016x} 0x{0:016x} 0x{0:016x}"] * 12
    return "\n".join(lines)


def address(text: str) -> PciAddress:
    return PciAddress.parse(text)
