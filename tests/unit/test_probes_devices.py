"""The display, USB input, SR-IOV, mdev and open-node probes on hand-built trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.probetree import AHCI, DGPU, IGPU, NIC, PF, VF0, VF1, XHCI, HostTree, address, workstation
from isogroup.core.model import UseCode
from isogroup.host.probes import probe_report
from isogroup.host.probes.devices import bitmap

# Capability bitmaps as real devices show them (capabilities/{ev,key,rel,abs}).
KEYBOARD = {"ev": "120013", "key": "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe", "msc": "10"}
CONSUMER_CONTROL = {"ev": "1f", "key": "3f000303ff 0 0 483ffff17aff32d bfd4444600000000 1 130ff38b17c000 0 0"}
MOUSE = {"ev": "17", "key": "1f0000 0 0 0 0", "rel": "903"}
TOUCHPAD = {"ev": "b", "key": "6420 30000 0 0 0 0", "abs": "260800000000003"}
HEADPHONE_JACK = {"ev": "21", "sw": "4"}


@pytest.fixture
def tree(tmp_path: Path) -> HostTree:
    return HostTree.build(tmp_path, workstation())


def findings(tree: HostTree, *where: str) -> list[tuple[str, str, str]]:
    report = probe_report(tree.seams(), [address(w) for w in where])
    return [(f.code.value, f.subject, f.message) for f in report.findings]


# --- display -------------------------------------------------------------------------------------------------


def test_boot_vga_with_efifb_and_the_framebuffer_console(tree: HostTree) -> None:
    tree.vtcon(0, "(S) dummy device", bound=False)
    tree.vtcon(1, "(M) frame buffer device", bound=True)
    tree.framebuffer(tree.platform("efi-framebuffer.0"), "fb0", "EFI VGA", "29:0")
    assert findings(tree, IGPU, DGPU) == [
        (
            "display-console",
            "fb0",
            "0000:00:02.0 (i915) is the boot VGA device and efifb still drives it (fb0: EFI VGA), with the "
            "framebuffer console on it",
        )
    ]


def test_boot_vga_with_its_own_drm_framebuffer_console(tree: HostTree) -> None:
    tree.vtcon(0, "(S) dummy device", bound=True)
    tree.vtcon(1, "(M) frame buffer device", bound=True)
    tree.framebuffer(tree.pci(IGPU), "fb0", "i915drmfb", "29:0")
    tree.framebuffer(tree.pci(DGPU), "fb1", "nouveaudrmfb", "29:1")  # not the boot VGA: no console finding
    assert findings(tree, IGPU, DGPU) == [
        (
            "display-console",
            "fb0",
            "0000:00:02.0 (i915) is the boot VGA device with the framebuffer console on fb0 (i915drmfb)",
        )
    ]


def test_framebuffer_console_unbound_and_no_firmware_fb_is_free(tree: HostTree) -> None:
    tree.vtcon(1, "(M) frame buffer device", bound=False)
    tree.framebuffer(tree.pci(IGPU), "fb0", "i915drmfb", "29:0")
    assert findings(tree, IGPU) == []


def test_vga_text_console_and_simpledrm_without_fbdev(tree: HostTree) -> None:
    tree.vtcon(0, "(S) VGA+", bound=True)
    tree.device("drm", tree.platform("simple-framebuffer.0") / "drm", "card0", majmin="226:0", devname="dri/card0")
    assert findings(tree, IGPU) == [
        (
            "display-console",
            "card0",
            "0000:00:02.0 (i915) is the boot VGA device and simpledrm still drives it (card0)",
        ),
        ("display-console", "vgacon", "0000:00:02.0 (i915) is the boot VGA device and shows the VGA text console"),
    ]


def test_open_drm_nodes_are_display_clients(tree: HostTree) -> None:
    drm = tree.pci(DGPU) / "drm"
    tree.device("drm", drm, "card1", majmin="226:1", devname="dri/card1")
    tree.device("drm", drm, "renderD128", majmin="226:128", devname="dri/renderD128")
    tree.process(1234, "Xorg", {0: "/dev/null", 3: "/dev/dri/card1", 4: "socket:[99]", 5: "/dev/dri/card1"})
    tree.process(1500, "gnome-shell", {9: "/dev/dri/card1", 10: "/dev/dri/renderD128"})
    tree.process(1600, "bash", {0: "/dev/pts/0"})
    assert findings(tree, DGPU) == [
        (
            "display-clients",
            "/dev/dri/card1",
            "0000:01:00.0 (nouveau) has /dev/dri/card1 held open by Xorg (pid 1234), gnome-shell (pid 1500)",
        ),
        (
            "display-clients",
            "/dev/dri/renderD128",
            "0000:01:00.0 (nouveau) has /dev/dri/renderD128 held open by gnome-shell (pid 1500)",
        ),
    ]


def test_simpledrm_node_counts_for_the_boot_vga(tree: HostTree) -> None:
    tree.device("drm", tree.platform("simple-framebuffer.0") / "drm", "card0", majmin="226:0", devname="dri/card0")
    tree.process(900, "plymouthd", {4: "/dev/dri/card0"})
    got = findings(tree, IGPU)
    assert ("display-clients", "/dev/dri/card0") in [(c, s) for c, s, _ in got]


# --- USB input -----------------------------------------------------------------------------------------------


def test_keyboard_and_mouse_on_a_usb_controller(tree: HostTree) -> None:
    kbd = tree.usb_device(XHCI, "1-2") / "0003:046D:C31C.0001" / "input"
    tree.input(kbd, "input5", "Logitech USB Keyboard", KEYBOARD)
    tree.input(kbd, "input6", "Logitech USB Keyboard Consumer Control", CONSUMER_CONTROL)
    mouse = tree.usb_device(XHCI, "1-3") / "0003:046D:C077.0002" / "input"
    tree.input(mouse, "input7", "Logitech USB Optical Mouse", MOUSE)
    assert findings(tree, XHCI) == [
        ("usb-input", "input5", "0000:00:14.0 (xhci_hcd) has a keyboard attached: Logitech USB Keyboard (input5)"),
        ("usb-input", "input7", "0000:00:14.0 (xhci_hcd) has a mouse attached: Logitech USB Optical Mouse (input7)"),
    ]


def test_touchpad_and_a_headphone_jack(tree: HostTree) -> None:
    tree.input(tree.usb_device(XHCI) / "0018:06CB:7E7E.0003" / "input", "input9", "SYNA Touchpad", TOUCHPAD)
    tree.input(tree.pci(AHCI) / "sound/card0", "input12", "HDA Headphone", HEADPHONE_JACK)
    assert [(c, s) for c, s, _ in findings(tree, XHCI, AHCI)] == [("usb-input", "input9")]
    assert "has a touchpad attached" in findings(tree, XHCI)[0][2]


def test_input_device_with_a_hostile_name_and_broken_capabilities(tree: HostTree) -> None:
    parent = tree.usb_device(XHCI) / "0003:1234:5678.0004" / "input"
    tree.input(parent, "input3", "Evil\x1b[2J\nKeyboard", KEYBOARD)
    tree.input(parent, "input4", "Broken", {"ev": "zz", "key": "not hex"})
    tree.input(parent, "input8", "No capabilities", {})
    (message,) = [m for _, _, m in findings(tree, XHCI)]
    assert message == "0000:00:14.0 (xhci_hcd) has a keyboard attached: Evil\\x1b[2J\\x0aKeyboard (input3)"


def test_capability_bitmaps_are_words_most_significant_first() -> None:
    assert bitmap("1 0") == 1 << 64
    assert bitmap("") == 0
    assert bitmap("10 x") == 0


# --- SR-IOV and mdev ---------------------------------------------------------------------------------------------


def test_pf_whose_vf_is_bound(tree: HostTree) -> None:
    assert findings(tree, PF, VF0, VF1) == [("sriov-vfs", VF0, f"{PF} (ixgbe) has its VF {VF0} in use on ixgbevf")]


def test_pf_whose_vfs_are_unbound(tmp_path: Path) -> None:
    from fakes.simkernel import make_function, make_topology

    topology = make_topology(
        [
            make_function(PF, driver="ixgbe", group=8, sriov_totalvfs=8, sriov_numvfs=1),
            make_function(VF0, driver=None, group=9, physfn=PF),
        ]
    )
    assert findings(HostTree.build(tmp_path, topology), PF) == []


def test_mdev_parent_with_active_mediated_devices(tree: HostTree) -> None:
    gpu = tree.pci(IGPU)
    kind = gpu / "mdev_supported_types" / "i915-GVTg_V5_4"
    (kind / "devices").mkdir(parents=True)
    (kind / "name").write_text("GVTg_V5_4\n")
    uuid = "4b20d080-1b54-4048-85b3-a6a62d165c01"
    (gpu / uuid).mkdir()
    (gpu / uuid / "mdev_type").symlink_to(Path("..") / "mdev_supported_types" / "i915-GVTg_V5_4")
    (kind / "devices" / uuid).symlink_to(Path("../../..") / uuid)
    bus = tree.sys / "bus/mdev/devices"
    bus.mkdir(parents=True)
    (bus / uuid).symlink_to(gpu / uuid)
    assert findings(tree, IGPU, DGPU) == [
        (
            "mdev-active",
            uuid,
            f"0000:00:02.0 (i915) is the parent of the active mediated device {uuid} (i915-GVTg_V5_4, GVTg_V5_4)",
        )
    ]


# --- open device nodes ---------------------------------------------------------------------------------------


def test_processes_holding_a_disk_a_usb_device_and_a_stacked_dm(tree: HostTree) -> None:
    tree.disk(AHCI, "sda", "8:0", {"sda3": "8:3"})
    tree.disk(AHCI, "sdb", "8:16", port="ata2")
    tree.holder("dm-0", "254:0", ["sda3"], dm=("scratch", "CRYPT-x"))
    usb = tree.usb_device(XHCI, "1-4")
    tree.device("usb", usb.parent, "1-4", majmin="189:3", devname="bus/usb/001/004")
    tree.process(4242, "qemu-system-x86", {5: "/dev/sdb", 6: "anon_inode:[eventfd]"})
    tree.process(4300, "dd", {0: "/dev/dm-0"})
    tree.process(900, "pcscd", {7: "/dev/bus/usb/001/004"})
    got = [(c, s, m) for c, s, m in findings(tree, AHCI, XHCI) if c == "open-nodes"]
    assert got == [
        (
            "open-nodes",
            "/dev/bus/usb/001/004",
            "0000:00:14.0 (xhci_hcd) has /dev/bus/usb/001/004 held open by pcscd (pid 900)",
        ),
        ("open-nodes", "/dev/dm-0", "0000:00:17.0 (ahci) has /dev/dm-0 held open by dd (pid 4300)"),
        ("open-nodes", "/dev/sdb", "0000:00:17.0 (ahci) has /dev/sdb held open by qemu-system-x86 (pid 4242)"),
    ]


def test_vfio_device_nodes_and_vanished_processes_do_not_count(tree: HostTree) -> None:
    tree.device("vfio-dev", tree.pci(NIC) / "vfio-dev", "vfio0", majmin="511:0", devname="vfio/devices/vfio0")
    tree.process(5000, "qemu-system-x86", {20: "/dev/vfio/devices/vfio0"})
    (tree.proc / "5001").mkdir()  # a process that exited between the listing and the read: no fd/ any more
    assert findings(tree, NIC) == []


def test_many_holders_are_summarised(tree: HostTree) -> None:
    tree.device("drm", tree.pci(DGPU) / "drm", "renderD129", majmin="226:129", devname="dri/renderD129")
    for pid in range(100, 106):
        tree.process(pid, f"worker{pid}", {3: "/dev/dri/renderD129"})
    (message,) = [m for _, _, m in findings(tree, DGPU)]
    assert message.endswith("worker102 (pid 102) and 3 more")


def test_proc_that_cannot_be_listed_is_could_not_tell(tree: HostTree) -> None:
    tree.device("drm", tree.pci(DGPU) / "drm", "card1", majmin="226:1", devname="dri/card1")
    seams = tree.seams()
    report = probe_report(type(seams).tree(seams.sysfs, tree.root / "no-proc", seams.dev), [address(DGPU)])
    assert report.uses == ()
    codes = {f.code for f in report.unknown}
    assert UseCode.DISPLAY_UNKNOWN in codes or UseCode.OPEN_UNKNOWN in codes
    assert any("could not tell whether processes hold /dev/dri/card1 open" in f.message for f in report.unknown)
