"""Guest script for tests/vm/test_vm_probes.py: the host-use probes against a real kernel.

Each scenario puts the guest's own devices to use the way a host does (a partitioned disk mounted with swap on
it, a NIC with an address and the default route, a NIC in a bridge, an LVM physical volume then a mounted
logical volume, a disk held open by a process and one mounted in another mount namespace, the boot VGA with
the framebuffer console and a DRM client, a NIC moved to another network namespace), then runs
`isogroup snapshot` as root and compares the findings with what it set up: exactly those, for every function
of the VM, and none for the idle disk and NIC. Scenarios build on each other in order (the state accumulates),
and each compares the whole snapshot.

Device names are those of TOPOLOGY in tests/vm/test_vm_probes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vm import guest_lib as g

Key = tuple[str, str, str]  # (address, code, subject)
LVM_ENV = {**os.environ, "DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
LVM_CONFIG = "activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }"


@dataclass
class Ctx:
    job: g.Job
    rec: g.Recorder
    expected: dict[Key, str] = field(default_factory=dict)  # key -> a phrase its message must contain
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)

    def bdf(self, name: str) -> str:
        return self.job.bdf(name)

    def isogroup(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return g.run([str(self.job.checkout / ".venv/bin/isogroup"), *args], timeout=120, check=check)

    def snapshot(self, s: g.Scenario) -> dict[Key, str]:
        out = self.job.out / "snapshot.json"
        start = time.monotonic()
        self.isogroup("snapshot", "-o", str(out))
        s.note(f"isogroup snapshot took {time.monotonic() - start:.2f} s")
        doc = json.loads(out.read_text())
        self.last = doc
        s.check(doc["probed"] is True, "the live capture is probed")
        found = {(f["address"], f["code"], f["subject"]): f["message"] for f in doc["findings"]}
        for key, message in sorted(found.items()):
            s.note(f"finding {key}: {message}")
        return found

    def compare(self, s: g.Scenario) -> dict[Key, str]:
        """The whole snapshot's findings are exactly the expected ones, each message with its phrase."""
        found = self.snapshot(s)
        missing = sorted(set(self.expected) - set(found))
        extra = sorted(set(found) - set(self.expected))
        s.check(not missing and not extra, f"findings as expected (missing {missing}, unexpected {extra})")
        for key, phrase in self.expected.items():
            s.check(phrase in found[key], f"{key}: {found[key]!r} says {phrase!r}")
        for name in ("idle-ahci", "idle-nic"):
            s.check(not any(k[0] == self.bdf(name) for k in found), f"{name} is idle: no finding")
        return found

    def hold(self, *command: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self.spawned.append(proc)
        return proc


def disk(ctx: Ctx, name: str) -> str:
    bdf = ctx.bdf(name)
    if not g.wait_for(lambda: bool(g.block_devices(bdf)), timeout=30):
        raise RuntimeError(f"{name} ({bdf}) has no disk")
    return g.block_devices(bdf)[0]


def interface(ctx: Ctx, name: str) -> str:
    bdf = ctx.bdf(name)
    if not g.wait_for(lambda: bool(g.net_interfaces(bdf)), timeout=30):
        raise RuntimeError(f"{name} ({bdf}) has no network interface")
    return g.net_interfaces(bdf)[0]


def partition_names(dev: str) -> list[str]:
    return sorted(p.name for p in Path(f"/sys/class/block/{dev}").iterdir() if p.name.startswith(dev))


# ------------------------------------------------------------------------------------------------ scenarios


def baseline(ctx: Ctx, s: g.Scenario) -> None:
    """Nothing set up yet: the idle disks and NICs have no finding; the boot VGA is probed by `display`."""
    found = ctx.snapshot(s)
    vga = ctx.bdf("vga")
    for key in found:
        s.check(key[0] == vga, f"only the boot VGA may be in use before anything is set up: {key}")
    ctx.expected.update({k: "" for k in found})


def busy_group(ctx: Ctx, s: g.Scenario) -> None:
    """One multifunction group: its AHCI disk partitioned, p1 mounted, p2 swap; a NIC with an address and the
    default route; a NIC enslaved to a bridge."""
    ahci, nic, brnic = ctx.bdf("busy-ahci"), ctx.bdf("busy-nic"), ctx.bdf("busy-brnic")
    s.equal(g.group_members(g.iommu_group(ahci)), sorted([ahci, nic, brnic]), "one group of three functions")
    sd = disk(ctx, "busy-ahci")
    subprocess.run(["sfdisk", "-q", f"/dev/{sd}"], input=b"label: dos\n,48M,L\n,,S\n", check=True, timeout=60)
    s.check(g.wait_for(lambda: len(partition_names(sd)) == 2), f"{sd} has two partitions {partition_names(sd)}")
    p1, p2 = partition_names(sd)
    g.run(["mkfs.ext4", "-q", "-F", f"/dev/{p1}"])
    mnt = Path("/mnt/probes-busy")
    mnt.mkdir(parents=True, exist_ok=True)
    g.run(["mount", f"/dev/{p1}", str(mnt)])
    g.run(["mkswap", f"/dev/{p2}"])
    g.run(["swapon", f"/dev/{p2}"])

    eth, breth = interface(ctx, "busy-nic"), interface(ctx, "busy-brnic")
    g.run(["ip", "link", "set", eth, "up"])
    g.run(["ip", "addr", "add", "192.0.2.10/24", "dev", eth])
    g.run(["ip", "route", "add", "default", "via", "192.0.2.1", "dev", eth, "onlink"])
    g.run(["ip", "link", "add", "br-probe", "type", "bridge"])
    g.run(["ip", "link", "set", breth, "master", "br-probe"])
    g.run(["ip", "link", "set", breth, "up"])
    g.run(["ip", "link", "set", "br-probe", "up"])
    g.run(["ip", "link", "set", interface(ctx, "idle-nic"), "up"])  # up without an address: still idle

    ctx.expected.update(
        {
            (ahci, "storage-mounted", f"/dev/{p1}"): f"(ahci) holds /dev/{p1} mounted at {mnt}",
            (ahci, "storage-swap", f"/dev/{p2}"): f"(ahci) holds /dev/{p2}, active swap",
            (nic, "network-address", eth): f"(e1000e) has {eth} up with 192.0.2.10/24",
            (nic, "network-route", eth): f"carries the default route and 1 more route (192.0.2.0/24) via {eth}",
            (brnic, "network-member", breth): f"(e1000e) has {breth} enslaved to bridge br-probe",
        }
    )
    ctx.compare(s)

    # What the hook's planner makes of it: the group is refused, offline from the snapshot as on the live host.
    domain = ctx.job.out / "busy-guest.xml"
    domain.write_text(
        "<domain type='kvm'><name>busy-guest</name><uuid>5a1c0de0-0000-4000-8000-000000000001</uuid><devices>"
        f"<hostdev mode='subsystem' type='pci' managed='yes'><source>{_address_xml(brnic)}</source></hostdev>"
        "</devices></domain>"
    )
    live = ctx.isogroup("check", "--no-schema", str(domain), check=False)
    offline = ctx.isogroup(
        "check", "--no-schema", "--host", str(ctx.job.out / "snapshot.json"), str(domain), check=False
    )
    s.equal(live.returncode, 1, "check on the live host refuses the group")
    s.check(f"holds /dev/{p1} mounted at {mnt}" in live.stdout, "the refusal names the mounted partition")
    s.equal((offline.returncode, offline.stdout), (live.returncode, live.stdout), "check --host gives the same")


def _address_xml(bdf: str) -> str:
    domain, bus, rest = bdf.split(":")
    slot, function = rest.split(".")
    return f"<address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"


def lvm(ctx: Ctx, s: g.Scenario) -> None:
    """A whole disk made an LVM PV (nothing active: found by its label), then a VG with a mounted LV on it."""
    if shutil.which("pvcreate") is None:
        ctx.rec.meta("skipped", {**ctx.rec.data["meta"].get("skipped", {}), "lvm": "lvm2 is not installed"})
        s.note("skipped: lvm2 is not installed (scripts/vm-packages.txt lists it)")
        return
    ahci = ctx.bdf("lvm-ahci")
    sd = disk(ctx, "lvm-ahci")

    def run_lvm(*args: str) -> None:
        print(f"$ {' '.join(args)}", flush=True)
        done = subprocess.run(
            [*args, "--config", LVM_CONFIG], check=False, env=LVM_ENV, capture_output=True, text=True, timeout=120
        )
        print(done.stdout + done.stderr, flush=True)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} exited with {done.returncode}: {done.stderr.strip()}")

    run_lvm("pvcreate", "-ff", "-y", f"/dev/{sd}")
    ctx.expected[(ahci, "storage-held", f"/dev/{sd}")] = "an LVM physical volume (none of its logical volumes"
    ctx.compare(s)

    run_lvm("vgcreate", "-y", "vgprobe", f"/dev/{sd}")
    run_lvm("lvcreate", "-y", "-L", "16M", "-n", "lv0", "vgprobe")
    lv = Path("/dev/mapper/vgprobe-lv0")
    if not lv.exists():  # without udev, LVM may leave the node to devtmpfs: /dev/dm-N
        dm = next(p.name for p in Path(f"/sys/class/block/{sd}/holders").iterdir())
        lv = Path(f"/dev/{dm}")
    g.run(["mkfs.ext4", "-q", "-F", str(lv)])
    mnt = Path("/mnt/probes-lv")
    mnt.mkdir(parents=True, exist_ok=True)
    g.run(["mount", str(lv), str(mnt)])
    dm = next(p.name for p in Path(f"/sys/class/block/{sd}/holders").iterdir())
    ctx.expected[(ahci, "storage-held", f"/dev/{sd}")] = f"used by LVM logical volume vgprobe-lv0 ({dm})"
    ctx.expected[(ahci, "storage-mounted", "/dev/mapper/vgprobe-lv0")] = (
        f"holds /dev/{sd}, under /dev/mapper/vgprobe-lv0, mounted at {mnt}"
    )
    ctx.compare(s)


