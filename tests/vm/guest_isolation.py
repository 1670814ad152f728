"""Guest script for tests/vm/test_vm_isolation.py: the isolation findings of issue 11 against a real kernel.

- reset: `reset_method` as Debian 6.1 shows it on QEMU's devices, captured by `isogroup snapshot`, and the
  reach core.reset derives from it: the root-bus e1000 has no reset at all, the e1000 alone behind a root
  port resets alone through "bus", virtio behind a port has FLR, and of the two e1000s behind a
  pcie-pci-bridge the first lists a stale "bus" (writing it back fails: the kernel refuses a bus reset for a
  device not alone on its bus) while the second shows no file: both reach each other.
- framebuffer: booted with vga=0x318 and modprobe.blacklist=bochs, vesafb holds the VGA's BAR 0 in
  /proc/iomem; the snapshot says display-framebuffer with vesafb, as root and (addresses hidden) as nobody; after
  the unbind the message names, the finding is gone.
- cmdline: pcie_acs_override on the command line (Debian's kernel ignores the word, /proc/cmdline keeps it)
  gives acs-override on every function.
- power: power_state is read on every function; none is in D3cold, so no power finding.

Device names are those of TOPOLOGY in tests/vm/test_vm_isolation.py.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isogroup.core.address import PciAddress
from isogroup.core.reset import Scope, reset_reach
from isogroup.formats import snapshot
from vm import guest_lib as g

SNAPSHOT = Path("/root/isolation-host.json")
NOBODY_SNAPSHOT = Path("/tmp/isolation-host-nobody.json")


def isogroup(job: g.Job, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(job.checkout / ".venv" / "bin" / "isogroup"), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def capture(job: g.Job, s: g.Scenario, *, user: str | None = None) -> dict[str, Any]:
    out = NOBODY_SNAPSHOT if user else SNAPSHOT
    done = isogroup(job, "snapshot", "-o", str(out), user=user)
    s.equal((done.returncode, done.stderr), (0, ""), f"isogroup snapshot as {'uid ' + user if user else 'root'}")
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def findings(doc: dict[str, Any], code: str) -> dict[str, str]:
    return {f["address"]: f["message"] for f in doc["findings"] if f["code"] == code}


def sysfs_methods(bdf: str) -> str | None:
    path = g.device_dir(bdf) / "reset_method"
    return path.read_text().strip() if path.exists() else None


def reset(job: g.Job, s: g.Scenario) -> None:
    names = ("root-e1000", "alone-e1000", "virtio-nic", "ppb-a", "ppb-b", "vga")
    for name in names:
        s.note(f"{name} {job.bdf(name)}: reset_method {sysfs_methods(job.bdf(name))!r}")
    doc = capture(job, s)
    by_bdf = {f["address"]: f for f in doc["functions"]}
    expected = {
        "root-e1000": ([], Scope.NONE),
        "alone-e1000": (["bus"], Scope.ALONE),
        "virtio-nic": (["flr", "pm", "bus"], Scope.FUNCTION),
        "ppb-a": (["bus"], Scope.BUS),  # stale: see below
        "ppb-b": ([], Scope.BUS),
    }
    host = snapshot.load(SNAPSHOT)
    for name, (methods, scope) in expected.items():
        bdf = job.bdf(name)
        s.equal(by_bdf[bdf].get("reset_methods"), methods, f"{name}: reset_methods in the snapshot")
        s.equal(reset_reach(host, PciAddress.parse(bdf)).scope, scope, f"{name}: reset reach")
    reach = reset_reach(host, PciAddress.parse(job.bdf("ppb-a")))
    s.equal([str(a) for a in reach.reached], [job.bdf("ppb-b")], "ppb-a's bus reset reaches ppb-b")
    # The kernel's own word that ppb-a's "bus" is stale: it refuses to take it back.
    path = g.device_dir(job.bdf("ppb-a")) / "reset_method"
    try:
        path.write_text("bus\n")
        refused = 0
    except OSError as exc:
        refused = exc.errno or 0
    finally:
        path.write_text("default\n")
    s.equal(refused, errno.EINVAL, "writing 'bus' to ppb-a's reset_method")
    # check: the root-bus e1000 warns reset-none; the pcie-pci-bridge's group owns its whole bus: no reset-shared.
    for name, code in (("root-e1000", "reset-none"), ("ppb-a", None)):
        domain = Path(f"/root/isolation-{name}.xml")
        a = PciAddress.parse(job.bdf(name))
        domain.write_text(
            f"<domain type='kvm'><name>iso-{name}</name><devices><hostdev mode='subsystem' type='pci' "
            f"managed='yes'><source><address domain='0x{a.domain:04x}' bus='0x{a.bus:02x}' slot='0x{a.slot:02x}' "
            f"function='0x{a.function:x}'/></source></hostdev></devices></domain>"
        )
        done = isogroup(job, "check", "--host", str(SNAPSHOT), "--format", "json", str(domain))
        (plan,) = json.loads(done.stdout)
        subjects = [n["subject"] for n in plan["notes"]]
        s.note(f"check {name}: exit {done.returncode}, notes {subjects}, problems {plan['problems']}")
        resets = [x for x in subjects if "reset" in x]
        s.equal(resets, [f"warning [{code}]"] if code else [], f"check {name}: reset notes")


def framebuffer(job: g.Job, s: g.Scenario) -> None:
    vga = job.bdf("vga")
    iomem = Path("/proc/iomem").read_text()
    s.check("vesafb" in iomem, "vesafb holds memory in /proc/iomem (booted with vga=0x318, bochs blacklisted)")
    doc = capture(job, s)
    found = findings(doc, "display-framebuffer")
    s.note(f"display-framebuffer: {found}")
    s.check(vga in found and "vesafb" in found[vga], "display-framebuffer on the VGA, naming vesafb")
    s.check("vesa-framebuffer/unbind" in found[vga], "the message says how to release it")
    nobody = findings(capture(job, s, user="65534"), "display-framebuffer")
    s.check(vga in nobody and "addresses hidden" in nobody[vga], "as nobody: nested under the BAR, addresses hidden")
    Path("/sys/bus/platform/drivers/vesa-framebuffer/unbind").write_text("vesa-framebuffer.0\n")
    s.check("vesafb" not in Path("/proc/iomem").read_text(), "after the unbind vesafb is gone from /proc/iomem")
    s.equal(findings(capture(job, s), "display-framebuffer"), {}, "no display-framebuffer after the release")


def cmdline(job: g.Job, s: g.Scenario) -> None:
    s.check("pcie_acs_override=" in Path("/proc/cmdline").read_text(), "the override is on /proc/cmdline")
    doc = capture(job, s)
    found = findings(doc, "acs-override")
    everyone = {f["address"] for f in doc["functions"]}
    s.equal(set(found), everyone, "acs-override on every function")


def power(job: g.Job, s: g.Scenario) -> None:
    states = {p.name: (p / "power_state").read_text().strip() for p in (g.PCI / "devices").iterdir()}
    s.note(f"power_state: {states}")
    s.check(all(v in ("D0", "unknown") for v in states.values()), "every function in D0 (or without PM)")
    s.equal(findings(capture(job, s), "power-d3cold"), {}, "no power-d3cold")


SCENARIOS: dict[str, Callable[[g.Job, g.Scenario], None]] = {
    "reset": reset,
    "cmdline": cmdline,
    "power": power,
    "framebuffer": framebuffer,  # last: it releases the framebuffer
}


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    for name in job.args or tuple(SCENARIOS):
        with rec.scenario(name) as s:
            SCENARIOS[name](job, s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
