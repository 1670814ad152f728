"""Renders plans and group listings: text for a person at a terminal, JSON for CI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from isogroup.core.claims import Claim, is_reservation
from isogroup.core.drivers import is_viable_driver
from isogroup.core.model import HostTopology, IommuGroup
from isogroup.core.plan import DomainPlan


def escape(text: str) -> str:
    """`text` as part of one report line: a character that is not printable (a newline, a carriage return, an
    ANSI escape, a tab) is written as its Python escape (`\\n`, `\\x1b`), so a string from a snapshot, a
    ledger, a domain or libvirt can neither forge report lines nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def lines(out: Sequence[str]) -> str:
    """The report's lines, each escaped, as text."""
    return "".join(f"{escape(line)}\n" for line in out)


def _driver(name: str | None) -> str:
    return name if name is not None else "(none)"


def plans_to_json(plans: Sequence[DomainPlan]) -> list[dict[str, Any]]:
    return [
        {
            "domain": p.domain,
            "verdict": p.verdict,
            "groups": [
                {
                    "group": g.group,
                    "members": [
                        {
                            "address": str(m.address),
                            "ids": m.ids,
                            "driver": m.driver,
                            "action": m.action.value,
                            "target": m.target,
                            "requested": m.requested,
                            "why": m.why,
                        }
                        for m in g.members
                    ],
                }
                for g in p.groups
            ],
            "problems": [
                {
                    "code": pr.code.value,
                    "address": str(pr.address) if pr.address else None,
                    # for host-in-use: the finding that refused (network-address, holder-nvidia, ...)
                    "use": pr.use.value if pr.use is not None else None,
                    "message": pr.message,
                }
                for pr in p.problems
            ],
            "notes": [{"subject": n.subject, "message": n.message} for n in p.notes],
        }
        for p in plans
    ]


def plans_to_text(plans: Sequence[DomainPlan]) -> str:
    out: list[str] = []
    for p in plans:
        out.append(f"domain '{p.domain}': {'OK, can start' if p.ok else 'REFUSED'}")
        if not p.groups and not p.problems:
            out.append("  no PCI host devices: nothing to do")
        for g in p.groups:
            out.append(f"  IOMMU group {g.group}")
            width = max((len(_driver(m.driver)) for m in g.members), default=0)
            # The driver a leaving member goes to ("-> vfio-pci"), in its own column; blank for those that stay.
            goes = {m.address: f"-> {m.target}" if m.target else "" for m in g.members}
            to = max(map(len, goes.values()), default=0)
            for m in g.members:
                mark = "*" if m.requested else " "
                driver, action = f"{_driver(m.driver):<{width}}", f"{m.action.value:<7}"
                target = f"{goes[m.address]:<{to}}  " if to else ""
                out.append(f"   {mark}{m.address}  {m.ids}  {driver}  {action}  {target}{m.why}")
        for pr in p.problems:
            out.append(f"  problem [{pr.code.value}]: {pr.message}")
        for n in p.notes:
            out.append(f"  note: {n.subject}: {n.message}")
    if any(p.groups for p in plans):
        out.append("(* = named in the domain XML)")
    return lines(out)


def group_blockers(host: HostTopology, group: IommuGroup) -> list[str]:
    """Members whose driver stops VFIO from using the group as it stands."""
    blockers = []
    for address in group.members:
        func = host.function(address)
        if func is not None and not is_viable_driver(func.driver):
            blockers.append(f"{address} on {func.driver}")
    return blockers


def groups_to_json(host: HostTopology) -> dict[str, Any]:
    return {
        "iommu": host.iommu,
        "groups": [
            {
                "group": g.number,
                "usable_by_vfio": not group_blockers(host, g),
                "blockers": group_blockers(host, g),
                "members": [
                    {
                        "address": str(a),
                        "ids": f.ids,
                        "class": f"{f.class_code:06x}",
                        "header": f.header.value,
                        "driver": f.driver,
                    }
                    for a in g.members
                    if (f := host.function(a)) is not None
                ],
            }
            for g in host.groups
        ],
    }


def groups_to_text(host: HostTopology) -> str:
    if not host.iommu:
        return "this host has no IOMMU groups (no IOMMU, or it is disabled): no device can be passed through\n"
    out = []
    for g in host.groups:
        blockers = group_blockers(host, g)
        state = "usable by VFIO as it stands" if not blockers else f"not usable yet: {', '.join(blockers)}"
        out.append(f"IOMMU group {g.number}: {state}")
        for a in g.members:
            f = host.function(a)
            if f is None:
                continue
            kind = " bridge" if f.is_bridge else ""
            out.append(f"  {a}  {f.ids}  class {f.class_code:06x}{kind}  {_driver(f.driver)}")
    return lines(out)


def dumps(doc: object) -> str:
    return json.dumps(doc, indent=2) + "\n"


def claims_to_text(claims: Sequence[Claim]) -> str:
    if not claims:
        return "no claims: isogroup holds no IOMMU group and has moved no device\n"
    out = []
    for c in claims:
        holder = "reservation" if is_reservation(c.domain) else f"guest '{c.domain}'"
        out.append(f"{holder}: {c.phase.value}, IOMMU group(s) {', '.join(map(str, c.groups)) or '-'}")
        for d in c.devices:
            was = d.original_driver or "(no driver)"
            out.append(f"  {d.address}  group {d.group}  {d.state.value}, originally on {was}")
    return lines(out)
