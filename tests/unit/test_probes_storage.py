"""The storage probe on hand-built trees: mounts (direct, through dm/md, btrfs), swap (partition and file),
holders, LVM and ZFS labels, the negative cases and the hostile ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.probetree import AHCI, NIC, HostTree, address, lvm_label, workstation, zfs_label
from isogroup.core.model import UseCode
from isogroup.host.probes import ProbeSeams, probe_report
from isogroup.host.probes.storage.tables import parse_mountinfo, parse_swaps, unescape


@pytest.fixture
def tree(tmp_path: Path) -> HostTree:
    host = HostTree.build(tmp_path, workstation())
    host.disk(AHCI, "sda", "8:0", {"sda1": "8:1", "sda2": "8:2", "sda3": "8:3"})
    return host


def findings(tree: HostTree, where: str = AHCI) -> list[tuple[str, str, str]]:
    report = probe_report(tree.seams(), [address(where)])
    return [(f.code.value, f.subject, f.message) for f in report.findings]


def test_an_idle_disk_is_not_in_use(tree: HostTree) -> None:
    assert findings(tree) == []


def test_a_function_without_disks_has_no_storage_findings(tree: HostTree) -> None:
    tree.mount("8:2", "/", "ext4", "/dev/sda2")
    assert findings(tree, NIC) == []


def test_mounted_partition(tree: HostTree) -> None:
    tree.mount("8:2", "/", "ext4", "/dev/sda2")
    assert findings(tree) == [("storage-mounted", "/dev/sda2", "0000:00:17.0 (ahci) holds /dev/sda2 mounted at /")]


def test_bind_mounts_are_one_finding(tree: HostTree) -> None:
    for point in ("/srv", "/var/lib/a", "/var/lib/b", "/var/lib/c"):
        tree.mount("8:1", point, "xfs", "/dev/sda1")
    assert findings(tree) == [
        (
            "storage-mounted",
            "/dev/sda1",
            "0000:00:17.0 (ahci) holds /dev/sda1 mounted at /srv, /var/lib/a, /var/lib/b and 1 more",
        )
    ]


def test_swap_partition(tree: HostTree) -> None:
    tree.swap("/dev/sda3")
    assert findings(tree) == [("storage-swap", "/dev/sda3", "0000:00:17.0 (ahci) holds /dev/sda3, active swap")]


def test_swap_file_on_a_mounted_partition(tree: HostTree) -> None:
    tree.mount("8:2", "/", "ext4", "/dev/sda2")
    tree.mount("0:45", "/tmp", "tmpfs", "tmpfs")
    tree.swap("/swapfile", "file")
    tree.swap("/tmp/not-ours", "file")
    assert findings(tree) == [
        ("storage-mounted", "/dev/sda2", "0000:00:17.0 (ahci) holds /dev/sda2 mounted at /"),
        ("storage-swap", "/dev/sda2", "0000:00:17.0 (ahci) holds /dev/sda2 with the active swap file /swapfile"),
    ]


def test_lvm_logical_volume_mounted_through_device_mapper(tree: HostTree) -> None:
    tree.holder("dm-0", "254:0", ["sda3"], dm=("vg0-root", "LVM-abcdef"))
    tree.holder("dm-1", "254:1", ["sda3"], dm=("vg0-swap", "LVM-ghijkl"))
    tree.mount("254:0", "/home", "ext4", "/dev/mapper/vg0-root")
    tree.swap("/dev/dm-1")
    assert findings(tree) == [
        (
            "storage-held",
            "/dev/sda3",
            "0000:00:17.0 (ahci) holds /dev/sda3, used by LVM logical volume vg0-root (dm-0), "
            "LVM logical volume vg0-swap (dm-1)",
        ),
        (
            "storage-mounted",
            "/dev/mapper/vg0-root",
            "0000:00:17.0 (ahci) holds /dev/sda3, under /dev/mapper/vg0-root, mounted at /home",
        ),
        (
            "storage-swap",
            "/dev/mapper/vg0-swap",
            "0000:00:17.0 (ahci) holds /dev/sda3, under /dev/mapper/vg0-swap, active swap",
        ),
    ]


def test_md_mirror_over_two_disks_then_crypt_on_top(tree: HostTree) -> None:
    tree.disk(AHCI, "sdb", "8:16", {"sdb1": "8:17"}, port="ata2")
    tree.holder("md0", "9:0", ["sda1", "sdb1"], md="raid1")
    tree.holder("dm-2", "254:2", ["md0"], dm=("cryptroot", "CRYPT-LUKS2-xyz"))
    tree.mount("254:2", "/", "ext4", "/dev/mapper/cryptroot")
    got = findings(tree)
    assert (
        "storage-mounted",
        "/dev/mapper/cryptroot",
        "0000:00:17.0 (ahci) holds /dev/sda1, /dev/sdb1, under /dev/mapper/cryptroot, mounted at /",
    ) in got
    held = [f for f in got if f[0] == "storage-held"]
    assert held == [
        ("storage-held", "/dev/sda1", "0000:00:17.0 (ahci) holds /dev/sda1, used by md array /dev/md0 (raid1)"),
        ("storage-held", "/dev/sdb1", "0000:00:17.0 (ahci) holds /dev/sdb1, used by md array /dev/md0 (raid1)"),
    ]
    assert len(got) == 3


def test_holder_loop_does_not_hang(tree: HostTree) -> None:
    dm0 = tree.holder("dm-0", "254:0", ["sda2"], dm=("a", "x"))
    dm1 = tree.holder("dm-1", "254:1", [], dm=("b", "y"))
    (dm1 / "holders" / "dm-0").symlink_to(dm0)
    (dm0 / "holders" / "dm-1").symlink_to(dm1)
    tree.mount("254:1", "/loop", "ext4", "/dev/mapper/b")
    got = findings(tree)
    assert ("storage-mounted", "/dev/mapper/b") in [(c, s) for c, s, _ in got]


def test_btrfs_spanning_two_disks_mounted_by_an_anonymous_device(tree: HostTree) -> None:
    tree.disk(AHCI, "sdb", "8:16", port="ata2")
    fs = tree.sys / "fs/btrfs/0d7a-uuid/devices"
    fs.mkdir(parents=True)
    (fs / "sda2").symlink_to(tree.block("sda2"))
    (fs / "sdb").symlink_to(tree.block("sdb"))
    tree.mount("0:34", "/data", "btrfs", "/dev/sda2")
    assert [(c, s) for c, s, _ in findings(tree)] == [
        ("storage-mounted", "/dev/sda2"),
        ("storage-mounted", "/dev/sdb"),
    ]


def test_inactive_lvm_physical_volume_from_its_label(tree: HostTree) -> None:
    tree.dev_file("sda1", lvm_label())
    assert findings(tree) == [
        (
            "storage-held",
            "/dev/sda1",
            "0000:00:17.0 (ahci) holds /dev/sda1, an LVM physical volume (none of its logical volumes is active)",
        )
    ]


def test_zfs_member_of_an_imported_pool(tree: HostTree) -> None:
    tree.dev_file("sda1", zfs_label({"version": 5000, "name": "tank", "state": 0, "txg": 4, "pool_guid": 77}))
    assert findings(tree) == []  # pool not imported: nothing holds it
    (tree.proc / "spl/kstat/zfs/tank").mkdir(parents=True)
    (tree.proc / "spl/kstat/zfs/arcstats").write_text("")
    assert findings(tree) == [
        ("storage-zfs", "/dev/sda1", "0000:00:17.0 (ahci) holds /dev/sda1, a member of ZFS pool tank")
    ]


@pytest.mark.parametrize(
    "label",
    [
        zfs_label({"version": 5000, "name": "tank", "state": 1, "pool_guid": 77}),  # exported
        zfs_label({"version": 5000, "name": "tank", "state": 0}, uberblock=False),  # no uberblock: not ZFS
        zfs_label({"version": 5000, "name": "other", "state": 0}),  # another pool's name
        b"\x01\x01\x00\x00" + b"\xff" * 600_000,  # garbage where the nvlist goes
    ],
    ids=["exported", "no-uberblock", "other-pool", "garbage"],
)
def test_zfs_labels_that_do_not_hold_the_disk(tree: HostTree, label: bytes) -> None:
    (tree.proc / "spl/kstat/zfs/tank").mkdir(parents=True)
    tree.dev_file("sda1", label)
    assert findings(tree) == []


def test_zfs_spare_while_a_pool_is_imported(tree: HostTree) -> None:
    (tree.proc / "spl/kstat/zfs/tank").mkdir(parents=True)
    tree.dev_file("sda2", zfs_label({"version": 5000, "state": 3, "guid": 9}))
    assert [(c, s) for c, s, _ in findings(tree)] == [("storage-zfs", "/dev/sda2")]


def test_a_disk_with_partitions_is_not_read_for_labels(tree: HostTree) -> None:
    tree.dev_file("sda", lvm_label())  # a label where the partition table is: the partitions are what counts
    assert findings(tree) == []


# --- udev's record first ------------------------------------------------------------------------------------


def udev_seams(tree: HostTree, records: dict[str, str]) -> ProbeSeams:
    data = tree.root / "udev-data"
    data.mkdir(exist_ok=True)
    for majmin, text in records.items():
        (data / f"b{majmin}").write_text(text)
    return ProbeSeams.tree(tree.kernel, tree.proc, tree.dev, udev=data)


def test_udev_record_of_an_lvm_member_needs_no_disk_read(tree: HostTree) -> None:
    (tree.dev / "sda1").unlink()  # would be could-not-tell if it were read
    seams = udev_seams(
        tree, {"8:1": "S:disk/by-id/x\nE:ID_FS_TYPE=LVM2_member\nE:ID_FS_USAGE=raid\n", "8:2": "E:ID_FS_TYPE=ext4\n"}
    )
    report = probe_report(seams, [address(AHCI)])
    assert [(f.code.value, f.subject) for f in report.findings] == [("storage-held", "/dev/sda1")]


def test_udev_record_of_a_zfs_member(tree: HostTree) -> None:
    (tree.proc / "spl/kstat/zfs/tank").mkdir(parents=True)
    seams = udev_seams(
        tree, {"8:3": "E:ID_FS_TYPE=zfs_member\nE:ID_FS_LABEL=tank\n", "8:1": "E:ID_FS_TYPE=zfs_member\n"}
    )
    report = probe_report(seams, [address(AHCI)])
    assert [(f.subject, f.message) for f in report.findings] == [
        ("/dev/sda1", "0000:00:17.0 (ahci) holds /dev/sda1, a ZFS spare or cache while pools tank are imported"),
        ("/dev/sda3", "0000:00:17.0 (ahci) holds /dev/sda3, a member of ZFS pool tank"),
    ]


def test_udev_says_nothing_is_on_it_and_is_believed(tree: HostTree) -> None:
    tree.dev_file("sda1", lvm_label())
    seams = udev_seams(tree, {"8:1": "E:ID_PART_ENTRY_NUMBER=1\n"})
    assert probe_report(seams, [address(AHCI)]).findings == ()


# --- could not tell ------------------------------------------------------------------------------------------


def test_mountinfo_missing_is_could_not_tell_never_unused(tree: HostTree) -> None:
    (tree.proc / "self/mountinfo").unlink()
    report = probe_report(tree.seams(), [address(AHCI)])
    assert report.uses == ()
    (finding,) = report.unknown
    assert finding.code is UseCode.STORAGE_UNKNOWN  # the storage family: the policy for storage covers it
    assert finding.message.startswith("0000:00:17.0 (ahci): could not tell whether its disks hold mounted")
    assert "mountinfo" in finding.message


def test_a_disk_that_cannot_be_read_is_could_not_tell(tree: HostTree) -> None:
    (tree.dev / "sda1").unlink()
    report = probe_report(tree.seams(), [address(AHCI)])
    assert report.uses == ()
    assert [(f.subject, f.message) for f in report.unknown] == [
        (
            "/dev/sda1",
            "0000:00:17.0 (ahci): could not tell whether /dev/sda1 is an LVM physical volume or a ZFS pool member "
            f"(cannot read {tree.dev / 'sda1'}: no such file or directory)",
        )
    ]


def test_a_tree_without_dev_cannot_tell_about_labels(tree: HostTree) -> None:
    seams = tree.seams()
    report = probe_report(type(seams).tree(seams.sysfs, seams.proc, None), [address(AHCI)])
    assert sorted(f.subject for f in report.unknown) == ["/dev/sda1", "/dev/sda2", "/dev/sda3"]
    assert all("no /dev for this tree" in f.message for f in report.unknown)


def test_a_mounted_partition_needs_no_label(tree: HostTree) -> None:
    """What is already explained is not read again: a non-root check of a mounted disk says 'mounted'."""
    for name in ("sda1", "sda2", "sda3"):
        (tree.dev / name).unlink()
    tree.mount("8:1", "/boot", "vfat", "/dev/sda1")
    tree.mount("8:2", "/", "ext4", "/dev/sda2")
    tree.swap("/dev/sda3")
    report = probe_report(tree.seams(), [address(AHCI)])
    assert report.unknown == ()
    assert [f.code.value for f in report.uses] == ["storage-mounted", "storage-mounted", "storage-swap"]


# --- hostile names and files ------------------------------------------------------------------------------------


def test_mount_points_with_escapes_and_control_characters(tree: HostTree) -> None:
    tree.mount("8:2", "/mnt/my\\040disk\\012x", "ext4", "/dev/sda2")
    assert findings(tree)[0][2] == "0000:00:17.0 (ahci) holds /dev/sda2 mounted at /mnt/my disk\\x0ax"


def test_mountinfo_garbage_lines_are_skipped() -> None:
    text = "junk\n1 2 3\n36 35 8:2 / /srv rw shared:1 - ext4 /dev/sda2 rw\n37 35 8:3 / /x rw - \n"
    assert [(m.majmin, m.point) for m in parse_mountinfo(text)] == [("8:2", "/srv")]


def test_swaps_with_a_space_in_the_file_name() -> None:
    text = "Filename Type Size Used Priority\n/swap\\040file file 1024 0 -2\n"
    assert [(s.filename, s.kind) for s in parse_swaps(text)] == [("/swap file", "file")]
    assert unescape("\\134") == "\\"


def test_dm_name_with_odd_characters(tree: HostTree) -> None:
    tree.holder("dm-0", "254:0", ["sda2"], dm=("vg\x1b[31m-root", "LVM-x"))
    tree.mount("254:0", "/", "ext4", "/dev/mapper/x")
    assert any("/dev/mapper/vg\\x1b[31m-root" in m for _, _, m in findings(tree))


# --- NVMe with native multipath ----------------------------------------------------------------------------------


def test_nvme_namespace_below_its_subsystem_belongs_to_the_controller(tmp_path: Path) -> None:
    """With CONFIG_NVME_MULTIPATH (Debian's default) nvme0n1 lives below the virtual nvme-subsystem device; its
    controller nvme0, below the PCI function, is what ties it to 0000:05:00.0."""
    from fakes.simkernel import make_function, make_topology

    nvme, other = "0000:05:00.0", "0000:06:00.0"
    tree = HostTree.build(
        tmp_path,
        make_topology(
            [
                make_function(nvme, class_code=0x010802, driver="nvme", group=11),
                make_function(other, class_code=0x010802, driver="nvme", group=12),
            ]
        ),
    )
    controller = tree.device("nvme", tree.pci(nvme) / "nvme", "nvme0", majmin="240:0")
    tree.device("nvme", tree.pci(other) / "nvme", "nvme1", majmin="240:1")
    subsystem = tree.sys / "devices/virtual/nvme-subsystem/nvme-subsys0"
    subsystem.mkdir(parents=True)
    (subsystem / "nvme0").symlink_to(controller)
    namespace = tree.device("block", subsystem, "nvme0n1", majmin="259:0", kind="block")
    (namespace / "holders").mkdir()
    for part, majmin in (("nvme0n1p1", "259:1"), ("nvme0n1p2", "259:2")):
        path = tree.device("block", namespace, part, majmin=majmin, kind="block", attrs={"partition": "1"})
        (path / "holders").mkdir()
        tree.dev_file(part)
    tree.device("block", controller, "nvme0c0n1", majmin="259:3", kind="block", attrs={"hidden": "1"})
    tree.mount("259:2", "/", "ext4", "/dev/nvme0n1p2")
    tree.process(77, "smartd", {3: "/dev/nvme0", 4: "/dev/nvme0n1"})
    report = probe_report(tree.seams(), [address(nvme), address(other)])
    assert [(str(f.address), f.code.value, f.subject) for f in report.findings] == [
        (nvme, "open-nodes", "/dev/nvme0"),
        (nvme, "open-nodes", "/dev/nvme0n1"),
        (nvme, "storage-mounted", "/dev/nvme0n1p2"),
    ]
