"""attach-device and detach-device end to end: a real libvirtd in the VM test bed, the isogroup hook installed,
nested QEMU guests, one of them running the bed's kernel, which acknowledges a hot-unplug (a live detach that
completes), one sitting in SeaBIOS, which never does. One VM boot; each scenario of
tests/vm/guest_hotplug_scenarios.py is its own test."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.bed import VmResult, session_run
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
    "detach_live_completes",
    "detach_not_acknowledged",
    "release_after_hotplug",
    "attach_refused_by_libvirt_rolls_back",
    "attach_config_then_start",
]


hotplug_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=1500, libvirt=True)


def test_guest_script_completed(hotplug_run: VmResult) -> None:
    assert hotplug_run.ok, hotplug_run.describe()
    assert set(hotplug_run.results["scenarios"] if hotplug_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(hotplug_run: VmResult, scenario: str) -> None:
    problem = hotplug_run.scenario_problem(scenario)
    assert problem is None, problem


def test_detach_figures(hotplug_run: VmResult, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how long the nested kernel took to boot and the live detach's times (the event, the restore)."""
    meta = (hotplug_run.results or {}).get("meta", {})
    with capsys.disabled():
        print(
            f"\nhotplug bed: nested boot {meta.get('nested_boot_seconds')} s, detach {meta.get('detach_seconds')}, "
            f"VM boot {hotplug_run.boot_seconds} s, wall {hotplug_run.wall_seconds} s"
        )
    assert meta.get("detach_seconds"), hotplug_run.scenario_problem("detach_live_completes")
