"""The ledger is input too (issue 10 §1, §2): a guest's identity is its exact name, claim files are opened
without blocking or following links and parsed strictly, the lock cannot be swapped away, and every failure is
a StateError naming the path."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes.hostfixtures import tree_digest
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.errors import ExitCode, StateError
from isogroup.formats.claimfile import MAX_CLAIM_BYTES, claim_to_json
from isogroup.host.ledger import Ledger
from isogroup.paths import DIGEST_PREFIX, claim_filename

A = PciAddress(0, 1, 0, 1)
B = PciAddress(0, 1, 0, 2)
UUID = "4b20d080-1b54-4048-85b3-a6a62d165c01"


def claim(domain: str = "guest", driver: str | None = "snd_hda_intel") -> Claim:
    device = MovedDevice(A, 14, driver, None, DeviceState.MOVED)
    return Claim(domain, Phase.ACTIVE, (14,), (device,), uuid=UUID)


def ready(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "run", lock_timeout=0.3)
    with ledger.locked():
        pass
    return ledger


def claims_dir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "claims"


# ------------------------------------------------------------------------------------------------- identity


def _decode(filename: str) -> bytes:
    """The inverse of claim_filename's literal encoding: proves it injective by giving the name back."""
    stem = filename.removesuffix(".json")
    out, i = bytearray(), 0
    while i < len(stem):
        if stem[i] == "%":
            out.append(int(stem[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(stem[i]))
            i += 1
    return bytes(out)


@given(st.text(max_size=300))
def test_a_literal_file_name_decodes_to_the_exact_name_and_a_digest_is_never_literal(name: str) -> None:
    filename = claim_filename(name)
    raw = name.encode("utf-8", "surrogatepass")
    if filename.startswith(DIGEST_PREFIX):
        assert raw == b"" or len(raw) > 200 // 3  # only the empty name and long ones
    else:
        assert _decode(filename) == raw
        # "%" only ever starts an escape, so no literal name can start with the digest's "%s".
        assert re.fullmatch(r"(?:[A-Za-z0-9_.-]|%[0-9A-F]{2})+\.json", filename)


def test_the_digest_fallback_cannot_be_a_real_guests_name() -> None:
    long = "g" * 300
    digest = claim_filename(long)
    assert digest.startswith(DIGEST_PREFIX)
    # A guest named after the digest (with or without its marker) gets a file of its own.
    for impostor in (digest.removesuffix(".json"), digest.removesuffix(".json")[1:], "sha256-" + "0" * 64):
        assert claim_filename(impostor) != digest
    assert claim_filename("") != claim_filename("%sha256-")


@given(st.text(min_size=1, max_size=40), st.sampled_from([" ", "\t", "\r", "\u00a0", "\u200b"]))
def test_names_differing_only_by_whitespace_have_their_own_files(name: str, space: str) -> None:
    variants = {name, space + name, name + space, name.strip() or "x"}
    assert len({claim_filename(v) for v in variants}) == len(variants)


def test_each_guest_finds_only_its_own_claim_byte_for_byte(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "run")
    with ledger.locked() as session:
        session.write(claim("w"))
        for other in (" w", "w ", "\tw", "w\r", "W", "w\u00a0"):
            assert session.claim(other) is None, repr(other)
        written = session.write(claim(" w"))
        assert session.claim(" w") == written and written.domain == " w"
        assert sorted(c.domain for c in session.claims()) == [" w", "w"]


def test_a_claim_recording_another_guest_is_corrupt(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    with ledger.locked() as session:
        session.write(claim("w"))
    # The file of " w" holds the claim of "w" (copied by hand, or an old ledger's collision).
    os.rename(claims_dir(tmp_path) / claim_filename("w"), claims_dir(tmp_path) / claim_filename(" w"))
    with ledger.locked() as session:
        with pytest.raises(StateError, match=r"%20w\.json records guest 'w'"):
            session.claim(" w")
        assert session.claim("w") is None
        [corrupt] = session.scan().corrupt
        assert corrupt.path.endswith("/%20w.json") and "records guest 'w'" in corrupt.reason


def test_a_digest_named_claim_is_found_and_checked(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    long = "guest " * 60
    with ledger.locked() as session:
        session.write(claim(long))
        assert session.claim(long) is not None
        assert session.claim(long[:-1]) is None
    assert [p.name for p in claims_dir(tmp_path).iterdir()] == [claim_filename(long)]


def test_the_fast_path_pays_for_no_digest() -> None:
    code = (
        "import sys; from isogroup.paths import claim_filename; "
        "claim_filename(' a guest\\t\\r name with ünïcode '); print('hashlib' in sys.modules, end=' '); "
        "claim_filename('x' * 300); print('hashlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False True"


# ------------------------------------------------------------------------------------- files that are not files


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn's result, failing (not hanging) if it blocks longer than `seconds`."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    if errors:
        raise errors[0]
    return result[0] if result else None


def test_a_fifo_among_the_claims_never_blocks(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    with ledger.locked() as session:
        session.write(claim("good"))
    os.mkfifo(claims_dir(tmp_path) / "x.json")
    os.mkfifo(claims_dir(tmp_path) / claim_filename("mine"))

    def look() -> None:
        with ledger.locked() as session:
            view = session.scan()
            assert [c.domain for c in view.claims] == ["good"]
            assert sorted(c.reason for c in view.corrupt) == ["is not a regular file"] * 2
            with pytest.raises(StateError, match=r"mine\.json is not a regular file"):
                session.claim("mine")
            with pytest.raises(StateError, match=r"mine\.json is not a regular file \(and 1 more: .*nobody knows"):
                session.holders()

    _within(5, look)
    view = _within(5, ledger.read_unlocked)
    assert len(view.corrupt) == 2


def test_a_claim_that_is_a_directory_or_a_symlink_is_corrupt(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    (claims_dir(tmp_path) / claim_filename("dir")).mkdir()
    (claims_dir(tmp_path) / claim_filename("link")).symlink_to("/dev/zero")
    with ledger.locked() as session:
        with pytest.raises(StateError, match="is not a regular file"):
            session.claim("dir")
        with pytest.raises(StateError, match="is a symlink"):
            session.claim("link")
        assert len(session.scan().corrupt) == 2


def test_a_huge_claim_is_refused_after_reading_at_most_the_limit(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    with open(claims_dir(tmp_path) / claim_filename("big"), "wb") as f:
        f.truncate(MAX_CLAIM_BYTES * 64)  # sparse: costs nothing to make, 64 MiB to read whole
    with ledger.locked() as session, pytest.raises(StateError, match="larger than"):
        session.claim("big")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.symlink_to(p.parent / "elsewhere"), id="symlink"),
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(os.mkfifo, id="fifo"),
    ],
)
def test_a_lock_that_is_not_a_regular_file_is_exit_4(tmp_path: Path, make: Callable[[Path], None]) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    make(tmp_path / "run" / "lock")
    before = tree_digest(tmp_path)
    with pytest.raises(StateError, match=r"refusing to use .*lock: it is") as caught:
        _within(5, lambda: Ledger(tmp_path / "run").locked().__enter__())
    assert caught.value.exit_code == ExitCode.STATE
    assert tree_digest(tmp_path) == before
    assert not (tmp_path / "elsewhere").exists()


def _hold(directory: str, held: Any, release: float) -> None:
    with Ledger(directory).locked():
        held.set()
        time.sleep(release)


@pytest.mark.parametrize("swap", ["unlink", "replace", "replace-claims-lock"])
def test_swapping_the_lock_file_does_not_let_a_second_run_in(tmp_path: Path, swap: str) -> None:
    ready(tmp_path)
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path / "run"), held, 1.5))
    proc.start()
    try:
        assert held.wait(10)
        lock = tmp_path / "run" / "lock"
        if swap == "unlink":
            lock.unlink()
        elif swap == "replace":
            (tmp_path / "run" / "new").write_text("")
            os.rename(tmp_path / "run" / "new", lock)
        else:
            lock.unlink()
            lock.mkdir()  # and then even a lock that is no file: the directory's lock is checked first
        with pytest.raises(StateError, match="stayed locked"), Ledger(tmp_path / "run", lock_timeout=0.3).locked():
            pass
    finally:
        proc.join(10)


# ------------------------------------------------------------------------------------ fields that are not ours


def _doc(**changes: Any) -> dict[str, Any]:
    doc = claim_to_json(claim())
    doc["updated"] = 1.5
    for key, value in changes.items():
        if key.startswith("dev_"):
            doc["devices"][0][key[4:]] = value
        else:
            doc[key] = value
    return doc


def _without(key: str) -> dict[str, Any]:
    doc = _doc()
    del doc[key]
    return doc


HOSTILE: dict[str, bytes] = {
    "driver-escapes": json.dumps(_doc(dev_original_driver="../../x")).encode(),
    "driver-dotdot": json.dumps(_doc(dev_original_driver="..")).encode(),
    "driver-dot": json.dumps(_doc(dev_original_driver=".")).encode(),
    "driver-empty": json.dumps(_doc(dev_original_driver="")).encode(),
    "driver-slash": json.dumps(_doc(dev_original_driver="a/b")).encode(),
    "driver-newline": json.dumps(_doc(dev_original_driver="e1000e\n")).encode(),
    "driver-long": json.dumps(_doc(dev_original_driver="d" * 65)).encode(),
    "driver-number": json.dumps(_doc(dev_original_driver=5)).encode(),
    "override-escapes": json.dumps(_doc(dev_original_override="../../../module/x")).encode(),
    "address-garbage": json.dumps(_doc(dev_address="zz")).encode(),
    "address-short": json.dumps(_doc(dev_address="01:00.1")).encode(),
    "address-spaced": json.dumps(_doc(dev_address=" 0000:01:00.1")).encode(),
    "address-huge": json.dumps(_doc(dev_address="0" * 5000 + ":01:00.1")).encode(),
    "group-negative": json.dumps(_doc(groups=[-1])).encode(),
    "group-huge": json.dumps(_doc(groups=[2**31])).encode(),
    "group-bool": json.dumps(_doc(groups=[True])).encode(),
    "group-float": json.dumps(_doc(groups=[14.0])).encode(),
    "group-string": json.dumps(_doc(dev_group="14")).encode(),
    "group-5000-digits": b'{"version":1,"groups":[' + b"9" * 5000 + b"]}",
    "phase-unknown": json.dumps(_doc(phase="bogus")).encode(),
    "state-unknown": json.dumps(_doc(dev_state="gone")).encode(),
    "uuid-bad": json.dumps(_doc(uuid="u-1")).encode(),
    "uuid-number": json.dumps(_doc(uuid=1)).encode(),
    "version-2": json.dumps(_doc(version=2)).encode(),
    "version-true": json.dumps(_doc(version=True)).encode(),
    "version-string": json.dumps(_doc(version="1")).encode(),
    "domain-empty": json.dumps(_doc(domain="")).encode(),
    "domain-number": json.dumps(_doc(domain=7)).encode(),
    "updated-negative": json.dumps(_doc(updated=-1)).encode(),
    "updated-nan": json.dumps(_doc(updated=float("nan"))).encode(),
    "updated-inf": json.dumps(_doc(updated=float("inf"))).encode(),
    "updated-1e999": json.dumps(_doc()).replace('"updated": 1.5', '"updated": 1e999').encode(),
    "extra-key": json.dumps(_doc(evil=1)).encode(),
    "extra-device-key": json.dumps(_doc(dev_path="/sys")).encode(),
    "missing-key": json.dumps(_without("uuid")).encode(),
    "devices-object": json.dumps(_doc(devices={})).encode(),
    "device-twice": json.dumps(_doc(devices=_doc()["devices"] * 2)).encode(),
    "duplicate-key": json.dumps(_doc()).encode().replace(b'{"version": 1', b'{"version": 1, "version": 1', 1),
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep-in-a-field": json.dumps(_doc(groups=[[[[[]]]]])).encode(),
    "not-utf8": json.dumps(_doc()).encode().replace(b"guest", b"gu\xffst"),
    "utf16": json.dumps(_doc()).encode("utf-16"),
    "top-level-list": b"[]",
    "empty": b"",
    "half": b'{"version": 1, "domain": "guest"',
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_field_is_validated_and_a_refusal_changes_nothing(tmp_path: Path, data: bytes) -> None:
    ledger = ready(tmp_path)
    (claims_dir(tmp_path) / claim_filename("guest")).write_bytes(data)
    before = tree_digest(tmp_path / "run")
    with ledger.locked() as session:
        with pytest.raises(StateError, match=r"guest\.json") as caught:
            session.claim("guest")
        assert "\n" not in str(caught.value)
        [corrupt] = session.scan().corrupt
        assert session.claims() == []
        with pytest.raises(StateError, match=r"guest\.json .*nobody knows which IOMMU groups it held"):
            session.holders()
    assert corrupt.reason and "\n" not in corrupt.reason
    with pytest.raises(StateError, match=r"guest\.json"):
        ledger.read_all_unlocked()
    assert tree_digest(tmp_path / "run") == before


def test_the_canonical_claim_is_accepted(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    (claims_dir(tmp_path) / claim_filename("guest")).write_bytes(json.dumps(_doc()).encode())
    with ledger.locked() as session:
        assert session.claim("guest") == claim()


@pytest.mark.parametrize("driver", ["../../x", "..", "", "a/b", "e1000e\n", "d" * 65])
def test_a_claim_that_would_not_read_back_is_never_written(tmp_path: Path, driver: str) -> None:
    ledger = ready(tmp_path)
    with ledger.locked() as session:
        session.write(claim("guest"))
    before = tree_digest(tmp_path / "run")
    with ledger.locked() as session, pytest.raises(StateError, match="not written"):
        session.write(claim("guest", driver=driver))
    assert tree_digest(tmp_path / "run") == before


def test_real_driver_names_are_plain_names(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    names = ["snd_hda_intel", "ehci-pci", "nvidia-gpu", "mlx5_core", "nvgrace_gpu_vfio_pci", "r8169", "i801_smbus"]
    with ledger.locked() as session:
        for i, name in enumerate(names):
            device = MovedDevice(PciAddress(0, 1, 0, i), 14, name, "pci-stub" if i else None, DeviceState.MOVING)
            session.write(Claim(f"g{i}", Phase.PREPARING, (14,), (device,)))
        assert [c.devices[0].original_driver for c in sorted(session.claims(), key=lambda c: c.domain)] == names


# ---------------------------------------------------------------------------------- OSError becomes StateError


def test_a_temporary_file_in_the_way_is_a_state_error(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    tmp = claims_dir(tmp_path) / f".{claim_filename('guest')}.{os.getpid()}.tmp"
    tmp.mkdir()
    (tmp / "x").write_text("")
    with ledger.locked() as session, pytest.raises(StateError, match=r"cannot write .*guest\.json"):
        session.write(claim())
    assert not (claims_dir(tmp_path) / claim_filename("guest")).exists()


def test_a_stale_temporary_file_or_fifo_is_replaced_not_written_through(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    tmp = claims_dir(tmp_path) / f".{claim_filename('guest')}.{os.getpid()}.tmp"
    os.mkfifo(tmp)
    with ledger.locked() as session:
        _within(5, lambda: session.write(claim()))
        assert session.claim("guest") == claim()
    assert not tmp.exists()


def test_a_claim_path_that_is_a_full_directory_is_a_state_error(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    (claims_dir(tmp_path) / claim_filename("guest")).mkdir()
    (claims_dir(tmp_path) / claim_filename("guest") / "x").write_text("")
    with ledger.locked() as session:
        with pytest.raises(StateError, match=r"cannot write .*guest\.json"):
            session.write(claim())
        with pytest.raises(StateError, match=r"cannot remove .*guest\.json"):
            session.remove("guest")
    assert os.listdir(claims_dir(tmp_path)) == [claim_filename("guest")]


def test_a_ledger_under_a_file_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match=r"cannot create the ledger directory .*file/run"):
        Ledger(tmp_path / "file" / "run").locked().__enter__()
    with pytest.raises(StateError, match="not a plain directory"):
        Ledger(tmp_path / "file").read_unlocked()


def test_claims_that_is_a_file_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "run" / "claims").write_text("")
    with pytest.raises(StateError, match="not a plain directory"), Ledger(tmp_path / "run").locked():
        pass
    with pytest.raises(StateError, match="not a plain directory"):
        Ledger(tmp_path / "run").read_unlocked()


def test_reading_without_a_ledger_creates_nothing(tmp_path: Path) -> None:
    assert Ledger(tmp_path / "run").read_all_unlocked() == []
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    assert Ledger(tmp_path / "run").read_unlocked().claims == ()
    assert os.listdir(tmp_path / "run") == []


def test_other_files_in_claims_are_not_claims(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    (claims_dir(tmp_path) / f".{claim_filename('g')}.123.tmp").write_text("{half")  # a killed writer's
    (claims_dir(tmp_path) / "README").write_text("not a claim")
    with ledger.locked() as session:
        view = session.scan()
    assert view.claims == () and view.corrupt == ()


def test_a_hidden_json_file_is_corrupt_not_ignored(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    with ledger.locked() as session:
        session.write(claim("guest"))
    os.rename(claims_dir(tmp_path) / "guest.json", claims_dir(tmp_path) / ".guest.json")
    with ledger.locked() as session:
        [corrupt] = session.scan().corrupt
    assert corrupt.path.endswith("/.guest.json")


def test_a_hostile_file_name_cannot_forge_output_lines(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    (claims_dir(tmp_path) / "x\nguest 'y': active.json").write_text("{")
    with pytest.raises(StateError) as caught:
        ledger.read_all_unlocked()
    assert "\n" not in str(caught.value) and "\\n" in str(caught.value)


def _hold_then_swap_directory(directory: str, held: Any) -> None:
    """Hold the lock, then move the whole ledger away and put a new one (with one claim) in its place."""
    with Ledger(directory).locked():
        held.set()
        time.sleep(0.5)
        os.rename(directory, directory + ".old")
        os.mkdir(directory, 0o700)
        os.mkdir(os.path.join(directory, "claims"), 0o700)
        with open(os.path.join(directory, "claims", claim_filename("new")), "w") as f:
            json.dump(_doc(domain="new"), f)


def test_a_run_that_waited_for_a_directory_since_replaced_locks_the_new_one(tmp_path: Path) -> None:
    ledger = ready(tmp_path)
    with ledger.locked() as session:
        session.write(claim("old"))
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    proc = ctx.Process(target=_hold_then_swap_directory, args=(str(tmp_path / "run"), held))
    proc.start()
    try:
        assert held.wait(10)
        with Ledger(tmp_path / "run", lock_timeout=10).locked() as session:
            assert [c.domain for c in session.claims()] == ["new"]  # not the directory it first opened
    finally:
        proc.join(10)
