"""Guest script for tests/vm/test_vm_trust.py: the trust edges of issue 10 (a guest's identity, the ledger as
input, defaults that fail closed) with a real libvirtd, `virsh` and the real kernel.

isogroup is installed with `isogroup install-hook` (default ledger /run/isogroup, default policy
/etc/isogroup/policy.toml) into a directory of its own, and libvirt's qemu.d/isogroup is a small wrapper that
runs exactly that script with libvirt's argv, stdin and environment, and records each call's argv, exit code,
stderr and time: libvirt shows the hook's stderr only for a failed prepare/start and ignores release's exit
code, which these scenarios check too. What isogroup did is read back from the kernel (driver links, the VFIO
group's open: EBUSY while QEMU holds it, /dev/vfio/N gone once no member is on vfio-pci), from the ledger's
bytes on disk and from `isogroup status`.

After every scenario each PCI function is back on the driver it had when this script started, driver_override
cleared, and the ledger holds no claim; a failed scenario is followed by a best-effort reset. Device names are
those of TOPOLOGY in tests/vm/test_vm_trust.py: group A is an e1000e (the hostdev) with a virtio-net sibling
that isogroup moves, group B an e1000e alone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isogroup.paths import claim_filename
from vm import guest_lib as g
from vm import guest_libvirt as lv

LEDGER = Path("/run/isogroup")  # the installed hook's default ledger
CLAIMS = LEDGER / "claims"
POLICY = Path("/etc/isogroup/policy.toml")  # the hook's default policy path (the guest's /etc is a tmpfs overlay)
TRUST = Path("/run/vmbed-trust")
REAL_HOOKS = TRUST / "hooks"  # where install-hook writes the real hook
CALLS = TRUST / "calls"  # one directory per hook call, written by WRAPPER
VFIO_PCI = "vfio-pci"
NS = "https://isogroup.dev/xmlns/policy/1"
NIC_ADDRESS = "10.9.0.1/24"

SPACE = " vmbed-space"  # scenario 1: a leading space, which libvirt keeps
W, W_SPACE = "w", " w"  # scenario 2: names that differ only by whitespace
FIFO_GUEST = "vmbed-fifo"
HOLDER, OTHER = "vmbed-holder", "vmbed-other"
RELAX = "vmbed-relax"

# Runs the real hook with libvirt's argv, stdin and environment; records argv (one file per argument, so any
# byte of a name survives), exit code, stderr and start/end in ns; gives libvirt the same stderr and exit code.
WRAPPER = """#!/bin/sh
d=$(mktemp -d {calls}/$(date +%s%N).XXXXXX)
i=0
for a in "$@"; do printf '%s' "$a" > "$d/arg$i"; i=$((i+1)); done
date +%s%N > "$d/start"
{real} "$@" 2> "$d/stderr"
rc=$?
date +%s%N > "$d/end"
echo $rc > "$d/rc"
cat "$d/stderr" >&2
exit $rc
"""

Ledger = dict[str, bytes | str]  # path under /run/isogroup -> bytes of a regular file, else its kind


# ---------------------------------------------------------------------------------------------- hook calls


@dataclass(frozen=True)
class HookCall:
    name: str
    operation: str
    sub: str
    extra: str
    rc: int
    stderr: str
    seconds: float

    def describe(self) -> str:
        call = f"{self.name!r} {self.operation} {self.sub} {self.extra}"
        return f"{call}: exit {self.rc} in {self.seconds:.2f} s, stderr {self.stderr.strip()!r}"


def hook_calls() -> list[HookCall]:
    calls = []
    for d in sorted(CALLS.iterdir()) if CALLS.is_dir() else []:
        if not (d / "rc").exists():
            continue  # still running
        argv = [(d / f"arg{i}").read_text() for i in range(4) if (d / f"arg{i}").exists()]
        argv += ["-"] * (4 - len(argv))
        seconds = (int((d / "end").read_text()) - int((d / "start").read_text())) / 1e9
        rc = int((d / "rc").read_text())
        calls.append(HookCall(argv[0], argv[1], argv[2], argv[3], rc, (d / "stderr").read_text(), seconds))
    return calls


class Calls:
    """The hook calls made since this object was created."""

    def __init__(self) -> None:
        self.mark = len(hook_calls())

    def of(self, name: str) -> list[HookCall]:
        return [c for c in hook_calls()[self.mark :] if c.name == name]

    def one(self, name: str, operation: str) -> HookCall:
        found = [c for c in self.of(name) if c.operation == operation]
        if len(found) != 1:
            raise g.CheckFailed(f"expected one {operation} call for {name!r}, got {[c.describe() for c in found]}")
        return found[0]


# ----------------------------------------------------------------------------------------------- the state


def ledger_bytes() -> Ledger:
    """Everything under /run/isogroup, byte for byte (the lock, claims/, any file put there)."""
    found: Ledger = {}
    if not LEDGER.exists():
        return found
    for root, dirs, files in os.walk(LEDGER):
        for name in dirs + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(LEDGER))
            if stat.S_ISREG(mode):
                found[rel] = path.read_bytes()
            else:
                found[rel] = "directory" if stat.S_ISDIR(mode) else f"file type {stat.S_IFMT(mode):o}"
    return found


def claim_files() -> dict[str, dict[str, Any]]:
    """The regular claim files, by file name, as JSON."""
    return {
        name[len("claims/") :]: json.loads(v)
        for name, v in ledger_bytes().items()
        if name.startswith("claims/") and isinstance(v, bytes)
    }


def vfio_groups() -> list[str]:
    return sorted(p.name for p in g.DEV_VFIO.iterdir() if p.name != "vfio") if g.DEV_VFIO.is_dir() else []


def vfio_open_errno(group: int) -> int:
    """0 when /dev/vfio/GROUP opens (nobody holds it), else the errno: EBUSY while QEMU holds the group,
    ENOENT when no member is on a vfio driver."""
    try:
        os.close(os.open(g.DEV_VFIO / str(group), os.O_RDWR))
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def failure_line(stderr: str) -> tuple[int, str]:
    """virsh's "Hook script execution failed: ... unexpected exit status N: LINE": (N, LINE)."""
    marker = "unexpected exit status "
    for line in stderr.splitlines():
        if marker in line:
            code, _, text = line.split(marker, 1)[1].partition(": ")
            return int(code), text.strip()
    return -1, ""


