"""Guest script for tests/vm/test_vm_libvirt.py: a real libvirtd starts a nested QEMU with a managed PCI hostdev.
Shows the failure isogroup exists to prevent (a group member left on its host driver makes QEMU's VFIO group
"not viable") and that binding the sibling by hand makes the same `virsh start` succeed; then the full stack:
isogroup installed with `isogroup install-hook` into /etc/libvirt/hooks makes the first `virsh start` succeed,
refuses a second domain sharing the group (its one-line reason inside virsh's "Hook script execution failed"
error) and an absent device, and `virsh destroy` puts every driver back, the sibling libvirt alone would leave
on vfio-pci included. Device names are those of TOPOLOGY in tests/vm/test_vm_libvirt.py.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vm import guest_lib as g
from vm import guest_libvirt as lv
from vm.guest_desktop import fbcon_console, sound_nodes

DOMAIN = "vmbed-hostdev"
SECOND = "vmbed-second"  # asks for the sibling: same group as DOMAIN's hostdev
GHOST = "vmbed-ghost"  # asks for a device the VM does not have
DESKTOP = "desktop-gpu"  # asks for the display function; its HDA audio function shares the group
ABSENT = "0000:7f:1f.7"
HOOK_LOG = Path("/run/vmbed-hooks.log")
# Records every hook call; reads the domain XML from stdin as libvirt expects, prints nothing to stdout.
LOGGING_HOOK = f"""#!/bin/sh
echo "$1 $2 $3 $4" >> {HOOK_LOG}
cat > /dev/null
exit 0
"""


def hook_calls() -> list[str]:
    return HOOK_LOG.read_text().splitlines() if HOOK_LOG.exists() else []


@dataclass(frozen=True)
class Isogroup:
    """How isogroup reached this guest, for the full-stack scenarios: `command` runs its CLI, `install` puts its
    hook into libvirt's hooks directory and checks it (inside the isogroup_hook_installed scenario; libvirtd is
    reloaded afterwards), `hook_log`: the logging qemu hook of daemon_starts runs beside it, so the hook calls
    are checked too."""

    command: Sequence[str]
    install: Callable[[g.Scenario], None]
    hook_log: bool = True


def from_checkout(job: g.Job) -> Isogroup:
    """The checkout's .venv, its hook written by `isogroup install-hook` (test_vm_libvirt.py)."""
    command = (str(job.checkout / ".venv" / "bin" / "isogroup"),)

    def install(s: g.Scenario) -> None:
        g.run([*command, "install-hook", "--hooks-dir", str(lv.HOOKS_DIR)])
        hook = lv.HOOKS_DIR / "qemu.d" / "isogroup"
        s.check(os.access(hook, os.X_OK), f"{hook} installed and executable")
        s.check((lv.HOOKS_DIR / "qemu").exists(), "the existing qemu hook was left alone")

    return Isogroup(command, install)


def isogroup_status(isogroup: Isogroup) -> list[dict[str, object]]:
    """`isogroup status --format json` on the default ledger (/run/isogroup), where the installed hook writes."""
    done = g.run([*isogroup.command, "status", "--format", "json"])
    claims: list[dict[str, object]] = json.loads(done.stdout)
    return claims


def vfio_groups() -> list[str]:
    return sorted(p.name for p in g.DEV_VFIO.iterdir() if p.name != "vfio") if g.DEV_VFIO.is_dir() else []


