"""A corrupt claim (issue 10 §2): it never keeps another guest's release from restoring that guest's devices,
never makes recover or status crash, refuses every start with one line naming the file, and one documented
command clears it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fakes.hostfixtures import AUDIO, GPU, NIC, ORIGINAL, domain_xml, drivers, make_host, tree_digest
from isogroup.apply.transaction import Stage, prepare, recover, release
from isogroup.cli.main import main
from isogroup.errors import ExitCode, StateError
from isogroup.formats.domainxml import parse_domain
from isogroup.hook import run as hook
from isogroup.paths import claim_filename


def corrupt(tmp_path: Path, name: str = "other", data: bytes = b"{half") -> Path:
    path = tmp_path / "run" / "claims" / claim_filename(name)
    path.write_bytes(data)
    return path


def test_a_release_restores_its_own_devices_beside_anothers_corrupt_claim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, host = make_host(tmp_path)
    xml = domain_xml("g", GPU)
    assert hook.run("g", "prepare", "begin", "-", xml, ledger_dir="", sysfs_root="", ctx=host) == 0
    assert sim.driver(AUDIO) == "vfio-pci"  # the GPU's siblings, moved by isogroup
    bad = corrupt(tmp_path, data=json.dumps({"version": 1, "original_driver": "../../x"}).encode())
    assert hook.run("g", "release", "end", "shutdown", xml, ledger_dir="", sysfs_root="", ctx=host) == 0
    assert drivers(sim) == ORIGINAL
    assert sorted(p.name for p in (tmp_path / "run" / "claims").iterdir()) == [bad.name]
    assert capsys.readouterr() == ("", "")


def test_a_start_refuses_with_one_line_naming_the_file_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", AUDIO)), Stage.PREPARE)
    bad = corrupt(tmp_path)
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(StateError, match=rf"{bad.name} is not valid JSON .*isogroup forget {bad}"):
        prepare(host, parse_domain(domain_xml("n", NIC)), Stage.PREPARE)
    assert hook.run("n", "prepare", "begin", "-", domain_xml("n", NIC), ledger_dir="", sysfs_root="", ctx=host) == 4
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(bad) in err
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before
    assert sim.driver(NIC) == "e1000e"


def test_recover_and_status_report_a_corrupt_claim_and_forget_clears_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", AUDIO)), Stage.PREPARE)
    bad = corrupt(tmp_path, "gone guest")
    assert [c.domain for c in recover(host)] == ["g"]
    ledger = ["--ledger", str(tmp_path / "run")]

    assert main(["status", *ledger]) == ExitCode.STATE
    out = capsys.readouterr().out
    assert "guest 'g': active" in out
    assert f"corrupt claim {bad} is not valid JSON" in out and f"'isogroup forget {bad}'" in out

    assert main(["status", *ledger, "--format", "json"]) == ExitCode.STATE
    doc = json.loads(capsys.readouterr().out)
    assert [d["domain"] for d in doc if "domain" in d] == ["g"]
    [entry] = [d for d in doc if "corrupt" in d]
    assert entry["file"] == str(bad) and entry["clear"] == f"isogroup forget {bad}"
    assert entry["corrupt"].startswith("is not valid JSON")

    assert main(["recover", *ledger, "--sysfs", str(tmp_path / "sys")]) == ExitCode.STATE
    out = capsys.readouterr().out
    assert "guest 'g': active" in out and f"corrupt claim {bad}" in out

    # A readable claim is not forgotten (release restores its devices); a file elsewhere is refused.
    good = tmp_path / "run" / "claims" / claim_filename("g")
    assert main(["forget", *ledger, str(good)]) == ExitCode.INPUT
    assert main(["forget", *ledger, str(tmp_path / "elsewhere.json")]) == ExitCode.INPUT
    assert main(["forget", *ledger, str(tmp_path / "run" / "claims" / "absent.json")]) == ExitCode.INPUT
    assert good.exists() and bad.exists()
    capsys.readouterr()

    assert main(["forget", *ledger, str(bad)]) == ExitCode.OK
    assert not bad.exists() and f"removed the corrupt claim {bad}" in capsys.readouterr().err
    assert main(["status", *ledger]) == ExitCode.OK
    # Starts go ahead again.
    prepare(host, parse_domain(domain_xml("n", NIC)), Stage.PREPARE)
    assert sorted(c.domain for c in host.ledger.read_all_unlocked()) == ["g", "n"]


def test_forget_takes_a_bare_name_and_removes_a_fifo_or_an_empty_directory(tmp_path: Path) -> None:
    _, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", AUDIO)), Stage.PREPARE)
    claims = tmp_path / "run" / "claims"
    os.mkfifo(claims / "fifo.json")
    (claims / "dir.json").mkdir()
    ledger = ["--ledger", str(tmp_path / "run")]
    assert main(["forget", *ledger, "fifo.json"]) == ExitCode.OK
    assert main(["forget", *ledger, "dir.json"]) == ExitCode.OK
    assert sorted(p.name for p in claims.iterdir()) == [claim_filename("g")]


def test_forget_without_a_ledger_creates_none(tmp_path: Path) -> None:
    assert main(["forget", "--ledger", str(tmp_path / "run"), "x.json"]) == ExitCode.INPUT
    assert not (tmp_path / "run").exists()


def test_a_guests_own_corrupt_claim_stops_its_release_with_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, host = make_host(tmp_path)
    prepare(host, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    path = tmp_path / "run" / "claims" / claim_filename("g")
    path.write_bytes(path.read_bytes().replace(b'"snd_hda_intel"', b'"../../x"'))
    before = tree_digest(tmp_path / "sys", tmp_path / "run")
    with pytest.raises(StateError, match=r"g\.json is not a claim isogroup wrote: .*original_driver"):
        release(host, "g")
    assert hook.run("g", "release", "end", "-", b"", ledger_dir="", sysfs_root="", ctx=host) == 4
    assert capsys.readouterr().err.count("\n") == 1
    assert tree_digest(tmp_path / "sys", tmp_path / "run") == before  # nothing written outside drivers/
    assert sim.driver(AUDIO) == "vfio-pci"
