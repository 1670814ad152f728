"""`--format proxmox`: cluster PCI resource mappings, as `/etc/pve/mapping/pci.cfg` holds them.

The grammar is PVE::Mapping::PCI's (proxmox/pve-guest-common: src/PVE/Mapping/PCI.pm): a section header that is
the mapping's id alone (pve-configid), then `\tmap` lines whose property string has node, path (lower-case
`DDDD:BB:SS.F`), id (vendor:device) and, because `assert_valid` dies without them when sysfs has them,
iommugroup and subsystem-id. One mapping per vendor:device:subsystem: its `path` lists this node's whole groups
as alternatives (';'), "the first available will then be chosen on guest start"; Proxmox checks the group of the
first path only. Merge several nodes' map lines under one id for the cluster (`pvesh set` with every `--map`).
"""

from __future__ import annotations

from dataclasses import dataclass

from isogroup.core.inventory import GroupEntry, Inventory


@dataclass(frozen=True)
class Mapping:
    id: str
    description: str
    map: str  # the property string of this node's `map` entry


def mapping_id(vendor: int, device: int, subsystem: tuple[int, int]) -> str:
    return f"isogroup-{vendor:04x}-{device:04x}-{subsystem[0]:04x}-{subsystem[1]:04x}"


def mappings(inv: Inventory) -> tuple[list[Mapping], list[GroupEntry]]:
    """The mappings, and the whole groups left out because the topology does not record the subsystem IDs
    (a snapshot from an older isogroup): Proxmox refuses a mapping without them."""
    by_key: dict[str, list[GroupEntry]] = {}
    skipped = []
    for group in inv.assignable:
        m = group.requestable
        assert m is not None
        f = m.function
        if f.subsystem is None:
            skipped.append(group)
            continue
        by_key.setdefault(mapping_id(f.vendor, f.device, f.subsystem), []).append(group)
    out = []
    for key, groups in by_key.items():
        first = groups[0].requestable
        assert first is not None
        f = first.function
        assert f.subsystem is not None
        paths = ";".join(str(g.requestable.address) for g in groups if g.requestable is not None)
        props = (
            f"id={f.ids},iommugroup={groups[0].group},node={inv.node},path={paths},"
            f"subsystem-id={f.subsystem[0]:04x}:{f.subsystem[1]:04x}"
        )
        numbers = ", ".join(str(g.group) for g in groups)
        out.append(Mapping(key, f"isogroup: {f.ids} as a whole IOMMU group ({numbers} on {inv.node})", props))
    return out, skipped


def render(inv: Inventory) -> str:
    sections = [f"{m.id}\n\tdescription {m.description}\n\tmap {m.map}\n" for m in mappings(inv)[0]]
    return "\n".join(sections)