def hook_failure_line(stderr: str) -> str:
    """What virsh shows of a failed hook's stderr: the text after libvirt's "unexpected exit status N: "."""
    marker = "unexpected exit status 1: "
    for line in stderr.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return ""


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    nic, sibling = job.bdf("lv-e1000e"), job.bdf("lv-virtio")
    g.wait_for(lambda: bool(g.net_interfaces(sibling)))
    home = g.pci_state()
    group = g.iommu_group(nic)
    daemon = lv.Libvirtd()
    try:
        daemon_starts(job, rec, daemon, hook_log=True)
        hostdev_not_viable(job, rec)

        with rec.scenario("hostdev_viable_after_sibling_bound") as s:
            s.equal(g.bind_vfio(sibling), "vfio-pci", "sibling bound to vfio-pci by hand")
            start_domain(s, rec, "start_seconds", "virsh start succeeds")
            s.equal(g.driver(nic), "vfio-pci", "libvirt bound the hostdev to vfio-pci")
            start = time.monotonic()
            lv.virsh("destroy", DOMAIN, check=True)
            rec.meta("destroy_seconds", round(time.monotonic() - start, 1))
            s.equal(lv.domain_state(DOMAIN), "shut off", "domain destroyed")
            s.check(g.wait_for(lambda: g.driver(nic) == "e1000e"), "libvirt gave the hostdev back to e1000e")
            s.equal(g.driver(sibling), "vfio-pci", "the hand-bound sibling stays on vfio-pci")
            s.equal(g.restore_host_driver(sibling), "virtio-pci", "sibling restored by hand")

        with rec.scenario("hooks_called") as s:
            # libvirt 9.0 passes "-" as the release reason (reasons came with 10.5). A failed start still
            # runs stopped and release.
            failed_start = ["prepare begin -", "start begin -", "stopped end -", "release end -"]
            good_start = ["prepare begin -", "start begin -", "started begin -", "stopped end -", "release end -"]
            expected = [f"{DOMAIN} {call}" for call in failed_start + good_start]
            s.equal(hook_calls(), expected, "hook calls, in order, for the failed and the good start")

        isogroup_full_stack(job, rec, daemon, home, group, from_checkout(job))
        desktop_full_stack(job, rec, home)
    finally:
        daemon.stop_after(rec)
    return 0


def daemon_starts(job: g.Job, rec: g.Recorder, daemon: lv.Libvirtd, *, hook_log: bool) -> None:
    """A clean libvirt configuration (no hook unless `hook_log`: the logging qemu hook), the daemon, DOMAIN."""
    with rec.scenario("daemon_starts") as s:
        lv.configure()
        if hook_log:
            lv.install_hook(LOGGING_HOOK)
        start = time.monotonic()
        daemon.start()
        rec.meta("libvirtd_start_seconds", round(time.monotonic() - start, 1))
        s.note(lv.virsh("version").stdout.strip())
        lv.define(DOMAIN, lv.domain_xml(DOMAIN, [job.bdf("lv-e1000e")]))
        s.equal(lv.domain_state(DOMAIN), "shut off", "domain defined")


def start_domain(s: g.Scenario, rec: g.Recorder, meta: str, what: str) -> None:
    """virsh start DOMAIN, its time recorded as meta `meta`; checks `what` (it succeeded, with QEMU's log in the
    scenario's on failure) and that the domain runs."""
    start = time.monotonic()
    done = lv.virsh("start", DOMAIN, timeout=180)
    rec.meta(meta, round(time.monotonic() - start, 1))
    if done.returncode != 0:
        s.note(f"{done.stderr.strip()}\n{lv.qemu_log(DOMAIN)}")
    s.check(done.returncode == 0, what)
    s.equal(lv.domain_state(DOMAIN), "running", "domain running")


def hostdev_not_viable(job: g.Job, rec: g.Recorder) -> None:
    """Without isogroup: the sibling left on its host driver makes QEMU refuse the group."""
    nic, sibling = job.bdf("lv-e1000e"), job.bdf("lv-virtio")
    with rec.scenario("hostdev_not_viable") as s:
        s.equal(g.iommu_group(nic), g.iommu_group(sibling), "hostdev and sibling share a group")
        s.equal(g.driver(sibling), "virtio-pci", "the sibling is on its host driver")
        start = time.monotonic()
        done = lv.virsh("start", DOMAIN, timeout=180)
        rec.meta("failed_start_seconds", round(time.monotonic() - start, 1))
        s.note(done.stderr.strip())
        s.check(done.returncode != 0, "virsh start fails")
        s.check("not viable" in done.stderr, "with QEMU's 'group ... is not viable' error")
        s.equal(g.driver(nic), "e1000e", "libvirt gave the managed hostdev back to e1000e")
        s.equal(g.driver(sibling), "virtio-pci", "the sibling was not touched")