def held(ctx: Ctx, s: g.Scenario) -> None:
    """A process holding the disk open (open-nodes); then, instead, a mount in a private mount namespace that
    this one cannot see: the kernel's refusal of an exclusive open is what tells (storage-busy)."""
    ahci = ctx.bdf("held-ahci")
    sd = disk(ctx, "held-ahci")
    g.run(["mkfs.ext4", "-q", "-F", f"/dev/{sd}"])
    holder = ctx.hold("sh", "-c", f"exec 3</dev/{sd}; exec sleep 600")
    s.check(g.wait_for(lambda: f"/dev/{sd}" in _fd_targets(holder.pid)), f"pid {holder.pid} holds /dev/{sd}")
    ctx.expected[(ahci, "open-nodes", f"/dev/{sd}")] = f"has /dev/{sd} held open by sleep (pid {holder.pid})"
    ctx.compare(s)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    del ctx.expected[(ahci, "open-nodes", f"/dev/{sd}")]

    Path("/mnt/probes-hidden").mkdir(parents=True, exist_ok=True)
    hidden = ctx.hold(
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f"mount /dev/{sd} /mnt/probes-hidden && echo mounted > {ctx.job.out}/hidden && exec sleep 600",
    )  # fmt: skip
    s.check(g.wait_for((ctx.job.out / "hidden").exists, timeout=30), "mounted in another namespace")
    s.check(f"/dev/{sd}" not in Path("/proc/self/mountinfo").read_text(), "this namespace does not see the mount")
    ctx.expected[(ahci, "storage-busy", f"/dev/{sd}")] = f"holds /dev/{sd}, which the kernel reports busy"
    ctx.compare(s)
    hidden.send_signal(signal.SIGKILL)
    hidden.wait()
    s.check(g.wait_for(lambda: _exclusive_open_ok(f"/dev/{sd}"), timeout=30), "the namespace's mount went with it")
    del ctx.expected[(ahci, "storage-busy", f"/dev/{sd}")]
    ctx.compare(s)


