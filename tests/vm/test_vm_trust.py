"""Trust at the edges on a real kernel with a real libvirtd (issue 10, the VM-bed scenarios of its sections 1-3
and 7): a guest named with a leading space through virsh start and destroy; two guests whose names differ only
by whitespace; a FIFO in the ledger's claims/; another guest's claim overwritten with garbage during a release;
a domain whose <metadata> tries to relax the network probe while the sibling NIC carries an address, and
whether the start the host's grant let through leaves a warning in syslog. One VM boot, each scenario of
tests/vm/guest_trust_scenarios.py reported as its own test.

The smallest topology that shows all five: group A, an e1000e (the hostdev) with a virtio-net sibling that
isogroup must move (a 2-function group behind an ACS root port); group B, an e1000e alone, for the second
running guest whose claim is corrupted while the first releases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vm.bed import VmResult, session_run
from vm.topology import Device, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_trust_scenarios.py"

TOPOLOGY = Topology(
    "trust",
    (
        slot(RootPort("rp-ta", slot(Device("ta-nic", "e1000e"), Device("ta-virtio", "virtio-net-pci")))),
        slot(RootPort("rp-tb", slot(Device("tb-nic", "e1000e")))),
    ),
)

SCENARIOS = [
    "leading_space_name",
    "whitespace_twins",
    "fifo_in_claims",
    "corrupt_claim_during_release",
    "domain_relaxes_network_probe",
    # Fails today: the hook logs nothing of the finding the host's grant let through (see the guest script).
    "relaxed_start_logs_warning",
]


trust_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=1200, libvirt=True)


def test_guest_script_completed(trust_run: VmResult) -> None:
    assert trust_run.ok, trust_run.describe()
    assert set(trust_run.results["scenarios"] if trust_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(trust_run: VmResult, scenario: str) -> None:
    problem = trust_run.scenario_problem(scenario)
    assert problem is None, problem


def test_trust_figures(trust_run: VmResult, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the bed's times and what isogroup sent to syslog during the relaxed start, pass or fail."""
    results = trust_run.results or {}
    meta = results.get("meta", {})
    figures = {
        "boot_seconds": trust_run.boot_seconds,
        "vm_wall_seconds": trust_run.wall_seconds,
        "scenarios_seconds": meta.get("scenarios_seconds"),
        "per_scenario_seconds": {name: r.get("seconds") for name, r in results.get("scenarios", {}).items()},
        "fifo_refused_start_seconds": meta.get("fifo_refused_start_seconds"),
        "relax_syslog": meta.get("relax_syslog"),
    }
    with capsys.disabled():
        print(f"\ntrust real-kernel bed: {json.dumps(figures, indent=1)}")
    assert figures["scenarios_seconds"] is not None, trust_run.describe()
