"""isogroup on a real kernel: one VM boot runs every scenario of tests/vm/guest_isogroup_scenarios.py (the
installed hook executed as libvirt executes it, libvirt's own managed='yes' handling in between, real drivers
and the VFIO viability ioctl checked after each step) and each scenario is reported as its own test.

`test_prepare_overhead_figures` prints the prepare benchmark's figures (isogroup against a plain shell loop
doing the same sysfs writes) and the bed's times into the test output, so that they show in CI logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vm.bed import VmResult, session_run
from vm.topology import Device, PciBridge, PcieToPciBridge, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_isogroup_scenarios.py"

# Seven virtio-net siblings of one e1000e, for the SIGKILL scenarios and the benchmark.
BIG_SIBLINGS = tuple(f"big-v{i}" for i in range(1, 8))

TOPOLOGY = Topology(
    "isogroup",
    (
        # An endpoint alone in its group behind an ACS root port.
        slot(RootPort("rp-alone", slot(Device("alone-nic", "e1000e")))),
        # Two functions of one device behind an ACS root port: one group.
        slot(RootPort("rp-mf", slot(Device("mf-nic", "e1000e"), Device("mf-virtio", "virtio-net-pci")))),
        # A pcie-pci-bridge behind a root port, two conventional devices behind it: one group with the bridge.
        slot(
            RootPort(
                "rp-ppb",
                slot(
                    PcieToPciBridge(
                        "ppb", (slot(Device("ppb-e1000", "e1000")), slot(Device("ppb-virtio", "virtio-net-pci")))
                    )
                ),
            )
        ),
        # A conventional pci-bridge on the root bus.
        slot(PciBridge("pb", (slot(Device("pb-e1000", "e1000")), slot(Device("pb-virtio", "virtio-net-pci"))))),
        # A root port without ACS: port and functions in one group.
        slot(
            RootPort(
                "rp-noacs",
                slot(Device("noacs-nic", "e1000e"), Device("noacs-virtio", "virtio-net-pci")),
                acs=False,
            )
        ),
        # Eight functions in one group: seven siblings to move.
        slot(
            RootPort(
                "rp-big",
                slot(Device("big-nic", "e1000e"), *(Device(name, "virtio-net-pci") for name in BIG_SIBLINGS)),
            )
        ),
        # Host-use hazards: a NIC that will carry the default route, and a disk controller whose disk is mounted.
        slot(RootPort("rp-route", slot(Device("route-nic", "e1000e"), Device("route-virtio", "virtio-net-pci")))),
        slot(RootPort("rp-disk", slot(Device("disk-nic", "e1000e"), Device("disk-ahci", "ich9-ahci", disk_mib=64)))),
    ),
)

SCENARIOS = [
    "install_hook",
    "no_hostdev_fast_path",
    "alone_in_group",
    "multifunction_sibling",
    "sibling_driver_override_kept",
    "behind_pcie_pci_bridge",
    "behind_pci_bridge",
    "no_acs_root_port",
    "refused_group_in_use",
    "refused_absent_device",
    "refused_bridge_requested",
    "two_guests_contend",
    "sigkill_then_recover",
    "sigkill_then_next_hook",
    "prepare_overhead",
    "refused_routed_nic_sibling",
    "refused_mounted_disk_sibling",
]


isogroup_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=900)


def test_guest_script_completed(isogroup_run: VmResult) -> None:
    assert isogroup_run.ok, isogroup_run.describe()
    assert set(isogroup_run.results["scenarios"] if isogroup_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(isogroup_run: VmResult, scenario: str) -> None:
    problem = isogroup_run.scenario_problem(scenario)
    assert problem is None, problem


def test_prepare_overhead_figures(
    isogroup_run: VmResult, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    """Prints the figures whether or not the scenarios passed; fails only when there are none."""
    meta = isogroup_run.results["meta"] if isogroup_run.results else {}
    figures = meta.get("prepare_overhead")
    times = {
        "boot_seconds": isogroup_run.boot_seconds,
        "vm_wall_seconds": isogroup_run.wall_seconds,
        "scenarios_seconds": meta.get("scenarios_seconds"),
        "per_scenario_seconds": {
            name: record.get("seconds") for name, record in (isogroup_run.results or {}).get("scenarios", {}).items()
        },
    }
    record_property("prepare_overhead", json.dumps(figures))
    record_property("bed_times", json.dumps(times))
    with capsys.disabled():
        print(f"\nisogroup real-kernel bed: {json.dumps(times, indent=1)}")
        print(f"prepare overhead (real kernel, TCG): {json.dumps(figures, indent=1)}")
    assert figures is not None, isogroup_run.scenario_problem("prepare_overhead")
