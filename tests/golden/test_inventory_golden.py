"""Golden files for `isogroup inventory`: every [[inventory]] case in xml-samples/cases.toml, in every format.

A mismatch fails with a unified diff; `pytest tests/golden/test_inventory_golden.py --regen-golden` rewrites
them (review the diff in git before keeping it).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from isogroup.cli.main import main
from testpaths import SAMPLES

EXPECTED = SAMPLES / "expected"
SUFFIX = {"json": "json", "nova": "nova.conf", "kubevirt": "kubevirt.yaml", "proxmox": "pci.cfg", "nfd": "nfd"}


@dataclass(frozen=True)
class Case:
    name: str
    host: Path
    comment: str
    node: str | None = None
    ledger: Path | None = None

    def golden(self, fmt: str) -> Path:
        return EXPECTED / f"inventory-{self.name}.{SUFFIX[fmt]}"


def _load() -> list[Case]:
    with open(SAMPLES / "cases.toml", "rb") as f:
        doc = tomllib.load(f)
    return [
        Case(
            c["name"],
            SAMPLES / c["host"],
            c.get("comment", ""),
            c.get("node"),
            SAMPLES / c["ledger"] if "ledger" in c else None,
        )
        for c in doc.get("inventory", [])
    ]


CASES = _load()


def _run(capsys: pytest.CaptureFixture[str], case: Case, fmt: str) -> tuple[int, str, str]:
    extra = ["--node", case.node] if case.node else []
    extra += ["--ledger", str(case.ledger)] if case.ledger else []
    code = main(["inventory", "--host", str(case.host), *extra, "--format", fmt])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", list(SUFFIX))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inventory_golden(case: Case, fmt: str, capsys: pytest.CaptureFixture[str], regen_golden: bool) -> None:
    code, out, err = _run(capsys, case, fmt)
    golden = case.golden(fmt)
    if regen_golden:
        golden.write_text(out)
    elif not golden.exists():
        pytest.fail(f"{golden.name} is missing: run pytest tests/golden/test_inventory_golden.py --regen-golden")
    elif out != golden.read_text():
        diff = difflib.unified_diff(
            golden.read_text().splitlines(keepends=True),
            out.splitlines(keepends=True),
            fromfile=f"expected/{golden.name}",
            tofile="isogroup inventory",
        )
        pytest.fail("output differs from the golden file:\n" + "".join(diff), pytrace=False)
    assert code == 0
    assert err == ""  # every offered device of these hosts has its subsystem IDs: nothing left out


def test_inventory_cases_are_well_formed() -> None:
    with open(SAMPLES / "cases.toml", "rb") as f:
        hosts = {SAMPLES / h["file"] for h in tomllib.load(f).get("host", {}).values()}
    assert len({c.name for c in CASES}) == len(CASES) >= 2
    for case in CASES:
        assert case.host in hosts, f"{case.name}: {case.host.name} has no [host] entry saying where it came from"
        assert case.comment.strip(), f"{case.name}: say what the case shows"
        assert case.ledger is None or case.ledger.is_dir()


def test_no_orphan_inventory_golden_files() -> None:
    used = {c.golden(fmt) for c in CASES for fmt in SUFFIX}
    assert set(EXPECTED.glob("inventory-*")) == used


def test_the_json_golden_agrees_with_the_cases_comments() -> None:
    """What the comments in cases.toml promise, read from the goldens: a fail-closed group, a claimed group and a
    probe refusal each appear, and the reasons an offered group has are none."""
    reasons: set[str] = set()
    for case in CASES:
        doc = json.loads(case.golden("json").read_text())
        for g in doc["groups"]:
            assert g["assignable"] == (not g["reasons"])
            assert g["assignable"] == (g["group"] in doc["assignable"])
            assert sum(m["requestable"] for m in g["members"]) <= 1, "one device per group"
            reasons |= set(g["reasons"])
    assert {"host-use-unknown", "group-claimed", "host-in-use", "pf-has-vfs", "no-endpoint"} <= reasons
