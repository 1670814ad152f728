"""Runs a Python script inside a real Linux kernel with a real (emulated) IOMMU: the host side of the test bed.

    from vm.bed import run_in_vm, unavailable_reason
    from vm.topology import Device, RootPort, Topology, slot

    topo = Topology("demo", (slot(RootPort("rp1", slot(Device("nic", "e1000e")))),))
    result = run_in_vm(topo, Path("tests/vm/guest_demo.py"), ["--fast"], timeout=300)
    assert result.ok, result.describe()
    result.results  # whatever the guest script wrote to $VMBED_OUT/result.json (see guest_lib.Recorder)

How a run works:
  * QEMU (TCG: /dev/kvm is not usable on the project's machines) boots Debian's kernel fetched by
    tests/vm/fetch-kernel.sh on a q35 machine with an emulated Intel IOMMU (`intel_iommu=on`) or AMD's
    (`Topology.iommu`, `amd_iommu=on`), so the guest kernel forms real IOMMU groups, binds real drivers and
    answers real VFIO ioctls.
  * The host's `/` is exported read-only over 9p; the guest puts an overlay with a tmpfs upper layer on it and
    chroots into that, so the guest runs the host's Python, this checkout and its .venv at the same paths.
  * A per-run directory under .cache/vm/runs is exported read-write at the same path; the host writes the
    job there (job.sh, job.json) and the guest writes results, its script's output and markers back.
  * QEMU is always killed at the end, at the latest after `timeout` seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci import missing_install
from vm.initramfs import build_initramfs
from vm.topology import Iommu, Topology, placements, qemu_devices

CHECKOUT = Path(__file__).resolve().parents[2]
CACHE = CHECKOUT / ".cache" / "vm"
KERNEL_ROOT = CACHE / "kernel"
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"

# Loaded in the guest before the script runs. Drivers for the devices present are loaded as well, from their
# modalias (the guest has no udev to do it).
GUEST_MODULES = (
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
    "e1000e",
    "e1000",
    "virtio_net",
    "ahci",
    "sd_mod",
    "ext4",
)

JsonDict = dict[str, Any]

# The emulated IOMMU's -device and the kernel argument for it (Topology.iommu). Both remap interrupts, which
# needs q35 with kernel-irqchip=split. amd_iommu=on is the argument AMD hosts' guides give; the kernel turns
# AMD-Vi on from QEMU's IVRS table (tests/vm/test_vm_amd.py records what it logs).
IOMMU_DEVICE = {Iommu.INTEL: "intel-iommu,intremap=on,caching-mode=on", Iommu.AMD: "amd-iommu,intremap=on"}
IOMMU_CMDLINE = {Iommu.INTEL: "intel_iommu=on", Iommu.AMD: "amd_iommu=on"}


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    modules: Path  # lib/modules/VERSION of the unpacked package


def find_kernel(root: Path = KERNEL_ROOT) -> Kernel | None:
    try:
        version = (root / "VERSION").read_text().strip()
    except FileNotFoundError:
        return None
    kernel = Kernel(version, root / "boot" / f"vmlinuz-{version}", root / "lib" / "modules" / version)
    if not kernel.vmlinuz.is_file() or not (kernel.modules / "modules.dep").is_file():
        return None
    return kernel


def guest_python() -> Path:
    """The interpreter the guest runs scripts with: the checkout's venv, which the guest sees over 9p."""
    venv = CHECKOUT / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(os.path.realpath("/usr/bin/python3"))


@dataclass(frozen=True)
class Unavailable:
    """Why the bed cannot run here. `installable`: scripts/setup.sh --test installs what is missing, so in CI
    (CI=true) it is a failure, not a skip."""

    reason: str
    installable: bool


