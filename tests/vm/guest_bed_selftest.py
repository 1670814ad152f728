"""Guest script for tests/vm/test_vm_bed.py: proves, with plain sysfs writes and VFIO ioctls, that the bed's
kernel forms the IOMMU groups the project relies on. Device names are those of TOPOLOGY in
tests/vm/test_vm_bed.py. Each scenario restores what it changed, so they can run in any order.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from pathlib import Path

from vm import guest_lib as g


def _restore_and_check(s: g.Scenario, bdf: str, expected: str) -> None:
    got = g.restore_host_driver(bdf)
    s.equal(got, expected, f"{bdf} back on its host driver")
    s.equal(g.driver_override(bdf), None, f"{bdf} driver_override cleared")


def multifunction_group(job: g.Job, s: g.Scenario) -> None:
    """e1000e + virtio-net as functions 0 and 1 of one device behind an ACS root port: one group."""
    nic, vnet, port = job.bdf("mf-e1000e"), job.bdf("mf-virtio"), job.bdf("rp-mf")
    s.equal(g.vendor_device(nic), "8086:10d3", "function 0 is the 82574L e1000e")
    group = g.iommu_group(nic)
    s.equal(g.group_members(group), sorted([nic, vnet]), f"group {group} is exactly the two functions")
    s.check(g.iommu_group(port) != group, "the ACS root port is not in the functions' group")
    s.equal(g.driver(nic), "e1000e", "function 0 starts on e1000e")
    s.equal(g.driver(vnet), "virtio-pci", "function 1 starts on virtio-pci")
    s.check(g.wait_for(lambda: bool(g.net_interfaces(nic))), f"e1000e has a netdev {g.net_interfaces(nic)}")

    s.equal(g.bind_vfio(nic), "vfio-pci", "function 0 moved to vfio-pci")
    s.check((g.DEV_VFIO / str(group)).exists(), f"/dev/vfio/{group} appeared")
    s.check(not g.group_viable(group), "with function 1 on virtio-pci the group is NOT viable")
    s.equal(g.container_attach_errno(group), errno.EPERM, "attaching the group to a container fails")

    s.equal(g.bind_vfio(vnet), "vfio-pci", "function 1 moved to vfio-pci")
    s.check(g.group_viable(group), "with both functions on vfio-pci the group is viable")
    s.equal(g.container_attach_errno(group), 0, "attaching the group to a container succeeds")

    _restore_and_check(s, nic, "e1000e")
    _restore_and_check(s, vnet, "virtio-pci")
    s.check(g.wait_for(lambda: not (g.DEV_VFIO / str(group)).exists()), f"/dev/vfio/{group} went away")
    s.check(g.wait_for(lambda: bool(g.net_interfaces(nic))), "e1000e has a netdev again")
    s.check(g.wait_for(lambda: bool(g.net_interfaces(vnet))), "virtio-net has a netdev again")


def bridge_groups(job: g.Job, s: g.Scenario) -> None:
    """Everything behind a pcie-pci-bridge or a pci-bridge shares the bridge's group; the bridge has no
    driver and does not stop the group from being viable."""
    for bridge, endpoints in (("ppb", ("ppb-e1000", "ppb-virtio")), ("pb", ("pb-e1000",))):
        b = job.bdf(bridge)
        ends = [job.bdf(e) for e in endpoints]
        group = g.iommu_group(b)
        s.equal(g.group_members(group), sorted([b, *ends]), f"{bridge}: group {group} is bridge + endpoints")
        s.equal(g.driver(b), None, f"{bridge}: the bridge has no driver")
        for e in ends:
            s.equal(g.bind_vfio(e), "vfio-pci", f"{bridge}: {e} moved to vfio-pci")
        s.check(g.group_viable(group), f"{bridge}: with all endpoints on vfio-pci the group is viable")
        for e, name in zip(ends, endpoints, strict=True):
            _restore_and_check(s, e, "e1000" if job.models[name] == "e1000" else "virtio-pci")


def no_acs_port(job: g.Job, s: g.Scenario) -> None:
    """A root port with disable-acs=on shares its group with the endpoint; pcieport does not block VFIO."""
    port, nic = job.bdf("rp-noacs"), job.bdf("noacs-e1000e")
    group = g.iommu_group(nic)
    s.equal(g.group_members(group), sorted([port, nic]), f"group {group} is port + endpoint")
    s.equal(g.driver(port), "pcieport", "the port is on pcieport")
    s.equal(g.bind_vfio(nic), "vfio-pci", "endpoint moved to vfio-pci")
    s.check(g.group_viable(group), "the group is viable with the port on pcieport")
    _restore_and_check(s, nic, "e1000e")


def acs_port_alone(job: g.Job, s: g.Scenario) -> None:
    """An endpoint alone behind an ACS root port is alone in its group."""
    port, nic = job.bdf("rp-acs"), job.bdf("acs-e1000e")
    group = g.iommu_group(nic)
    s.equal(g.group_members(group), [nic], f"group {group} holds only the endpoint")
    s.check(g.iommu_group(port) != group, "the port is in another group")
    s.equal(g.bind_vfio(nic), "vfio-pci", "endpoint moved to vfio-pci")
    s.check(g.group_viable(group), "the group is viable")
    _restore_and_check(s, nic, "e1000e")


def disk_in_nic_group(job: g.Job, s: g.Scenario) -> None:
    """An AHCI controller as function 1 of a NIC's slot: its disk can be formatted and mounted, and it keeps
    the NIC's group from being viable (the case isogroup must refuse while the disk is in use)."""
    nic, ahci = job.bdf("disk-e1000e"), job.bdf("disk-ahci")
    group = g.iommu_group(nic)
    s.equal(g.group_members(group), sorted([nic, ahci]), f"group {group} is NIC + AHCI")
    s.equal(g.driver(ahci), "ahci", "the controller is on ahci")
    s.check(g.wait_for(lambda: bool(g.block_devices(ahci)), timeout=20), f"disk {g.block_devices(ahci)}")
    disk = Path("/dev") / g.block_devices(ahci)[0]
    mnt = Path("/mnt/vmbed-disk")
    mnt.mkdir(parents=True, exist_ok=True)
    g.run(["mkfs.ext4", "-q", "-F", str(disk)], timeout=60)
    g.run(["mount", str(disk), str(mnt)])
    (mnt / "hello").write_text("hello\n")
    s.check(str(mnt) in Path("/proc/mounts").read_text(), f"{disk} is mounted on {mnt}")
    s.equal(g.bind_vfio(nic), "vfio-pci", "NIC moved to vfio-pci")
    s.check(not g.group_viable(group), "with the disk's controller on ahci the group is not viable")
    _restore_and_check(s, nic, "e1000e")
    g.run(["umount", str(mnt)])


def guest_sees_project(job: g.Job, s: g.Scenario) -> None:
    """The guest runs this checkout's interpreter and editable install at the host's paths."""
    s.equal(Path(sys.prefix), job.checkout / ".venv", "the guest runs the checkout's venv")
    spec = importlib.util.find_spec("isogroup")
    s.check(spec is not None, "isogroup is importable")
    assert spec is not None
    locations = [Path(p) for p in (spec.submodule_search_locations or [])]
    s.equal(locations, [job.checkout / "plugin" / "isogroup"], "isogroup comes from the checkout")
    s.check(any(g.IOMMU_GROUPS.iterdir()), "the kernel formed IOMMU groups (intel_iommu=on took effect)")
    s.note(f"kernel {os.uname().release}")


SCENARIOS = {
    "guest_sees_project": guest_sees_project,
    "multifunction_group": multifunction_group,
    "bridge_groups": bridge_groups,
    "no_acs_port": no_acs_port,
    "acs_port_alone": acs_port_alone,
    "disk_in_nic_group": disk_in_nic_group,
}


def main() -> int:
    job = g.load_job()
    g.Recorder(job.out).run(SCENARIOS, job, job.args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
