"""The fleet check: which of many hosts can run each domain. The same `plan` per (domain, host) as a single-host
check, so a verdict here is the verdict the hook reaches on that host (with the claims and state captured)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from isogroup.core.domain import DomainSpec
from isogroup.core.model import HostTopology
from isogroup.core.planner import plan
from isogroup.core.policy import DEFAULT, Policy


@dataclass(frozen=True)
class HostVerdict:
    host: str
    ok: bool
    problems: tuple[str, ...]  # problem codes, in plan order, without repeats


@dataclass(frozen=True)
class DomainVerdicts:
    domain: str
    hosts: tuple[HostVerdict, ...]

    @property
    def runs_on(self) -> tuple[str, ...]:
        return tuple(v.host for v in self.hosts if v.ok)


def check(
    domains: Sequence[DomainSpec], hosts: Sequence[tuple[str, HostTopology]], policy: Policy = DEFAULT
) -> list[DomainVerdicts]:
    out = []
    for domain in domains:
        verdicts = []
        for name, host in hosts:
            result = plan(domain, host, None, policy)
            codes = tuple(dict.fromkeys(p.code.value for p in result.problems))
            verdicts.append(HostVerdict(name, result.ok, codes))
        out.append(DomainVerdicts(domain.name, tuple(verdicts)))
    return out


def to_json(results: Sequence[DomainVerdicts]) -> list[dict[str, Any]]:
    return [
        {
            "domain": r.domain,
            "runs_on": list(r.runs_on),
            "hosts": [
                {"host": v.host, "verdict": "ok" if v.ok else "refused", "problems": list(v.problems)} for v in r.hosts
            ],
        }
        for r in results
    ]


def to_text(results: Sequence[DomainVerdicts]) -> str:
    """One row per domain: how many hosts can run it and which; then, indented, why each other host refuses."""
    hosts = len(results[0].hosts) if results else 0
    width = max((len(r.domain) for r in results), default=6)
    count_width = max(len(f"{hosts}/{hosts}"), len("hosts"))
    pad = " " * (width + 2 + count_width + 2)
    out = [f"{'domain':<{width}}  {'hosts':>{count_width}}  can run on"]
    for r in results:
        count = f"{len(r.runs_on)}/{hosts}"
        out.append(f"{r.domain:<{width}}  {count:>{count_width}}  {', '.join(r.runs_on) or '(none)'}")
        out += [f"{pad}refused by {v.host}: {', '.join(v.problems)}" for v in r.hosts if not v.ok]
    return "\n".join(out) + "\n"
