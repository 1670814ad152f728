"""Guest-side helpers for a real libvirtd inside the bed's VM: configure it for a chroot without systemd,
start and stop it, run virsh, build small domains with PCI hostdevs, install hook scripts.

The daemon, virsh and QEMU are the host's Debian packages (libvirt 9.0, QEMU 7.2), seen over 9p. Everything
written here lands in the guest's tmpfs overlay, never on the host. Nested domains run under TCG.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from vm import guest_lib as g

URI = "qemu:///system"
ETC = Path("/etc/libvirt")
HOOKS_DIR = ETC / "hooks"
LOG = Path("/var/log/libvirt/libvirtd.log")
SOCKET = Path("/run/libvirt/libvirt-sock")

# Why each setting (libvirt's defaults assume systemd and a packaged install):
#  namespaces = []       no private mount namespace per domain: it fails in the bed's chroot
#  user/group = root     run QEMU as root, so no file in the guest needs chown-ing for it
#  security_driver none  no AppArmor/SELinux in the guest
#  stdio_handler file    QEMU's output to a plain file: no virtlogd to start
QEMU_CONF = """namespaces = [ ]
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
"""

LIBVIRTD_CONF = f"""log_outputs = "3:file:{LOG}"
log_filters = "1:qemu.qemu_hostdev 1:util.pci 1:qemu.qemu_process 1:util.hook"
"""


def configure(clean: bool = True) -> None:
    """Writes the daemon's configuration. With `clean`, drops anything the host's /etc/libvirt would bring in
    (hooks, autostarted networks and domains, defined domains) so every run starts from nothing."""
    if clean:
        for sub in ("hooks", "qemu"):
            shutil.rmtree(ETC / sub, ignore_errors=True)
        for state in ("/var/lib/libvirt", "/var/cache/libvirt", "/run/libvirt"):
            shutil.rmtree(state, ignore_errors=True)
    _ensure_qemu_user()
    ETC.mkdir(parents=True, exist_ok=True)
    (ETC / "qemu.conf").write_text(QEMU_CONF)
    (ETC / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    LOG.parent.mkdir(parents=True, exist_ok=True)


def _ensure_qemu_user() -> None:
    """The QEMU driver resolves its compiled-in user (Debian: libvirt-qemu) before it reads qemu.conf, and
    fails to start when the user does not exist. libvirt-daemon-system would create it; the bed does not
    install that package (it wants systemd), so the guest's own /etc (tmpfs overlay) gets the entries."""
    entries = (
        (Path("/etc/group"), "libvirt-qemu:x:64055:\n"),
        (Path("/etc/passwd"), "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"),
    )
    for path, line in entries:
        if not any(entry.startswith("libvirt-qemu:") for entry in path.read_text().splitlines()):
            with path.open("a") as f:
                f.write(line)


def install_hook(script: str, name: str = "qemu") -> Path:
    """Installs an executable hook (`qemu`, or a file under `qemu.d/` when name is 'qemu.d/NAME'). libvirtd
    looks for hooks at start and on SIGHUP: call Libvirtd.reload() when it is already running."""
    path = HOOKS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return path


def virsh(*args: str, timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess[str]:
    return g.run(["virsh", "-c", URI, *args], timeout=timeout, check=check)


class Libvirtd:
    """A libvirtd in the foreground of this process; a context manager that always stops it.

    with Libvirtd() as daemon:
        virsh("define", "/tmp/dom.xml", check=True)
    """

    def __init__(self, start_timeout: float = 90.0) -> None:
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        configure_missing = not (ETC / "qemu.conf").exists()
        if configure_missing:
            configure()
        SOCKET.unlink(missing_ok=True)
        with (LOG.parent / "libvirtd.stderr").open("ab") as err:
            self.proc = subprocess.Popen(["libvirtd"], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self.proc.returncode}:\n{self.log_tail()}")
            # The first call also waits for QEMU capability probing (~15 s under TCG).
            if SOCKET.exists() and virsh("version", timeout=60).returncode == 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f"libvirtd did not answer within {self.start_timeout}s:\n{self.log_tail()}")

    def reload(self) -> None:
        """SIGHUP: makes the daemon look for hook scripts again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(1)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop_after(self, rec: g.Recorder) -> None:
        """The end of a guest script's run: when a scenario failed, the daemon's log tail goes to the script's
        output first (the host's failure message shows that output); then the daemon stops."""
        if rec.failed():
            print(self.log_tail(), flush=True)
        self.stop()

    @staticmethod
    def log_tail(lines: int = 60) -> str:
        text = ""
        for f in (LOG.parent / "libvirtd.stderr", LOG):
            if f.exists():
                text += f"--- {f} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def __enter__(self) -> Libvirtd:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def hostdev_xml(bdf: str, managed: bool = True) -> str:
    domain, bus, rest = bdf.split(":")
    slot, function = rest.split(".")
    # rom bar=off: the nested firmware need not run the NIC's option ROM, which only slows the boot.
    return (
        f"<hostdev mode='subsystem' type='pci' managed='{'yes' if managed else 'no'}'>"
        f"<source><address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"
        "</source><rom bar='off'/></hostdev>"
    )


def domain_xml(name: str, hostdevs: Sequence[str] = (), memory_mib: int = 64) -> str:
    """A minimal TCG domain: no disk, no NIC, no display; it sits in SeaBIOS, which is enough for QEMU to
    open the VFIO groups and for libvirt to run every hook."""
    devices = "".join(hostdev_xml(bdf) for bdf in hostdevs)
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {devices}
  </devices>
</domain>
"""


def define(name: str, xml: str) -> None:
    path = Path("/tmp") / f"{name}.xml"
    path.write_text(xml)
    virsh("define", str(path), check=True)


def domain_state(name: str) -> str:
    return virsh("domstate", name).stdout.strip()


def qemu_log(name: str, lines: int = 30) -> str:
    path = Path("/var/log/libvirt/qemu") / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
