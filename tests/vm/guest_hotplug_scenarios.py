"""Guest script for tests/vm/test_hotplug_vm.py: `isogroup attach-device` / `detach-device` end to end against a
real libvirtd (libvirt 9.0, QEMU 7.2, the host's Debian packages) with the isogroup hook installed.

The group: a NIC (e1000e, the device handed to the guest) and its sibling function (virtio-net) behind one root
port. The nested guests sit in SeaBIOS, which is enough for QEMU to hot-add a vfio-pci device; SeaBIOS is no
ACPI OS, so a guest never acknowledges a hot-unplug: a live detach stays a pending request, and the group goes
home through the hook's release when the guest is destroyed. Device names are those of TOPOLOGY in
tests/vm/test_hotplug_vm.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from vm import guest_lib as g
from vm import guest_libvirt as lv

LEDGER = Path("/run/isogroup")
STATUS_DIR = Path("/run/libvirt/qemu")
WORK = Path("/var/tmp/isogroup-hotplug")  # not /tmp: guest scripts' files live outside the fresh tmpfs


def isogroup(job: g.Job, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return g.run([str(job.checkout / ".venv" / "bin" / "isogroup"), *args], timeout=timeout, check=False)


def claims(job: g.Job) -> list[dict[str, Any]]:
    done = isogroup(job, "status", "--format", "json")
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def dumpxml(name: str, *flags: str) -> str:
    return lv.virsh("dumpxml", name, *flags).stdout


def source_of(bdf: str) -> str:
    """How libvirt writes the device's host address in a hostdev's <source>."""
    _domain, bus, rest = bdf.split(":")
    slot, function = rest.split(".")
    return f"bus='0x{bus}' slot='0x{slot}' function='0x{function}'"


def domain_xml(name: str, hostdevs: list[str] | None = None) -> str:
    """The bed's minimal guest with ACPI: QEMU's pc machine hot-plugs PCI devices through ACPI, and without
    <acpi/> libvirt starts QEMU with -no-acpi ("Bus 'pci.0' does not support hotplugging")."""
    return lv.domain_xml(name, hostdevs or []).replace("</os>", "</os>\n  <features><acpi/></features>")


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    nic, sibling = job.bdf("hp-e1000e"), job.bdf("hp-virtio")
    group = g.iommu_group(nic)
    uri = lv.URI
    WORK.mkdir(parents=True, exist_ok=True)
    device = WORK / "nic.xml"
    device.write_text(lv.hostdev_xml(nic) + "\n")
    # The same device at the guest address of the PIIX3 ISA bridge (00:01.0 on a pc machine): libvirt refuses it
    # only after isogroup has moved the sibling.
    clash = WORK / "nic-clash.xml"
    clash.write_text(
        lv.hostdev_xml(nic).replace(
            "</hostdev>", "<address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/></hostdev>"
        )
        + "\n"
    )
    daemon = lv.Libvirtd()
    try:
        with rec.scenario("daemon_and_guest") as s:
            s.equal(g.iommu_group(sibling), group, "the NIC and its sibling share a group")
            lv.configure()
            done = isogroup(job, "install-hook", "--hooks-dir", str(lv.HOOKS_DIR))
            s.check(done.returncode == 0, f"isogroup install-hook: {done.stderr.strip()}")
            daemon.start()
            lv.define("hp", domain_xml("hp"))
            lv.virsh("start", "hp", timeout=180, check=True)
            s.equal(lv.domain_state("hp"), "running", "guest without passthrough running")

        with rec.scenario("attach_live") as s:
            done = isogroup(job, "attach-device", "-c", uri, "hp", str(device), "--live")
            s.check(done.returncode == 0, f"attach-device exits 0: {done.stderr.strip()}\n{lv.qemu_log('hp')}")
            s.equal(g.driver(sibling), "vfio-pci", "isogroup moved the sibling")
            s.equal(g.driver(nic), "vfio-pci", "libvirt detached the NIC itself (managed='yes')")
            s.check(source_of(nic) in dumpxml("hp"), "the running guest has the NIC")
            (claim,) = claims(job)
            s.equal((claim["domain"], claim["phase"], claim["groups"]), ("hp", "active", [group]), "hp's claim")
            moved = {d["address"]: d["original_driver"] for d in claim["devices"]}
            s.equal(moved, {sibling: "virtio-pci"}, "the sibling is recorded with its driver; the NIC is libvirt's")

        with rec.scenario("live_check_and_agreement") as s:
            lv.define("hp2", domain_xml("hp2", [nic]))
            done = isogroup(job, "check", "-c", uri, "--all")
            s.equal(done.returncode, 1, "check --all refuses hp2: hp holds the group")
            s.check(f"IOMMU group {group} is in use by guest 'hp'" in done.stdout, "and says who holds it")
            done = isogroup(job, "check", "-c", uri, "--domain", "hp")
            s.equal(done.returncode, 0, "hp itself is fine")
            done = isogroup(job, "status", "--libvirt", "-c", uri, "--status-dir", str(STATUS_DIR))
            s.check(done.returncode == 0, f"libvirt and the ledger agree: {done.stdout.strip()} {done.stderr.strip()}")
            lv.virsh("undefine", "hp2", check=True)

        with rec.scenario("detach_not_acknowledged") as s:
            done = isogroup(job, "detach-device", "-c", uri, "hp", str(device), "--live", "--wait", "3")
            s.equal(done.returncode, 3, "detach-device reports that the guest did not let the NIC go")
            s.check("still has it" in done.stderr, f"with that reason: {done.stderr.strip()}")
            s.equal(g.driver(sibling), "vfio-pci", "the group stays isolated while the guest may still use it")
            s.equal([c["groups"] for c in claims(job)], [[group]], "hp's claim is unchanged")

        with rec.scenario("release_after_hotplug") as s:
            lv.virsh("destroy", "hp", check=True)
            s.check(g.wait_for(lambda: g.driver(sibling) == "virtio-pci"), "the hook's release restored the sibling")
            s.check(g.wait_for(lambda: g.driver(nic) == "e1000e"), "libvirt gave the NIC back to e1000e")
            s.equal(claims(job), [], "no claim is left")

        with rec.scenario("attach_refused_by_libvirt_rolls_back") as s:
            lv.virsh("start", "hp", timeout=180, check=True)
            done = isogroup(job, "attach-device", "-c", uri, "hp", str(clash), "--live")
            s.note(done.stderr.strip())
            s.check(done.returncode in (2, 3), f"libvirt's refusal is isogroup's error (exit {done.returncode})")
            s.check(done.stderr.startswith("isogroup: libvirt refused to attach"), "in one line naming libvirt")
            s.equal(done.stderr.count("\n"), 1, "one line")
            s.equal(g.driver(sibling), "virtio-pci", "isogroup put the sibling back")
            s.equal(g.driver(nic), "e1000e", "libvirt put the NIC back")
            s.equal(claims(job), [], "and the ledger is as before")
            s.check(source_of(nic) not in dumpxml("hp"), "the guest does not have the NIC")
            lv.virsh("destroy", "hp", check=True)

        with rec.scenario("attach_config_then_start") as s:
            lv.define("hp3", domain_xml("hp3"))
            done = isogroup(job, "attach-device", "-c", uri, "hp3", str(device), "--config")
            s.check(done.returncode == 0, f"attach-device --config exits 0: {done.stderr.strip()}")
            s.equal(g.driver(sibling), "virtio-pci", "nothing moves for a guest that is not running")
            s.check(source_of(nic) in dumpxml("hp3", "--inactive"), "the definition has the NIC")
            done = lv.virsh("start", "hp3", timeout=180)
            s.check(done.returncode == 0, f"hp3 starts: {done.stderr.strip()}\n{lv.qemu_log('hp3')}")
            s.equal(g.driver(sibling), "vfio-pci", "the hook isolated the group at start")
            lv.virsh("destroy", "hp3", check=True)
            s.check(g.wait_for(lambda: g.driver(sibling) == "virtio-pci"), "and restored it at release")
            done = isogroup(job, "detach-device", "-c", uri, "hp3", str(device), "--config")
            s.check(done.returncode == 0, f"detach-device --config exits 0: {done.stderr.strip()}")
            s.check(source_of(nic) not in dumpxml("hp3", "--inactive"), "the definition no longer has the NIC")
            s.equal(claims(job), [], "no claim")
    finally:
        if rec.data["scenarios"] and not all(r["ok"] for r in rec.data["scenarios"].values()):
            print(lv.Libvirtd.log_tail(), flush=True)
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
