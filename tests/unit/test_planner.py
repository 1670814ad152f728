"""The pure planner on small hand-built topologies: every action, every problem, and that it touches nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from isogroup.core.address import PciAddress
from isogroup.core.claims import GroupHolders
from isogroup.core.domain import DomainSpec, MdevRequest, NetworkRequest, PciRequest, Source
from isogroup.core.model import Header, HostTopology, IommuGroup, PciFunction
from isogroup.core.plan import Action, DomainPlan, MemberPlan, ProblemCode
from isogroup.core.planner import plan

# ------------------------------------------------------------------------------------------------------ helpers

VGA, AUDIO, USB, NIC, BRIDGE, CARDBUS = 0x030000, 0x040300, 0x0C0330, 0x020000, 0x060400, 0x060700


def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


def fn(
    address: str,
    driver: str | None,
    group: int | None,
    *,
    cls: int = NIC,
    header: Header = Header.ENDPOINT,
    numvfs: int | None = None,
    ids: tuple[int, int] = (0x8086, 0x1521),
) -> PciFunction:
    return PciFunction(
        address=a(address),
        vendor=ids[0],
        device=ids[1],
        class_code=cls,
        header=header,
        driver=driver,
        iommu_group=group,
        sriov_totalvfs=8 if numvfs is not None else None,
        sriov_numvfs=numvfs,
    )


def bridge(address: str, driver: str | None, group: int | None) -> PciFunction:
    return fn(address, driver, group, cls=BRIDGE, header=Header.BRIDGE)


def host(*funcs: PciFunction, iommu: bool = True) -> HostTopology:
    groups: dict[int, list[PciAddress]] = {}
    for f in funcs:
        if f.iommu_group is not None:
            groups.setdefault(f.iommu_group, []).append(f.address)
    return HostTopology.build(iommu, funcs, [IommuGroup(n, tuple(m)) for n, m in groups.items()])


def req(address: str, managed: bool = True, source: Source = Source.HOSTDEV) -> PciRequest:
    return PciRequest(a(address), managed, source)


def dom(*requests: PciRequest, name: str = "guest") -> DomainSpec:
    return DomainSpec(name, None, requests)


def member(p: DomainPlan, address: str) -> MemberPlan:
    found = [m for g in p.groups for m in g.members if m.address == a(address)]
    assert len(found) == 1, f"{address} appears {len(found)} times in the plan"
    return found[0]


def codes(p: DomainPlan) -> list[ProblemCode]:
    return [pr.code for pr in p.problems]


# A desktop GPU group: root port, GPU, its HDMI audio.
GPU_GROUP = (
    bridge("0000:00:01.0", "pcieport", 1),
    fn("0000:01:00.0", "nvidia", 1, cls=VGA, ids=(0x10DE, 0x1401)),
    fn("0000:01:00.1", "snd_hda_intel", 1, cls=AUDIO, ids=(0x10DE, 0x0FBA)),
)

# ------------------------------------------------------------------------------------------------------ actions


def test_gpu_companion_moves_port_kept_gpu_left_to_libvirt() -> None:
    p = plan(dom(req("01:00.0")), host(*GPU_GROUP))
    assert p.ok and p.verdict == "ok" and p.problems == ()
    assert p.group_numbers == (1,)
    assert [(str(m.address), m.action, m.requested) for m in p.groups[0].members] == [
        ("0000:00:01.0", Action.KEEP, False),
        ("0000:01:00.0", Action.LIBVIRT, True),
        ("0000:01:00.1", Action.MOVE, False),
    ]
    assert [str(m.address) for m in p.groups[0].to_move] == ["0000:01:00.1"]
    gpu = member(p, "01:00.0")
    assert (gpu.driver, gpu.ids) == ("nvidia", "10de:1401")
    assert "nvidia" in gpu.why


@pytest.mark.parametrize("driver", [None, "pcieport", "pci-stub", "vfio-pci", "mlx5_vfio_pci", "nvgrace-gpu-vfio-pci"])
def test_member_already_safe_is_kept(driver: str | None) -> None:
    p = plan(dom(req("01:00.0")), host(fn("01:00.0", "igb", 3), fn("01:00.1", driver, 3)))
    assert member(p, "01:00.1").action is Action.KEEP
    assert p.ok


@pytest.mark.parametrize("driver", ["snd_hda_intel", "xhci_hcd", "nvidia-gpu", "ahci", "r8169", "vfio_iommu_type1"])
def test_member_on_host_driver_moves(driver: str) -> None:
    p = plan(dom(req("01:00.0")), host(fn("01:00.0", "igb", 3), fn("01:00.1", driver, 3)))
    companion = member(p, "01:00.1")
    assert (companion.action, companion.requested) == (Action.MOVE, False)
    assert "vfio-pci" in companion.why
    assert p.ok


def test_requested_unbound_managed_is_bound_by_libvirt() -> None:
    p = plan(dom(req("01:00.0")), host(fn("01:00.0", None, 3)))
    assert member(p, "01:00.0").action is Action.LIBVIRT
    assert "binds" in member(p, "01:00.0").why


@pytest.mark.parametrize("managed", [True, False])
def test_requested_already_on_vfio_is_kept(managed: bool) -> None:
    p = plan(dom(req("3b:02.2", managed)), host(fn("3b:02.2", "vfio-pci", 11)))
    assert member(p, "3b:02.2").action is Action.KEEP
    assert p.ok


@pytest.mark.parametrize("source", [s for s in Source if s is not Source.RESERVATION])
def test_every_request_source_is_planned_alike(source: Source) -> None:
    """Every way a domain names a device; a reservation is not a domain libvirt runs (see below)."""
    p = plan(dom(req("3b:02.0", True, source)), host(fn("3b:02.0", "iavf", 9)))
    assert member(p, "3b:02.0").action is Action.LIBVIRT


def test_a_reservation_moves_its_devices_itself_and_lets_guests_use_its_group() -> None:
    """No libvirt comes for a reservation: isogroup binds its devices; a guest may then plan on the group."""
    topo = host(fn("3b:02.0", "iavf", 9))
    p = plan(dom(req("3b:02.0", True, Source.RESERVATION), name="reservation/9"), topo)
    assert member(p, "3b:02.0").action is Action.MOVE and p.ok
    assert plan(dom(req("3b:02.0", True), name="guest"), topo, holders={9: "reservation/9"}).ok
    refused = plan(dom(req("3b:02.0", True), name="guest"), topo, holders={9: "other-guest"})
    assert [p.code for p in refused.problems] == [ProblemCode.GROUP_CLAIMED]


# ----------------------------------------------------------------------------------------------------- problems


@pytest.mark.parametrize(("driver", "where"), [("nvidia", "on nvidia"), (None, "unbound"), ("pci-stub", "on pci-stub")])
def test_managed_no_not_detached(driver: str | None, where: str) -> None:
    topo = host(*GPU_GROUP[:1], fn("0000:01:00.0", driver, 1, cls=VGA), *GPU_GROUP[2:])
    p = plan(dom(req("01:00.0", managed=False)), topo)
    assert codes(p) == [ProblemCode.NOT_DETACHED]
    (problem,) = p.problems
    assert problem.address == a("01:00.0")
    assert where in problem.message and "virsh nodedev-detach pci_0000_01_00_0" in problem.message
    assert member(p, "01:00.0").action is Action.BLOCKED
    assert not p.ok and p.verdict == "refused"


def test_device_absent_does_not_stop_the_other_requests() -> None:
    p = plan(dom(req("02:00.0"), req("01:00.0")), host(*GPU_GROUP))
    assert codes(p) == [ProblemCode.DEVICE_ABSENT]
    assert p.problems[0].address == a("02:00.0")
    assert p.group_numbers == (1,)


def test_no_iommu_is_one_problem_and_no_groups() -> None:
    topo = host(
        *(PciFunction(f.address, f.vendor, f.device, f.class_code, f.header, f.driver) for f in GPU_GROUP), iommu=False
    )
    p = plan(dom(req("01:00.0"), req("01:00.1")), topo)
    assert codes(p) == [ProblemCode.NO_IOMMU]
    assert p.problems[0].address is None
    assert p.groups == ()


def test_no_iommu_still_reports_absent_devices() -> None:
    p = plan(dom(req("01:00.0"), req("05:00.0")), host(fn("01:00.0", "igb", None), iommu=False))
    assert codes(p) == [ProblemCode.NO_IOMMU, ProblemCode.DEVICE_ABSENT]


def test_no_iommu_is_fine_without_pci_requests() -> None:
    spec = DomainSpec("guest", None, (), (MdevRequest("4b20d080-1b54-4048-85b3-a6a62d165c01", None),))
    p = plan(spec, host(fn("01:00.0", "igb", None), iommu=False))
    assert p.ok and p.groups == ()


def test_function_in_no_group() -> None:
    p = plan(dom(req("00:02.0")), host(fn("00:02.0", "i915", None, cls=VGA), *GPU_GROUP))
    assert codes(p) == [ProblemCode.NO_GROUP]
    assert p.groups == ()


def test_function_naming_a_group_the_topology_lacks() -> None:
    topo = HostTopology.build(True, [fn("00:02.0", "i915", 7)], [])
    p = plan(dom(req("00:02.0")), topo)
    assert codes(p) == [ProblemCode.NO_GROUP]


def test_bridge_requested() -> None:
    topo = host(bridge("04:00.0", None, 8), fn("05:00.0", "snd_ca0106", 8), fn("05:01.0", "firewire_ohci", 8))
    p = plan(dom(req("04:00.0")), topo)
    assert codes(p) == [ProblemCode.BRIDGE_REQUESTED]
    assert p.problems[0].address == a("04:00.0")


@pytest.mark.parametrize(
    ("the_bridge", "blocked"),
    [
        (bridge("01:00.0", "shpchp", 5), True),
        (fn("01:00.0", "yenta_cardbus", 5, cls=CARDBUS, header=Header.CARDBUS), True),
        (bridge("01:00.0", "pcieport", 5), False),
        (bridge("01:00.0", None, 5), False),
    ],
    ids=["shpchp", "yenta_cardbus", "pcieport", "no-driver"],
)
def test_bridge_in_group(the_bridge: PciFunction, blocked: bool) -> None:
    p = plan(dom(req("02:01.0")), host(the_bridge, fn("02:01.0", "e1000", 5)))
    if blocked:
        assert codes(p) == [ProblemCode.BRIDGE_ON_HOST_DRIVER]
        assert p.problems[0].address == a("01:00.0")
        assert member(p, "01:00.0").action is Action.BLOCKED
    else:
        assert p.ok
        assert member(p, "01:00.0").action is Action.KEEP


def test_pf_with_vfs_requested() -> None:
    p = plan(dom(req("3b:00.0")), host(fn("3b:00.0", "i40e", 7, numvfs=4)))
    assert codes(p) == [ProblemCode.PF_HAS_VFS]
    assert "4 SR-IOV VFs" in p.problems[0].message


def test_pf_without_vfs_requested_is_fine() -> None:
    assert plan(dom(req("3b:00.1")), host(fn("3b:00.1", "i40e", 8, numvfs=0))).ok


@pytest.mark.parametrize(("driver", "problem"), [("i40e", True), ("vfio-pci", False), (None, False)])
def test_pf_with_vfs_as_group_member(driver: str | None, problem: bool) -> None:
    # Two NIC functions without ACS between them: asking for function 1 pulls in function 0, a PF with VFs.
    topo = host(fn("01:00.0", driver, 1, numvfs=2), fn("01:00.1", "ixgbe", 1, numvfs=0))
    p = plan(dom(req("01:00.1")), topo)
    if problem:
        assert codes(p) == [ProblemCode.PF_HAS_VFS]
        assert member(p, "01:00.0").action is Action.BLOCKED
    else:
        assert p.ok and member(p, "01:00.0").action is Action.KEEP


def test_group_claimed_by_another_domain() -> None:
    p = plan(dom(req("01:00.0"), name="win10"), host(*GPU_GROUP), holders={1: "linux-gaming"})
    assert codes(p) == [ProblemCode.GROUP_CLAIMED]
    assert p.problems[0].address is None
    assert "'linux-gaming'" in p.problems[0].message and "group 1" in p.problems[0].message
    assert p.group_numbers == (1,), "the group is still planned, so the report shows what it holds"


@pytest.mark.parametrize("claims", [{1: "win10"}, {4: "other"}, {}, None])
def test_claims_that_do_not_conflict(claims: GroupHolders | None) -> None:
    assert plan(dom(req("01:00.0"), name="win10"), host(*GPU_GROUP), holders=claims).ok


def test_all_problems_are_reported_at_once() -> None:
    topo = host(
        *GPU_GROUP,
        fn("00:02.0", "i915", None, cls=VGA),
        bridge("04:00.0", None, 8),
        fn("05:00.0", "snd_ca0106", 8),
        fn("3b:00.0", "i40e", 7, numvfs=4),
        bridge("06:00.0", "shpchp", 9),
        fn("07:01.0", "e1000", 9),
    )
    spec = dom(
        req("01:00.0", managed=False),  # not detached
        req("09:00.0"),  # absent
        req("00:02.0"),  # no group
        req("04:00.0"),  # a bridge
        req("3b:00.0"),  # PF with VFs
        req("07:01.0"),  # its group has a bridge on shpchp
        name="win10",
    )
    p = plan(spec, topo, holders={7: "router"})
    assert codes(p) == [
        ProblemCode.NOT_DETACHED,
        ProblemCode.DEVICE_ABSENT,
        ProblemCode.NO_GROUP,
        ProblemCode.BRIDGE_REQUESTED,
        ProblemCode.PF_HAS_VFS,
        ProblemCode.GROUP_CLAIMED,
        ProblemCode.BRIDGE_ON_HOST_DRIVER,
    ]
    assert p.refusal().startswith("isogroup refused 'win10': 0000:01:00.0 has managed='no'")
    assert p.refusal().endswith("(and 6 more problem(s))")
    assert "\n" not in p.refusal()


def test_refusal_with_one_problem() -> None:
    p = plan(dom(req("09:00.0"), name="vm"), host(*GPU_GROUP))
    assert p.refusal() == f"isogroup refused 'vm': {p.problems[0].message}"


# ------------------------------------------------------------------------------------------------ group shapes


def test_two_requests_in_one_group_make_one_group_plan() -> None:
    p = plan(dom(req("01:00.1"), req("01:00.0")), host(*GPU_GROUP))
    assert p.group_numbers == (1,)
    assert [m.requested for m in p.groups[0].members] == [False, True, True]
    assert p.groups[0].to_move == ()


def test_groups_are_planned_in_number_order() -> None:
    topo = host(*GPU_GROUP, fn("3b:02.0", "iavf", 9), fn("3b:02.1", "iavf", 10))
    p = plan(dom(req("3b:02.1"), req("01:00.0"), req("3b:02.0")), topo)
    assert p.group_numbers == (1, 9, 10)


def test_domain_without_pci_has_nothing_to_do_but_notes() -> None:
    spec = DomainSpec(
        "vdi",
        None,
        (),
        (MdevRequest("4b20d080-1b54-4048-85b3-a6a62d165c01", "vfio-pci"),),
        (NetworkRequest("x710-vf-pool"),),
    )
    p = plan(spec, host(*GPU_GROUP))
    assert p.ok and p.groups == ()
    assert [n.subject for n in p.notes] == ["mdev 4b20d080-1b54-4048-85b3-a6a62d165c01", "network 'x710-vf-pool'"]


# A bridge or a PF with VFs can never be handed to vfio-pci, so the member's action says BLOCKED like every
# other member that can never be made safe (plan.Action's own definition), not "libvirt detaches it".
@pytest.mark.parametrize(
    "topo",
    [host(bridge("04:00.0", None, 8), fn("05:00.0", "snd_ca0106", 8)), host(fn("04:00.0", "i40e", 7, numvfs=4))],
    ids=["bridge", "pf-with-vfs"],
)
def test_requested_device_that_can_never_be_assigned_is_blocked(topo: HostTopology) -> None:
    p = plan(dom(req("04:00.0")), topo)
    assert not p.ok
    assert member(p, "04:00.0").action is Action.BLOCKED


# -------------------------------------------------------------------------------------------------------- purity

# Audit events that mean "touched the host": files, directories, processes, sockets.
_HOST_EVENTS = {
    "open",
    "os.listdir",
    "os.scandir",
    "os.chdir",
    "os.mkdir",
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.symlink",
    "os.truncate",
    "os.chmod",
    "os.utime",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "subprocess.Popen",
    "socket.connect",
    "glob.glob",
}
_recorders: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recorders and event in _HOST_EVENTS:
        _recorders[-1].append(f"{event} {args[0]!r}" if args else event)


sys.addaudithook(_audit)  # process-wide and permanent, but inert outside `recording()`


@contextmanager
def recording() -> Iterator[list[str]]:
    events: list[str] = []
    _recorders.append(events)
    try:
        yield events
    finally:
        _recorders.pop()


def test_the_recorder_sees_file_access(tmp_path: Path) -> None:
    with recording() as events:
        (tmp_path / "x").write_text("x")
        os.listdir(tmp_path)
    assert any(e.startswith("open") for e in events) and any(e.startswith("os.listdir") for e in events)


def test_planner_touches_nothing() -> None:
    topo = host(
        *GPU_GROUP, fn("00:02.0", "i915", None, cls=VGA), bridge("06:00.0", "shpchp", 9), fn("07:01.0", "e1000", 9)
    )
    spec = dom(req("01:00.0", managed=False), req("09:00.0"), req("00:02.0"), req("07:01.0"))
    with recording() as events:
        first = plan(spec, topo, holders={1: "other"})
        second = plan(spec, topo, holders={1: "other"})
    assert events == []
    assert first == second and len(first.problems) == 5


def test_planner_imports_nothing_that_reaches_the_host() -> None:
    code = "import sys, isogroup.core.planner, isogroup.core.plan; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert "isogroup.core.planner" in loaded
    reach_host = {
        "isogroup.host.sysfs",
        "isogroup.host.hostscan",
        "isogroup.apply.transaction",
        "isogroup.host.devices",
        "isogroup.host.ledger",
        "isogroup.hook.run",
        "isogroup.host.uevents",
        "libvirt",
        "pyudev",
        "subprocess",
    }
    assert loaded & reach_host == set()


def test_a_probe_that_could_not_tell_refuses_unless_a_non_root_check_asks_for_warnings() -> None:
    from isogroup.core.model import Finding, UseCode

    topo = host(fn("01:00.0", "nvidia", 1), fn("01:00.1", "snd_hda_intel", 1))
    unsure = Finding(
        PciAddress.parse("01:00.1"),
        UseCode.OPEN_UNKNOWN,
        "/dev/snd",
        "0000:01:00.1 (snd_hda_intel): could not tell whether its device nodes are open (permission denied)",
    )
    probed = type(topo).build(topo.iommu, topo.functions, topo.groups, findings=[unsure], probed=True)
    strict = plan(dom(req("01:00.0")), probed)
    assert [p.code for p in strict.problems] == [ProblemCode.HOST_IN_USE]
    assert strict.problems[0].use is UseCode.OPEN_UNKNOWN
    lenient = plan(dom(req("01:00.0")), probed, unknown_refuses=False)
    assert lenient.ok and any("run as root for a verdict" in n.message for n in lenient.notes)