def _fd_targets(pid: int) -> set[str]:
    try:
        return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return set()


def _exclusive_open_ok(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_EXCL))
    except OSError:
        return False
    return True


def display(ctx: Ctx, s: g.Scenario) -> None:
    """The boot VGA device (QEMU's std VGA, bochs-drm): the framebuffer console on its DRM fb; then a process
    holding its DRM card node."""
    vga = ctx.bdf("vga")
    s.equal((g.device_dir(vga) / "boot_vga").read_text().strip(), "1", "the std VGA is the boot VGA device")
    s.check(g.wait_for(lambda: any((g.device_dir(vga) / "drm").glob("card*")), timeout=30), "bochs-drm bound")
    card = next(p.name for p in (g.device_dir(vga) / "drm").glob("card*"))
    fbs = sorted(p.name for p in (g.device_dir(vga) / "graphics").glob("fb*"))
    s.check(bool(fbs), f"its DRM driver gave it a framebuffer {fbs}")
    for vt in sorted(Path("/sys/class/vtconsole").iterdir()):
        s.note(f"{vt.name}: {(vt / 'name').read_text().strip()} bind={(vt / 'bind').read_text().strip()}")
    ctx.expected = {k: v for k, v in ctx.expected.items() if k[0] != vga}
    ctx.expected[(vga, "display-console", fbs[0])] = f"is the boot VGA device with the framebuffer console on {fbs[0]}"
    ctx.compare(s)
    client = ctx.hold("sh", "-c", f"exec 3</dev/dri/{card}; exec sleep 600")
    s.check(g.wait_for(lambda: f"/dev/dri/{card}" in _fd_targets(client.pid)), f"pid {client.pid} holds {card}")
    ctx.expected[(vga, "display-clients", f"/dev/dri/{card}")] = f"held open by sleep (pid {client.pid})"
    ctx.compare(s)


