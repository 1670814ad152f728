"""Golden files: every case in xml-samples/cases.toml through `isogroup check`, text and JSON.

A mismatch fails with a unified diff. `pytest tests/golden/test_golden.py --regen-golden` rewrites the golden files
from the current output instead (then review the diff in git before keeping it).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from isogroup.cli.main import main
from isogroup.core import report
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.core.model import HostTopology
from isogroup.core.plan import Action, ProblemCode
from isogroup.core.planner import plan as plan_domain
from isogroup.formats import snapshot
from isogroup.formats.domainxml import parse_domain
from testpaths import SAMPLES

EXPECTED = SAMPLES / "expected"
SUFFIX = {"text": "txt", "json": "json"}


@dataclass(frozen=True)
class Case:
    name: str
    domain: Path
    host: Path
    exit: int
    comment: str
    ledger: Path | None = None  # claims held by other guests (`check --ledger`)
    policy: Path | None = None  # the host's policy (`check --policy`)

    def golden(self, fmt: str) -> Path:
        return EXPECTED / f"{self.name}.{SUFFIX[fmt]}"


def _load() -> tuple[dict[str, Any], list[Case]]:
    with open(SAMPLES / "cases.toml", "rb") as f:
        doc = tomllib.load(f)
    cases = [
        Case(
            c["name"],
            SAMPLES / c["domain"],
            SAMPLES / c["host"],
            int(c["exit"]),
            c.get("comment", ""),
            SAMPLES / c["ledger"] if "ledger" in c else None,
            SAMPLES / c["policy"] if "policy" in c else None,
        )
        for c in doc["case"]
    ]
    return doc, cases


DOC, CASES = _load()


def _run(capsys: pytest.CaptureFixture[str], case: Case, fmt: str) -> tuple[int, str, str]:
    ledger = ["--ledger", str(case.ledger)] if case.ledger else []
    policy = ["--policy", str(case.policy)] if case.policy else []
    code = main(["check", "--host", str(case.host), *ledger, *policy, "--format", fmt, str(case.domain)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Case, fmt: str, capsys: pytest.CaptureFixture[str], regen_golden: bool) -> None:
    code, out, err = _run(capsys, case, fmt)
    golden = case.golden(fmt)
    if regen_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out)
    elif not golden.exists():
        pytest.fail(f"{golden.relative_to(SAMPLES)} is missing: run pytest tests/golden/test_golden.py --regen-golden")
    else:
        expected = golden.read_text()
        if out != expected:
            diff = difflib.unified_diff(
                expected.splitlines(keepends=True),
                out.splitlines(keepends=True),
                fromfile=f"expected/{golden.name}",
                tofile="isogroup check",
            )
            pytest.fail("output differs from the golden file:\n" + "".join(diff), pytrace=False)
    # A refusal is on stdout (the report); stderr is for errors only.
    assert err == ""
    assert code == case.exit, f"{case.name}: exit {code}, cases.toml says {case.exit}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_json_verdict_matches_exit_code(case: Case) -> None:
    (plan,) = json.loads(case.golden("json").read_text())
    assert plan["verdict"] == ("ok" if case.exit == 0 else "refused")
    assert bool(plan["problems"]) == (case.exit != 0)


def test_cases_are_well_formed() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    hosts = DOC.get("host", {})
    listed = {SAMPLES / h["file"] for h in hosts.values()}
    for case in CASES:
        assert case.domain.is_file(), case.domain
        assert case.host.is_file(), case.host
        assert case.exit in (0, 1), f"{case.name}: golden cases are verdicts (0 or 1); bad input is tested elsewhere"
        assert case.comment.strip(), f"{case.name}: say what the case shows"
        assert case.host in listed, f"{case.name}: {case.host.name} has no [host] entry saying where it came from"
        # The domain is named after its case, so a golden file reads on its own.
        assert parse_domain(case.domain.read_bytes(), str(case.domain)).name == case.name
    for name, host in hosts.items():
        assert host.get("comment", "").strip(), f"[host.{name}] needs a comment saying where the topology came from"
        assert (SAMPLES / host["file"]).stem == name


def test_no_orphan_files() -> None:
    used = {SAMPLES / "cases.toml"}
    for case in CASES:
        used |= {case.domain, case.host, case.golden("text"), case.golden("json")}
        if case.ledger is not None:
            used |= {p for p in case.ledger.rglob("*") if p.is_file()}
        if case.policy is not None:
            used.add(case.policy)
    # xml-samples/libvirt/ feeds libvirt's test driver (tests/test_virt_*.py), not `check` cases; kernel/ holds
    # modules.alias files for tests/unit/test_variants.py.
    on_disk = {
        p for p in SAMPLES.rglob("*") if p.is_file() and not {"libvirt", "kernel"} & set(p.relative_to(SAMPLES).parts)
    }
    # expected/explain-* are `explain`'s golden files: tests/unit/test_explain.py owns them and checks for orphans.
    on_disk -= set(EXPECTED.glob("explain-*"))
    # expected/inventory-* are `inventory`'s: tests/golden/test_inventory_golden.py owns them and checks for orphans.
    on_disk -= set(EXPECTED.glob("inventory-*"))
    orphans = sorted(str(p.relative_to(SAMPLES)) for p in on_disk - used)
    assert not orphans, f"files in xml-samples/ that no case uses: {orphans}"


def _golden_values() -> tuple[set[str], set[str]]:
    actions: set[str] = set()
    codes: set[str] = set()
    for case in CASES:
        for plan in json.loads(case.golden("json").read_text()):
            actions |= {m["action"] for g in plan["groups"] for m in g["members"]}
            codes |= {p["code"] for p in plan["problems"]}
    return actions, codes


@pytest.mark.parametrize("action", list(Action), ids=[a.value for a in Action])
def test_every_action_has_a_golden_case(action: Action) -> None:
    actions, _ = _golden_values()
    assert action.value in actions, f"no golden case shows action {action.value!r}: add one to cases.toml"


@pytest.mark.parametrize("code", list(ProblemCode), ids=[c.value for c in ProblemCode])
def test_every_problem_code_has_a_golden_case(code: ProblemCode) -> None:
    _, codes = _golden_values()
    assert code.value in codes, f"no golden case shows problem {code.value!r}: add one to cases.toml"


def test_text_reports_escape_what_they_did_not_write() -> None:
    """A driver name, a finding or a guest's name with a newline or an escape sequence stays on its line:
    nobody can forge report lines or drive the terminal through a snapshot, a ledger or a domain."""
    host = snapshot.load(SAMPLES / "hosts" / "desktop-gpu.json")
    evil = "nvidia\n  problem [x]: forged\x1b[2J"
    forged = HostTopology.build(host.iommu, [replace(f, driver=evil) for f in host.functions], host.groups)
    text = report.groups_to_text(forged)
    assert text.count("\n") == report.groups_to_text(host).count("\n")
    assert "nvidia\\n  problem [x]: forged\\x1b[2J" in text and "\x1b" not in text
    moved = MovedDevice(host.functions[0].address, 1, evil, None, DeviceState.MOVED)
    claims = report.claims_to_text([Claim("w\r\nguest 'x': active", Phase.ACTIVE, (1,), (moved,))])
    assert claims.count("\n") == 2 and "w\\r\\nguest" in claims
    domain = parse_domain((SAMPLES / "domains" / "desktop-gpu.xml").read_bytes())
    bad = report.plans_to_text([plan_domain(domain, forged)])
    assert "\n  problem [x]: forged" not in bad and "forged\\x1b[2J" in bad and "\x1b" not in bad
