"""`isogroup status --libvirt`: do libvirt and the ledger tell the same story?

Three views: libvirt's PCI node devices (the IOMMU group it reports for each, and its driver where libvirt
says), the guests libvirt runs (their live definitions, or its status files `/run/libvirt/qemu/NAME.xml`
when given) and the ledger's claims. `compare` is pure; the CLI reads the views and passes them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from isogroup.core import report
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, Phase
from isogroup.core.domain import DomainSpec
from isogroup.core.drivers import VFIO_PCI, is_vfio_driver
from isogroup.errors import InputError
from isogroup.formats.domainxml import parse_status
from isogroup.formats.xml import MAX_XML_BYTES
from isogroup.libvirt.virt import NodeDevice, UnreadableNodeDevice


class Code(StrEnum):
    CLAIM_WITHOUT_GUEST = "claim-without-guest"  # the ledger holds groups for a guest libvirt does not run
    INTERRUPTED = "interrupted-run"  # a claim still preparing or releasing
    UNCLAIMED_GROUP = "unclaimed-group"  # a running guest's device whose group isogroup does not hold
    OTHER_GUEST = "group-of-another-guest"  # libvirt gives a device to one guest, the ledger its group to another
    MOVED_BUT_FREE = "moved-device-on-host-driver"  # isogroup moved it; libvirt sees it back on a host driver
    GROUP_MISMATCH = "group-mismatch"  # the ledger and libvirt place a device in different groups
    DEVICE_GONE = "device-gone"  # a device the ledger moved is not among libvirt's node devices
    STATUS_MISMATCH = "status-mismatch"  # libvirt's status files and its API disagree on what runs
    UNREADABLE_NODE = "unreadable-node-device"  # libvirt gave a node device document isogroup cannot read


@dataclass(frozen=True)
class Disagreement:
    code: Code
    message: str
    domain: str | None = None
    address: PciAddress | None = None
    group: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code.value,
            "domain": self.domain,
            "address": str(self.address) if self.address is not None else None,
            "group": self.group,
            "message": self.message,
        }


def _groups(numbers: Sequence[int]) -> str:
    return ", ".join(map(str, numbers)) or "-"


def _claim_problems(claim: Claim, running: set[str], nodes: dict[PciAddress, NodeDevice]) -> list[Disagreement]:
    out = []
    if claim.phase in (Phase.PREPARING, Phase.RELEASING):
        out.append(
            Disagreement(
                Code.INTERRUPTED,
                f"the claim of '{claim.domain}' is still {claim.phase.value}: a run in progress, or one that died "
                "('isogroup recover' finishes it)",
                claim.domain,
            )
        )
    elif claim.domain not in running:
        out.append(
            Disagreement(
                Code.CLAIM_WITHOUT_GUEST,
                f"guest '{claim.domain}' holds IOMMU group(s) {_groups(claim.groups)} with {len(claim.devices)} "
                f"device(s) moved, but libvirt does not run it: 'isogroup recover --domain {claim.domain}' "
                "gives them back",
                claim.domain,
            )
        )
    for device in claim.devices:
        node = nodes.get(device.address)
        if node is None:
            out.append(
                Disagreement(
                    Code.DEVICE_GONE,
                    f"{device.address}, moved for '{claim.domain}', is not among libvirt's node devices "
                    "(removed from the host?)",
                    claim.domain,
                    device.address,
                    device.group,
                )
            )
            continue
        if node.iommu_group is not None and node.iommu_group != device.group:
            out.append(
                Disagreement(
                    Code.GROUP_MISMATCH,
                    f"the ledger records {device.address} in IOMMU group {device.group}, libvirt in group "
                    f"{node.iommu_group}",
                    claim.domain,
                    device.address,
                    device.group,
                )
            )
        if device.state is DeviceState.MOVED and node.driver is not None and not is_vfio_driver(node.driver):
            out.append(
                Disagreement(
                    Code.MOVED_BUT_FREE,
                    f"libvirt sees {device.address} on {node.driver}, free for the host, but isogroup moved it to "
                    f"{VFIO_PCI} for '{claim.domain}' (someone rebound it: group {device.group} is not isolated)",
                    claim.domain,
                    device.address,
                    device.group,
                )
            )
    return out


def _guest_problems(
    spec: DomainSpec, nodes: dict[PciAddress, NodeDevice], holder_of: dict[int, str]
) -> list[Disagreement]:
    out = []
    seen: set[int] = set()
    for request in spec.pci:
        node = nodes.get(request.address)
        group = node.iommu_group if node is not None else None
        if group is None or group in seen:
            continue
        seen.add(group)
        holder = holder_of.get(group)
        if holder is None:
            out.append(
                Disagreement(
                    Code.UNCLAIMED_GROUP,
                    f"'{spec.name}' runs with {request.address} (IOMMU group {group}) but isogroup holds no claim on "
                    "the group: libvirt treats its other members as free (started without the hook, or hot-plugged "
                    "with plain virsh?)",
                    spec.name,
                    request.address,
                    group,
                )
            )
        elif holder != spec.name:
            out.append(
                Disagreement(
                    Code.OTHER_GUEST,
                    f"libvirt gives {request.address} (IOMMU group {group}) to '{spec.name}', but the ledger says "
                    f"'{holder}' holds group {group}",
                    spec.name,
                    request.address,
                    group,
                )
            )
    return out


def compare(
    claims: Sequence[Claim],
    running: Sequence[DomainSpec],
    nodes: Sequence[NodeDevice | UnreadableNodeDevice],
    status_files: Sequence[DomainSpec] | None = None,
) -> list[Disagreement]:
    """Every disagreement between the ledger, libvirt's running guests and its node devices. With
    `status_files` (libvirt's status directory, read by `read_status_dir`), also between those and the API,
    and the guests' devices are taken from the status files, which name a hostdev network's VF. A node
    device isogroup could not read is a disagreement of its own, first: whatever the ledger says about the
    device it describes cannot be checked (a `device-gone` may be that device)."""
    out: list[Disagreement] = [
        Disagreement(
            Code.UNREADABLE_NODE,
            f"{n.reason}: what the ledger says of that device cannot be checked against libvirt",
        )
        for n in nodes
        if isinstance(n, UnreadableNodeDevice)
    ]
    by_address = {n.address: n for n in nodes if isinstance(n, NodeDevice)}
    guests = {s.name: s for s in running}
    if status_files is not None:
        on_disk = {s.name: s for s in status_files}
        for name in sorted(set(on_disk) - set(guests)):
            out.append(
                Disagreement(
                    Code.STATUS_MISMATCH,
                    f"libvirt has a status file for '{name}' but does not list it as running",
                    name,
                )
            )
        for name in sorted(set(guests) - set(on_disk)):
            out.append(Disagreement(Code.STATUS_MISMATCH, f"libvirt runs '{name}' but has no status file for it", name))
        guests.update(on_disk)
    holder_of = {g: c.domain for c in claims for g in c.groups}
    for claim in claims:
        out += _claim_problems(claim, set(guests), by_address)
    for name in sorted(guests):
        out += _guest_problems(guests[name], by_address, holder_of)
    return out


def read_status_dir(directory: Path) -> list[DomainSpec]:
    """libvirt's status files (`<domstatus>` around the running `<domain>`), one per running guest."""
    try:
        names = sorted(p for p in directory.iterdir() if p.suffix == ".xml" and p.is_file())
    except OSError as exc:
        raise InputError(f"cannot read libvirt's status directory {directory}: {exc.strerror}") from None
    specs = []
    for path in names:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_XML_BYTES + 1)  # one byte more, so parse_xml sees an oversized file
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        spec = parse_status(data, str(path))
        if spec is not None:  # libvirt keeps other state there too
            specs.append(spec)
    return specs


def to_text(uri: str, running: Sequence[str], found: Sequence[Disagreement]) -> str:
    head = f"libvirt at {uri}: {len(running)} running guest(s){': ' if running else ''}{', '.join(running)}"
    if not found:
        return report.lines([head, "libvirt and the ledger agree"])
    return report.lines([head, f"{len(found)} disagreement(s):", *(f"  [{d.code.value}] {d.message}" for d in found)])
