"""`--format nfd`: a Node Feature Discovery feature file (features.d/), for node labels.

The grammar is NFD's local source (kubernetes-sigs/node-feature-discovery: source/local/local.go): one
`name[=value]` per line, `#` comments, `# +no-label` before a raw feature that is not to be a label. Labels in
the `isogroup.feature.node.kubernetes.io/` namespace, which nfd-master allows by default (a sub-namespace of
feature.node.kubernetes.io); names and values follow Kubernetes' label rules (at most 63 characters of
[A-Za-z0-9_.-], alphanumeric at both ends), so no ':' anywhere: IDs are written vvvv-dddd.
"""

from __future__ import annotations

from collections import Counter

from isogroup.core.inventory import Inventory

NAMESPACE = "isogroup.feature.node.kubernetes.io"


def features(inv: Inventory) -> list[tuple[str, str, bool]]:
    """(name, value, label?) in file order."""
    out = [
        (f"{NAMESPACE}/iommu", "true" if inv.iommu else "false", True),
        (f"{NAMESPACE}/whole-groups", str(len(inv.assignable)), True),
    ]
    counts: Counter[str] = Counter()
    ready: Counter[str] = Counter()
    for group in inv.assignable:
        m = group.requestable
        assert m is not None
        key = f"pci-{m.function.vendor:04x}-{m.function.device:04x}"
        counts[key] += 1
        ready[key] += group.ready
    for key in sorted(counts):
        out.append((f"{NAMESPACE}/{key}.whole-groups", str(counts[key]), True))
        out.append((f"{NAMESPACE}/{key}.ready", str(ready[key]), True))
    # Raw features only (no label): group numbers and addresses, which label values cannot carry.
    for group in inv.assignable:
        members = ",".join(str(m.address) for m in group.members)
        out.append((f"isogroup/group-{group.group}.members", members, False))
    return out


def render(inv: Inventory) -> str:
    out = [f"# isogroup inventory for {inv.node}: write atomically (a dot-file, then rename)"]
    for name, value, label in features(inv):
        if not label:
            out.append("# +no-label")
        out.append(f"{name}={value}")
    return "\n".join(out) + "\n"
