"""AMD's IOMMU (AMD-Vi, QEMU's `amd-iommu` on q35 with `amd_iommu=on`) on a real kernel: the bed's group-formation
scenarios (tests/vm/guest_bed_selftest.py), explain's predictions (tests/vm/guest_explain.py) and isogroup's
lifecycle (tests/vm/guest_isogroup_scenarios.py) on the same topologies as their Intel runs, one boot each.

What differs under AMD-Vi (QEMU 7.2, Debian's 6.1): the IOMMU is itself a PCI function (00:01.0, 1022:0020)
that the kernel puts in no IOMMU group (explain says "no-group" for it; guest_explain.py expects that); the
kernel does not know `amd_iommu=on` ("AMD-Vi: Unknown option - 'on'") and turns AMD-Vi on from the IVRS table
anyway, in strict mode ("Using strict mode due to virtualization"); and no AHCI disk appears (below). The groups
are the same as with Intel's model for every topology here.

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

# Not run on AMD: measured, not asserted (prepare_overhead), about killed processes, not the IOMMU (sigkill_*),
# or needing a disk behind the emulated AMD IOMMU, which QEMU 7.2 cannot give (test_ahci_dma_fails_under_amd_vi).
NOT_ON_AMD = {"prepare_overhead", "sigkill_then_recover", "sigkill_then_next_hook", "refused_mounted_disk_sibling"}
# QEMU 7.2's amd-iommu does not translate AHCI's DMA: the controller binds, the link comes up, and IDENTIFY
# times out; the disk never appears (e1000e, e1000 and virtio DMA work).
AHCI_UNDER_AMD_VI = "QEMU 7.2's amd-iommu fails AHCI DMA (no disk): see test_ahci_dma_fails_under_amd_vi"
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


def test_ahci_dma_fails_under_amd_vi(amd_selftest_run: VmResult, capsys: pytest.CaptureFixture[str]) -> None:
    """The one difference found: an AHCI controller behind QEMU's AMD IOMMU gets no disk. The group is the same
    as with Intel's model (NIC + AHCI, disk_in_nic_group's first check passes); the disk is not there. Pinned
    here so that a QEMU that fixes it fails this test and the disk scenarios come back to the AMD runs."""
    console, qemu = amd_selftest_run.console, amd_selftest_run.qemu_stderr
    lines = [line.strip() for line in console.splitlines() if "failed to IDENTIFY" in line or "qc timeout" in line]
    with capsys.disabled():
        print("\nAHCI under AMD-Vi (bed selftest boot):\n  " + "\n  ".join(lines[:4]))
    assert lines, amd_selftest_run.describe(console_lines=200)
    assert "AHCI: Failed to start DMA engine: bad command list buffer address" in qemu
    problem = amd_selftest_run.scenario_problem("disk_in_nic_group") or ""
    assert "FAILED: disk []" in problem and "ok: group" in problem, problem


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=AHCI_UNDER_AMD_VI))
        if name == "disk_in_nic_group"
        else name
        for name in test_vm_bed.SCENARIOS
    ],
)
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
