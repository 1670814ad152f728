"""`--format kubevirt`: `spec.configuration.permittedHostDevices.pciHostDevices` for the KubeVirt CR, and which
groups must be bound to vfio-pci before KubeVirt sees them.

Fields as KubeVirt's API declares them (kubevirt/client-python: docs/V1PciHostDevice.md, generated from the API:
PciHostDevice: pciVendorSelector, resourceName, externalResourceProvider). Its device plugin
(pkg/virt-handler/device-manager/pci_device.go) selects by vendor:device only, advertises only devices whose driver
is exactly vfio-pci, and hands out one IOMMU group per plugin device: so every group listed here must be bound
whole ahead of time (a reservation), and a selector that also matches a device outside the whole groups is said.
"""

from __future__ import annotations

import json

from isogroup.core.inventory import Inventory

RESOURCE_DOMAIN = "isogroup"


def resource_name(vendor: int, device: int) -> str:
    """An extended resource name, `<domain>/<name>`: one per vendor:device, as KubeVirt selects."""
    return f"{RESOURCE_DOMAIN}/pci-{vendor:04x}-{device:04x}"


def entries(inv: Inventory) -> list[dict[str, object]]:
    seen: dict[str, dict[str, object]] = {}
    for group in inv.assignable:
        m = group.requestable
        assert m is not None
        f = m.function
        seen.setdefault(
            f.ids,
            {
                "pciVendorSelector": f.ids,
                "resourceName": resource_name(f.vendor, f.device),
                "externalResourceProvider": False,
            },
        )
    return list(seen.values())


def to_bind(inv: Inventory) -> list[int]:
    """Whole groups KubeVirt cannot use until every member is bound for VFIO: the ones still to reserve."""
    return [g.group for g in inv.assignable if not g.ready]


def render(inv: Inventory) -> str:
    wanted = {str(e["pciVendorSelector"]) for e in entries(inv)}
    out = [f"# isogroup inventory for node {inv.node}: {len(inv.assignable)} whole IOMMU group(s)"]
    pending = to_bind(inv)
    if pending:
        out.append("# KubeVirt advertises only devices already on vfio-pci: bind these whole groups first")
        out.append("# (isogroup reserve GROUP...):")
        for group in (g for g in inv.assignable if g.group in pending):
            out.append(f"#   group {group.group}: " + ", ".join(f"{m.address} {m.function.ids}" for m in group.members))
    for group in inv.groups:
        stray = [m for m in group.members if not group.assignable and m.function.ids in wanted]
        for m in stray:
            out.append(
                f"# warning: {m.address} ({m.function.ids}, group {group.group}) matches a selector below but its "
                f"group is not whole-assignable ({', '.join(group.reasons)}): keep it off vfio-pci"
            )
    out += ["spec:", "  configuration:", "    permittedHostDevices:", "      pciHostDevices:"]
    if not entries(inv):
        out[-1] += " []"
    for e in entries(inv):
        # JSON strings are YAML double-quoted scalars: no quoting rules of our own.
        out.append(f"      - pciVendorSelector: {json.dumps(e['pciVendorSelector'])}")
        out.append(f"        resourceName: {json.dumps(e['resourceName'])}")
        out.append(f"        externalResourceProvider: {json.dumps(e['externalResourceProvider'])}")
    return "\n".join(out) + "\n"
