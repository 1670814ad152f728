"""`isogroup check DOMAIN.xml... --host a.json --host b.json` / `--hosts DIR`: which hosts can run each domain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clirun import run
from testpaths import SAMPLES

HOSTS = SAMPLES / "hosts"
DOMAINS = SAMPLES / "domains"


def test_fleet_json_names_the_hosts_each_domain_runs_on(capsys: pytest.CaptureFixture[str]) -> None:
    hosts = ["--host", str(HOSTS / "desktop-gpu.json"), "--host", str(HOSTS / "amd-b450.json")]
    code, out, err = run(capsys, "check", str(DOMAINS / "desktop-gpu.xml"), *hosts, "--format", "json")
    assert (code, err) == (0, "")
    (doc,) = json.loads(out)
    assert doc["domain"] == "desktop-gpu" and doc["runs_on"] == ["desktop-gpu"]
    assert doc["hosts"][1] == {"host": "amd-b450", "verdict": "refused", "problems": ["device-absent"]}


def test_fleet_text_is_a_table_and_exit_1_when_a_domain_runs_nowhere(capsys: pytest.CaptureFixture[str]) -> None:
    hosts = ["--host", str(HOSTS / "desktop-vtd-off.json"), "--host", str(HOSTS / "amd-b450.json")]
    code, out, _ = run(capsys, "check", str(DOMAINS / "desktop-gpu.xml"), str(DOMAINS / "amd-chipset-gpu.xml"), *hosts)
    assert code == 1
    assert out.splitlines() == [
        "domain           hosts  can run on",
        "desktop-gpu        0/2  (none)",
        "                        refused by desktop-vtd-off: no-iommu",
        "                        refused by amd-b450: device-absent",
        "amd-chipset-gpu    1/2  amd-b450",
        "                        refused by desktop-vtd-off: no-iommu, device-absent",
    ]


def test_hosts_dir_is_the_same_as_naming_each_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name in ("laptop.json", "desktop-gpu.json"):
        shutil.copy(HOSTS / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a snapshot")
    dom = str(DOMAINS / "laptop-dgpu.xml")
    by_dir = run(capsys, "check", dom, "--hosts", str(tmp_path), "--format", "json")
    by_file = run(
        capsys,
        "check",
        dom,
        "--host",
        str(HOSTS / "desktop-gpu.json"),
        "--host",
        str(HOSTS / "laptop.json"),
        "--format",
        "json",
    )
    assert by_dir == by_file and by_dir[0] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ledger", "x"], "--ledger and --sysfs describe one host"),
        (["--host", str(HOSTS / "laptop.json")], "two host snapshots are named 'laptop'"),
    ],
)
def test_fleet_refusals_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    argv = [
        "check",
        str(DOMAINS / "laptop-dgpu.xml"),
        "--host",
        str(HOSTS / "laptop.json"),
        "--host",
        str(HOSTS / "amd-b450.json"),
    ]
    code, out, err = run(capsys, *argv, *extra)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1


def test_an_empty_hosts_dir_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", str(DOMAINS / "laptop-dgpu.xml"), "--hosts", str(tmp_path))
    assert code == 2 and "holds no host snapshots" in err


def test_a_single_host_is_the_single_host_check(capsys: pytest.CaptureFixture[str]) -> None:
    """One --host keeps the plan report (the goldens in xml-samples/expected hold it byte for byte)."""
    code, out, _ = run(capsys, "check", str(DOMAINS / "desktop-gpu.xml"), "--host", str(HOSTS / "desktop-gpu.json"))
    assert code == 0 and out == (SAMPLES / "expected" / "desktop-gpu.txt").read_text()
