"""`--format nova`: a nova.conf `[pci]` fragment, one `device_spec` per whole-assignable group.

Nova parses each value with `nova.pci.whitelist.Whitelist` -> `nova.pci.devspec.PciDeviceSpec`
(openstack/nova: nova/pci/whitelist.py, nova/pci/devspec.py); with `[pci] report_in_placement` each device becomes
a Placement resource provider whose resource class and traits come from the spec's tags
(nova/compute/pci_placement_translator.py). Choices, each for a reason found in that code:
- one device per group (the group's requestable one): Placement allocates devices, so one allocation = one group;
- `resource_class` CUSTOM_ISOGROUP_<VENDOR>_<PRODUCT>: global in Placement, so no per-host group number in it;
- one trait for every spec: VFs of one PF share their PF's provider, and nova refuses VFs of one PF with
  different traits (PlacementPciMixedTraitsException); traits without spaces (they are not stripped);
- no `physical_network`: such devices are never reported to Placement;
- `managed` "yes" when the device is on a host driver (libvirt detaches it, the hook moves the rest of its group),
  "no" when it is already on vfio-pci (bound ahead, e.g. reserved): libvirt then leaves it bound.
"""

from __future__ import annotations

import json

from isogroup.core.inventory import GroupEntry, Inventory

TRAIT = "CUSTOM_ISOGROUP_WHOLE_GROUP"


def resource_class(vendor: int, device: int) -> str:
    return f"CUSTOM_ISOGROUP_{vendor:04X}_{device:04X}"


def spec(group: GroupEntry) -> dict[str, str]:
    m = group.requestable
    assert m is not None, "an assignable group has a requestable device"
    f = m.function
    return {
        "address": str(f.address),
        "vendor_id": f"{f.vendor:04x}",
        "product_id": f"{f.device:04x}",
        "managed": "no" if m.ready else "yes",
        "resource_class": resource_class(f.vendor, f.device),
        "traits": TRAIT,
    }


def render(inv: Inventory) -> str:
    out = [
        f"# isogroup inventory for {inv.node}: {len(inv.assignable)} whole IOMMU group(s), one device each",
        "# (the isogroup hook moves the rest of each group when a guest starts).",
        "# Flavor alias, one per device kind (vendor_id/product_id needed unless pci_in_placement is on):",
        "# [pci] alias = "
        + json.dumps(
            {
                "name": "isogroup-<name>",
                "device_type": "type-PCI",
                "vendor_id": "<vendor_id>",
                "product_id": "<product_id>",
                "resource_class": "<resource_class>",
                "traits": TRAIT,
            }
        ),
        "# Placement needs [pci] report_in_placement = True (once on, nova refuses to turn it off again).",
        "[pci]",
    ]
    for group in inv.assignable:
        out.append(f"# IOMMU group {group.group}: " + ", ".join(f"{m.address} {m.function.ids}" for m in group.members))
        out.append("device_spec = " + json.dumps(spec(group)))
    return "\n".join(out) + "\n"
