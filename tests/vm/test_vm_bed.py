"""The real-kernel test bed proves itself: one VM boot runs every scenario of tests/vm/guest_bed_selftest.py
(plain sysfs writes and VFIO ioctls, no isogroup code) and each scenario is reported as its own test."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.bed import VmResult, session_run
from vm.topology import Device, PciBridge, PcieToPciBridge, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_bed_selftest.py"

# A pcie-pci-bridge (behind a root port) with two conventional devices behind it.
_PCIE_PCI_BRIDGE = PcieToPciBridge(
    "ppb", (slot(Device("ppb-e1000", "e1000")), slot(Device("ppb-virtio", "virtio-net-pci")))
)
# A NIC and a disk controller (with a disk) as two functions of one device.
_NIC_AND_DISK = slot(Device("disk-e1000e", "e1000e"), Device("disk-ahci", "ich9-ahci", disk_mib=64))

TOPOLOGY = Topology(
    "bed-selftest",
    (
        # Two functions of one device behind an ACS root port.
        slot(RootPort("rp-mf", slot(Device("mf-e1000e", "e1000e"), Device("mf-virtio", "virtio-net-pci")))),
        slot(RootPort("rp-ppb", slot(_PCIE_PCI_BRIDGE))),
        # A conventional pci-bridge on the root bus.
        slot(PciBridge("pb", (slot(Device("pb-e1000", "e1000")),))),
        slot(RootPort("rp-noacs", slot(Device("noacs-e1000e", "e1000e")), acs=False)),
        slot(RootPort("rp-acs", slot(Device("acs-e1000e", "e1000e")))),
        slot(RootPort("rp-disk", _NIC_AND_DISK)),
    ),
)

SCENARIOS = [
    "guest_sees_project",
    "multifunction_group",
    "bridge_groups",
    "no_acs_port",
    "acs_port_alone",
    "disk_in_nic_group",
]


selftest_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=300)


def test_guest_script_completed(selftest_run: VmResult) -> None:
    assert selftest_run.ok, selftest_run.describe()
    assert set(selftest_run.results["scenarios"] if selftest_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(selftest_run: VmResult, scenario: str) -> None:
    problem = selftest_run.scenario_problem(scenario)
    assert problem is None, problem
