"""`explain`'s answer printed: a JSON document (stable keys; tests hold golden files of it) and the text a person
reads."""

from __future__ import annotations

from isogroup.core.explain.result import Explanation, Prediction
from isogroup.core.report import lines
from isogroup.core.reset import reach_to_json


def to_json(e: Explanation) -> dict[str, object]:
    return {
        "address": str(e.address),
        "ids": e.ids,
        "driver": e.driver,
        "kind": e.kind,
        "kernel_group": e.kernel_group,
        "kernel_members": [str(a) for a in e.kernel_members],
        "predicted_members": [str(a) for a in e.predicted],
        "agreement": e.agreement.value,
        "difference": e.difference,
        "steps": [{"text": s.text, "kernel": s.kernel} for s in e.steps],
        "members": [
            {"address": str(m.address), "ids": m.ids, "driver": m.driver, "why": list(m.why)} for m in e.members
        ],
        "unknown_acs": [str(a) for a in e.unknown_acs],
        "split": [{"kind": s.kind.value, "text": s.text, "ports": [str(p) for p in s.ports]} for s in e.splits],
        "reset": reach_to_json(e.reset),
    }


def to_text(e: Explanation) -> str:
    out = [f"{e.address} [{e.ids}] {e.driver or '(no driver)'}: {e.kind}"]
    if e.agreement is Prediction.NO_IOMMU:
        out.append("the host formed no IOMMU groups (no IOMMU, or it is off): below is what the kernel would form")
    elif e.kernel_group is None:
        out.append("the kernel gave it no IOMMU group")
    else:
        out.append(f"IOMMU group {e.kernel_group}: {', '.join(map(str, e.kernel_members))}")
    out.append("")
    out.append("Why, by the kernel's rules (drivers/iommu/iommu.c pci_device_group):")
    out += [f"  {i}. {s.text}  [{s.kernel}]" for i, s in enumerate(e.steps, 1)]
    if e.members:
        out.append("")
        out.append("Who else is in the group and why:")
        for m in e.members:
            out.append(f"  {m.address} [{m.ids}] {m.driver or '(no driver)'}: {m.why[-1]}")
    out.append("")
    predicted = ", ".join(map(str, e.predicted))
    match e.agreement:
        case Prediction.SAME:
            out.append(f"Predicted group: {predicted}: the same as the kernel's.")
        case Prediction.DIFFERENT:
            out.append(f"Predicted group: {predicted}.")
            out.append(f"But {e.difference}.")
        case Prediction.NO_IOMMU:
            out.append(f"Predicted group (were the IOMMU on): {predicted}.")
        case Prediction.NO_GROUP:
            out.append(f"Predicted group (were it translated): {predicted}; the kernel formed none.")
    if e.unknown_acs:
        out.append(
            f"ACS was not read for {', '.join(map(str, e.unknown_acs))} (config space beyond 64 bytes needs root): "
            "what is said of their ACS is inferred from the kernel's groups or assumed, as marked."
        )
    out.append("")
    out.append("What would split it:")
    out += [f"  - {s.text}" for s in e.splits]
    out += ["", e.reset_text]
    return lines(out)  # driver names and ids come from the host or a snapshot: escaped
