"""The transaction on the simulated kernel: libvirt's lifecycle in order, refusals that change nothing, faults
at every write, SIGKILL at every write, and concurrent runs contending for one group."""

from __future__ import annotations

import errno
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fakes.hostfixtures import (
    AUDIO,
    GPU,
    NIC,
    NIC2,
    ORIGINAL,
    SATA,
    UCSI,
    USB,
    assert_home,
    domain_xml,
    drivers,
    libvirt_detach,
    libvirt_reattach,
    make_host,
    tree_digest,
)
from fakes.simkernel import FailPath, Faults, KillAt, KillWhen, NeverBind, SimKernel
from fakes.sweeps import SWEEP_ERRNOS, failing_at, killed_at_every_write
from isogroup.apply.deadline import Deadline
from isogroup.apply.transaction import Context, Stage, prepare, reconnect, recover, release, release_groups
from isogroup.core.claims import DeviceState, Phase
from isogroup.errors import ExitCode, HostError, RefusedError
from isogroup.formats.domainxml import parse_domain
from isogroup.host.ledger import Ledger
from isogroup.log import Level, log


class Lines:
    """A log sink for the test: isogroup's log writes to syslog only."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def emit(self, level: Level, text: str) -> None:
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Lines:
    lines = Lines()
    monkeypatch.setattr(log, "sink", lines)
    monkeypatch.setattr(log, "level", Level.DEBUG)
    return lines


def claims(host: Context) -> dict[str, Phase]:
    return {c.domain: c.phase for c in host.ledger.read_all_unlocked()}


def test_lifecycle_in_libvirts_order_puts_everything_back(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    guest = parse_domain(domain_xml("gpu-guest", GPU))

    plan = prepare(host, guest, Stage.PREPARE)  # prepare begin
    assert [m.action.value for m in plan.groups[0].members] == ["keep", "libvirt", "move", "move", "move"]
    assert {a: sim.driver(a) for a in (AUDIO, USB, UCSI)} == dict.fromkeys((AUDIO, USB, UCSI), "vfio-pci")
    assert sim.driver(GPU) == "nvidia"  # libvirt's job, after this hook
    libvirt_detach(sim, GPU)  # libvirt prepares its managed hostdev
    prepare(host, guest, Stage.START)  # start begin: the whole group must now be viable
    assert sim.group_viable(1) and sim.vfio_group_viable(1) is True
    (claim,) = host.ledger.read_all_unlocked()
    assert claim.phase is Phase.ACTIVE and claim.groups == (1,)
    assert {d.address: d.original_driver for d in claim.devices} == {
        AUDIO: "snd_hda_intel",
        USB: "xhci_hcd",
        UCSI: "nvidia-gpu",
    }

    libvirt_reattach(sim, GPU)  # stopped end, then libvirt reattaches what it detached
    assert release(host, "gpu-guest") is None  # release end
    assert_home(sim, tmp_path / "run")
    assert release(host, "gpu-guest") is None  # idempotent
    assert_home(sim, tmp_path / "run")


def test_a_device_alone_in_its_group_moves_nothing_but_is_claimed(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    before = len(sim.writes())
    prepare(host, parse_domain(domain_xml("nic-guest", NIC)), Stage.PREPARE)
    assert len(sim.writes()) == before
    assert claims(host) == {"nic-guest": Phase.ACTIVE}
    release(host, "nic-guest")
    assert claims(host) == {}


@pytest.mark.parametrize(
    ("name", "xml"),
    [
        ("absent", domain_xml("absent", GPU.__class__.parse("0000:09:00.0"))),
        ("managed-no", domain_xml("managed-no", GPU, managed="no")),
        ("claimed", domain_xml("claimed", AUDIO)),
    ],
)
def test_a_refusal_changes_nothing_byte_for_byte(tmp_path: Path, name: str, xml: bytes) -> None:
    _, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("holder", NIC)), Stage.PREPARE)
    if name == "claimed":
        prepare(host, parse_domain(domain_xml("first", GPU)), Stage.PREPARE)
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(RefusedError) as refused:
        prepare(host, parse_domain(xml), Stage.PREPARE)
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before
    assert "\n" not in str(refused.value)
    if name == "claimed":
        assert "in use by guest 'first'" in str(refused.value)


def test_a_failed_start_runs_release_which_undoes_only_its_own_claim(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("first", GPU)), Stage.PREPARE)
    moved = drivers(sim)
    with pytest.raises(RefusedError):
        prepare(host, parse_domain(domain_xml("second", AUDIO)), Stage.PREPARE)
    release(host, "second")  # libvirt: a failed start still runs stopped and release
    assert drivers(sim) == moved
    assert claims(host) == {"first": Phase.ACTIVE}


def test_a_guest_restarts_its_own_group(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    guest = parse_domain(domain_xml("g", SATA))
    for _ in range(2):
        prepare(host, guest, Stage.PREPARE)
        prepare(host, guest, Stage.PREPARE)  # a second prepare of the same guest is not a conflict
        assert sim.driver(NIC2) == "vfio-pci"
        release(host, "g")
        assert_home(sim, tmp_path / "run")


def test_start_verifies_the_whole_group_with_the_kernel(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    guest = parse_domain(domain_xml("g", GPU))
    prepare(host, guest, Stage.PREPARE)
    # libvirt did not (or could not) detach its managed device: the group is not viable at start.
    with pytest.raises(HostError, match="not viable"):
        prepare(host, guest, Stage.START)
    release(host, "g")
    assert_home(sim, tmp_path / "run")


def test_a_vf_libvirt_picked_after_prepare_is_handled_at_start(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    pool = "<interface type='network'><source network='vf-pool'/></interface>"
    prepare(host, parse_domain(domain_xml("g", extra=pool)), Stage.PREPARE)
    assert claims(host) == {}
    # At start libvirt formats the VF it picked as <interface type='hostdev'> (virDomainNetDefFormat).
    live = (
        "<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x03' "
        "slot='0x00' function='0x1'/></source></interface>"
    )
    libvirt_detach(sim, NIC2)
    prepare(host, parse_domain(domain_xml("g", extra=live)), Stage.START)
    assert sim.driver(SATA) == "vfio-pci" and sim.group_viable(3)
    libvirt_reattach(sim, NIC2)
    release(host, "g")
    assert_home(sim, tmp_path / "run")


def test_hot_unplug_releases_one_group_and_keeps_the_rest(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)
    left = release_groups(host, "g", {3})
    assert left is not None and left.groups == (1,)
    assert sim.driver(SATA) == "ahci" and sim.driver(AUDIO) == "vfio-pci"
    release(host, "g")
    assert_home(sim, tmp_path / "run")


def test_a_device_unplugged_while_claimed_is_dropped_not_stranded(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    sim.remove_device(USB)
    assert release(host, "g") is None
    assert claims(host) == {}
    assert sim.driver(AUDIO) == "snd_hda_intel" and sim.driver(UCSI) == "nvidia-gpu"


def test_vfio_pci_is_loaded_before_the_first_move(tmp_path: Path) -> None:
    from fakes.hostfixtures import desktop

    sim = SimKernel.materialize(tmp_path / "sys", desktop(), vfio_loaded=False)
    host = Context(sim, Ledger(tmp_path / "run"), bind_timeout=0.2)
    prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert "vfio-pci" in sim.loaded_drivers() and sim.driver(AUDIO) == "vfio-pci"


def test_a_failed_modprobe_refuses_and_changes_nothing(tmp_path: Path) -> None:
    from fakes.hostfixtures import desktop

    sim = SimKernel.materialize(tmp_path / "sys", desktop(), vfio_loaded=False, faults=Faults(fail_modprobe=("vfio*",)))
    host = Context(sim, Ledger(tmp_path / "run"), bind_timeout=0.2)
    with pytest.raises(HostError, match="modprobe"):
        prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert_home(sim, tmp_path / "run")


# ---------------------------------------------------------------------------------------------- faults


def _writes_of_a_clean_run(tmp_path: Path) -> int:
    sim, host = make_host(tmp_path / "probe")
    prepare(host, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)
    return sim.write_count()


def test_a_failure_at_every_single_write_strands_nothing(tmp_path: Path) -> None:
    total = _writes_of_a_clean_run(tmp_path)
    assert total >= 12  # 4 devices x (override, unbind, probe)
    for n in range(1, total + 1):
        for err in SWEEP_ERRNOS:
            root = tmp_path / f"w{n}-{err}"
            sim, host = make_host(root)
            with failing_at(sim, n, err), pytest.raises(HostError):
                prepare(host, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)
            # The rollback already restored this run's devices; libvirt's release after the failed start and a
            # recover find nothing left to do, and nothing is stranded.
            release(host, "g")
            recover(host)
            assert_home(sim, root / "run")


def test_a_bind_that_never_comes_is_rolled_back(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    sim.set_faults(Faults(never_bind=(NeverBind(address=str(USB), driver="vfio-pci"),)))
    with pytest.raises(HostError, match="did not bind to vfio-pci"):
        prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    sim.set_faults(Faults())
    assert_home(sim, tmp_path / "run")


def test_a_restore_that_fails_keeps_the_device_recorded_until_it_succeeds(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    sim.set_faults(Faults(never_bind=(NeverBind(address=str(AUDIO), driver="snd_hda_intel"),)))
    left = release(host, "g")
    assert left is not None and left.phase is Phase.FAILED
    assert [d.address for d in left.devices] == [AUDIO]
    # The failed claim still holds its group: nobody else may take it while a device is off its driver.
    with pytest.raises(RefusedError, match="in use by guest 'g'"):
        prepare(host, parse_domain(domain_xml("other", GPU)), Stage.PREPARE)
    sim.set_faults(Faults())
    assert recover(host) == []
    assert_home(sim, tmp_path / "run")


def _prepare_in_child(root: str) -> None:
    sim = SimKernel(Path(root) / "sys")
    host = Context(sim, Ledger(Path(root) / "run"), bind_timeout=0.2)
    prepare(host, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)


@pytest.mark.parametrize("when", list(KillWhen))
def test_a_sigkill_at_every_single_write_strands_nothing(tmp_path: Path, when: KillWhen) -> None:
    total = _writes_of_a_clean_run(tmp_path)
    for root, sim, host in killed_at_every_write(tmp_path, total, when, _prepare_in_child):
        # The next hook run, for any guest, finishes what the dead run left.
        prepare(host, parse_domain(domain_xml("bystander", NIC)), Stage.PREPARE)
        release(host, "bystander")
        assert_home(sim, root / "run")


def test_recover_finishes_a_killed_prepare(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    sim.set_faults(Faults(kill=(KillAt(5, KillWhen.AFTER),)))
    child = multiprocessing.get_context("fork").Process(target=_prepare_in_child, args=(str(tmp_path),))
    child.start()
    child.join(30)
    sim.set_faults(Faults())
    assert claims(host) == {"g": Phase.PREPARING}
    assert recover(host) == []
    assert_home(sim, tmp_path / "run")


# ---------------------------------------------------------------------------------------------- concurrency


def _contend(root: str, name: str, address: str, results: multiprocessing.Queue[tuple[str, str]]) -> None:
    sim = SimKernel(Path(root) / "sys")
    host = Context(sim, Ledger(Path(root) / "run"), bind_timeout=2.0)
    try:
        prepare(host, parse_domain(domain_xml(name, GPU.__class__.parse(address))), Stage.PREPARE)
        results.put((name, "ok"))
    except RefusedError as exc:
        results.put((name, f"refused: {exc}"))


def test_concurrent_hooks_never_claim_one_group_twice(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        root = tmp_path / f"a{attempt}"
        sim, host = make_host(root)
        results: multiprocessing.Queue[tuple[str, str]] = ctx.Queue()
        # Six guests at once: four want group 1 (through different functions), two want group 3.
        wanted = [("a", GPU), ("b", AUDIO), ("c", USB), ("d", UCSI), ("e", SATA), ("f", NIC2)]
        procs = [ctx.Process(target=_contend, args=(str(root), n, str(a), results)) for n, a in wanted]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        outcome = dict(results.get(timeout=5) for _ in procs)
        winners = {n for n, r in outcome.items() if r == "ok"}
        assert len(winners & {"a", "b", "c", "d"}) == 1, outcome
        assert len(winners & {"e", "f"}) == 1, outcome
        assert all("in use by guest" in r for n, r in outcome.items() if n not in winners), outcome
        held = host.ledger.read_all_unlocked()
        assert sorted(g for c in held for g in c.groups) == [1, 3]
        for name in winners:
            release(host, name)
        assert drivers(sim) == ORIGINAL


def test_no_temporary_or_stray_files_after_a_lifecycle(tmp_path: Path) -> None:
    _, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    release(host, "g")
    assert sorted(os.listdir(tmp_path / "run")) == ["claims", "lock"]
    assert os.listdir(tmp_path / "run" / "claims") == []


def test_the_hosts_policy_applies_at_prepare(tmp_path: Path) -> None:
    from isogroup.formats.policyfile import parse_toml

    sim, host = make_host(tmp_path)
    strict = replace(host, policy=parse_toml("mode = 'strict'", "policy.toml"))
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(RefusedError, match="the policy is strict"):
        prepare(strict, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before
    deny = replace(host, policy=parse_toml("[deny]\nclasses = ['0c03']", "policy.toml"))
    with pytest.raises(RefusedError, match=r"0000:01:00.2 \(xhci_hcd, class 0c0330\) would leave its driver"):
        prepare(deny, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    # Naming every function satisfies strict mode.
    prepare(strict, parse_domain(domain_xml("g", GPU, AUDIO, USB, UCSI)), Stage.PREPARE)
    assert sim.driver(AUDIO) == "snd_hda_intel"  # requested with managed='yes': libvirt's to detach, not ours
    release(strict, "g")
    assert_home(sim, tmp_path / "run")


def test_what_a_start_let_through_is_said_in_the_system_log(tmp_path: Path, logged: Lines) -> None:
    from fakes.isolationtree import NIC1, shared_bus_nic
    from fakes.probetree import address

    sim, host = make_host(tmp_path, shared_bus_nic())
    before = sim.driver(address(NIC1))
    plan = prepare(host, parse_domain(domain_xml("g", address(NIC1))), Stage.PREPARE)
    (warned,) = [n for n in plan.notes if n.use is not None]
    assert warned.subject == "warning [reset-shared]"
    assert f"g: prepare warning [reset-shared]: {warned.message}" in logged.lines
    # A note that is no warning (nothing let through) is the report's, not the log's.
    assert not [line for line in logged.lines if "warning" in line and "reset-shared" not in line]
    release(host, "g")
    assert sim.driver(address(NIC1)) == before and not host.ledger.read_all_unlocked()


def test_a_failed_hot_unplug_restore_is_retried_alone_never_the_running_guests_other_groups(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)  # groups 1 and 3, still running
    sim.set_faults(Faults(never_bind=(NeverBind(address=str(NIC2), driver="igb"),)))
    left = release_groups(host, "g", {3})
    assert left is not None and left.phase is Phase.ACTIVE and left.groups == (1, 3)
    assert {d.address: d.state.value for d in left.devices if d.group == 3} == {NIC2: "restore-failed"}
    sim.set_faults(Faults())
    (after,) = recover(host)
    assert after.groups == (1,) and after.phase is Phase.ACTIVE
    assert sim.driver(NIC2) == "igb"
    assert {sim.driver(a) for a in (AUDIO, USB, UCSI)} == {"vfio-pci"}  # the running guest keeps group 1
    release(host, "g")
    assert_home(sim, tmp_path / "run")


# ---------------------------------------------------------------------------------------------- the ledger's writes


class LedgerRenames:
    """Counts the ledger's atomic replacements (each claim write ends in one os.rename between two directory
    descriptors; the simulated kernel saves its own state with os.replace), and can make the nth fail or raise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None, error: BaseException | None = None):
        self.count = 0
        real = os.rename

        def rename(src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
            if src_dir_fd is not None:
                self.count += 1
                if self.count == fail_at and error is not None:
                    raise error
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

        monkeypatch.setattr(os, "rename", rename)


def test_one_ledger_write_per_moved_device_and_one_to_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each device's intent carries the previous device's moved state; the last one's goes with the commit."""
    sim, host = make_host(tmp_path)
    renames = LedgerRenames(monkeypatch)
    plan = prepare(host, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)
    moved = [m.address for g in plan.groups for m in g.to_move]
    assert len(moved) == 4
    assert renames.count == len(moved) + 1
    (claim,) = host.ledger.read_all_unlocked()
    assert claim.phase is Phase.ACTIVE and {d.state for d in claim.devices} == {DeviceState.MOVED}
    assert [d.address for d in claim.devices] == moved  # in the order moved: release restores newest first
    release(host, "g")
    assert_home(sim, tmp_path / "run")


def test_a_failing_rollback_is_logged_and_the_original_error_re_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: Lines
) -> None:
    sim, host = make_host(tmp_path)
    # USB's probe fails (the second device: two intents written); the rollback's first ledger write then fails.
    sim.set_faults(Faults(fail_paths=(FailPath("bus/pci/drivers_probe", errno.EIO, str(USB)),)))
    LedgerRenames(monkeypatch, fail_at=3, error=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(HostError, match="drivers_probe") as info:
        prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert "No space left" not in str(info.value)
    assert "the rollback failed too (" in logged.text and "No space left on device" in logged.text
    monkeypatch.undo()
    sim.set_faults(Faults())
    # What the rollback could not finish is in the ledger (written before every change): the next run ends it.
    assert claims(host) == {"g": Phase.PREPARING}
    assert recover(host) == []
    assert_home(sim, tmp_path / "run")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(143)], ids=["ctrl-c", "sigterm-exit"])
