"""attach-device and detach-device end to end: a real libvirtd in the VM test bed, the isogroup hook installed,
nested QEMU guests. One VM boot; each scenario of tests/vm/guest_hotplug_scenarios.py is its own test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vm.bed import VmResult, run_in_vm, unavailable_reason
from vm.topology import Device, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_hotplug_scenarios.py"

TOPOLOGY = Topology(
    "hotplug",
    (slot(RootPort("rp-hp", slot(Device("hp-e1000e", "e1000e"), Device("hp-virtio", "virtio-net-pci")))),),
)

SCENARIOS = [
    "daemon_and_guest",
    "attach_live",
    "live_check_and_agreement",
    "detach_not_acknowledged",
    "release_after_hotplug",
    "attach_refused_by_libvirt_rolls_back",
    "attach_config_then_start",
]


@pytest.fixture(scope="session")
def hotplug_run() -> VmResult:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("libvirtd", path="/usr/sbin:/usr/bin") is None or shutil.which("virsh") is None:
        pytest.skip("libvirtd/virsh not installed: run scripts/setup.sh --test (libvirt-daemon, libvirt-clients)")
    result = run_in_vm(TOPOLOGY, GUEST_SCRIPT, timeout=900)
    if not result.booted:
        pytest.skip(f"QEMU could not boot the bed's kernel here:\n{result.describe()}")
    return result


def test_guest_script_completed(hotplug_run: VmResult) -> None:
    assert hotplug_run.ok, hotplug_run.describe()
    assert set(hotplug_run.results["scenarios"] if hotplug_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(hotplug_run: VmResult, scenario: str) -> None:
    problem = hotplug_run.scenario_problem(scenario)
    assert problem is None, problem
