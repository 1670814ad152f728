"""Full stack in the real-kernel bed: a real libvirtd (the host's Debian package, inside the VM) starts a
nested QEMU with a managed PCI hostdev whose IOMMU group has a sibling: first without isogroup (QEMU's "not
viable"), then with isogroup installed by `isogroup install-hook` (the start succeeds, a second domain sharing
the group is refused with isogroup's one line in virsh's error, destroy puts every driver back). One VM boot,
each scenario of tests/vm/guest_libvirt_scenarios.py reported as its own test. The same boot runs the README's
headline case through libvirt (the display function of tests/vm/test_vm_desktop.py asked for, its audio
function moved by the hook)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.bed import GUEST_MODULES, VmResult, session_run
from vm.test_vm_desktop import DESKTOP_AUDIO, DESKTOP_MODULES, DESKTOP_SLOT
from vm.topology import Device, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_libvirt_scenarios.py"

TOPOLOGY = Topology(
    "libvirt",
    (
        slot(RootPort("rp-lv", slot(Device("lv-e1000e", "e1000e"), Device("lv-virtio", "virtio-net-pci")))),
        DESKTOP_SLOT,
    ),
    extra_args=DESKTOP_AUDIO,
)

SCENARIOS = [
    "daemon_starts",
    "hostdev_not_viable",
    "hostdev_viable_after_sibling_bound",
    "hooks_called",
    # The same domain with isogroup installed as libvirt's qemu.d hook.
    "isogroup_hook_installed",
    "isogroup_start_succeeds",
    "isogroup_refuses_second_domain",
    "isogroup_refuses_absent_device",
    "isogroup_destroy_restores",
    "isogroup_hook_calls",
    # The display function of a display + audio slot (tests/vm/test_vm_desktop.py).
    "desktop_refused_while_console",
    "desktop_start_and_destroy",
]


libvirt_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=600, libvirt=True, modules=(*GUEST_MODULES, *DESKTOP_MODULES))


def test_guest_script_completed(libvirt_run: VmResult) -> None:
    assert libvirt_run.ok, libvirt_run.describe()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(libvirt_run: VmResult, scenario: str) -> None:
    problem = libvirt_run.scenario_problem(scenario)
    assert problem is None, problem
