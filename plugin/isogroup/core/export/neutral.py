"""`--format json`: the neutral inventory every other format is a function of. Every group is listed, with why
it is not offered when it is not, so a person or a CI job reads the reasons rather than an absence."""

from __future__ import annotations

from typing import Any

from isogroup.core.inventory import GroupEntry, Inventory, Member

FORMAT = "isogroup-inventory"
VERSION = 1


def _member(m: Member) -> dict[str, Any]:
    f = m.function
    return {
        "address": str(m.address),
        "vendor": f"{f.vendor:04x}",
        "device": f"{f.device:04x}",
        "subsystem": f"{f.subsystem[0]:04x}:{f.subsystem[1]:04x}" if f.subsystem else None,
        "class": f"{f.class_code:06x}",
        "driver": f.driver,
        "action": m.action.value,
        "requestable": m.requestable,
        "ready": m.ready,
    }


def _group(g: GroupEntry) -> dict[str, Any]:
    return {
        "group": g.group,
        "assignable": g.assignable,
        "ready": g.ready,
        "holder": g.holder,
        "reserved": g.reserved,
        "reasons": list(g.reasons),
        "messages": list(g.messages),
        "members": [_member(m) for m in g.members],
    }


def to_json(inv: Inventory) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "node": inv.node,
        "iommu": inv.iommu,
        "probed": inv.probed,
        "assignable": [g.group for g in inv.assignable],
        "groups": [_group(g) for g in inv.groups],
    }