def netns(ctx: Ctx, s: g.Scenario) -> None:
    """A NIC moved into another network namespace vanishes from this one's sysfs: could not tell."""
    nic = ctx.bdf("ns-nic")
    eth = interface(ctx, "ns-nic")
    g.run(["ip", "netns", "add", "probe-ns"])
    g.run(["ip", "link", "set", eth, "netns", "probe-ns"])
    s.equal(g.net_interfaces(nic), [], "its interface is not visible here any more")
    ctx.expected[(nic, "network-unknown", "net")] = "could not tell whether its network interface is in use"
    ctx.compare(s)


def timing(ctx: Ctx, s: g.Scenario) -> None:
    """How long probing takes on this (TCG-emulated) guest: the whole capture, the probes, the /proc fd scan."""
    from isogroup.core.address import PciAddress
    from isogroup.host.probes import ProbeSeams, probe_report
    from isogroup.host.probes.base import ProbeContext
    from isogroup.host.probes.nodes import build_index, scan_open_files

    addresses = [PciAddress.parse(n) for n in os.listdir("/sys/bus/pci/devices")]
    seams = ProbeSeams.live_host()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        probe_report(seams, addresses)
        rounds.append(time.perf_counter() - start)
    context = ProbeContext(seams)
    targets = [t for a in addresses if (t := context.target(a)) is not None]
    index = build_index(context, targets)
    scans = []
    for _ in range(5):
        start = time.perf_counter()
        scan_open_files(context, index)
        scans.append(time.perf_counter() - start)
    processes = sum(1 for e in os.listdir("/proc") if e.isdigit())
    fds = sum(
        len(os.listdir(f"/proc/{p}/fd")) for p in os.listdir("/proc") if p.isdigit() and os.path.isdir(f"/proc/{p}/fd")
    )
    figures = {
        "functions": len(addresses),
        "probe_all_ms": round(sorted(rounds)[2] * 1000, 1),
        "fd_scan_ms": round(sorted(scans)[2] * 1000, 1),
        "processes": processes,
        "open_files": fds,
    }
    s.note(f"figures: {figures}")
    ctx.rec.meta("probe_timing", figures)


SCENARIOS: dict[str, Callable[[Ctx, g.Scenario], None]] = {
    "baseline": baseline,
    "busy_group": busy_group,
    "lvm": lvm,
    "held": held,
    "display": display,
    "netns": netns,
    "timing": timing,
}


def main() -> int:
    job = g.load_job()
    ctx = Ctx(job, g.Recorder(job.out))
    try:
        ctx.rec.run(SCENARIOS, ctx, job.args)
    finally:
        for proc in ctx.spawned:
            if proc.poll() is None:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
