"""Guest script for tests/vm/test_vm_explain.py: `isogroup explain` on every PCI function of a real kernel, whose own
IOMMU groups are the answer key. Device names are those of TOPOLOGY in tests/vm/test_vm_explain.py.

As root the whole config space is readable, so `isogroup snapshot` records the PCIe port types and the ACS
capabilities QEMU's devices really have; unprivileged, the same capture stops at 64 bytes and explain must
infer ACS from the kernel's groups. Either way explain's predicted group must be the kernel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vm import guest_lib as g

SNAPSHOT = Path("/root/explain-host.json")
UNPRIVILEGED = Path("/tmp/explain-host-nobody.json")  # /tmp: the one place user nobody may write


def isogroup(job: g.Job, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(job.checkout / ".venv" / "bin" / "isogroup"), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def all_functions() -> list[str]:
    return sorted(p.name for p in (g.PCI / "devices").iterdir())


def kernel_members(bdf: str) -> list[str] | None:
    """The members of the function's kernel IOMMU group; None when the kernel gave it none. Under AMD-Vi the
    IOMMU's own PCI function (QEMU's amd-iommu, 1022:0020) is translated by no IOMMU and has no group; with
    Intel's model, whose IOMMU is no PCI function, every function has one."""
    if not (g.device_dir(bdf) / "iommu_group").exists():
        return None
    return sorted(g.group_members(g.iommu_group(bdf)))


def explain_json(job: g.Job, bdf: str, *source: str) -> dict[str, Any]:
    done = isogroup(job, "explain", bdf, *source, "--format", "json")
    if done.returncode != 0:
        raise AssertionError(f"isogroup explain {bdf} exited {done.returncode}: {done.stderr.strip()}")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def snapshot_reads_capabilities(job: g.Job, s: g.Scenario, rec: g.Recorder) -> None:
    done = isogroup(job, "snapshot", "-o", str(SNAPSHOT))
    s.equal((done.returncode, done.stderr), (0, ""), "isogroup snapshot as root")
    doc = json.loads(SNAPSHOT.read_text())
    by_bdf = {f["address"]: f for f in doc["functions"]}
    s.equal(sorted(by_bdf), all_functions(), "the snapshot has every PCI function")
    unread = [a for a, f in by_bdf.items() if not f["capabilities_read"]]
    s.equal(unread, [], "as root every function's capabilities were read")
    caps = {
        a: (f["vendor"] + ":" + f["device"], f["pcie_type"], f["acs_cap"], f["acs_ctrl"]) for a, f in by_bdf.items()
    }
    for bdf, found in sorted(caps.items()):
        s.note(f"{bdf} {found}")

    def facts(name: str) -> tuple[Any, ...]:
        return caps[job.bdf(name)][1:]

    s.equal(facts("rp-acs")[0], 4, "rp-acs is a PCIe root port")
    s.check(facts("rp-acs")[1] is not None, f"rp-acs has an ACS capability: {facts('rp-acs')}")
    s.equal(facts("rp-noacs"), (4, None, None), "rp-noacs (disable-acs=on) is a root port without ACS capability")
    s.equal(facts("ppb")[0], 7, "the pcie-pci-bridge is a PCIe-to-PCI bridge")
    s.equal(facts("ppb-e1000"), (None, None, None), "the e1000 behind it is conventional PCI")
    rec.meta("capabilities", {a: list(v) for a, v in caps.items()})


def explain_every_function_live(job: g.Job, s: g.Scenario, rec: g.Recorder) -> None:
    """The CLI on the live /sys, for every function: the predicted group is the kernel's. (Each run starts
    Python over 9p, seconds apiece: a few at a time.)"""
    functions = all_functions()
    with ThreadPoolExecutor(max_workers=4) as pool:
        docs = dict(zip(functions, pool.map(lambda bdf: explain_json(job, bdf), functions), strict=True))
    wrong = []
    for bdf, doc in docs.items():
        kernel = kernel_members(bdf)
        if kernel is None:
            s.equal((doc["agreement"], doc["kernel_members"]), ("no-group", []), f"{bdf}: explain says it has no group")
            s.note(f"{bdf} {g.vendor_device(bdf)}: no IOMMU group; explain: {doc['agreement']}")
            continue
        s.equal(doc["kernel_members"], kernel, f"{bdf}: explain reads the kernel's group")
        if doc["agreement"] != "same" or doc["predicted_members"] != kernel:
            wrong.append(f"{bdf}: predicted {doc['predicted_members']}, kernel {kernel}: {doc['difference']}")
        else:
            s.note(f"{bdf}: group {doc['kernel_group']} {kernel}: predicted the same")
    s.equal(wrong, [], "explain's predicted group is the kernel's for every function")


def explain_every_function_snapshot(job: g.Job, s: g.Scenario, rec: g.Recorder) -> None:
    """The library on the root snapshot: the same answers as on /sys, and every predicted group is a kernel group."""
    from isogroup.core.explain import explain, predicted_groups
    from isogroup.formats import snapshot

    host = snapshot.load(SNAPSHOT)
    kernel_groups = sorted(tuple(grp.members) for grp in host.groups)
    s.equal(sorted(predicted_groups(host)), kernel_groups, "predicted groups == the kernel's groups")
    for func in host.functions:
        e = explain(host, func.address)
        expected = "same" if func.iommu_group is not None else "no-group"
        s.check(e.agreement.value == expected, f"{func.address}: {e.agreement.value} {e.difference or ''}")


