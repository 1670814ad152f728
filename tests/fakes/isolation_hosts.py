"""Writes the issue-11 host snapshots in xml-samples/hosts by running isogroup's own capture and probes over trees
shaped like those hosts (fakes.isolationtree), so that every finding in them is one the probes make:

    .venv/bin/python tests/fakes/isolation_hosts.py

Then `pytest tests/golden/test_golden.py --regen-golden` and review the diff.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2] / "plugin")]

from fakes import isolationtree as it  # noqa: E402
from fakes.probetree import HostTree  # noqa: E402
from isogroup.core.model import HostTopology, IommuGroup  # noqa: E402
from isogroup.formats import snapshot  # noqa: E402
from isogroup.host.hostscan import read_topology  # noqa: E402
from testpaths import SAMPLES  # noqa: E402

HOSTS = SAMPLES / "hosts"
KEYBOARD = {"ev": "120013", "key": "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe"}


def capture(tree: HostTree) -> HostTopology:
    return read_topology(tree.kernel, probes=tree.seams())


def with_driver(host: HostTopology, address: str, driver: str | None) -> HostTopology:
    funcs = tuple(replace(f, driver=driver) if str(f.address) == address else f for f in host.functions)
    return replace(host, functions=funcs)


def matisse(root: Path, keyboard: bool) -> HostTopology:
    tree = HostTree.build(root, it.matisse_onchip())
    if keyboard:
        usb = tree.usb_device("0000:0e:00.3", "1-4")
        tree.input(usb, "input3", "Logitech USB Keyboard", KEYBOARD)
    return capture(tree)


def nvidia_desktop(root: Path) -> HostTopology:
    desk = with_driver(snapshot.load(HOSTS / "desktop-gpu.json"), "0000:01:00.0", "nvidia")
    tree = it.nvidia_host(root, topology=desk)
    tree.process(1051, "nvidia-persiste", {3: "/dev/nvidiactl", 4: "/dev/nvidia0"})
    tree.process(1730, "Xorg", {9: "/dev/nvidia-modeset", 10: "/dev/nvidiactl", 11: "/dev/nvidia0"})
    return capture(tree)


def q35_efifb(root: Path) -> HostTopology:
    vga = "0000:00:01.0"
    tree = HostTree.build(root, with_driver(snapshot.load(HOSTS / "qemu-q35.json"), vga, None))
    (tree.pci(vga) / "resource").write_text(it.vga_resource((0xC0000000, 0xC0FFFFFF)) + "\n")
    tree.iomem = [line.replace(it.VGA, vga) for line in it.IOMEM_EFIFB]
    tree.write_proc()
    return capture(tree)


def laptop_d3cold(root: Path) -> HostTopology:
    tree = HostTree.build(root, snapshot.load(HOSTS / "laptop.json"))
    (tree.pci("0000:01:00.0") / "power_state").write_text("D3cold\n")
    info = tree.proc / "driver/nvidia/gpus/0000:01:00.0/information"
    info.parent.mkdir(parents=True)
    info.write_text("Model: \t\t NVIDIA GeForce RTX 2060\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 0\n")
    (tree.proc / "devices").write_text("Character devices:\n195 nvidia\n195 nvidia-modeset\n509 nvidia-uvm\n")
    return capture(tree)


def b450_override(root: Path) -> HostTopology:
    b450 = snapshot.load(HOSTS / "amd-b450.json")
    nic = next(f for f in b450.functions if f.vendor == 0x10EC)
    top = max(g.number for g in b450.groups) + 1
    groups = [replace(g, members=tuple(m for m in g.members if m != nic.address)) for g in b450.groups]
    funcs = [replace(f, iommu_group=top) if f.address == nic.address else f for f in b450.functions]
    tree = HostTree.build(root, HostTopology.build(True, funcs, [*groups, IommuGroup(top, (nic.address,))]))
    tree.cmdline = (
        "BOOT_IMAGE=/vmlinuz-6.1.0-xanmod1 root=UUID=4f1c2d3e ro quiet pcie_acs_override=downstream,multifunction"
    )
    tree.write_proc()
    return capture(tree)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        hosts = {
            "matisse-onchip": matisse(t / "m", False),
            "matisse-onchip-probed": matisse(t / "mp", True),
            "nvidia-desktop": nvidia_desktop(t / "nv"),
            "qemu-q35-efifb": q35_efifb(t / "q"),
            "laptop-d3cold": laptop_d3cold(t / "l"),
            "amd-b450-acs-override": b450_override(t / "b"),
        }
    for name, host in hosts.items():
        (HOSTS / f"{name}.json").write_text(snapshot.dumps(host))


if __name__ == "__main__":
    main()
