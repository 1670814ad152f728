"""`isogroup explain` against a real kernel: one VM boot (tests/vm/guest_explain.py) with ACS and non-ACS root
ports, multifunction slots behind each, a pcie-pci-bridge with a conventional pci-bridge behind it, a pci-bridge
on the root bus and multifunction devices on the root bus. In the guest, explain runs on every PCI function (the
CLI on the live /sys, the library on a root snapshot, and on an unprivileged snapshot where ACS is unknown) and
its predicted group must be the kernel's. Each scenario is reported as its own test."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.bed import VmResult, session_run
from vm.topology import Device, PciBridge, PcieToPciBridge, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_explain.py"

_BRIDGES = PcieToPciBridge(
    "ppb", (slot(Device("ppb-e1000", "e1000")), slot(PciBridge("ppb-pb", (slot(Device("pb-e1000", "e1000")),))))
)

TOPOLOGY = Topology(
    "explain",
    (
        slot(RootPort("rp-acs", slot(Device("acs-nic", "e1000e")))),
        slot(RootPort("rp-noacs", slot(Device("noacs-nic", "e1000e")), acs=False)),
        slot(RootPort("rp-mf", slot(Device("mf-nic", "e1000e"), Device("mf-vnet", "virtio-net-pci")))),
        slot(
            RootPort("rp-mf-noacs", slot(Device("mfn-nic", "e1000e"), Device("mfn-vnet", "virtio-net-pci")), acs=False)
        ),
        slot(RootPort("rp-ppb", slot(_BRIDGES))),
        slot(PciBridge("pb", (slot(Device("pb2-e1000", "e1000")),))),
        # On the root bus: an Intel function (the kernel's Intel RCiEP ACS quirk) beside a virtio one, and a pair
        # of virtio functions (no quirk, no ACS).
        slot(Device("rc-e1000e", "e1000e"), Device("rc-vnet", "virtio-net-pci")),
        slot(Device("rc-vnet1", "virtio-net-pci"), Device("rc-vnet2", "virtio-net-pci")),
    ),
)

SCENARIOS = [
    "snapshot_reads_capabilities",
    "explain_every_function_live",
    "explain_every_function_snapshot",
    "named_groups",
    "text_and_errors",
    "unprivileged_capture",
]


explain_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=420)


def test_guest_script_completed(explain_run: VmResult) -> None:
    assert explain_run.ok, explain_run.describe()
    assert set(explain_run.results["scenarios"] if explain_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(explain_run: VmResult, scenario: str) -> None:
    problem = explain_run.scenario_problem(scenario)
    assert problem is None, problem
