"""Guest script for tests/vm/test_vm_desktop.py: the README's headline case (xml-samples/domains/desktop-gpu.xml
on xml-samples/hosts/desktop-gpu.json) on a real kernel. A display function (QEMU's std VGA, bochs-drm, the boot
VGA device with the framebuffer console) and an HDA audio function (ich9-intel-hda with a codec, snd_hda_intel)
are one multifunction slot behind a root port without ACS: one group with the port. The guest asks for the
display function, managed='yes'.

The hook is run as libvirt runs it and libvirt's own managed='yes' part is done between the calls, as in
tests/vm/guest_isogroup_scenarios.py (whose helpers this reuses). In order: the framebuffer console is on the
display (the display probe refuses the start); the console is unbound and a process holds the audio function's
PCM open (the open-nodes probe refuses); then nothing holds it and the guest starts: isogroup moves the audio
function, libvirt the display, the VFIO viability ioctl says viable, and release gives snd_hda_intel and
bochs-drm their functions back. Device names are those of TOPOLOGY in tests/vm/test_vm_desktop.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from vm import guest_isogroup_scenarios as scn
from vm import guest_lib as g

DOMAIN = "desktop-gpu"
AUDIO_DRIVER = "snd_hda_intel"
DISPLAY_DRIVER = "bochs-drm"


def fbcon_console(vga: str) -> tuple[Path | None, list[str]]:
    """The bound framebuffer console's vtconsole (or None) and the display function's own framebuffers."""
    fbs = sorted(p.name for p in (g.device_dir(vga) / "graphics").glob("fb*"))
    for vt in sorted(Path("/sys/class/vtconsole").iterdir()):
        if "frame buffer" in (vt / "name").read_text() and (vt / "bind").read_text().strip() == "1":
            return vt, fbs
    return None, fbs


def sound_nodes(audio: str) -> list[str]:
    """/dev/snd nodes of the audio function (sound/cardN/{controlCN,pcmCNDMp,...} below it in sysfs)."""
    return sorted(f"/dev/snd/{p.name}" for p in g.device_dir(audio).glob("sound/card*/*") if (p / "dev").exists())


def _holds(pid: int, node: str) -> bool:
    try:
        return any(fd.readlink() == Path(node) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


# Opens the node (without blocking on a busy PCM), says so on stdout, then sleeps holding it.
_HOLD = (
    "import os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK); print('open', flush=True); "
    "time.sleep(600)"
)


def hold_open(node: str) -> subprocess.Popen[bytes] | None:
    """A process holding `node` open, or None (and its error in the log) when the open failed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, node], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    if proc.stdout.readline().strip() == b"open" and _holds(proc.pid, node):
        return proc
    proc.kill()
    print(f"hold_open {node}: {proc.stderr.read().decode().strip()}", flush=True)
    proc.wait(timeout=30)
    return None


def desktop_group(ctx: scn.Ctx, s: g.Scenario) -> None:
    """The group is the root port, the display and its audio function, each on its host driver; the display is
    the boot VGA device and carries the framebuffer console; the isogroup hook is installed."""
    job = ctx.job
    port, vga, audio = job.bdf("rp-gpu"), job.bdf("gpu"), job.bdf("gpu-audio")
    group = g.iommu_group(vga)
    s.equal(g.group_members(group), sorted([port, vga, audio]), f"group {group}: port, display, audio")
    s.equal([g.driver(port), g.driver(vga), g.driver(audio)], ["pcieport", DISPLAY_DRIVER, AUDIO_DRIVER], "drivers")
    s.equal((g.device_dir(vga) / "boot_vga").read_text().strip(), "1", "the display is the boot VGA device")
    vt, fbs = fbcon_console(vga)
    s.check(vt is not None and bool(fbs), f"the framebuffer console is on its framebuffer {fbs} ({vt})")
    nodes = sound_nodes(audio)
    s.note(f"sound nodes: {nodes}")
    s.check(any("pcm" in n and n.endswith("p") for n in nodes), "the codec gave the card a playback PCM")
    ctx.iso = scn.Isogroup(ctx)


def refused_display_console(ctx: scn.Ctx, s: g.Scenario) -> None:
    """The display function carries the framebuffer console: the display probe refuses the start, nothing moves."""
    iso = scn.fresh(ctx)
    vga = ctx.job.bdf("gpu")
    before = g.pci_state()
    dom = scn.Domain(iso, DOMAIN, [vga])
    refused = dom.start()
    s.check(refused is not None, "the guest does not start")
    assert refused is not None
    scn.expect_refused(s, refused, DOMAIN, "framebuffer console")
    s.check(vga in refused.stderr, f"the reason names the display {vga}")
    scn.expect_unchanged(s, before, iso, [])