def unavailable(*, libvirt: bool = False) -> Unavailable | None:
    """Why the bed cannot run here, or None when everything it needs is present. `libvirt`: the guest script
    also runs the host's libvirtd and virsh."""
    if shutil.which(QEMU) is None:
        return Unavailable(f"{QEMU} not found: run scripts/setup.sh --test (Debian package qemu-system-x86)", True)
    if find_kernel() is None:
        return Unavailable(
            f"no guest kernel in {KERNEL_ROOT}: run scripts/setup.sh --test (tests/vm/fetch-kernel.sh)", True
        )
    if not BUSYBOX.is_file():
        return Unavailable(f"{BUSYBOX} not found: run scripts/setup.sh --test (Debian package busybox-static)", True)
    if libvirt and (shutil.which("libvirtd", path="/usr/sbin:/usr/bin") is None or shutil.which("virsh") is None):
        why = "libvirtd/virsh not installed: run scripts/setup.sh --test (libvirt-daemon, libvirt-clients)"
        return Unavailable(why, True)
    if os.geteuid() != 0:
        return Unavailable("the bed exports / over 9p with security_model=none, which needs root", False)
    if any(c in str(CHECKOUT) for c in " ,\t\n"):
        why = f"checkout path {CHECKOUT} contains a space or comma, which QEMU option strings cannot carry"
        return Unavailable(why, False)
    return None


def unavailable_reason() -> str | None:
    """Why the bed cannot run here (for a message), or None when everything it needs is installed."""
    missing = unavailable()
    return None if missing is None else missing.reason


@dataclass(frozen=True)
class VmResult:
    topology: str
    booted: bool  # the guest's /init reached the host root and started the job
    timed_out: bool
    qemu_returncode: int | None
    script_returncode: int | None  # the guest script's exit status; None when it never finished
    results: JsonDict | None  # $VMBED_OUT/result.json as written by the guest script
    console: str  # the guest's serial console: kernel log, /init and job.sh messages
    script_output: str  # the guest script's stdout and stderr
    qemu_stderr: str
    boot_seconds: float | None  # QEMU start until the guest's root was ready
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return self.booted and not self.timed_out and self.script_returncode == 0

    def scenario(self, name: str) -> JsonDict | None:
        """One scenario's record from a guest script that used guest_lib.Recorder."""
        if self.results is None:
            return None
        found: JsonDict | None = self.results.get("scenarios", {}).get(name)
        return found

    def scenario_problem(self, name: str) -> str | None:
        """None when scenario `name` passed; otherwise a failure message with its log and the VM's output."""
        record = self.scenario(name)
        if record is not None and record.get("ok") is True:
            return None
        if record is None:
            why = f"scenario {name!r} did not report (the guest script stopped before it)"
        else:
            why = f"scenario {name!r} failed: {record.get('error')}\n" + "\n".join(record.get("log", []))
        return f"{why}\n{self.describe()}"

    def describe(self, console_lines: int = 80, output_lines: int = 80) -> str:
        """A failure message: what happened, then the tails of the script output, console and QEMU errors."""

        def tail(text: str, n: int) -> str:
            return "\n".join(text.splitlines()[-n:])

        head = (
            f"topology {self.topology}: booted={self.booted} timed_out={self.timed_out} "
            f"qemu_rc={self.qemu_returncode} script_rc={self.script_returncode} "
            f"boot={'-' if self.boot_seconds is None else f'{self.boot_seconds}s'} wall={self.wall_seconds:.1f}s"
        )
        parts = [
            head,
            "--- guest script output (tail) ---",
            tail(self.script_output, output_lines),
            "--- guest console (tail) ---",
            tail(self.console, console_lines),
        ]
        # QEMU warns about every NIC without a network backend: noise, not the reason for a failure.
        stderr = "\n".join(line for line in self.qemu_stderr.splitlines() if "has no peer" not in line)
        if stderr.strip():
            parts += ["--- qemu stderr ---", tail(stderr, 20)]
        return "\n".join(parts)