# ------------------------------------------------------------------------------------------------ context


@dataclass
class Ctx:
    job: g.Job
    rec: g.Recorder
    home: g.PciState
    daemon: lv.Libvirtd
    defined: set[str] = field(default_factory=set)
    relaxed_start_syslog: list[str] | None = None  # what the hook sent to /dev/log during the relaxed start

    @property
    def cli(self) -> str:
        return str(self.job.checkout / ".venv" / "bin" / "isogroup")

    def isogroup(self, *args: str) -> subprocess.CompletedProcess[str]:
        return g.run([self.cli, *args], timeout=120, check=False)

    def status(self) -> tuple[int, list[dict[str, Any]]]:
        done = self.isogroup("status", "--format", "json")
        return done.returncode, json.loads(done.stdout)

    def define(self, name: str, hostdevs: list[str], metadata: str = "") -> Path:
        xml = lv.domain_xml(name, hostdevs)
        if metadata:
            xml = xml.replace("</name>", f"</name>\n  <metadata>{metadata}</metadata>", 1)
        lv.define(name, xml)
        self.defined.add(name)
        return Path("/tmp") / f"{name}.xml"


def expect_home(ctx: Ctx, s: g.Scenario) -> None:
    back = g.wait_for(lambda: g.pci_state() == ctx.home, timeout=30)
    s.check(back, f"every driver and driver_override as at boot {g.state_diff(ctx.home, g.pci_state())}")
    s.check(g.wait_for(lambda: not vfio_groups()), f"no /dev/vfio/N left {vfio_groups()}")
    s.equal(claim_files(), {}, "no claim file in the ledger")


def expect_started(ctx: Ctx, s: g.Scenario, name: str) -> None:
    done = lv.virsh("start", name, timeout=240)
    if done.returncode != 0:
        s.note(f"{done.stderr.strip()}\n{lv.qemu_log(name)}")
    s.check(done.returncode == 0, f"virsh start {name!r} succeeds")
    s.equal(lv.domain_state(name), "running", f"{name!r} runs")