def refused_open_pcm(ctx: scn.Ctx, s: g.Scenario) -> None:
    """With the console unbound, a process holding the audio function's playback PCM open: the open-nodes probe
    refuses the start, nothing moves, the process keeps its PCM."""
    iso = scn.fresh(ctx)
    vga, audio = ctx.job.bdf("gpu"), ctx.job.bdf("gpu-audio")
    vt, _ = fbcon_console(vga)
    if vt is not None:
        (vt / "bind").write_text("0")
    s.check(fbcon_console(vga)[0] is None, "the framebuffer console is unbound")
    nodes = sound_nodes(audio)
    pcm = next(n for n in nodes if "pcm" in n and n.endswith("p"))
    holder = hold_open(pcm)
    if holder is None:  # the PCM cannot be opened here: the card's control node is a node of the function too
        pcm = next(n for n in nodes if "control" in n)
        holder = hold_open(pcm)
    s.check(holder is not None, f"a process holds {pcm} open")
    assert holder is not None
    ctx.spawned.append(holder)  # reset() kills it if the scenario fails
    try:
        before = g.pci_state()
        dom = scn.Domain(iso, DOMAIN, [vga])
        refused = dom.start()
        s.check(refused is not None, "the guest does not start")
        assert refused is not None
        scn.expect_refused(s, refused, DOMAIN, pcm)
        s.check(f"pid {holder.pid}" in refused.stderr, "the reason names the process")
        scn.expect_unchanged(s, before, iso, [])
        s.check(_holds(holder.pid, pcm), "the process still has its PCM")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    ctx.spawned.remove(holder)


def start_and_release(ctx: scn.Ctx, s: g.Scenario) -> None:
    """Nothing holds the group: prepare moves the audio function (and only it), libvirt moves the display, the
    viability ioctl says viable and a container attaches; release puts snd_hda_intel back, libvirt bochs-drm."""
    iso = scn.fresh(ctx)
    vga, audio = ctx.job.bdf("gpu"), ctx.job.bdf("gpu-audio")
    group = g.iommu_group(vga)
    dom = scn.Domain(iso, DOMAIN, [vga])
    before = g.pci_state()
    scn.expect_ok(s, dom.call("prepare", "begin"), "prepare begin")
    s.equal(scn.changed(before, g.pci_state()), [audio], "prepare moved the audio function, nothing else")
    s.equal(g.pci_state()[audio], (scn.VFIO_PCI, scn.VFIO_PCI), "the audio function is on vfio-pci")
    s.equal(sound_nodes(audio), [], "its sound card is gone from the host")
    s.equal(g.driver(vga), DISPLAY_DRIVER, "the display is still the host's (libvirt's to move)")
    s.equal(scn.viability(group), False, "VFIO ioctl: not viable while the display is on bochs-drm")
    dom.detach_managed()
    s.equal(g.driver(vga), scn.VFIO_PCI, "libvirt's part: the display on vfio-pci")
    scn.expect_ok(s, dom.call("start", "begin"), "start begin (verifies the whole group)")
    s.equal(scn.viability(group), True, "VFIO ioctl: the group is viable")
    s.equal(g.container_attach_errno(group), 0, "the group attaches to a VFIO container, as QEMU does first")
    # Issue 12 §2: which VFIO interfaces this kernel offers (the device cdev, /dev/vfio/devices/vfioN, is 6.6+).
    cdevs = sorted(p.name for p in (g.DEV_VFIO / "devices").glob("vfio*"))
    ctx.rec.meta("vfio_nodes", {"groups": scn.vfio_groups(), "devices": cdevs, "kernel": os.uname().release})
    s.note(f"/dev/vfio: groups {scn.vfio_groups()}, device cdevs {cdevs}")
    scn.expect_ok(s, dom.call("started", "begin"), "started begin")
    scn.expect_ok(s, dom.stop(), "release end")
    s.check(g.wait_for(lambda: g.driver(audio) == AUDIO_DRIVER), "release put snd_hda_intel back")
    s.check(g.wait_for(lambda: bool(sound_nodes(audio)), timeout=30), "and its sound card is back")
    s.equal(g.driver(vga), DISPLAY_DRIVER, "libvirt gave the display back to bochs-drm")
    scn.expect_home(ctx, s, iso, dom)


SCENARIOS: dict[str, Callable[[scn.Ctx, g.Scenario], None]] = {
    "desktop_group": desktop_group,
    "refused_display_console": refused_display_console,
    "refused_open_pcm": refused_open_pcm,
    "start_and_release": start_and_release,
}


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    # snd_hda_intel probes its codecs asynchronously: wait for the card before taking the reference state.
    g.wait_for(lambda: bool(sound_nodes(job.bdf("gpu-audio"))), timeout=30)
    rec.run(SCENARIOS, scn.Ctx(job, rec, g.pci_state()), job.args, reset=scn.reset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
