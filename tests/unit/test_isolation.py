"""Isolation beyond the group (issue 11): reset reach, groups that lie, holders that hang, the boot framebuffer,
D3cold. Each is a finding with a stable code, weighed by the policy as a family with a default, reproduced from
a snapshot."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fakes.isolationtree import (
    AHCI,
    GPU,
    GPU2,
    IOMEM_BOOTFB_TOP,
    IOMEM_EFIFB,
    NIC0,
    NIC1,
    PORT,
    VGA,
    nvidia_host,
    shared_bus_nic,
    vga_resource,
)
from fakes.probetree import HostTree, address
from fakes.simkernel import make_function, make_topology
from isogroup.core.domain import DomainSpec, PciRequest, Source
from isogroup.core.model import Finding, Header, HostTopology, IommuGroup, UseCode
from isogroup.core.plan import Action, ProblemCode
from isogroup.core.planner import plan
from isogroup.core.policy import FAMILY_DEFAULTS, Policy, ProbeAction
from isogroup.core.reset import Scope, reach_to_json, reach_to_text, reset_reach
from isogroup.formats import snapshot
from isogroup.formats.policyfile import parse_toml
from isogroup.host.hostscan import read_topology
from isogroup.host.probes import probe
from isogroup.host.probes.isolation import framebuffers, weakening_options
from testpaths import SAMPLES


def dom(*addresses: str) -> DomainSpec:
    return DomainSpec("guest", None, tuple(PciRequest(address(a), True, Source.HOSTDEV) for a in addresses))


# --- reset reach ----------------------------------------------------------------------------------------------


def test_a_function_level_reset_is_isolated_and_a_stale_bus_entry_is_not_trusted() -> None:
    host = shared_bus_nic()
    assert reset_reach(host, address(NIC0)).scope is Scope.FUNCTION
    reach = reset_reach(host, address(NIC1))
    # "bus" is listed, but NIC1 is not alone below the port: only the port's secondary bus reset remains.
    assert (reach.scope, reach.bridge, reach.reached) == (Scope.BUS, address(PORT), (address(NIC0),))
    assert reach_to_json(reach) == {
        "methods": ["bus"],
        "scope": "bus",
        "isolated": False,
        "bridge": PORT,
        "reached": [NIC0],
    }
    assert f"{NIC0} (group 9)" in reach_to_text(host, reach)


def test_root_bus_without_a_method_has_no_reset_and_alone_behind_a_port_is_isolated() -> None:
    host = shared_bus_nic()
    assert reset_reach(host, address(AHCI)).scope is Scope.NONE
    alone = make_topology(
        [
            make_function(PORT, class_code=0x060400, driver="pcieport", group=1, header=Header.BRIDGE),
            replace(make_function(NIC0, driver="e1000", group=2, parent=PORT), reset_methods=("bus",)),
        ]
    )
    assert reset_reach(alone, address(NIC0)).scope is Scope.ALONE
    unknown = replace(alone, functions=tuple(replace(f, reset_methods=None) for f in alone.functions))
    assert reset_reach(unknown, address(NIC0)).scope is Scope.UNKNOWN


def test_a_bus_reset_reaching_another_group_warns_and_names_the_group_to_add() -> None:
    p = plan(dom(NIC1), shared_bus_nic())
    assert p.ok
    (note,) = [n for n in p.notes if n.subject == "warning [reset-shared]"]
    assert f"also resets {NIC0} (igb); give the guest IOMMU group(s) 9 too" in note.message
    # Taking both groups: QEMU owns every group the reset reaches, nothing to say.
    both = plan(dom(NIC0, NIC1), shared_bus_nic())
    assert both.ok and not [n for n in both.notes if "reset" in n.subject]


def test_a_bus_reset_reaching_a_device_the_host_uses_refuses() -> None:
    host = shared_bus_nic()
    used = Finding(
        address(NIC0), UseCode.NETWORK_ROUTE, "enp2s0f0", f"{NIC0} (igb) has enp2s0f0 carrying the default route"
    )
    host = replace(host, findings=(used,), probed=True)
    p = plan(dom(NIC1), host)
    assert not p.ok
    (problem,) = p.problems
    assert (problem.code, problem.use, problem.address) == (
        ProblemCode.HOST_IN_USE,
        UseCode.COLLATERAL_RESET,
        address(NIC1),
    )
    assert "enp2s0f0 carrying the default route" in problem.message
    assert "policy family 'collateral'" in problem.message
    blocked = [m for g in p.groups for m in g.members if m.address == address(NIC1)]
    assert blocked[0].action is Action.BLOCKED
    # A neighbour whose use could not be told fails closed the same way.
    unknown = Finding(address(NIC0), UseCode.NETWORK_UNKNOWN, "net", f"{NIC0}: could not tell whether ...")
    p = plan(dom(NIC1), replace(host, findings=(unknown,)))
    assert [pr.use for pr in p.problems] == [UseCode.COLLATERAL_UNKNOWN]
    # The policy can let it through, as a family.
    p = plan(dom(NIC1), host, policy=Policy(probes={"collateral": ProbeAction.WARN}))
    assert p.ok and any(n.subject == "warning [collateral-reset]" for n in p.notes)


def test_no_reset_at_all_warns_and_a_policy_can_refuse_it() -> None:
    host = shared_bus_nic()
    assert plan(dom(AHCI), host).ok
    assert any(n.subject == "warning [reset-none]" for n in plan(dom(AHCI), host).notes)
    refused = plan(dom(AHCI), host, policy=parse_toml('[probes]\nreset = "refuse"\n', "policy.toml"))
    assert [pr.use for pr in refused.problems] == [UseCode.RESET_NONE]


def test_hostscan_reads_reset_method_settles_absence_and_reads_bus_neighbours(tmp_path: Path) -> None:
    tree = HostTree.build(tmp_path, shared_bus_nic())
    full = read_topology(tree.kernel)
    assert full.by_address[address(NIC1)].reset_methods == ("bus",)
    assert full.by_address[address(AHCI)].reset_methods == ()  # hidden file on a kernel that has them: none
    # The hook reads only the guest's groups, plus what a bus reset of them reaches.
    scoped = read_topology(tree.kernel, [address(NIC1)], probes=tree.seams())
    assert address(NIC0) in scoped.by_address
    assert not plan(dom(NIC1), scoped).problems
    # Without any reset_method file (a kernel before 5.15), nothing is known.
    old = HostTree.build(
        tmp_path / "old",
        replace(shared_bus_nic(), functions=tuple(replace(f, reset_methods=None) for f in shared_bus_nic().functions)),
    )
    assert {f.reset_methods for f in read_topology(old.kernel).functions} == {None}


def test_snapshots_carry_reset_methods_and_old_ones_still_load() -> None:
    host = shared_bus_nic()
    again = snapshot.from_json(json.loads(snapshot.dumps(host)))
    assert [f.reset_methods for f in again.functions] == [f.reset_methods for f in host.functions]
    doc = snapshot.to_json(host)
    for f in doc["functions"]:
        del f["reset_methods"]
    assert {f.reset_methods for f in snapshot.from_json(doc).functions} == {None}
    doc["functions"][0]["reset_methods"] = ["flr", "flr"]
    with pytest.raises(Exception, match="lists a method twice"):
        snapshot.from_json(doc)
    doc["functions"][0]["reset_methods"] = ["FLR; rm -rf"]
    with pytest.raises(Exception, match="reset method names"):
        snapshot.from_json(doc)


# --- groups that lie -----------------------------------------------------------------------------------------


def test_weakening_options_on_the_command_line() -> None:
    assert weakening_options("ro quiet pcie_acs_override=downstream,multifunction") == [
        "pcie_acs_override=downstream,multifunction"
    ]
    assert weakening_options("pci=noats,disable_acs_redir=0000:00:01.0 iommu=pt") == [
        "pci=disable_acs_redir=0000:00:01.0"
    ]
    assert weakening_options("pci=noats iommu=pt intel_iommu=on") == []  # noats adds TB, merges nothing


def test_the_override_on_the_command_line_warns_by_default(tmp_path: Path) -> None:
    tree = HostTree.build(tmp_path, shared_bus_nic())
    tree.cmdline = "BOOT_IMAGE=/vmlinuz root=/dev/sda2 pcie_acs_override=downstream,multifunction"
    tree.write_proc()
    found = probe(tree.seams(), [address(NIC1)])
    assert [f.code for f in found] == [UseCode.ACS_OVERRIDE]
    assert "pcie_acs_override=downstream,multifunction" in found[0].message
    (tree.proc / "cmdline").unlink()
    (unknown,) = probe(tree.seams(), [address(NIC1)])
    assert unknown.code is UseCode.ACS_UNKNOWN and unknown.message.split(": ", 1)[1].startswith("could not tell")


def _override_split(host: HostTopology, members: list[str]) -> HostTopology:
    """`host` as pcie_acs_override=downstream,multifunction shows it: each of `members` in a group of its own."""
    groups = list(host.groups)
    funcs = {f.address: f for f in host.functions}
    next_number = max(g.number for g in groups) + 1
    for text in members:
        a = address(text)
        old = funcs[a].iommu_group
        groups = [replace(g, members=tuple(m for m in g.members if m != a)) if g.number == old else g for g in groups]
        groups.append(IommuGroup(next_number, (a,)))
        funcs[a] = replace(funcs[a], iommu_group=next_number)
        next_number += 1
    return HostTopology.build(True, funcs.values(), [g for g in groups if g.members])


def test_groups_finer_than_the_hardware_name_the_devices_reachable_by_p2p() -> None:
    real = snapshot.load(SAMPLES / "hosts/amd-b450.json")
    # The Promontory lump: the override gives the NIC 1a:00.0 a group of its own; the hardware has no ACS there.
    nic = next(f for f in real.functions if f.vendor == 0x10EC)
    split = _override_split(real, [str(nic.address)])
    p = plan(DomainSpec("guest", None, (PciRequest(nic.address, True, Source.HOSTDEV),)), split)
    (note,) = [n for n in p.notes if n.subject == "warning [acs-split]"]
    lump = real.group_of(nic.address)
    assert lump is not None
    assert any(str(m) in note.message for m in lump.members if m != nic.address)
    assert p.ok  # a warning by default
    refused = plan(
        DomainSpec("guest", None, (PciRequest(nic.address, True, Source.HOSTDEV),)),
        split,
        policy=Policy(probes={"acs": ProbeAction.REFUSE}),
    )
    assert UseCode.ACS_SPLIT in [pr.use for pr in refused.problems]
    # The unsplit host: the kernel's group is the predicted one, nothing to say.
    assert not [
        n
        for n in plan(DomainSpec("g", None, (PciRequest(nic.address, True, Source.HOSTDEV),)), real).notes
        if n.subject == "warning [acs-split]"
    ]


# --- holders that hang ------------------------------------------------------------------------------------------


def test_processes_holding_the_nvidia_nodes_refuse_naming_pid_and_command(tmp_path: Path) -> None:
    tree = nvidia_host(tmp_path)
    tree.process(1234, "nvidia-persiste", {3: "/dev/nvidiactl", 4: "/dev/nvidia0"})
    tree.process(2222, "Xorg", {7: "/dev/nvidia-modeset"})
    tree.process(3333, "bash", {0: "/dev/pts/0"})
    found = [f for f in probe(tree.seams(), [address(GPU)]) if f.code is UseCode.HOLDER_NVIDIA]
    assert [f.subject for f in found] == ["/dev/nvidia-modeset", "/dev/nvidia0", "/dev/nvidiactl"]
    by = {f.subject: f.message for f in found}
    assert "nvidia-persiste (pid 1234)" in by["/dev/nvidia0"] and f"nvidia-smi -i {GPU} -pm 0" in by["/dev/nvidia0"]
    assert "Xorg (pid 2222)" in by["/dev/nvidia-modeset"]
    host = read_topology(tree.kernel, probes=tree.seams())
    p = plan(dom(GPU), host)
    assert not p.ok and {pr.use for pr in p.problems} == {UseCode.HOLDER_NVIDIA}


def test_the_shared_nodes_count_only_for_the_last_gpu(tmp_path: Path) -> None:
    tree = nvidia_host(tmp_path, second_gpu=True)
    tree.process(2222, "Xorg", {7: "/dev/nvidiactl"})
    tree.process(4444, "cuda-app", {5: "/dev/nvidia1", 6: "/dev/nvidia-uvm"})
    assert not [f for f in probe(tree.seams(), [address(GPU)]) if f.code.family == "holder"]
    both = [f.subject for f in probe(tree.seams(), [address(GPU), address(GPU2)]) if f.code.family == "holder"]
    assert both == ["/dev/nvidia-uvm", "/dev/nvidiactl", "/dev/nvidia1"]


def test_an_nvidia_gpu_without_its_proc_entry_cannot_be_told(tmp_path: Path) -> None:
    tree = nvidia_host(tmp_path)
    (tree.proc / f"driver/nvidia/gpus/{GPU}/information").unlink()
    (found,) = [f for f in probe(tree.seams(), [address(GPU)]) if f.code.family == "holder"]
    assert found.code is UseCode.HOLDER_UNKNOWN


# --- the boot framebuffer ---------------------------------------------------------------------------------------


def _vga_tree(root: Path, iomem: list[str], bar0: tuple[int, int] = (0xC0000000, 0xC0FFFFFF)) -> HostTree:
    host = make_topology([make_function(VGA, class_code=0x030000, driver="bochs-drm", group=3, boot_vga=True)])
    tree = HostTree.build(root, host)
    (tree.pci(VGA) / "resource").write_text(vga_resource(bar0) + "\n")
    tree.iomem = iomem
    tree.write_proc()
    return tree


def test_efifb_nested_under_the_bar_refuses_and_says_how_to_release_it(tmp_path: Path) -> None:
    tree = _vga_tree(tmp_path, IOMEM_EFIFB)
    (found,) = [f for f in probe(tree.seams(), [address(VGA)]) if f.code is UseCode.DISPLAY_FRAMEBUFFER]
    assert "efifb (c0000000-c03e7fff)" in found.message
    assert "echo efi-framebuffer.0 > /sys/bus/platform/drivers/efi-framebuffer/unbind" in found.message
    assert "video=efifb:off" in found.message
    host = read_topology(tree.kernel, probes=tree.seams())
    assert UseCode.DISPLAY_FRAMEBUFFER in [pr.use for pr in plan(dom(VGA), host).problems]


def test_bootfb_outside_the_bar_lines_is_matched_by_address(tmp_path: Path) -> None:
    assert [(fb.name, fb.owner) for fb in framebuffers("\n".join(IOMEM_BOOTFB_TOP))] == [("BOOTFB", None)]
    tree = _vga_tree(tmp_path, IOMEM_BOOTFB_TOP, bar0=(0xE0000000, 0xEFFFFFFF))
    (found,) = [f for f in probe(tree.seams(), [address(VGA)]) if f.code is UseCode.DISPLAY_FRAMEBUFFER]
    assert "BAR 0 (e0000000-efffffff)" in found.message and "initcall_blacklist=sysfb_init" in found.message
    elsewhere = _vga_tree(tmp_path / "b", IOMEM_BOOTFB_TOP, bar0=(0xD0000000, 0xD0FFFFFF))
    assert not [f for f in probe(elsewhere.seams(), [address(VGA)]) if f.code is UseCode.DISPLAY_FRAMEBUFFER]


def _zeroed(iomem: list[str]) -> list[str]:
    """As a reader without CAP_SYS_ADMIN sees it (kernel/resource.c r_show): names and nesting, addresses 0."""
    return [" " * (len(ln) - len(ln.lstrip())) + "00000000-00000000 : " + ln.split(" : ", 1)[1] for ln in iomem]


def test_zeroed_addresses_without_root_cannot_be_told_unless_nested(tmp_path: Path) -> None:
    nested = _vga_tree(tmp_path / "a", _zeroed(IOMEM_EFIFB))
    (found,) = [f for f in probe(nested.seams(), [address(VGA)]) if f.code.family == "display"]
    assert found.code is UseCode.DISPLAY_FRAMEBUFFER and "addresses hidden" in found.message
    top = [
        " " * (len(ln) - len(ln.lstrip())) + "00000000-00000000 : " + ln.split(" : ", 1)[1] for ln in IOMEM_BOOTFB_TOP
    ]
    tree = _vga_tree(tmp_path / "b", top)
    (found,) = [f for f in probe(tree.seams(), [address(VGA)]) if f.code.family == "display"]
    assert found.code is UseCode.DISPLAY_UNKNOWN


# --- power ------------------------------------------------------------------------------------------------------


def test_d3cold_warns_by_default(tmp_path: Path) -> None:
    tree = HostTree.build(tmp_path, shared_bus_nic())
    (tree.pci(NIC0) / "power_state").write_text("D3cold\n")
    (tree.pci(NIC1) / "power_state").write_text("D0\n")
    found = [f for f in probe(tree.seams(), [address(NIC0), address(NIC1)]) if f.code.family == "power"]
    assert [(str(f.address), f.code) for f in found] == [(NIC0, UseCode.POWER_D3COLD)]
    host = read_topology(tree.kernel, probes=tree.seams())
    p = plan(dom(NIC0), host)
    assert p.ok and any(n.subject == "warning [power-d3cold]" for n in p.notes)
    # The snapshot reproduces it.
    again = snapshot.from_json(json.loads(snapshot.dumps(host)))
    assert [n.message for n in plan(dom(NIC0), again).notes] == [n.message for n in p.notes]


# --- policy families ----------------------------------------------------------------------------------------------


def test_family_defaults_and_a_domain_asking_for_the_default_is_not_relaxing() -> None:
    assert dict(FAMILY_DEFAULTS) == {"reset": ProbeAction.WARN, "acs": ProbeAction.WARN, "power": ProbeAction.WARN}
    policy = Policy()
    for code in (UseCode.COLLATERAL_RESET, UseCode.HOLDER_NVIDIA, UseCode.DISPLAY_FRAMEBUFFER):
        assert policy.probe_action(code) is ProbeAction.REFUSE
    for code in (UseCode.RESET_SHARED, UseCode.ACS_OVERRIDE, UseCode.ACS_SPLIT, UseCode.POWER_D3COLD):
        assert policy.probe_action(code) is ProbeAction.WARN
    assert parse_toml('[probes]\nacs = "refuse"\n', "p").probe_action(UseCode.ACS_OVERRIDE) is ProbeAction.REFUSE