def test_an_interrupt_between_two_moves_still_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: BaseException
) -> None:
    sim, host = make_host(tmp_path)
    LedgerRenames(monkeypatch, fail_at=2, error=interrupt)  # the second device's intent: the first has moved
    with pytest.raises(type(interrupt)):
        prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    monkeypatch.undo()
    assert_home(sim, tmp_path / "run")  # no later run needed: this one put back what it had moved


# ---------------------------------------------------------------------------------------------- bounded time


def _natives_never_rebind() -> Faults:
    return Faults(
        never_bind=tuple(NeverBind(address=str(a), driver=ORIGINAL[a] or "") for a in (AUDIO, USB, UCSI)),
    )


def test_three_devices_that_never_rebind_cost_one_deadline_not_three_timeouts(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path, bind_timeout=2.0)
    prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    sim.set_faults(_natives_never_rebind())
    bounded = replace(host, deadline=Deadline.after(0.6))
    started = time.monotonic()
    with pytest.raises(HostError) as info:
        release(bounded, "g")
    elapsed = time.monotonic() - started
    # Without the deadline: a probe wait and an explicit bind wait per device, 3 x 2 x 2 s.
    assert elapsed < 1.5, elapsed
    message = str(info.value)
    assert info.value.exit_code == ExitCode.HOST and "\n" not in message
    assert message.startswith("the run took longer than 0.6 s and stopped")
    assert all(str(a) in message for a in (AUDIO, USB, UCSI)), message
    (left,) = host.ledger.read_all_unlocked()
    assert left.phase is Phase.FAILED and {d.address for d in left.devices} == {AUDIO, USB, UCSI}
    sim.set_faults(Faults())
    assert recover(host) == []
    assert_home(sim, tmp_path / "run")


