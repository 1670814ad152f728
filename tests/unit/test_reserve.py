"""Reservations (`isogroup reserve` / `unreserve`): whole groups bound to vfio-pci ahead of time for KubeVirt,
through the same engine, ledger and refusals as a guest start, and under the same fault and kill sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.hostfixtures import (
    AUDIO,
    GPU,
    NIC,
    PORT,
    UCSI,
    USB,
    assert_home,
    domain_xml,
    drivers,
    make_host,
    tree_digest,
)
from fakes.simkernel import KillWhen, SimKernel
from fakes.sweeps import SWEEP_ERRNOS, failing_at, killed_at_every_write
from isogroup.apply.reserve import reserve, unreserve
from isogroup.apply.transaction import Context, Stage, prepare, recover, release
from isogroup.cli.main import main
from isogroup.core.claims import Phase, reservation_name
from isogroup.errors import ExitCode, HostError, InputError, RefusedError
from isogroup.formats.domainxml import parse_domain
from isogroup.host.ledger import Ledger

GROUP = 1  # PORT (pcieport, kept), GPU, AUDIO, USB, UCSI: a whole dGPU behind a root port without ACS


def _claims(ctx: Context) -> dict[str, Phase]:
    return {c.domain: c.phase for c in ctx.ledger.read_all_unlocked()}


def test_a_reservation_binds_every_endpoint_and_unreserve_puts_each_back(tmp_path: Path) -> None:
    sim, ctx = make_host(tmp_path)
    [plan] = reserve(ctx, [GROUP])
    assert plan.domain == reservation_name(GROUP) == "reservation/1"
    assert {a: sim.driver(a) for a in (GPU, AUDIO, USB, UCSI)} == dict.fromkeys((GPU, AUDIO, USB, UCSI), "vfio-pci")
    assert sim.driver(PORT) == "pcieport" and sim.group_viable(GROUP)
    assert _claims(ctx) == {"reservation/1": Phase.ACTIVE}
    assert reserve(ctx, [GROUP])[0].ok  # idempotent: already reserved, nothing moves
    assert unreserve(ctx, [GROUP]) == []
    assert_home(sim, tmp_path / "run")


def test_a_guest_runs_on_a_reservation_and_leaves_it_reserved(tmp_path: Path) -> None:
    sim, ctx = make_host(tmp_path)
    reserve(ctx, [GROUP])
    bound = drivers(sim)
    guest = parse_domain(domain_xml("kubevirt-vm", GPU))
    assert prepare(ctx, guest, Stage.PREPARE).ok
    assert prepare(ctx, guest, Stage.START).ok
    assert _claims(ctx) == {"reservation/1": Phase.ACTIVE, "kubevirt-vm": Phase.ACTIVE}
    # While the guest runs, nobody else gets the group, and the reservation cannot be taken from under it.
    with pytest.raises(RefusedError, match="in use by guest 'kubevirt-vm'"):
        prepare(ctx, parse_domain(domain_xml("second", AUDIO)), Stage.PREPARE)
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(RefusedError, match="in use by guest 'kubevirt-vm'") as refused:
        unreserve(ctx, [GROUP])
    assert refused.value.codes == ("group-claimed",)
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before
    # At its stop the group stays bound for the next guest; unreserve then gives it back.
    release(ctx, "kubevirt-vm")
    assert drivers(sim) == bound and _claims(ctx) == {"reservation/1": Phase.ACTIVE}
    unreserve(ctx, [GROUP])
    assert_home(sim, tmp_path / "run")


def test_a_group_a_guest_holds_cannot_be_reserved_and_nothing_changes(tmp_path: Path) -> None:
    _, ctx = make_host(tmp_path)
    prepare(ctx, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(RefusedError, match="in use by guest 'g'"):
        reserve(ctx, [GROUP])
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before


def test_a_group_that_does_not_exist_is_bad_input(tmp_path: Path) -> None:
    _, ctx = make_host(tmp_path)
    with pytest.raises(InputError, match="IOMMU group 77 does not exist"):
        reserve(ctx, [77])
    assert not (tmp_path / "run").exists()


def _writes_of_a_clean_reservation(tmp_path: Path) -> int:
    sim, ctx = make_host(tmp_path / "probe")
    reserve(ctx, [GROUP])
    return sim.write_count()


def test_a_failure_at_every_single_write_of_a_reservation_strands_nothing(tmp_path: Path) -> None:
    total = _writes_of_a_clean_reservation(tmp_path)
    assert total >= 12  # 4 endpoints x (override, unbind, probe)
    for n in range(1, total + 1):
        for err in SWEEP_ERRNOS:
            root = tmp_path / f"w{n}-{err}"
            sim, ctx = make_host(root)
            with failing_at(sim, n, err), pytest.raises(HostError):
                reserve(ctx, [GROUP])
            recover(ctx)
            assert_home(sim, root / "run")


def _reserve_in_child(root: str) -> None:
    sim = SimKernel(Path(root) / "sys")
    reserve(Context(sim, Ledger(Path(root) / "run"), bind_timeout=0.2), [GROUP])


@pytest.mark.parametrize("when", list(KillWhen))
def test_a_sigkill_at_every_single_write_of_a_reservation_strands_nothing(tmp_path: Path, when: KillWhen) -> None:
    total = _writes_of_a_clean_reservation(tmp_path)
    for root, sim, ctx in killed_at_every_write(tmp_path, total, when, _reserve_in_child):
        # The next run of anything (here a guest start elsewhere) finishes what the dead reservation left.
        prepare(ctx, parse_domain(domain_xml("bystander", NIC)), Stage.PREPARE)
        release(ctx, "bystander")
        assert_home(sim, root / "run")


def test_the_cli_shows_reservations_and_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI moves devices through plain sysfs writes, which only a kernel answers: the moving itself is tested
    above on the simulated kernel; here what a person sees."""
    sim, ctx = make_host(tmp_path)
    reserve(ctx, [GROUP])
    assert main(["status", "--ledger", str(tmp_path / "run")]) == ExitCode.OK
    assert capsys.readouterr().out.startswith("reservation: active, IOMMU group(s) 1\n")
    prepare(ctx, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    state = ["--sysfs", str(sim.root), "--ledger", str(tmp_path / "run")]
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    assert main(["unreserve", "1", *state]) == ExitCode.REFUSED
    out, err = capsys.readouterr()
    assert (
        out == "" and err == "isogroup refused 'reservation/1': IOMMU group 1 is in use by guest 'g': stop it first\n"
    )
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before
    for bad in ("one", "-1", "0x1", "99999999999"):
        with pytest.raises(SystemExit) as usage:  # argparse's usage error: exit 2, one line
            main(["reserve", bad, *state])
        assert usage.value.code == ExitCode.INPUT and capsys.readouterr().err.count("\n") == 1
