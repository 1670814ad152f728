"""The ledger on a real filesystem: names that cannot escape, refusal of unsafe directories, atomic and
locked writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.errors import StateError
from isogroup.host.ledger import Ledger
from isogroup.paths import claim_filename

A = PciAddress(0, 1, 0, 1)


def claim(domain: str = "guest") -> Claim:
    device = MovedDevice(A, 14, "snd_hda_intel", None, DeviceState.MOVED)
    return Claim(domain, Phase.ACTIVE, (14,), (device,), uuid="4b20d080-1b54-4048-85b3-a6a62d165c01")


@given(st.text(min_size=1, max_size=300))
def test_a_domain_name_only_ever_names_a_plain_file_inside_claims(name: str) -> None:
    filename = claim_filename(name)
    assert "/" not in filename and "\0" not in filename
    assert filename not in (".json", "..json") and not filename.startswith(".")
    assert len(filename.encode()) <= 255


@given(st.text(min_size=1, max_size=150), st.text(min_size=1, max_size=150))
def test_different_names_never_share_a_file(a: str, b: str) -> None:
    if a != b:
        assert claim_filename(a) != claim_filename(b)


def test_hostile_names_stay_inside(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    names = ["../../etc/passwd", "..", ".", "a/b", "x\nline", "ünïcode guest", "-rf"]
    with ledger.locked() as session:
        for name in names:
            session.write(claim(name))
        assert sorted(c.domain for c in session.claims()) == sorted(names)
    assert not (tmp_path / "etc").exists()
    assert {p.parent for p in (tmp_path / "run").rglob("*.json")} == {tmp_path / "run" / "claims"}


def test_round_trip_and_remove(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    with ledger.locked() as session:
        written = session.write(claim())
        assert session.claim("guest") == written
        assert session.holders() == {14: "guest"}
        assert (tmp_path / "run" / "claims" / claim_filename("guest")).is_file()
        session.remove("guest")
        session.remove("guest")  # idempotent
        assert session.claim("guest") is None
    assert not os.path.lexists(tmp_path / "run" / "claims" / claim_filename("guest"))
    assert ledger.read_all_unlocked() == []


def test_directory_is_private_and_files_root_only(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    with ledger.locked() as session:
        session.write(claim())
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "run" / "claims").stat().st_mode & 0o777 == 0o700
    for f in (tmp_path / "run" / "claims").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="not a plain directory"), Ledger(tmp_path / "run").locked():
        pass
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(0o777)
    with pytest.raises(StateError, match="mode 0700"), Ledger(tmp_path / "run").locked():
        pass


def test_a_symlinked_claim_is_never_followed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    with ledger.locked():
        pass
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"not": "a claim"}))
    (tmp_path / "run" / "claims" / claim_filename("guest")).symlink_to(secret)
    with pytest.raises(StateError, match="symlink"), ledger.locked() as session:
        session.claim("guest")


def test_a_corrupt_claim_is_a_state_error_naming_the_file(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    with ledger.locked():
        pass
    (tmp_path / "run" / "claims" / claim_filename("guest")).write_text("{half")
    # Planning (holders) and the guest's own lookup refuse; listing the claims reports the file beside them.
    with pytest.raises(StateError, match=r"guest\.json is not valid JSON"), ledger.locked() as session:
        session.holders()
    with pytest.raises(StateError, match=r"guest\.json is not valid JSON"), ledger.locked() as session:
        session.claim("guest")
    with pytest.raises(StateError, match=r"guest\.json is not valid JSON"):
        ledger.read_all_unlocked()
    [corrupt] = ledger.read_unlocked().corrupt
    assert corrupt.path == str(tmp_path / "run" / "claims" / claim_filename("guest"))


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    with ledger.locked() as session:
        for i in range(20):
            session.write(claim(f"g{i}"))
    assert sorted(os.listdir(tmp_path / "run" / "claims")) == sorted(claim_filename(f"g{i}") for i in range(20))


def _hold_lock(directory: str, held: multiprocessing.synchronize.Event, release: float) -> None:
    with Ledger(directory).locked():
        held.set()
        time.sleep(release)


def test_the_lock_serialises_processes_and_times_out(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path / "run"), held, 1.0))
    proc.start()
    try:
        assert held.wait(10)
        with pytest.raises(StateError, match="stayed locked"), Ledger(tmp_path / "run", lock_timeout=0.2).locked():
            pass
        start = time.monotonic()
        with Ledger(tmp_path / "run", lock_timeout=10).locked():
            waited = time.monotonic() - start
        assert waited > 0.3  # it really waited for the holder
    finally:
        proc.join(10)


def test_a_dead_holder_releases_the_lock(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path / "run"), held, 60.0))
    proc.start()
    assert held.wait(10)
    proc.kill()
    proc.join(10)
    with Ledger(tmp_path / "run", lock_timeout=2).locked():
        pass