def named_groups(job: g.Job, s: g.Scenario, rec: g.Recorder) -> None:
    """The rules one by one, each against the kernel (the library on the root snapshot)."""
    from isogroup.core.address import PciAddress
    from isogroup.core.explain import Explanation, explain
    from isogroup.formats import snapshot

    host = snapshot.load(SNAPSHOT)

    def why(name: str) -> Explanation:
        e = explain(host, PciAddress.parse(job.bdf(name)))
        s.equal(e.agreement.value, "same", f"{name}: agrees with the kernel")
        return e

    def predicted(name: str) -> list[str]:
        return [str(a) for a in why(name).predicted]

    def steps(name: str) -> str:
        return "\n".join(step.text for step in why(name).steps)

    def bdfs(*names: str) -> list[str]:
        return sorted(job.bdf(n) for n in names)

    s.equal(predicted("acs-nic"), bdfs("acs-nic"), "behind an ACS root port: alone")
    s.check("SV RR CR UF enabled: isolates" in steps("acs-nic"), "the ACS port's capability is read and named")
    s.equal(predicted("noacs-nic"), bdfs("rp-noacs", "noacs-nic"), "behind a port without ACS: with the port")
    s.check("no ACS capability: this port does not isolate" in steps("noacs-nic"), "the port is named as the cause")
    s.equal(predicted("mf-vnet"), bdfs("mf-nic", "mf-vnet"), "two functions without ACS behind an ACS port")
    s.equal(
        predicted("mfn-vnet"), bdfs("rp-mf-noacs", "mfn-nic", "mfn-vnet"), "two functions behind a port without ACS"
    )
    behind = bdfs("ppb", "ppb-e1000", "ppb-pb", "pb-e1000")
    s.equal(predicted("pb-e1000"), behind, "behind a pci-bridge behind a pcie-pci-bridge: one requester ID")
    s.check("is a PCIe-to-PCI bridge" in steps("ppb-e1000"), "the requester-ID step names the PCIe-to-PCI bridge")
    s.equal(predicted("pb2-e1000"), bdfs("pb", "pb2-e1000"), "behind a conventional bridge on the root bus")
    s.check("conventional PCI bridge" in steps("pb2-e1000"), "the requester-ID step names the conventional bridge")
    s.equal(predicted("rc-e1000e"), bdfs("rc-e1000e"), "an Intel integrated endpoint on the root bus: alone")
    s.check("Intel RCiEP ACS quirk" in steps("rc-e1000e"), "the Intel RCiEP quirk is why")
    s.equal(predicted("rc-vnet"), bdfs("rc-vnet"), "its virtio sibling: no sibling without ACS to join")
    s.equal(predicted("rc-vnet1"), bdfs("rc-vnet1", "rc-vnet2"), "two virtio functions on the root bus: together")


def text_and_errors(job: g.Job, s: g.Scenario, rec: g.Recorder) -> None:
    done = isogroup(job, "explain", job.bdf("mfn-vnet"))
    s.equal((done.returncode, done.stderr), (0, ""), "text format on the live host")
    s.note(done.stdout)
    s.check("the same as the kernel's" in done.stdout, "the text says the prediction matches the kernel")
    s.check("pcie_acs_override=multifunction" in done.stdout, "it names the ACS override its functions need")
    s.check("no longer blocked by hardware" in done.stdout, "and what the override gives up")
    done = isogroup(job, "explain", "0000:7f:1f.7")
    s.equal(done.returncode, 2, "an address the host does not have: exit 2")
    s.check(done.stderr.startswith("isogroup: ") and done.stderr.count("\n") == 1, f"one line: {done.stderr!r}")


def unprivileged_capture(job: g.Job, s: g.Scenario, rec: g.Recorder) -> None:
    """Without root the config space stops at 64 bytes: ACS is unknown, inferred from the kernel's groups."""
    from isogroup.core.explain import explain
    from isogroup.formats import snapshot

    done = isogroup(job, "snapshot", "-o", str(UNPRIVILEGED), user="65534")
    s.equal((done.returncode, done.stderr), (0, ""), "isogroup snapshot as user nobody")
    host = snapshot.load(UNPRIVILEGED)
    s.check(not any(f.capabilities_read for f in host.functions), "no function's capabilities were read")
    wrong = []
    for func in host.functions:
        e = explain(host, func.address)
        if e.agreement.value != ("same" if func.iommu_group is not None else "no-group"):
            wrong.append(f"{func.address}: {e.agreement.value} {e.difference}")
    s.equal(wrong, [], "with ACS inferred, every predicted group is still the kernel's")
    doc = explain_json(job, job.bdf("noacs-nic"), "--host", str(UNPRIVILEGED))
    s.check(job.bdf("rp-noacs") in doc["unknown_acs"], "the CLI reports the port's ACS as unknown")
    texts = [step["text"] for step in doc["steps"]]
    s.check(any("ACS unknown" in t and "so it does not isolate" in t for t in texts), f"and inferred: {texts}")


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    rec.meta("uid", os.getuid())
    scenarios: tuple[tuple[str, Callable[[g.Job, g.Scenario, g.Recorder], None]], ...] = (
        ("snapshot_reads_capabilities", snapshot_reads_capabilities),
        ("explain_every_function_live", explain_every_function_live),
        ("explain_every_function_snapshot", explain_every_function_snapshot),
        ("named_groups", named_groups),
        ("text_and_errors", text_and_errors),
        ("unprivileged_capture", unprivileged_capture),
    )
    for name, scenario in scenarios:
        with rec.scenario(name) as s:
            scenario(job, s, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