def test_a_prepare_out_of_time_rolls_back_everything(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path, bind_timeout=2.0)
    sim.set_faults(Faults(never_bind=(NeverBind(driver="vfio-pci"),)))
    bounded = replace(host, deadline=Deadline.after(0.5))
    started = time.monotonic()
    with pytest.raises(HostError, match=r"^the run took longer than 0.5 s and stopped \(.*did not bind") as info:
        prepare(bounded, parse_domain(domain_xml("g", GPU, SATA)), Stage.PREPARE)
    assert time.monotonic() - started < 1.5
    assert "everything it had changed is back" in str(info.value)
    sim.set_faults(Faults())
    assert_home(sim, tmp_path / "run")


def test_a_run_whose_time_is_up_before_the_first_move_changes_nothing(tmp_path: Path) -> None:
    _, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("holder", NIC)), Stage.PREPARE)  # the ledger exists
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(HostError, match=r"took longer than 0 s and stopped \(0000:01:00.1 was not moved yet\)"):
        prepare(replace(host, deadline=Deadline.after(0)), parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before


def test_the_ledgers_lock_is_waited_for_no_longer_than_the_run_has_left(tmp_path: Path) -> None:
    _, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("holder", NIC)), Stage.PREPARE)
    bounded = replace(host, deadline=Deadline.after(0.3))
    with host.ledger.locked():  # another run holds the lock for longer than this one may wait
        started = time.monotonic()
        with pytest.raises(HostError, match=r"took longer than 0.3 s and stopped \(waiting for the ledger's lock\)"):
            release(bounded, "holder")
        assert time.monotonic() - started < 1.0
    assert claims(host) == {"holder": Phase.ACTIVE}


# ---------------------------------------------------------------------------------------------- reconnect


def test_reconnect_never_adopts_a_group_another_claim_holds(tmp_path: Path, logged: Lines) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("first", GPU)), Stage.PREPARE)  # holds group 1
    held = host.ledger.read_all_unlocked()
    # A guest started without the hook uses the GPU's audio function (group 1) and the SATA controller (group 3).
    reconnect(host, parse_domain(domain_xml("stray", AUDIO, SATA)))
    after = {c.domain: c for c in host.ledger.read_all_unlocked()}
    assert after["first"] == held[0]
    assert after["stray"].groups == (3,) and after["stray"].devices == ()
    assert "IOMMU group 1, which the ledger gives to 'first'; not adopted" in logged.text
    # Only unheld groups: a guest whose every group is held by another claim gets no claim at all.
    reconnect(host, parse_domain(domain_xml("other", USB)))
    assert sorted(c.domain for c in host.ledger.read_all_unlocked()) == ["first", "stray"]
    release(host, "stray")
    release(host, "first")
    assert_home(sim, tmp_path / "run")
