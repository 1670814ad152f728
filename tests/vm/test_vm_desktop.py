"""The README's headline case on a real kernel: a display function and its HDA audio function on one
multifunction slot behind a root port (xml-samples/domains/desktop-gpu.xml on xml-samples/hosts/desktop-gpu.json,
where the GPU is an NVIDIA card). The guest asks for the display; isogroup moves the audio function, libvirt the
display, the VFIO viability ioctl says viable, release gives snd_hda_intel back; the framebuffer console on the
display and a process holding the PCM open each refuse the start. One VM boot, each scenario of
tests/vm/guest_desktop.py its own test."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.bed import GUEST_MODULES, VmResult, session_run
from vm.topology import Device, RootPort, Topology, slot

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).parent / "guest_desktop.py"

# Like the sample's port (8086:1901), this one does not isolate: the port joins the group (and stays on
# pcieport). QEMU's std VGA is the only display, so it is the boot VGA device.
DESKTOP_SLOT = slot(RootPort("rp-gpu", slot(Device("gpu", "VGA"), Device("gpu-audio", "ich9-intel-hda")), acs=False))
# A codec on the controller's HDA bus, so snd_hda_intel gives the card a PCM; no host audio backend.
DESKTOP_AUDIO = ("-audiodev", "none,id=hda-out", "-device", "hda-output,bus=gpu-audio.0,audiodev=hda-out")
TOPOLOGY = Topology("desktop", (DESKTOP_SLOT,), extra_args=DESKTOP_AUDIO)

SCENARIOS = ["desktop_group", "refused_display_console", "refused_open_pcm", "start_and_release"]
# The kernel's request_module runs modprobe in the initramfs's root, which has no /sbin/modprobe: the codec driver
# snd_hda_intel asks for when it probes must be loaded before it ("Cannot probe codecs, giving up" otherwise).
DESKTOP_MODULES = ("bochs", "snd_hda_codec_generic", "snd_hda_intel")
MODULES = (*GUEST_MODULES, *DESKTOP_MODULES)


desktop_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=420, modules=MODULES)


def test_guest_script_completed(desktop_run: VmResult) -> None:
    assert desktop_run.ok, desktop_run.describe()
    assert set(desktop_run.results["scenarios"] if desktop_run.results else ()) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(desktop_run: VmResult, scenario: str) -> None:
    problem = desktop_run.scenario_problem(scenario)
    assert problem is None, problem