def isogroup_full_stack(
    job: g.Job, rec: g.Recorder, daemon: lv.Libvirtd, home: g.PciState, group: int, isogroup: Isogroup
) -> None:
    """The same domain with isogroup installed as libvirt's qemu.d hook, default ledger /run/isogroup."""
    nic, sibling = job.bdf("lv-e1000e"), job.bdf("lv-virtio")
    calls_before = len(hook_calls())

    with rec.scenario("isogroup_hook_installed") as s:
        s.equal(g.pci_state(), home, "every device on its original driver before isogroup")
        isogroup.install(s)
        daemon.reload()  # libvirtd caches which hooks exist
        lv.define(SECOND, lv.domain_xml(SECOND, [sibling]))
        lv.define(GHOST, lv.domain_xml(GHOST, [ABSENT]))
        s.equal(isogroup_status(isogroup), [], "no claims yet")

    with rec.scenario("isogroup_start_succeeds") as s:
        s.equal(g.driver(sibling), "virtio-pci", "the sibling is on its host driver (the start failed this way)")
        start_domain(s, rec, "isogroup_start_seconds", "virsh start succeeds with isogroup")
        s.equal(g.driver(nic), "vfio-pci", "libvirt bound the hostdev to vfio-pci")
        s.equal(g.driver(sibling), "vfio-pci", "isogroup moved the sibling to vfio-pci")
        claims = isogroup_status(isogroup)
        s.note(f"isogroup status: {claims}")
        s.equal([(c["domain"], c["phase"], c["groups"]) for c in claims], [(DOMAIN, "active", [group])], "one claim")
        devices = [(d["address"], d["original_driver"], d["state"]) for d in claims[0]["devices"]]  # type: ignore[attr-defined]
        s.equal(devices, [(sibling, "virtio-pci", "moved")], "the sibling recorded with its original driver")
        try:
            os.close(os.open(g.DEV_VFIO / str(group), os.O_RDWR))
            held = 0
        except OSError as exc:
            held = exc.errno or 0
        s.equal(held, errno.EBUSY, f"QEMU holds /dev/vfio/{group} (a second open is EBUSY)")

    with rec.scenario("isogroup_refuses_second_domain") as s:
        before, ledger = g.pci_state(), isogroup_status(isogroup)
        done = lv.virsh("start", SECOND, timeout=180)
        s.check(done.returncode != 0, "virsh start of a second domain sharing the group fails")
        s.check("Hook script execution failed" in done.stderr, "as a hook failure")
        expected = f"isogroup refused '{SECOND}': IOMMU group {group} is in use by guest '{DOMAIN}'"
        line = hook_failure_line(done.stderr)
        s.check(line.startswith(expected), f"virsh shows isogroup's one line: {line!r}")
        s.equal(lv.domain_state(SECOND), "shut off", "the second domain is not running")
        s.equal(lv.domain_state(DOMAIN), "running", "the first still runs")
        s.check(g.pci_state() == before, f"nothing moved {g.state_diff(before, g.pci_state())}")
        s.equal(isogroup_status(isogroup), ledger, "the ledger is as before (the second's release touched nothing)")

    with rec.scenario("isogroup_refuses_absent_device") as s:
        before, ledger = g.pci_state(), isogroup_status(isogroup)
        done = lv.virsh("start", GHOST, timeout=180)
        s.check(done.returncode != 0, "virsh start of a domain with an absent hostdev fails")
        line = hook_failure_line(done.stderr)
        s.check(
            line.startswith(f"isogroup refused '{GHOST}': {ABSENT} is not on this host"),
            f"virsh shows isogroup's one line: {done.stderr.strip()!r}",
        )
        s.check(g.pci_state() == before, f"nothing moved {g.state_diff(before, g.pci_state())}")
        s.equal(isogroup_status(isogroup), ledger, "the ledger is as before")

    with rec.scenario("isogroup_destroy_restores") as s:
        start = time.monotonic()
        lv.virsh("destroy", DOMAIN, check=True)
        rec.meta("isogroup_destroy_seconds", round(time.monotonic() - start, 1))
        s.equal(lv.domain_state(DOMAIN), "shut off", "domain destroyed")
        back = g.wait_for(lambda: g.pci_state() == home, timeout=30)
        s.check(back, f"every driver back, driver_override cleared {g.state_diff(home, g.pci_state())}")
        s.equal(
            g.driver(sibling), "virtio-pci", "the sibling is back on virtio-pci (libvirt alone left it on vfio-pci)"
        )
        s.check(g.wait_for(lambda: bool(g.net_interfaces(sibling))), "and has its netdev again")
        s.equal(isogroup_status(isogroup), [], "the ledger is empty")
        s.check(g.wait_for(lambda: not vfio_groups()), f"no /dev/vfio/N left {vfio_groups()}")

    if not isogroup.hook_log:
        return
    with rec.scenario("isogroup_hook_calls") as s:
        calls = hook_calls()[calls_before:]
        s.note(f"hook calls with isogroup installed: {calls}")
        for name in (SECOND, GHOST):
            mine = [c.split(" ", 1)[1] for c in calls if c.startswith(f"{name} ")]
            s.check(mine[:1] == ["prepare begin -"] and "start begin -" not in mine, f"{name}: refused at prepare")
            s.check("release end -" in mine, f"{name}: libvirt still ran release for the failed start: {mine}")
        mine = [c.split(" ", 1)[1] for c in calls if c.startswith(f"{DOMAIN} ")]
        good_start = ["prepare begin -", "start begin -", "started begin -", "stopped end -", "release end -"]
        s.equal(mine, good_start, f"{DOMAIN}: the whole start and stop")