def expect_refused_start(s: g.Scenario, name: str, calls: Calls, code: int) -> HookCall:
    """virsh start fails at prepare with isogroup's one line and exit `code`; libvirt still runs release."""
    done = lv.virsh("start", name, timeout=240)
    s.check(done.returncode != 0, f"virsh start {name!r} fails")
    shown_code, shown = failure_line(done.stderr)
    prepare = calls.one(name, "prepare")
    s.note(f"hook: {prepare.describe()}")
    s.equal(prepare.rc, code, "the prepare hook's exit code")
    s.equal(len(prepare.stderr.splitlines()), 1, "one line on the hook's stderr")
    s.equal((shown_code, shown), (code, prepare.stderr.strip()), "virsh shows that line and exit code")
    s.check(all(c.operation != "start" for c in calls.of(name)), "refused at prepare: no start hook")
    release = calls.one(name, "release")
    s.equal(release.rc, 0, f"the failed start's release exits 0 ({release.describe()})")
    s.equal(lv.domain_state(name), "shut off", f"{name!r} is not running")
    return prepare


# ------------------------------------------------------------------------------------------------ scenarios


def leading_space_name(ctx: Ctx, s: g.Scenario) -> None:
    """A guest named " vmbed-space" through virsh start and destroy: its claim is keyed by the name libvirt
    passes, byte for byte; the hook called with the stripped name for that XML refuses (exit 2, nothing
    changed); destroy brings every device back."""
    nic, sibling = ctx.job.bdf("ta-nic"), ctx.job.bdf("ta-virtio")
    group = g.iommu_group(nic)
    path = ctx.define(SPACE, [nic])
    s.equal(lv.domain_state(SPACE), "shut off", "libvirt defined the guest with its leading space")
    s.check(f"<name>{SPACE}</name>" in lv.virsh("dumpxml", SPACE, check=True).stdout, "and keeps it in its XML")

    # argv's name must equal the XML's <name> exactly: the stripped name is another guest.
    before, ledger = g.pci_state(), ledger_bytes()
    hook = REAL_HOOKS / "qemu.d" / "isogroup"
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(
        [str(hook), SPACE.strip(), "prepare", "begin", "-"],
        input=path.read_bytes(),
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    s.note(f"hook with the stripped name: exit {done.returncode}, stderr {done.stderr.decode().strip()!r}")
    s.equal(done.returncode, 2, "the hook called with the stripped name refuses with exit 2")
    s.equal(len(done.stderr.splitlines()), 1, "one line on stderr")
    s.equal(done.stdout, b"", "nothing on stdout")
    s.equal(g.state_diff(before, g.pci_state()), [], "nothing moved")
    s.equal(ledger_bytes(), ledger, "the ledger is byte for byte as before")

    calls = Calls()
    expect_started(ctx, s, SPACE)
    s.equal([c.operation for c in calls.of(SPACE)], ["prepare", "start", "started"], "hook calls for the start")
    s.check(all(c.rc == 0 and not c.stderr for c in calls.of(SPACE)), "each exits 0, silent")
    s.equal(g.driver(nic), VFIO_PCI, "libvirt bound the hostdev to vfio-pci")
    s.equal(g.driver(sibling), VFIO_PCI, "isogroup moved the sibling to vfio-pci")
    s.equal(vfio_open_errno(group), errno.EBUSY, f"QEMU holds /dev/vfio/{group}")
    files = claim_files()
    s.equal(list(files), ["%20vmbed-space.json"], "the claim file's name encodes the leading space")
    s.equal(claim_filename(SPACE), "%20vmbed-space.json", "as paths.claim_filename does")
    claim = files["%20vmbed-space.json"]
    s.equal((claim["domain"], claim["phase"], claim["groups"]), (SPACE, "active", [group]), "the claim inside")
    devices = [(d["address"], d["original_driver"], d["state"]) for d in claim["devices"]]
    s.equal(devices, [(sibling, "virtio-pci", "moved")], "the sibling recorded with its original driver")
    rc, status = ctx.status()
    s.equal((rc, [c["domain"] for c in status]), (0, [SPACE]), "isogroup status names the guest with its space")

    calls = Calls()
    lv.virsh("destroy", SPACE, check=True, timeout=120)
    s.equal(lv.domain_state(SPACE), "shut off", "destroyed")
    release = calls.one(SPACE, "release")
    s.equal((release.name, release.rc, release.stderr), (SPACE, 0, ""), "release for the exact name exits 0")
    expect_home(ctx, s)
    s.check(g.wait_for(lambda: bool(g.net_interfaces(sibling))), "the sibling has its netdev again")


def whitespace_twins(ctx: Ctx, s: g.Scenario) -> None:
    """ "w" and " w" ask for the two functions of one group. Whichever runs, the other's start is refused with
    the group's holder named, and the failed start's release leaves the runner's claim byte for byte alone;
    each destroy restores only its own guest's devices."""
    nic, sibling = ctx.job.bdf("ta-nic"), ctx.job.bdf("ta-virtio")
    group = g.iommu_group(nic)
    ctx.define(W, [nic])
    ctx.define(W_SPACE, [sibling])
    for runner, refused, moved in ((W, W_SPACE, sibling), (W_SPACE, W, nic)):
        s.note(f"--- {runner!r} runs, {refused!r} tries")
        expect_started(ctx, s, runner)
        s.equal((g.driver(nic), g.driver(sibling)), (VFIO_PCI, VFIO_PCI), "both functions on vfio-pci")
        s.equal(list(claim_files()), [claim_filename(runner)], f"one claim file, {claim_filename(runner)}")
        s.equal(claim_files()[claim_filename(runner)]["domain"], runner, "recording the runner's exact name")
        before, ledger = g.pci_state(), ledger_bytes()

        calls = Calls()
        prepare = expect_refused_start(s, refused, calls, 1)
        expected = f"isogroup refused '{refused}': IOMMU group {group} is in use by guest '{runner}'"
        s.check(prepare.stderr.startswith(expected), f"the line names the holder: {prepare.stderr.strip()!r}")
        s.equal(g.state_diff(before, g.pci_state()), [], "the runner's devices are untouched")
        s.equal(ledger_bytes(), ledger, "the ledger, the runner's claim included, is byte for byte as before")
        s.equal(vfio_open_errno(group), errno.EBUSY, "the runner's QEMU still holds the group")
        s.equal(lv.domain_state(runner), "running", f"{runner!r} still runs")

        calls = Calls()
        lv.virsh("destroy", runner, check=True, timeout=120)
        s.equal(calls.one(runner, "release").rc, 0, f"{runner!r}'s release exits 0")
        s.equal(calls.of(refused), [], f"no hook call for {refused!r}")
        s.note(f"{moved} was isogroup's move for {runner!r}")
        expect_home(ctx, s)


def fifo_in_claims(ctx: Ctx, s: g.Scenario) -> None:
    """A FIFO named x.json in claims/: a start finishes within a bound (the hook never blocks opening it),
    refuses with exit 4 and one line naming the file, changes nothing; `isogroup status` lists it and exits 4;
    `isogroup forget FILE` removes it; the next start succeeds."""
    nic = ctx.job.bdf("ta-nic")
    ctx.define(FIFO_GUEST, [nic])
    for d in (LEDGER, CLAIMS):
        d.mkdir(mode=0o700, exist_ok=True)
    fifo = CLAIMS / "x.json"
    os.mkfifo(fifo, 0o600)
    try:
        before, ledger = g.pci_state(), ledger_bytes()
        calls = Calls()
        start = time.monotonic()
        prepare = expect_refused_start(s, FIFO_GUEST, calls, 4)
        seconds = time.monotonic() - start
        ctx.rec.meta("fifo_refused_start_seconds", round(seconds, 1))
        s.check(prepare.seconds < 30, f"the prepare hook finished in {prepare.seconds:.2f} s (bound 30 s)")
        s.check(str(fifo) in prepare.stderr, f"the line names {fifo}")
        s.check("forget" in prepare.stderr, "and says how to clear it")
        s.equal(no_reader(fifo), True, "no process is left blocked opening the FIFO")
        s.equal(g.state_diff(before, g.pci_state()), [], "nothing moved")
        s.equal(ledger_bytes(), ledger, "the ledger is as before, FIFO included")

        rc, status = ctx.status()
        s.equal(rc, 4, "isogroup status exits 4")
        corrupt = [c for c in status if "corrupt" in c]
        s.equal([c["file"] for c in corrupt], [str(fifo)], "and lists the FIFO as a corrupt claim")
        s.equal(corrupt[0]["clear"], f"isogroup forget {fifo}", "with the command that clears it")

        done = ctx.isogroup("forget", str(fifo))
        s.equal(done.returncode, 0, f"isogroup forget exits 0 ({done.stderr.strip()!r})")
        s.check(not os.path.lexists(fifo), "the FIFO is gone")
        s.equal(ctx.status(), (0, []), "isogroup status: nothing left, exit 0")
    finally:
        if os.path.lexists(fifo):
            no_reader(fifo)  # unblocks a stuck reader, if any, so that the next scenarios can run
            fifo.unlink()

    expect_started(ctx, s, FIFO_GUEST)
    s.equal(g.driver(ctx.job.bdf("ta-virtio")), VFIO_PCI, "the sibling moved")
    lv.virsh("destroy", FIFO_GUEST, check=True, timeout=120)
    expect_home(ctx, s)


def no_reader(fifo: Path) -> bool:
    """Whether nobody has the FIFO open for reading: a non-blocking open for writing fails with ENXIO then.
    When it succeeds, a reader was blocked in open() and is released by this open."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    os.close(fd)
    return False


def corrupt_claim_during_release(ctx: Ctx, s: g.Scenario) -> None:
    """Two running guests, one group each; the other guest's claim file is overwritten with garbage. The
    holder's destroy still restores the holder's devices (release exits 0) and leaves the garbage alone; a start
    meanwhile refuses naming the file; the other guest's own release exits 4 (its claim is unreadable) while
    libvirt gives its managed device back; `isogroup forget` clears the file."""
    nic, sibling, other_nic = ctx.job.bdf("ta-nic"), ctx.job.bdf("ta-virtio"), ctx.job.bdf("tb-nic")
    group, other_group = g.iommu_group(nic), g.iommu_group(other_nic)
    s.equal(g.group_members(other_group), [other_nic], f"group {other_group}: the other guest's NIC alone")
    ctx.define(OTHER, [other_nic])
    ctx.define(HOLDER, [nic])
    expect_started(ctx, s, OTHER)
    expect_started(ctx, s, HOLDER)
    s.equal(g.driver(sibling), VFIO_PCI, "isogroup moved the holder's sibling")
    other_file = CLAIMS / claim_filename(OTHER)
    s.equal(claim_files()[other_file.name]["groups"], [other_group], "the other guest's claim holds its group")

    garbage = b'{"domain": "vmbed-other", "phase": \x00\xff garbage'
    other_file.write_bytes(garbage)
    rc, status = ctx.status()
    s.equal(rc, 4, "isogroup status exits 4")
    s.equal([c.get("file") for c in status if "corrupt" in c], [str(other_file)], "and lists the garbage")
    s.equal([c["domain"] for c in status if "domain" in c], [HOLDER], "beside the holder's claim")

    calls = Calls()
    lv.virsh("destroy", HOLDER, check=True, timeout=120)
    release = calls.one(HOLDER, "release")
    s.note(f"hook: {release.describe()}")
    s.equal(release.rc, 0, "the holder's release exits 0 despite the other guest's corrupt claim")
    s.check(
        g.wait_for(lambda: (g.driver(nic), g.driver(sibling)) == ("e1000e", "virtio-pci"), timeout=30),
        f"the holder's devices are back on e1000e and virtio-pci: {(g.driver(nic), g.driver(sibling))}",
    )
    s.equal((g.driver_override(nic), g.driver_override(sibling)), (None, None), "driver_override cleared")
    s.equal(vfio_open_errno(group), errno.ENOENT, f"/dev/vfio/{group} is gone")
    s.equal(list(claim_files_raw()), [other_file.name], "the holder's claim is gone; the garbage stays")
    s.equal(other_file.read_bytes(), garbage, "byte for byte")
    s.equal(g.driver(other_nic), VFIO_PCI, "the other guest's NIC is still on vfio-pci")
    s.equal(vfio_open_errno(other_group), errno.EBUSY, "and its QEMU still holds its group")

    calls = Calls()
    prepare = expect_refused_start(s, HOLDER, calls, 4)
    s.check(str(other_file) in prepare.stderr, f"a start meanwhile refuses naming {other_file}")
    s.equal(g.driver(sibling), "virtio-pci", "and moves nothing")

    calls = Calls()
    lv.virsh("destroy", OTHER, check=True, timeout=120)
    release = calls.one(OTHER, "release")
    s.note(f"hook: {release.describe()}")
    s.equal(release.rc, 4, "the other guest's release exits 4: its own claim cannot be read")
    s.check(str(other_file) in release.stderr, "naming its file")
    s.check(g.wait_for(lambda: g.driver(other_nic) == "e1000e", timeout=30), "libvirt gave its NIC back to e1000e")
    done = ctx.isogroup("forget", str(other_file))
    s.equal(done.returncode, 0, f"isogroup forget exits 0 ({done.stderr.strip()!r})")
    expect_home(ctx, s)


def claim_files_raw() -> list[str]:
    return sorted(p.name for p in CLAIMS.iterdir()) if CLAIMS.is_dir() else []


class SyslogCapture:
    """Receives what isogroup sends to /dev/log (the guest has no syslog daemon)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.path = Path("/dev/log")
        if os.path.lexists(self.path):
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.done = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done:
            try:
                self.lines.append(self.sock.recv(65536).decode(errors="replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.done = True
        self.thread.join(timeout=5)
        self.sock.close()
        self.path.unlink(missing_ok=True)


RELAX_METADATA = (
    f"<isogroup:policy xmlns:isogroup='{NS}'><isogroup:probe family='network' action='warn'/></isogroup:policy>"
)


def domain_relaxes_network_probe(ctx: Ctx, s: g.Scenario) -> None:
    """The sibling NIC is up with an address; the domain's <metadata> asks for the network probe to warn.
    Without a policy file that wish is ignored: the start is refused with the network-address finding and
    nothing moves. With a host policy granting `[domains] may_relax = true` the start goes ahead with the
    finding as a warning, the devices move, and destroy brings them back."""
    nic, sibling = ctx.job.bdf("ta-nic"), ctx.job.bdf("ta-virtio")
    group = g.iommu_group(nic)
    s.check(not POLICY.exists(), f"no {POLICY}")
    s.check(g.wait_for(lambda: bool(g.net_interfaces(sibling))), "the sibling has a netdev")
    ifname = g.net_interfaces(sibling)[0]
    xml = ctx.define(RELAX, [nic], RELAX_METADATA)
    s.check(NS in lv.virsh("dumpxml", RELAX, check=True).stdout, "libvirt kept the metadata")
    syslog = SyslogCapture()
    try:
        g.run(["ip", "addr", "add", NIC_ADDRESS, "dev", ifname])
        g.run(["ip", "link", "set", ifname, "up"])

        check = ctx.isogroup("check", str(xml), "--format", "json")
        plan = json.loads(check.stdout)[0]
        codes = [p["code"] for p in plan["problems"]]
        s.note(f"isogroup check: exit {check.returncode}, problems {plan['problems']}, notes {plan['notes']}")
        s.equal((check.returncode, plan["verdict"]), (1, "refused"), "isogroup check refuses it")
        s.check("host-in-use" in codes, f"for host use ({codes})")
        s.check(
            any(
                "probe family='network' action='warn'" in n["message"] and "ignored" in n["message"]
                for n in plan["notes"]
            ),
            "and says the domain's relaxation was ignored",
        )

        before, ledger = g.pci_state(), ledger_bytes()
        calls = Calls()
        prepare = expect_refused_start(s, RELAX, calls, 1)
        s.check(
            prepare.stderr.startswith(f"isogroup refused '{RELAX}': {sibling}"),
            f"the line names the sibling: {prepare.stderr.strip()!r}",
        )
        s.check(
            f"{ifname} up with {NIC_ADDRESS}" in prepare.stderr, f"and its address ({ifname} up with {NIC_ADDRESS})"
        )
        s.equal(g.state_diff(before, g.pci_state()), [], "nothing moved")
        s.equal(ledger_bytes(), ledger, "the ledger is byte for byte as before")
        s.equal(vfio_groups(), [], "no /dev/vfio/N")
        s.check(NIC_ADDRESS in g.run(["ip", "addr", "show", "dev", ifname]).stdout, "the NIC keeps its address")

        POLICY.parent.mkdir(parents=True, exist_ok=True)
        POLICY.write_text("[domains]\nmay_relax = true\n")
        check = ctx.isogroup("check", str(xml), "--format", "json")
        plan = json.loads(check.stdout)[0]
        s.note(f"isogroup check with the grant: exit {check.returncode}, notes {plan['notes']}")
        s.equal((check.returncode, plan["verdict"], plan["problems"]), (0, "ok", []), "isogroup check allows it")
        warnings = [n for n in plan["notes"] if n["subject"] == "warning [network-address]"]
        s.check(
            len(warnings) == 1 and "(allowed by policy)" in warnings[0]["message"] and ifname in warnings[0]["message"],
            "with the network-address finding as a warning",
        )

        calls = Calls()
        mark = len(syslog.lines)
        expect_started(ctx, s, RELAX)
        s.check(all(c.rc == 0 and not c.stderr for c in calls.of(RELAX)), "every hook call exits 0, silent")
        s.equal((g.driver(nic), g.driver(sibling)), (VFIO_PCI, VFIO_PCI), "both functions on vfio-pci")
        s.equal(g.net_interfaces(sibling), [], "the NIC with the address left the host")
        s.equal(vfio_open_errno(group), errno.EBUSY, f"QEMU holds /dev/vfio/{group}")
        ctx.relaxed_start_syslog = syslog.lines[mark:]
        s.note(f"syslog during the start: {ctx.relaxed_start_syslog}")
        ctx.rec.meta("relax_syslog", ctx.relaxed_start_syslog)

        calls = Calls()
        lv.virsh("destroy", RELAX, check=True, timeout=120)
        s.equal(calls.one(RELAX, "release").rc, 0, "release exits 0")
        expect_home(ctx, s)
        s.check(g.wait_for(lambda: bool(g.net_interfaces(sibling))), "the NIC is back on the host")
    finally:
        syslog.close()
        POLICY.unlink(missing_ok=True)
        for name in g.net_interfaces(sibling):
            g.run(["ip", "addr", "flush", "dev", name], check=False)
            g.run(["ip", "link", "set", name, "down"], check=False)


def relaxed_start_logs_warning(ctx: Ctx, s: g.Scenario) -> None:
    """The start that domain_relaxes_network_probe let through despite the NIC's address: the hook's only
    channel for the warning is syslog (a successful hook's stderr is nobody's to read), so the journal must
    say which finding was let through and by what grant, at warning level."""
    lines = ctx.relaxed_start_syslog
    s.check(lines is not None, "domain_relaxes_network_probe got as far as the relaxed start")
    assert lines is not None
    warnings = [line for line in lines if line.startswith(f"<{3 * 8 + 4}>")]  # LOG_DAEMON, LOG_WARNING
    s.note(f"warning records: {warnings}")
    s.check(
        any(RELAX in line and "network-address" in line for line in warnings),
        f"a warning record names the guest and the network-address finding it let through (syslog got {lines})",
    )


SCENARIOS: dict[str, Callable[[Ctx, g.Scenario], None]] = {
    "leading_space_name": leading_space_name,
    "whitespace_twins": whitespace_twins,
    "fifo_in_claims": fifo_in_claims,
    "corrupt_claim_during_release": corrupt_claim_during_release,
    "domain_relaxes_network_probe": domain_relaxes_network_probe,
    "relaxed_start_logs_warning": relaxed_start_logs_warning,
}


def reset(ctx: Ctx) -> None:
    """Best effort after a failed scenario: stop every guest, drop the ledger and the policy, and put every
    function back on its original driver with plain sysfs writes."""
    for name in sorted(ctx.defined):
        lv.virsh("destroy", name, check=False)
    shutil.rmtree(LEDGER, ignore_errors=True)
    POLICY.unlink(missing_ok=True)
    g.put_home(ctx.home)


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    g.wait_for(lambda: bool(g.net_interfaces(job.bdf("ta-virtio"))))
    home = g.pci_state()
    daemon = lv.Libvirtd()
    ctx = Ctx(job, rec, home, daemon)
    try:
        lv.configure()
        shutil.rmtree(TRUST, ignore_errors=True)
        CALLS.mkdir(parents=True)
        if POLICY.exists():  # the host's own policy file, seen through the overlay: the scenarios set their own
            POLICY.unlink()
        g.run([ctx.cli, "install-hook", "--hooks-dir", str(REAL_HOOKS)])
        real = REAL_HOOKS / "qemu.d" / "isogroup"
        lv.install_hook(WRAPPER.format(calls=CALLS, real=real), "qemu.d/isogroup")
        started = time.monotonic()
        daemon.start()
        rec.meta("libvirtd_start_seconds", round(time.monotonic() - started, 1))
        rec.run(SCENARIOS, ctx, job.args, reset=reset)
    finally:
        daemon.stop_after(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