def _job_script(kernel: Kernel, out: Path, script: Path, args: Sequence[str], modules: Sequence[str]) -> str:
    """What the guest runs inside the chroot (with the host's /bin/sh): finish the mounts the tools expect,
    load modules from the fetched kernel, then run the script with the checkout's interpreter."""
    q = shlex.quote
    command = " ".join(q(a) for a in (str(guest_python()), "-u", str(script), *args))
    fresh_tmpfs = "\n".join(f"mount -t tmpfs -o mode={mode} tmpfs {where}" for where, mode in _fresh_tmpfs().items())
    return f"""set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH={q(str(CHECKOUT / "tests"))} VMBED_JOB={q(str(out / "job.json"))} VMBED_OUT={q(str(out))}
{fresh_tmpfs}
mkdir -p /dev/pts /dev/shm /run/lock
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd
mkdir -p /lib/modules/{kernel.version}
mount --bind {q(str(kernel.modules))} /lib/modules/{kernel.version}
modprobe -a {" ".join(q(m) for m in modules)} || echo "vmbed-job: some modules failed to load"
# No udev here: load the drivers for the devices present, as udev's coldplug would.
modprobe -qa $(cat /sys/bus/pci/devices/*/modalias) || true
echo "vmbed-job: running {q(str(script))}"
cd {q(str(CHECKOUT))}
{command} >{q(str(out / "script.log"))} 2>&1
rc=$?
echo "vmbed-job: script exited with $rc"
echo "$rc" >{q(str(out / "script.rc"))}
"""