def desktop_full_stack(job: g.Job, rec: g.Recorder, home: g.PciState) -> None:
    """The README's headline case through libvirt with isogroup installed: the display function asked for
    managed='yes', its audio function on snd_hda_intel in the same group (tests/vm/guest_desktop.py does the
    same with the hook alone)."""
    vga, audio = job.bdf("gpu"), job.bdf("gpu-audio")
    group = g.iommu_group(vga)
    lv.define(DESKTOP, lv.domain_xml(DESKTOP, [vga]))

    with rec.scenario("desktop_refused_while_console") as s:
        vt, fbs = fbcon_console(vga)
        s.check(vt is not None, f"the framebuffer console is on the display's {fbs}")
        before = g.pci_state()
        done = lv.virsh("start", DESKTOP, timeout=180)
        s.check(done.returncode != 0, "virsh start fails")
        line = hook_failure_line(done.stderr)
        s.check(line.startswith(f"isogroup refused '{DESKTOP}': "), f"with isogroup's one line: {line!r}")
        s.check("framebuffer console" in line, "naming the framebuffer console")
        s.check(g.pci_state() == before, f"nothing moved {g.state_diff(before, g.pci_state())}")
        s.equal(isogroup_status(from_checkout(job)), [], "the ledger is empty")

    with rec.scenario("desktop_start_and_destroy") as s:
        vt, _ = fbcon_console(vga)
        if vt is not None:
            (vt / "bind").write_text("0")
        s.check(fbcon_console(vga)[0] is None, "the framebuffer console is unbound")
        done = lv.virsh("start", DESKTOP, timeout=180)
        if done.returncode != 0:
            s.note(f"{done.stderr.strip()}\n{lv.qemu_log(DESKTOP)}")
        s.check(done.returncode == 0, "virsh start succeeds")
        s.equal(g.driver(vga), "vfio-pci", "libvirt moved the display")
        s.equal(g.driver(audio), "vfio-pci", "isogroup moved the audio function")
        (claim,) = isogroup_status(from_checkout(job))
        devices = [(d["address"], d["original_driver"]) for d in claim["devices"]]  # type: ignore[attr-defined]
        s.equal((claim["groups"], devices), ([group], [(audio, "snd_hda_intel")]), "the claim")
        lv.virsh("destroy", DESKTOP, check=True)
        s.check(g.wait_for(lambda: g.driver(audio) == "snd_hda_intel"), "release put snd_hda_intel back")
        s.check(g.wait_for(lambda: bool(sound_nodes(audio)), timeout=30), "and its sound card is back")
        s.check(g.wait_for(lambda: g.driver(vga) == "bochs-drm"), "libvirt gave the display back to bochs-drm")
        back = g.wait_for(lambda: g.pci_state() == home, timeout=30)
        s.check(back, f"every driver back, driver_override cleared {g.state_diff(home, g.pci_state())}")
        s.equal(isogroup_status(from_checkout(job)), [], "the ledger is empty")


if __name__ == "__main__":
    sys.exit(main())
