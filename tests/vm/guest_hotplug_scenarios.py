"""Guest script for tests/vm/test_hotplug_vm.py: `isogroup attach-device` / `detach-device` end to end against a
real libvirtd (libvirt 9.0, QEMU 7.2, the host's Debian packages) with the isogroup hook installed.

The group: a NIC (e1000e, the device handed to the guest) and its sibling function (virtio-net) behind one root
port. The nested guest 'hp' runs an OS: the bed's own kernel with an initramfs that only sleeps
(tests/vm/initramfs.py build_idle_initramfs); the kernel's built-in ACPI PCI hotplug (acpiphp, on QEMU's pc
machine) acknowledges a hot-unplug, so a live detach completes: QEMU deletes the device, libvirt emits
DEVICE_REMOVED, and only then does detach-device restore the group. 'hp-bios' sits in SeaBIOS, which is no ACPI
OS: it never acknowledges an unplug, so its live detach stays a pending request and the group goes home through
the hook's release when the guest is destroyed. Device names are those of TOPOLOGY in tests/vm/test_hotplug_vm.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from vm import guest_lib as g
from vm import guest_libvirt as lv
from vm.initramfs import IDLE_READY, build_idle_initramfs

LEDGER = Path("/run/isogroup")
STATUS_DIR = Path("/run/libvirt/qemu")
WORK = Path("/var/tmp/isogroup-hotplug")  # not /tmp: guest scripts' files live outside the fresh tmpfs
BUSYBOX = Path("/bin/busybox")
# Nested TCG under TCG: the nested kernel takes minutes to boot; every wait on it is bounded.
NESTED_BOOT_S = 480.0
DETACH_WAIT_S = 120.0


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


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def serial_log(name: str) -> Path:
    return Path("/var/log/libvirt/qemu") / f"{name}-serial.log"


def nested_os_xml(name: str, job: g.Job) -> str:
    """domain_xml with an OS: the bed's kernel (the guest sees the host's checkout over 9p) and an initramfs
    holding only busybox, its serial console written to serial_log(name)."""
    kernel_root = job.checkout / ".cache" / "vm" / "kernel"
    version = (kernel_root / "VERSION").read_text().strip()
    initrd = build_idle_initramfs(BUSYBOX, WORK / "nested-initrd.cpio")
    boot = (
        f"<kernel>{kernel_root / 'boot' / f'vmlinuz-{version}'}</kernel><initrd>{initrd}</initrd>"
        # quiet: every console line costs nested TCG time; acpiphp is built in and on by default.
        "<cmdline>console=ttyS0 quiet panic=-1 mitigations=off</cmdline></os>"
    )
    serial = f"<serial type='file'><source path='{serial_log(name)}'/><target port='0'/></serial>"
    xml = lv.domain_xml(name, [], memory_mib=256).replace("</os>", boot)
    return xml.replace("</os>", "</os>\n  <features><acpi/></features>").replace("</devices>", serial + "</devices>")


class Watch:
    """`virsh event NAME --event device-removed` in the background, and a thread noting when `bdf` is back on
    `driver`: wall-clock times, so that the order of the two can be compared."""

    def __init__(self, name: str, bdf: str, driver: str, timeout: float) -> None:
        self.event = subprocess.Popen(
            ["virsh", "-c", lv.URI, "event", name, "--event", "device-removed", "--timestamp",
             "--timeout", str(int(timeout))],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.restored_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(bdf, driver), daemon=True)
        self._thread.start()
        self.timeout = timeout

    def _poll(self, bdf: str, driver: str) -> None:
        while not self._stop.is_set():
            try:
                if g.driver(bdf) == driver:
                    self.restored_at = time.time()
                    return
            except OSError:  # the driver link vanished between looking and reading it: mid-rebind
                pass
            time.sleep(0.02)

    def finish(self) -> tuple[str, float | None]:
        """virsh's output and the event's time (None when no event came)."""
        try:
            out, _ = self.event.communicate(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:
            self.event.kill()
            out, _ = self.event.communicate()
        self._stop.set()
        self._thread.join(timeout=5)
        for line in out.splitlines():
            if "device-removed" in line:
                stamp = line.split(": event", 1)[0]
                return out, datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
        return out, None


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
            lv.define("hp", nested_os_xml("hp", job))
            started = time.monotonic()
            lv.virsh("start", "hp", timeout=180, check=True)
            s.equal(lv.domain_state("hp"), "running", "guest without passthrough running")
            booted = g.wait_for(lambda: IDLE_READY in _text(serial_log("hp")), timeout=NESTED_BOOT_S, interval=2)
            rec.meta("nested_boot_seconds", round(time.monotonic() - started, 1))
            s.check(booted, f"the nested kernel reached its init in {time.monotonic() - started:.0f} s")
            acpiphp = [line for line in _text(serial_log("hp")).splitlines() if "acpiphp" in line]
            s.note(f"nested console: {acpiphp or 'no acpiphp line (quiet)'}")

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

        with rec.scenario("detach_live_completes") as s:
            # The nested kernel acknowledges the unplug; detach-device restores the sibling only after libvirt's
            # DEVICE_REMOVED, which virsh event reports with its time.
            watch = Watch("hp", sibling, "virtio-pci", timeout=DETACH_WAIT_S + 60)
            time.sleep(1)  # virsh event registers its callback before the detach is asked
            asked = time.time()
            done = isogroup(
                job, "detach-device", "-c", uri, "hp", str(device), "--live", "--wait", str(int(DETACH_WAIT_S)),
                timeout=DETACH_WAIT_S + 120,
            )  # fmt: skip
            returned = time.time()
            events, removed_at = watch.finish()
            s.note(f"virsh event: {events.strip()!r}")
            s.check(done.returncode == 0, f"detach-device exits 0: {done.stderr.strip()}\n{lv.qemu_log('hp')}")
            s.check(removed_at is not None, "libvirt emitted DEVICE_REMOVED")
            assert removed_at is not None
            s.check(watch.restored_at is not None, "the sibling is back on virtio-pci")
            assert watch.restored_at is not None
            s.note(
                f"device removed {removed_at - asked:.2f} s after the request, sibling restored "
                f"{watch.restored_at - asked:.2f} s after it, detach-device returned after {returned - asked:.2f} s"
            )
            rec.meta(
                "detach_seconds",
                {"removed": round(removed_at - asked, 2), "restored": round(watch.restored_at - asked, 2)},
            )
            s.check(watch.restored_at >= removed_at, "the group was restored only after DEVICE_REMOVED")
            s.check(g.wait_for(lambda: g.driver(nic) == "e1000e"), "libvirt gave the NIC back to e1000e")
            s.check(source_of(nic) not in dumpxml("hp"), "the running guest no longer has the NIC")
            s.equal(lv.domain_state("hp"), "running", "and keeps running")
            s.equal(claims(job), [], "no claim is left")
            lv.virsh("destroy", "hp", check=True)

        with rec.scenario("detach_not_acknowledged") as s:
            lv.define("hp-bios", domain_xml("hp-bios"))
            lv.virsh("start", "hp-bios", timeout=180, check=True)
            done = isogroup(job, "attach-device", "-c", uri, "hp-bios", str(device), "--live")
            s.check(done.returncode == 0, f"attach-device to the SeaBIOS guest exits 0: {done.stderr.strip()}")
            done = isogroup(job, "detach-device", "-c", uri, "hp-bios", str(device), "--live", "--wait", "3")
            s.equal(done.returncode, 3, "detach-device reports that the guest did not let the NIC go")
            s.check("still has it" in done.stderr, f"with that reason: {done.stderr.strip()}")
            s.equal(g.driver(sibling), "vfio-pci", "the group stays isolated while the guest may still use it")
            s.equal([c["groups"] for c in claims(job)], [[group]], "hp-bios's claim is unchanged")

        with rec.scenario("release_after_hotplug") as s:
            lv.virsh("destroy", "hp-bios", check=True)
            s.check(g.wait_for(lambda: g.driver(sibling) == "virtio-pci"), "the hook's release restored the sibling")
            s.check(g.wait_for(lambda: g.driver(nic) == "e1000e"), "libvirt gave the NIC back to e1000e")
            s.equal(claims(job), [], "no claim is left")

        with rec.scenario("attach_refused_by_libvirt_rolls_back") as s:
            lv.virsh("start", "hp-bios", timeout=180, check=True)
            done = isogroup(job, "attach-device", "-c", uri, "hp-bios", str(clash), "--live")
            s.note(done.stderr.strip())
            s.check(done.returncode in (2, 3), f"libvirt's refusal is isogroup's error (exit {done.returncode})")
            s.check(done.stderr.startswith("isogroup: libvirt refused to attach"), "in one line naming libvirt")
            s.equal(done.stderr.count("\n"), 1, "one line")
            s.equal(g.driver(sibling), "virtio-pci", "isogroup put the sibling back")
            s.equal(g.driver(nic), "e1000e", "libvirt put the NIC back")
            s.equal(claims(job), [], "and the ledger is as before")
            s.check(source_of(nic) not in dumpxml("hp-bios"), "the guest does not have the NIC")
            lv.virsh("destroy", "hp-bios", check=True)

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
        daemon.stop_after(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