def _fresh_tmpfs() -> dict[str, str]:
    """/tmp and /run get a fresh tmpfs in the guest (the host's files there would confuse libvirtd), except one
    that holds the checkout, which must stay visible: the overlay root is writable there anyway."""
    wanted = {"/tmp": "1777", "/run": "755"}
    return {d: mode for d, mode in wanted.items() if not CHECKOUT.resolve().is_relative_to(d)}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def run_in_vm(
    topology: Topology,
    guest_script: Path,
    args: Sequence[str] = (),
    timeout: float = 300.0,
    *,
    cpus: int = 2,
    modules: Sequence[str] = GUEST_MODULES,
    append: Sequence[str] = (),
) -> VmResult:
    """Boots `topology`, runs `guest_script args...` in it as root and returns what came back.

    The guest script finds the job (device paths, arguments) through guest_lib.load_job(); guest_lib.Recorder
    writes results to $VMBED_OUT/result.json, which becomes `VmResult.results`. Never raises for guest-side
    failures: check `result.ok` / `result.booted` and use `result.describe()` in assertion messages.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    kernel = find_kernel()
    assert kernel is not None
    initrd = build_initramfs(KERNEL_ROOT, kernel.version, BUSYBOX, CACHE)
    script = guest_script.resolve()
    if any(script.is_relative_to(hidden) for hidden in (*_fresh_tmpfs(), "/dev/shm")):
        raise ValueError(f"{script}: the guest mounts a fresh tmpfs over it ({', '.join(_fresh_tmpfs())}, /dev/shm)")

    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{topology.name}-", dir=runs))
    try:
        devices = qemu_devices(topology, out)
        for image, mib in devices.disks:
            with image.open("wb") as f:
                f.truncate(mib * 1024 * 1024)
        job: JsonDict = {
            "topology": topology.name,
            "checkout": str(CHECKOUT),
            "out": str(out),
            "args": list(args),
            "devices": {
                name: {"model": p.model, "path": [list(hop) for hop in p.path]}
                for name, p in placements(topology).items()
            },
        }
        (out / "job.json").write_text(json.dumps(job, indent=2))
        (out / "job.sh").write_text(_job_script(kernel, out, script, args, modules))
        console = out / "console.log"
        cmdline = " ".join([f"console=ttyS0 {IOMMU_CMDLINE[topology.iommu]} panic=-1 vmbed_out={out}", *append])
        command = [
            QEMU,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-accel",
            "tcg,thread=multi",
            "-machine",
            "q35,kernel-irqchip=split",
            "-cpu",
            "max",
            "-smp",
            str(cpus),
            "-m",
            str(topology.memory_mib),
            "-kernel",
            str(kernel.vmlinuz),
            "-initrd",
            str(initrd),
            "-append",
            cmdline,
            "-serial",
            f"file:{console}",
            # The IOMMU goes first: QEMU wants it created before the PCI devices whose DMA it translates.
            "-device",
            IOMMU_DEVICE[topology.iommu],
            "-fsdev",
            "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,bus=pcie.0,addr=0x02",
            "-fsdev",
            f"local,id=vmbedout,path={out},security_model=none,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=vmbedout,mount_tag=vmbedout,bus=pcie.0,addr=0x03",
            *devices.args,
        ]
        (out / "qemu.cmd").write_text(shlex.join(command) + "\n")
        return _run_qemu(command, topology.name, out, timeout)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _run_qemu(command: list[str], name: str, out: Path, timeout: float) -> VmResult:
    start = time.monotonic()
    boot_seconds: float | None = None
    timed_out = False
    with (out / "qemu.stderr").open("wb") as stderr:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        try:
            while proc.poll() is None:
                if boot_seconds is None and (out / "booted").exists():
                    boot_seconds = round(time.monotonic() - start, 1)
                if time.monotonic() - start > timeout:
                    timed_out = True
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    wall = time.monotonic() - start
    rc_text = _read(out / "script.rc").strip()
    result_file = out / "result.json"
    results: JsonDict | None = None
    if result_file.exists():
        try:
            results = json.loads(result_file.read_text())
        except json.JSONDecodeError:
            results = None
    return VmResult(
        topology=name,
        booted=(out / "booted").exists(),
        timed_out=timed_out,
        qemu_returncode=proc.returncode,
        script_returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
        results=results,
        console=_read(out / "console.log"),
        script_output=_read(out / "script.log"),
        qemu_stderr=_read(out / "qemu.stderr"),
        boot_seconds=boot_seconds,
        wall_seconds=round(wall, 1),
    )


def session_run(
    topology: Topology,
    guest_script: Path,
    *,
    timeout: float,
    modules: Sequence[str] = GUEST_MODULES,
    libvirt: bool = False,
    args: Sequence[str] = (),
    append: Sequence[str] = (),
) -> Any:
    """The session fixture every tests/vm/test_*.py file uses: boot `topology` once (`append`: words added to
    the guest kernel's command line), run `guest_script args...` in it, and hand each test the one VmResult.
    Skips with the reason where the bed cannot run here (in CI a missing install step fails instead:
    tests/ci.py) or where QEMU cannot boot the bed's kernel.

        isogroup_run = session_run(TOPOLOGY, GUEST_SCRIPT, timeout=900)
    """

    @pytest.fixture(scope="session")
    def run() -> VmResult:
        require_bed(libvirt=libvirt)
        return boot(topology, guest_script, args, timeout=timeout, modules=modules, append=append)

    return run


def require_bed(*, libvirt: bool = False) -> None:
    """Skips with the reason where the bed cannot run here; in CI a missing install step fails instead."""
    missing = unavailable(libvirt=libvirt)
    if missing is not None:
        if missing.installable:
            missing_install(missing.reason)
        pytest.skip(missing.reason)


def boot(
    topology: Topology,
    guest_script: Path,
    args: Sequence[str] = (),
    *,
    timeout: float,
    modules: Sequence[str] = GUEST_MODULES,
    append: Sequence[str] = (),
) -> VmResult:
    """run_in_vm for a fixture (after require_bed): skips where QEMU cannot boot the bed's kernel here. For a
    fixture that must prepare something first (tests/vm/test_vm_deb.py builds the .deb); others use session_run."""
    result = run_in_vm(topology, guest_script, args, timeout=timeout, modules=modules, append=append)
    if not result.booted:
        pytest.skip(f"QEMU could not boot the bed's kernel here:\n{result.describe()}")
    return result
