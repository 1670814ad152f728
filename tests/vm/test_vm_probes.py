"""The host-use probes on a real kernel: one VM boot runs every scenario of tests/vm/guest_probes.py (a mounted
partition and swap, a routed NIC and a bridged NIC in one group; an LVM PV, then a mounted LV; a disk held open,
then mounted in a hidden mount namespace; the boot VGA's framebuffer console and a DRM client; a NIC in another
network namespace) and compares `isogroup snapshot`'s findings with what it set up; each scenario is reported
as its own test. `test_probe_timing_figures` prints what probing costs in the guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.bed import GUEST_MODULES, VmResult, session_run
from vm.topology import Device, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_probes.py"

TOPOLOGY = Topology(
    "probes",
    (
        # The boot VGA device (the only VGA: the bed has none of its own), on the root bus.
        slot(Device("vga", "VGA")),
        # One group of three functions behind an ACS root port: a disk controller and two NICs.
        slot(
            RootPort(
                "rp-busy",
                slot(
                    Device("busy-ahci", "ich9-ahci", disk_mib=128),
                    Device("busy-nic", "e1000e"),
                    Device("busy-brnic", "e1000e"),
                ),
            )
        ),
        slot(RootPort("rp-lvm", slot(Device("lvm-ahci", "ich9-ahci", disk_mib=64)))),
        slot(RootPort("rp-held", slot(Device("held-ahci", "ich9-ahci", disk_mib=64)))),
        slot(RootPort("rp-ns", slot(Device("ns-nic", "e1000e")))),
        # Never touched (the NIC is brought up without an address): no finding, ever.
        slot(RootPort("rp-idle", slot(Device("idle-ahci", "ich9-ahci", disk_mib=64), Device("idle-nic", "e1000e")))),
    ),
)

SCENARIOS = ["baseline", "busy_group", "lvm", "held", "display", "netns", "timing"]
MODULES = (*GUEST_MODULES, "bridge", "dm_mod")


probes_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=600, modules=MODULES)


def test_guest_script_completed(probes_run: VmResult) -> None:
    assert probes_run.ok, probes_run.describe()
    assert set(probes_run.results["scenarios"] if probes_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "timing"])
def test_scenario(probes_run: VmResult, scenario: str) -> None:
    skipped = (probes_run.results or {}).get("meta", {}).get("skipped", {})
    if scenario in skipped:
        pytest.skip(skipped[scenario])
    problem = probes_run.scenario_problem(scenario)
    assert problem is None, problem


def test_probe_timing_figures(probes_run: VmResult, capsys: pytest.CaptureFixture[str]) -> None:
    problem = probes_run.scenario_problem("timing")
    assert problem is None, problem
    figures = (probes_run.results or {}).get("meta", {}).get("probe_timing")
    assert figures, "the guest reported no timing"
    with capsys.disabled():
        print(f"\nprobes in the VM (TCG): {figures}; boot {probes_run.boot_seconds}s, wall {probes_run.wall_seconds}s")
