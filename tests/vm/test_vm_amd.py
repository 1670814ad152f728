"""AMD's IOMMU (AMD-Vi, QEMU's `amd-iommu` on q35 with `amd_iommu=on`) on a real kernel: the bed's group-formation
scenarios (tests/vm/guest_bed_selftest.py), explain's predictions (tests/vm/guest_explain.py) and isogroup's
lifecycle (tests/vm/guest_isogroup_scenarios.py) on the same topologies as their Intel runs, one boot each.

The benchmark and the SIGKILL scenarios do not depend on the IOMMU's model and stay with the Intel run. Where
AMD-Vi behaves differently from Intel's model the difference is asserted here, with the kernel's own lines
(`test_kernel_log`, which prints them into the test output).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from vm import test_vm_bed, test_vm_explain, test_vm_isogroup
from vm.bed import VmResult, session_run
from vm.topology import Iommu, Topology

pytestmark = pytest.mark.vm

HERE = Path(__file__).parent

# Not run on AMD: measured, not asserted (prepare_overhead), or about killed processes, not the IOMMU.
NOT_ON_AMD = {"prepare_overhead", "sigkill_then_recover", "sigkill_then_next_hook"}
LIFECYCLE = [name for name in test_vm_isogroup.SCENARIOS if name not in NOT_ON_AMD]


def _amd(topology: Topology) -> Topology:
    return replace(topology, name=f"{topology.name}-amd", iommu=Iommu.AMD)


amd_selftest_run = session_run(_amd(test_vm_bed.TOPOLOGY), HERE / "guest_bed_selftest.py", timeout=300)
amd_explain_run = session_run(_amd(test_vm_explain.TOPOLOGY), HERE / "guest_explain.py", timeout=420)
amd_isogroup_run = session_run(
    _amd(test_vm_isogroup.TOPOLOGY), HERE / "guest_isogroup_scenarios.py", timeout=900, args=LIFECYCLE
)

# How the kernel says which IOMMU it runs: AMD-Vi's lines, and Intel's DMAR ones that must not be there.
_AMD_VI = re.compile(r"AMD-Vi|pci 0000:00:0?1\.0: Adding to iommu group|iommu", re.IGNORECASE)


def _kernel_iommu_lines(run: VmResult) -> list[str]:
    return [line.strip() for line in run.console.splitlines() if _AMD_VI.search(line) and "vmbed" not in line]


def test_kernel_log(amd_selftest_run: VmResult, capsys: pytest.CaptureFixture[str]) -> None:
    """The guest kernel runs AMD-Vi, not Intel's DMAR, with interrupt remapping; its lines go into the output."""
    lines = _kernel_iommu_lines(amd_selftest_run)
    with capsys.disabled():
        print("\nAMD-Vi kernel log (bed selftest boot):\n  " + "\n  ".join(lines))
    console = amd_selftest_run.console
    assert "AMD-Vi: Interrupt remapping enabled" in console, amd_selftest_run.describe(console_lines=200)
    assert "DMAR" not in console, "Intel's IOMMU driver ran"


@pytest.mark.parametrize("scenario", test_vm_bed.SCENARIOS)
def test_group_formation(amd_selftest_run: VmResult, scenario: str) -> None:
    problem = amd_selftest_run.scenario_problem(scenario)
    assert problem is None, problem


@pytest.mark.parametrize("scenario", test_vm_explain.SCENARIOS)
def test_explain(amd_explain_run: VmResult, scenario: str) -> None:
    problem = amd_explain_run.scenario_problem(scenario)
    assert problem is None, problem


def test_lifecycle_completed(amd_isogroup_run: VmResult) -> None:
    assert amd_isogroup_run.ok, amd_isogroup_run.describe()
    assert set(amd_isogroup_run.results["scenarios"] if amd_isogroup_run.results else ()) == set(LIFECYCLE)


@pytest.mark.parametrize("scenario", LIFECYCLE)
def test_lifecycle(amd_isogroup_run: VmResult, scenario: str) -> None:
    problem = amd_isogroup_run.scenario_problem(scenario)
    assert problem is None, problem
