"""Guest script for tests/vm/test_vm_isogroup.py: isogroup on a real kernel, driven the way libvirt drives it.

The first scenario installs the hook with `isogroup install-hook` into a scratch hooks directory with a
scratch ledger, which every later scenario starts by emptying (a fresh ledger per scenario). Scenarios run the
installed executable exactly as libvirt runs a qemu.d hook (`HOOK NAME OPERATION
SUB-OPERATION -`, the domain XML on stdin, `LC_ALL=C` and a minimal `PATH`; its stdout must stay empty), and
does libvirt's own part between the hook calls: for a managed='yes' hostdev, driver_override + unbind +
drivers_probe after `prepare begin`, and the reverse after `stopped end` (FIELD.md §1-2). What isogroup did
is read back from the kernel (sysfs drivers, the VFIO group status ioctl) and from `isogroup status`.

After every scenario each PCI function of the VM must be back on the driver it had when this script started,
with driver_override cleared, no /dev/vfio/N left and the scenario's ledger empty. A failed scenario is
followed by a best-effort reset so that the next one starts from the same host.

Device names are those of TOPOLOGY in tests/vm/test_vm_isogroup.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isogroup.paths import claim_filename
from vm import guest_lib as g
from vm import guest_libvirt as lv

# The environment libvirt 9.0 gives a hook, as its own error message shows it in tests/vm/test_vm_libvirt.py.
HOOK_ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
SCRATCH = Path("/run/vmbed-isogroup")
ABSENT = "0000:7f:1f.7"  # no such function in the bed's VM
VFIO_PCI = "vfio-pci"

PciState = g.PciState


# ------------------------------------------------------------------------------------------- running the hook


@dataclass(frozen=True)
class HookRun:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    started: float  # time.perf_counter() when it was started
    seconds: float

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def describe(self) -> str:
        return (
            f"{' '.join(self.argv[1:])}: exit {self.returncode} in {self.seconds:.2f} s, "
            f"stderr {self.stderr.strip()!r}, stdout {self.stdout!r}"
        )


@dataclass
class Ctx:
    job: g.Job
    rec: g.Recorder
    home: PciState  # every function's (driver, driver_override) when the script started
    iso: Isogroup | None = None  # installed by the first scenario
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)


class Isogroup:
    """isogroup as the scenarios use it: the CLI, and the hook installed by `isogroup install-hook` into a
    scratch hooks directory with a scratch ledger."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.cli = ctx.job.checkout / ".venv" / "bin" / "isogroup"
        shutil.rmtree(SCRATCH, ignore_errors=True)
        self.hooks_dir = SCRATCH / "hooks"
        self.ledger = SCRATCH / "ledger"
        self.hook = self.hooks_dir / "qemu.d" / "isogroup"
        g.run([str(self.cli), "install-hook", "--hooks-dir", str(self.hooks_dir), "--ledger", str(self.ledger)])

    def _argv(self, name: str, operation: str, sub: str, extra: str) -> tuple[str, ...]:
        return (str(self.hook), name, operation, sub, extra)

    def call(self, name: str, operation: str, sub: str, xml: str, extra: str = "-") -> HookRun:
        argv = self._argv(name, operation, sub, extra)
        start = time.perf_counter()
        done = subprocess.run(
            argv, input=xml.encode(), capture_output=True, env=HOOK_ENV, cwd="/", timeout=180, check=False
        )
        seconds = time.perf_counter() - start
        run = HookRun(argv, done.returncode, done.stdout.decode(), done.stderr.decode(), start, seconds)
        print(f"hook {run.describe()}", flush=True)
        return run

    def spawn(self, name: str, operation: str, sub: str, xml: str) -> subprocess.Popen[bytes]:
        """The hook running in the background (to be killed): the XML is written and stdin closed."""
        proc = subprocess.Popen(
            self._argv(name, operation, sub, "-"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=HOOK_ENV,
            cwd="/",
        )
        self.ctx.spawned.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(xml.encode())
        proc.stdin.close()
        return proc

    def status(self) -> list[dict[str, Any]]:
        """`isogroup status --format json`: the claims as the CLI shows them."""
        done = g.run([str(self.cli), "status", "--format", "json", "--ledger", str(self.ledger)])
        claims: list[dict[str, Any]] = json.loads(done.stdout)
        return claims

    def claims(self) -> list[dict[str, Any]]:
        """The claim files themselves, read directly (cheaper than a process under TCG): domain, phase, groups
        and devices as the ledger wrote them."""
        found = []
        for path in sorted((self.ledger / "claims").glob("*.json")):
            doc = json.loads(path.read_bytes())
            found.append({key: doc[key] for key in ("domain", "phase", "groups", "devices")})
        return found

    def recover(self) -> subprocess.CompletedProcess[str]:
        return g.run([str(self.cli), "recover", "--ledger", str(self.ledger)], check=False)

    def claim_file(self, name: str) -> Path:
        return self.ledger / "claims" / claim_filename(name)


class Domain:
    """A libvirt domain as its hooks see it, with libvirt's own handling of managed='yes' hostdevs done
    between the hook calls: libvirt binds a managed device to vfio-pci after `prepare begin` and, at stop,
    gives back only the devices it bound itself (FIELD.md §2)."""

    def __init__(self, iso: Isogroup, name: str, hostdevs: Sequence[str]) -> None:
        self.iso = iso
        self.name = name
        self.hostdevs = list(hostdevs)
        self.xml = lv.domain_xml(name, hostdevs)
        self.detached: list[str] = []
        self.runs: list[HookRun] = []

    def call(self, operation: str, sub: str, extra: str = "-") -> HookRun:
        run = self.iso.call(self.name, operation, sub, self.xml, extra)
        self.runs.append(run)
        return run

    def detach_managed(self) -> None:
        for bdf in self.hostdevs:
            if g.driver(bdf) == VFIO_PCI:
                continue  # already on vfio-pci: libvirt leaves it there at stop too
            got = g.bind_vfio(bdf)
            if got != VFIO_PCI:
                raise RuntimeError(f"libvirt's part: {bdf} did not bind to vfio-pci (it is on {got})")
            self.detached.append(bdf)

    def reattach_managed(self) -> None:
        for bdf in reversed(self.detached):
            g.restore_host_driver(bdf)
        self.detached.clear()

    def start(self) -> HookRun | None:
        """libvirt's start sequence; None when the guest would run, else the hook call that failed it (after
        the stopped/release calls libvirt makes for a failed start)."""
        prepare = self.call("prepare", "begin")
        if prepare.returncode != 0:
            self.stop(reason="failed")
            return prepare
        self.detach_managed()
        start = self.call("start", "begin")
        if start.returncode != 0:
            self.stop(reason="failed")
            return start
        self.call("started", "begin")
        return None

    def stop(self, reason: str = "-") -> HookRun:
        """libvirt's stop: `stopped end`, its own reattach, then `release end`; returns the release call."""
        self.call("stopped", "end", reason)
        self.reattach_managed()
        return self.call("release", "end", reason)

    def stdout_clean(self) -> bool:
        return all(run.stdout == "" for run in self.runs)


# --------------------------------------------------------------------------------------------------- checks


def viability(group: int) -> bool | None:
    """The kernel's verdict from the VFIO group status ioctl; None when /dev/vfio/N does not exist (no member
    on a vfio driver)."""
    try:
        return g.group_viable(group)
    except FileNotFoundError:
        return None


def vfio_groups() -> list[str]:
    return sorted(p.name for p in g.DEV_VFIO.iterdir() if p.name != "vfio") if g.DEV_VFIO.is_dir() else []


def expect_ok(s: g.Scenario, run: HookRun, what: str) -> None:
    s.check(run.returncode == 0, f"{what}: exit 0 ({run.describe()})")
    s.equal(run.stdout, "", f"{what}: nothing on stdout")


def expect_refused(s: g.Scenario, run: HookRun, domain: str, reason: str) -> None:
    s.check(run.returncode == 1, f"refused with exit 1 ({run.describe()})")
    s.equal(run.stdout, "", "nothing on stdout")
    lines = run.stderr.splitlines()
    s.equal(len(lines), 1, "exactly one line on stderr")
    s.check(lines[0].startswith(f"isogroup refused '{domain}': "), f"the line names isogroup and the guest: {lines[0]}")
    s.check(reason in lines[0], f"the line gives the reason {reason!r}")


def expect_home(ctx: Ctx, s: g.Scenario, iso: Isogroup, *domains: Domain, home: PciState | None = None) -> None:
    """Every function back on its original driver with its original driver_override (cleared, unless `home`
    says otherwise), no VFIO group node, empty ledger, and the hook never wrote on stdout."""
    expected = ctx.home if home is None else home
    back = g.wait_for(lambda: g.pci_state() == expected, timeout=15)
    diff = "" if back else ": " + "; ".join(g.state_diff(expected, g.pci_state()))
    s.check(back, "every PCI function is back on its original driver and driver_override" + diff)
    s.check(g.wait_for(lambda: not vfio_groups()), f"no /dev/vfio/N left ({vfio_groups()})")
    s.equal(iso.status(), [], "isogroup status --format json: the ledger is empty")
    for d in domains:
        s.check(d.stdout_clean(), f"{d.name}: the hook never printed on stdout")


def expect_unchanged(s: g.Scenario, before: PciState, iso: Isogroup, ledger_before: list[dict[str, Any]]) -> None:
    after = g.pci_state()
    s.check(
        after == before, "nothing moved: every driver and driver_override as before " + str(g.state_diff(before, after))
    )
    s.equal(iso.claims(), ledger_before, "the ledger is as before")


def changed(before: PciState, after: PciState) -> list[str]:
    return sorted(bdf for bdf in after if after[bdf] != before.get(bdf))


def fresh(ctx: Ctx) -> Isogroup:
    """The installed isogroup with an empty ledger directory (a claim left by a failed scenario goes too)."""
    if ctx.iso is None:
        raise g.CheckFailed("the hook is not installed (see scenario install_hook)")
    shutil.rmtree(ctx.iso.ledger, ignore_errors=True)
    return ctx.iso


# ------------------------------------------------------------------------------------------------ scenarios


def install_hook(ctx: Ctx, s: g.Scenario) -> None:
    """`isogroup install-hook --hooks-dir DIR --ledger DIR` leaves an executable qemu.d/isogroup that runs
    the checkout's interpreter in isolated mode."""
    ctx.iso = iso = Isogroup(ctx)
    s.check(os.access(iso.hook, os.X_OK), f"{iso.hook} is executable")
    first = iso.hook.read_text().splitlines()[0]
    s.equal(first, f"#!{ctx.job.checkout / '.venv' / 'bin' / 'python'} -I", "its interpreter line")
    s.check(str(iso.ledger) in iso.hook.read_text(), "it uses the scratch ledger")


def no_hostdev_fast_path(ctx: Ctx, s: g.Scenario) -> None:
    """A domain without PCI passthrough: every hook call exits 0 at once, touching nothing, not even the ledger."""
    iso = fresh(ctx)
    dom = Domain(iso, "plain", [])
    before = g.pci_state()
    for operation, sub in (("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end")):
        expect_ok(s, dom.call(operation, sub), f"{operation} {sub}")
    expect_ok(s, dom.call("release", "end"), "release end")
    s.equal(g.pci_state(), before, "nothing moved")
    s.check(not iso.ledger.exists(), "the ledger directory was not even created")
    s.note(f"fast-path prepare took {dom.runs[0].seconds * 1000:.0f} ms")


def passthrough_cycle(
    ctx: Ctx,
    s: g.Scenario,
    tag: str,
    hostdev_name: str,
    movers: Sequence[str],
    keepers: Sequence[str] = (),
    *,
    release_twice: bool = False,
    home: PciState | None = None,
) -> None:
    """One managed='yes' hostdev through libvirt's whole start and stop. `movers` must be moved by isogroup at
    prepare and come back at release; `keepers` (bridges, pcieport) share the group and must never be touched."""
    job = ctx.job
    hostdev = job.bdf(hostdev_name)
    moved = sorted(job.bdf(n) for n in movers)
    kept = [job.bdf(n) for n in keepers]
    group = g.iommu_group(hostdev)
    s.equal(
        g.group_members(group),
        sorted([hostdev, *moved, *kept]),
        f"group {group}: {hostdev_name} + {movers} + {keepers}",
    )

    iso = fresh(ctx)
    dom = Domain(iso, tag, [hostdev])
    before = g.pci_state()
    expect_ok(s, dom.call("prepare", "begin"), "prepare begin")
    after = g.pci_state()
    s.equal(
        changed(before, after), moved, "prepare moved exactly the siblings on host drivers (the hostdev is libvirt's)"
    )
    for bdf in moved:
        s.equal(after[bdf], (VFIO_PCI, VFIO_PCI), f"{bdf}: on vfio-pci, driver_override vfio-pci")
        s.equal(g.net_interfaces(bdf), [], f"{bdf}: its netdev is gone from the host")
    for bdf in kept:
        s.note(f"{bdf} stays {before[bdf][0] or 'without a driver'}")

    claims = iso.claims()
    s.equal([(c["domain"], c["phase"], c["groups"]) for c in claims], [(tag, "active", [group])], "one active claim")
    recorded = {d["address"]: (d["original_driver"], d["original_override"], d["state"]) for d in claims[0]["devices"]}
    expected = {bdf: (*before[bdf], "moved") for bdf in moved}
    s.equal(recorded, expected, "each moved device recorded with its original driver and driver_override")
    if moved:
        s.equal(viability(group), False, "VFIO ioctl: not viable yet, the hostdev is still on its host driver")

    dom.detach_managed()
    expect_ok(s, dom.call("start", "begin"), "start begin (verifies the whole group)")
    s.equal(viability(group), True, "VFIO ioctl: the group is viable")
    s.equal(g.container_attach_errno(group), 0, "the group attaches to a VFIO container, as QEMU does first")
    expect_ok(s, dom.call("started", "begin"), "started begin")
    s.equal(iso.claims()[0]["phase"], "active", "the claim stays active while the guest runs")

    expect_ok(s, dom.call("stopped", "end"), "stopped end")
    dom.reattach_managed()
    s.equal(g.driver(hostdev), before[hostdev][0], "libvirt gave the hostdev back")
    expect_ok(s, dom.call("release", "end"), "release end")
    expect_home(ctx, s, iso, dom, home=home)
    if release_twice:
        expect_ok(s, dom.call("release", "end"), "a second release end changes nothing")
        s.equal(g.pci_state(), ctx.home if home is None else home, "still home")


def alone_in_group(ctx: Ctx, s: g.Scenario) -> None:
    """An endpoint alone in its group behind an ACS root port: nothing moves but libvirt's own hostdev."""
    passthrough_cycle(ctx, s, "alone", "alone-nic", [])


def multifunction_sibling(ctx: Ctx, s: g.Scenario) -> None:
    """e1000e + virtio-net as two functions behind one root port: the sibling moves, the group becomes viable,
    release returns both to their original drivers."""
    passthrough_cycle(ctx, s, "multifunction", "mf-nic", ["mf-virtio"], release_twice=True)
    s.check(g.wait_for(lambda: bool(g.net_interfaces(ctx.job.bdf("mf-virtio")))), "virtio-net has its netdev again")


def sibling_driver_override_kept(ctx: Ctx, s: g.Scenario) -> None:
    """A sibling pinned to its driver with driver_override (as driverctl does) comes back to that driver with
    the same override: release restores exactly what was there, not merely "a" host driver."""
    sibling = ctx.job.bdf("mf-virtio")
    (g.device_dir(sibling) / "driver_override").write_text("virtio-pci")
    try:
        s.equal(g.driver_override(sibling), "virtio-pci", "the sibling's driver_override is pinned to virtio-pci")
        home = {**ctx.home, sibling: ("virtio-pci", "virtio-pci")}
        passthrough_cycle(ctx, s, "pinned", "mf-nic", ["mf-virtio"], home=home)
        s.equal(g.driver_override(sibling), "virtio-pci", "its driver_override is virtio-pci again")
    finally:
        (g.device_dir(sibling) / "driver_override").write_text("\n")


def behind_pcie_pci_bridge(ctx: Ctx, s: g.Scenario) -> None:
    """Two conventional devices behind a pcie-pci-bridge share one requester ID: the other one moves, the
    bridge (no driver) stays as it is."""
    passthrough_cycle(ctx, s, "pcie-pci-bridge", "ppb-e1000", ["ppb-virtio"], ["ppb"])


def behind_pci_bridge(ctx: Ctx, s: g.Scenario) -> None:
    """The same behind a conventional pci-bridge on the root bus."""
    passthrough_cycle(ctx, s, "pci-bridge", "pb-virtio", ["pb-e1000"], ["pb"])


def no_acs_root_port(ctx: Ctx, s: g.Scenario) -> None:
    """A root port without ACS shares the group of the functions behind it: the sibling moves, the port
    stays on pcieport."""
    s.equal(g.driver(ctx.job.bdf("rp-noacs")), "pcieport", "the port is on pcieport")
    passthrough_cycle(ctx, s, "no-acs", "noacs-nic", ["noacs-virtio"], ["rp-noacs"])
    s.equal(g.driver(ctx.job.bdf("rp-noacs")), "pcieport", "the port is still on pcieport")


def refused_group_in_use(ctx: Ctx, s: g.Scenario) -> None:
    """A second guest asking for a device of a group another guest's claim holds is refused at prepare with
    the one-line reason; nothing moves, the ledger stays as it was, and the release libvirt then runs for the
    failed start does not touch the holder's devices."""
    job = ctx.job
    iso = fresh(ctx)
    holder = Domain(iso, "holder", [job.bdf("ppb-e1000")])
    s.check(holder.start() is None, "the holder starts")
    before, ledger_before = g.pci_state(), iso.claims()
    s.equal(g.driver(job.bdf("ppb-virtio")), VFIO_PCI, "the holder's sibling is on vfio-pci")

    intruder = Domain(iso, "intruder", [job.bdf("ppb-virtio")])
    refused = intruder.start()
    s.check(refused is not None, "the intruder does not start")
    assert refused is not None
    expect_refused(s, refused, "intruder", "is in use by guest 'holder'")
    s.equal(
        [r.argv[2:4] for r in intruder.runs][-2:], [("stopped", "end"), ("release", "end")], "libvirt's cleanup ran"
    )
    s.equal(intruder.runs[-1].returncode, 0, "the intruder's release (nothing to restore) exits 0")
    expect_unchanged(s, before, iso, ledger_before)
    s.equal(viability(g.iommu_group(job.bdf("ppb-e1000"))), True, "the holder's group is still viable")

    expect_ok(s, holder.stop(), "the holder's release")
    expect_home(ctx, s, iso, holder, intruder)


def refused_absent_device(ctx: Ctx, s: g.Scenario) -> None:
    """A hostdev that is not on the host, next to one that is: refused, and the present one's group is not
    touched either."""
    iso = fresh(ctx)
    before = g.pci_state()
    dom = Domain(iso, "ghost", [ctx.job.bdf("mf-nic"), ABSENT])
    refused = dom.start()
    s.check(refused is not None, "the guest does not start")
    assert refused is not None
    expect_refused(s, refused, "ghost", f"{ABSENT} is not on this host")
    expect_unchanged(s, before, iso, [])
    expect_home(ctx, s, iso, dom)


def refused_bridge_requested(ctx: Ctx, s: g.Scenario) -> None:
    """A bridge named as a hostdev (vfio-pci cannot take it): refused, nothing moved."""
    iso = fresh(ctx)
    before = g.pci_state()
    dom = Domain(iso, "bridge", [ctx.job.bdf("ppb")])
    refused = dom.start()
    s.check(refused is not None, "the guest does not start")
    assert refused is not None
    expect_refused(s, refused, "bridge", "is a PCI bridge")
    expect_unchanged(s, before, iso, [])
    expect_home(ctx, s, iso, dom)


def two_guests_contend(ctx: Ctx, s: g.Scenario) -> None:
    """Two guests whose hostdevs share one group start at the same moment: exactly one prepare succeeds, the
    other is refused with "in use by guest"; the loser's cleanup leaves the winner's devices alone."""
    job = ctx.job
    iso = fresh(ctx)
    a = Domain(iso, "guest-a", [job.bdf("mf-nic")])
    b = Domain(iso, "guest-b", [job.bdf("mf-virtio")])
    barrier = threading.Barrier(2)

    def prepare(d: Domain) -> HookRun:
        barrier.wait()
        return d.call("prepare", "begin")

    with ThreadPoolExecutor(2) as pool:
        ra, rb = list(pool.map(prepare, (a, b)))
    overlap = max(ra.started, rb.started) < min(ra.ended, rb.ended)
    s.note(f"guest-a: exit {ra.returncode} in {ra.seconds:.2f} s; guest-b: exit {rb.returncode} in {rb.seconds:.2f} s")
    s.check(overlap, "both hooks ran at once")
    s.equal(sorted([ra.returncode, rb.returncode]), [0, 1], "exactly one wins")
    winner, loser, lost = (a, b, rb) if ra.returncode == 0 else (b, a, ra)
    expect_refused(s, lost, loser.name, f"is in use by guest '{winner.name}'")
    after_prepare, ledger = g.pci_state(), iso.claims()
    s.equal([c["domain"] for c in ledger], [winner.name], "only the winner holds a claim")
    other = loser.hostdevs[0]
    s.equal(g.driver(other), VFIO_PCI, f"the winner moved its sibling {other} (the loser's hostdev)")

    loser.stop(reason="failed")  # what libvirt does after the failed prepare
    expect_unchanged(s, after_prepare, iso, ledger)

    winner.detach_managed()
    expect_ok(s, winner.call("start", "begin"), "the winner's start begin")
    group = g.iommu_group(job.bdf("mf-nic"))
    s.equal(viability(group), True, "VFIO ioctl: the winner's group is viable")
    expect_ok(s, winner.stop(), "the winner's release")
    expect_home(ctx, s, iso, a, b)


def _big_group(ctx: Ctx) -> tuple[str, list[str]]:
    job = ctx.job
    siblings = sorted(job.bdf(n) for n in job.paths if n.startswith("big-v"))
    return job.bdf("big-nic"), siblings


def _read_claim(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return doc


def kill_mid_prepare(ctx: Ctx, s: g.Scenario, iso: Isogroup, dom: Domain, attempts: int = 3) -> dict[str, Any]:
    """Starts the hook's prepare and SIGKILLs it as soon as its claim records a first device moved. Returns the
    claim the dead run left. Retries (after a release) when the hook was faster than the kill."""
    path = iso.claim_file(dom.name)
    for attempt in range(1, attempts + 1):
        proc = iso.spawn(dom.name, "prepare", "begin", dom.xml)
        deadline = time.monotonic() + 120
        seen: dict[str, Any] | None = None
        while proc.poll() is None and time.monotonic() < deadline:
            seen = _read_claim(path)
            if seen is not None and any(d["state"] == "moved" for d in seen["devices"]):
                break
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
        s.equal(out, "", "the killed hook printed nothing on stdout")
        if proc.returncode == -signal.SIGKILL:
            left = _read_claim(path)
            s.check(left is not None, "the dead run left its claim")
            assert left is not None
            states = [(d["address"], d["state"]) for d in left["devices"]]
            s.note(f"attempt {attempt}: killed with the claim {left['phase']}, devices {states}")
            return left
        s.note(f"attempt {attempt}: the hook finished (exit {proc.returncode}, {err.strip()!r}) before the kill")
        dom.call("release", "end")
    raise g.CheckFailed(f"the hook could not be killed in the middle of prepare in {attempts} attempts")


def _check_stranded(ctx: Ctx, s: g.Scenario, left: dict[str, Any]) -> None:
    nic, siblings = _big_group(ctx)
    s.equal(left["phase"], "preparing", "the dead run's claim is still 'preparing'")
    on_vfio = [bdf for bdf in siblings if g.driver(bdf) == VFIO_PCI]
    s.note(
        f"{len(on_vfio)} of {len(siblings)} siblings on vfio-pci when killed; {g.state_diff(ctx.home, g.pci_state())}"
    )
    s.check(0 < len(on_vfio) < len(siblings), "killed in the middle: some siblings moved, not all")
    s.equal(g.driver(nic), "e1000e", "the hostdev is untouched (libvirt never got to it)")


def sigkill_then_recover(ctx: Ctx, s: g.Scenario) -> None:
    """SIGKILL in the middle of prepare, then `isogroup recover`: nothing stranded."""
    iso = fresh(ctx)
    nic, _ = _big_group(ctx)
    dom = Domain(iso, "killed", [nic])
    left = kill_mid_prepare(ctx, s, iso, dom)
    _check_stranded(ctx, s, left)
    done = iso.recover()
    s.equal(done.returncode, 0, f"isogroup recover exits 0 ({done.stderr.strip()!r})")
    expect_home(ctx, s, iso, dom)


def sigkill_then_next_hook(ctx: Ctx, s: g.Scenario) -> None:
    """SIGKILL in the middle of prepare, then the next hook run, for another guest on another group, finishes
    the dead run first: nothing stranded, and the other guest starts and stops normally."""
    iso = fresh(ctx)
    nic, siblings = _big_group(ctx)
    dom = Domain(iso, "killed", [nic])
    left = kill_mid_prepare(ctx, s, iso, dom)
    _check_stranded(ctx, s, left)

    other = Domain(iso, "bystander", [ctx.job.bdf("alone-nic")])
    expect_ok(s, other.call("prepare", "begin"), "the bystander's prepare begin")
    s.equal([c["domain"] for c in iso.claims()], ["bystander"], "the dead run's claim is gone")
    s.equal(
        {bdf: g.pci_state()[bdf] for bdf in siblings}, {bdf: ctx.home[bdf] for bdf in siblings}, "all siblings home"
    )
    other.detach_managed()
    expect_ok(s, other.call("start", "begin"), "the bystander's start begin")
    expect_ok(s, other.stop(), "the bystander's release")
    expect_home(ctx, s, iso, dom, other)


def refused_routed_nic_sibling(ctx: Ctx, s: g.Scenario) -> None:
    """A sibling NIC that is up with an address and carries the host's default route: prepare is refused with
    the one-line reason naming the NIC, nothing moves, the route stays. Once the host stops using the NIC
    (address flushed, link down) the same guest starts, and release puts everything back."""
    job = ctx.job
    nic, sibling = job.bdf("route-nic"), job.bdf("route-virtio")
    group = g.iommu_group(nic)
    s.equal(g.group_members(group), sorted([nic, sibling]), "hostdev and routed NIC share a group")
    s.check(g.wait_for(lambda: bool(g.net_interfaces(sibling))), "the sibling has a netdev")
    ifname = g.net_interfaces(sibling)[0]
    iso = fresh(ctx)
    dom = Domain(iso, "routed", [nic])
    try:
        g.run(["ip", "addr", "add", "10.9.0.1/24", "dev", ifname])
        g.run(["ip", "link", "set", ifname, "up"])
        g.run(["ip", "route", "add", "default", "via", "10.9.0.2", "dev", ifname, "onlink"])
        s.check(ifname in g.run(["ip", "route", "show", "default"]).stdout, f"the default route goes through {ifname}")

        before = g.pci_state()
        refused = dom.start()
        s.check(refused is not None, "the guest does not start")
        assert refused is not None
        expect_refused(s, refused, "routed", sibling)
        s.check(ifname in refused.stderr, f"the reason names the interface {ifname}")
        expect_unchanged(s, before, iso, [])
        s.check(ifname in g.run(["ip", "route", "show", "default"]).stdout, "the default route is still there")
    finally:
        g.run(["ip", "route", "flush", "dev", ifname], check=False)
        g.run(["ip", "addr", "flush", "dev", ifname], check=False)
        g.run(["ip", "link", "set", ifname, "down"], check=False)

    started = dom.start()
    s.check(started is None, f"with the NIC unused the same guest starts ({started and started.describe()})")
    s.equal(g.driver(sibling), VFIO_PCI, "the now idle NIC was moved")
    s.equal(viability(group), True, "VFIO ioctl: the group is viable")
    expect_ok(s, dom.stop(), "release end")
    s.check(g.wait_for(lambda: bool(g.net_interfaces(sibling))), "release gave the NIC back to virtio-net")
    expect_home(ctx, s, iso, dom)


def refused_mounted_disk_sibling(ctx: Ctx, s: g.Scenario) -> None:
    """An AHCI function whose disk is mounted shares the hostdev's group: prepare is refused with the one-line
    reason naming the disk and the mount point, nothing moves, the file system stays readable. After umount the
    same guest starts, and release gives the controller and its disk back."""
    job = ctx.job
    nic, ahci = job.bdf("disk-nic"), job.bdf("disk-ahci")
    group = g.iommu_group(nic)
    s.equal(g.group_members(group), sorted([nic, ahci]), "hostdev and disk controller share a group")
    s.check(
        g.wait_for(lambda: bool(g.block_devices(ahci)), timeout=30),
        f"the controller has a disk {g.block_devices(ahci)}",
    )
    disk = Path("/dev") / g.block_devices(ahci)[0]
    mnt = Path("/mnt/vmbed-isogroup-disk")
    mnt.mkdir(parents=True, exist_ok=True)
    g.run(["mkfs.ext4", "-q", "-F", str(disk)], timeout=120)
    g.run(["mount", str(disk), str(mnt)])
    ctx.mounts.append(mnt)
    (mnt / "hello").write_text("hello\n")
    os.sync()
    s.check(f" {mnt} " in Path("/proc/mounts").read_text(), f"{disk} is mounted on {mnt}")

    iso = fresh(ctx)
    before = g.pci_state()
    dom = Domain(iso, "disk", [nic])
    refused = dom.start()
    s.check(refused is not None, "the guest does not start")
    assert refused is not None
    expect_refused(s, refused, "disk", ahci)
    s.check(str(disk) in refused.stderr and str(mnt) in refused.stderr, f"the reason names {disk} and {mnt}")
    expect_unchanged(s, before, iso, [])
    s.equal((mnt / "hello").read_text(), "hello\n", "the file system is still readable")

    g.run(["umount", str(mnt)])
    ctx.mounts.remove(mnt)
    started = dom.start()
    s.check(started is None, f"with the disk unmounted the same guest starts ({started and started.describe()})")
    s.equal(g.driver(ahci), VFIO_PCI, "the controller was moved")
    s.equal(viability(group), True, "VFIO ioctl: the group is viable")
    expect_ok(s, dom.stop(), "release end")
    s.check(
        g.wait_for(lambda: bool(g.block_devices(ahci)), timeout=30),
        "release gave the controller back; its disk is back",
    )
    expect_home(ctx, s, iso, dom)


# -------------------------------------------------------------------------------------------- the benchmark


BENCH_REPEAT = 5
_SHELL_MOVE = """for d in {devices}; do
  echo vfio-pci > /sys/bus/pci/devices/$d/driver_override
  echo $d > /sys/bus/pci/devices/$d/driver/unbind
  echo $d > /sys/bus/pci/drivers_probe
done
"""
_SHELL_RESTORE = """for d in {devices}; do
  echo $d > /sys/bus/pci/devices/$d/driver/unbind
  echo > /sys/bus/pci/devices/$d/driver_override
  echo $d > /sys/bus/pci/drivers_probe
done
"""


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def prepare_overhead(ctx: Ctx, s: g.Scenario) -> None:
    """Measured, not asserted: isogroup's prepare for a group with N siblings to move (the hook executed as
    libvirt does, end to end, and transaction.prepare in this process) against a plain shell loop doing the
    same sysfs writes (driver_override, unbind, drivers_probe per device). Medians of BENCH_REPEAT runs after
    a warm-up, everything restored between runs. Each run must still move and restore every device."""
    from isogroup.apply.transaction import Context, Stage, prepare, release
    from isogroup.formats.domainxml import parse_domain
    from isogroup.host.ledger import Ledger
    from isogroup.host.sysfs import Sysfs

    nic, siblings = _big_group(ctx)
    iso = fresh(ctx)
    dom = Domain(iso, "bench", [nic])
    plain = Domain(iso, "bench-plain", [])
    # The live host's seams, as the hook builds them (uevents for binds, /dev/vfio/N for the viability ioctl).
    host = Context(Sysfs.live_host(), Ledger(iso.ledger))
    spec = parse_domain(dom.xml.encode(), origin="bench")
    move_script = _SHELL_MOVE.format(devices=" ".join(siblings))
    restore_script = _SHELL_RESTORE.format(devices=" ".join(siblings))
    python = str(ctx.job.checkout / ".venv" / "bin" / "python")

    def all_moved(how: str) -> None:
        state = g.pci_state()
        wrong = [bdf for bdf in siblings if state[bdf] != (VFIO_PCI, VFIO_PCI)]
        if wrong:
            raise g.CheckFailed(f"{how}: not moved: {wrong}")

    def all_home(how: str) -> None:
        if not g.wait_for(lambda: g.pci_state() == ctx.home, timeout=15):
            raise g.CheckFailed(f"{how}: not restored: {g.state_diff(ctx.home, g.pci_state())}")

    def hook_exec() -> float:
        run = dom.call("prepare", "begin")
        if run.returncode != 0 or run.stdout:
            raise g.CheckFailed(f"hook prepare failed: {run.describe()}")
        all_moved("hook")
        if release(host, "bench") is not None:  # in-process: the benchmark times prepare only
            raise g.CheckFailed("transaction.release left a claim")
        all_home("release")
        return run.seconds

    def in_process() -> float:
        seconds = _timed(lambda: prepare(host, spec, Stage.PREPARE))
        all_moved("transaction.prepare")
        if release(host, "bench") is not None:
            raise g.CheckFailed("transaction.release left a claim")
        all_home("transaction.release")
        return seconds

    def shell_loop() -> float:
        seconds = _timed(lambda: subprocess.run(["/bin/sh", "-c", move_script], check=True, timeout=120))
        all_moved("shell loop")
        subprocess.run(["/bin/sh", "-c", restore_script], check=True, timeout=120)
        all_home("shell restore")
        return seconds

    def python_startup() -> float:
        return _timed(lambda: subprocess.run([python, "-I", "-c", "pass"], check=True, env=HOOK_ENV, timeout=120))

    def hook_imports() -> float:
        """What the hook's slow path imports before it does anything (with the interpreter's start)."""
        code = "import isogroup.hook.run"
        return _timed(lambda: subprocess.run([python, "-I", "-c", code], check=True, env=HOOK_ENV, timeout=120))

    def fast_path() -> float:
        return plain.call("prepare", "begin").seconds

    # hook_exec_prepare ~ hook_imports (python_startup included) + in_process_prepare.
    methods: dict[str, Callable[[], float]] = {
        "shell_loop": shell_loop,
        "in_process_prepare": in_process,
        "hook_exec_prepare": hook_exec,
        "python_startup": python_startup,
        "hook_imports": hook_imports,
        "hook_fast_path": fast_path,
    }
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for method in methods.values():
        method()  # warm-up: page cache over 9p, first imports in this process
    for _ in range(BENCH_REPEAT):
        for name, method in methods.items():  # interleaved, so a drift in the machine's speed hits all alike
            samples[name].append(method())
    ms = {name: round(statistics.median(values) * 1000, 1) for name, values in samples.items()}
    figures: dict[str, Any] = {
        "devices_moved": len(siblings),
        "repeat": BENCH_REPEAT,
        "median_ms": ms,
        "ratio_in_process_vs_shell": round(ms["in_process_prepare"] / ms["shell_loop"], 2),
        "ratio_hook_exec_vs_shell": round(ms["hook_exec_prepare"] / ms["shell_loop"], 2),
        "samples_ms": {name: [round(v * 1000, 1) for v in values] for name, values in samples.items()},
    }
    ctx.rec.meta("prepare_overhead", figures)
    for name, value in ms.items():
        s.note(f"{name}: median {value} ms over {BENCH_REPEAT} runs")
    s.note(
        f"prepare of {len(siblings)} devices: in-process/shell {figures['ratio_in_process_vs_shell']}, "
        f"hook exec/shell {figures['ratio_hook_exec_vs_shell']} (target <= 1.2)"
    )
    expect_home(ctx, s, iso, dom, plain)


SCENARIOS: dict[str, Callable[[Ctx, g.Scenario], None]] = {
    "install_hook": install_hook,
    "no_hostdev_fast_path": no_hostdev_fast_path,
    "alone_in_group": alone_in_group,
    "multifunction_sibling": multifunction_sibling,
    "sibling_driver_override_kept": sibling_driver_override_kept,
    "behind_pcie_pci_bridge": behind_pcie_pci_bridge,
    "behind_pci_bridge": behind_pci_bridge,
    "no_acs_root_port": no_acs_root_port,
    "refused_group_in_use": refused_group_in_use,
    "refused_absent_device": refused_absent_device,
    "refused_bridge_requested": refused_bridge_requested,
    "two_guests_contend": two_guests_contend,
    "sigkill_then_recover": sigkill_then_recover,
    "sigkill_then_next_hook": sigkill_then_next_hook,
    "prepare_overhead": prepare_overhead,
    # Last: these two put a NIC and a disk to use on the host.
    "refused_routed_nic_sibling": refused_routed_nic_sibling,
    "refused_mounted_disk_sibling": refused_mounted_disk_sibling,
}


def reset(ctx: Ctx) -> None:
    """Best effort after a scenario: kill what it left running, unmount, and put every function back on its
    original driver with plain sysfs writes, so that one failure does not fail the scenarios after it."""
    for proc in ctx.spawned:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    ctx.spawned.clear()
    for mnt in ctx.mounts:
        g.run(["umount", "-l", str(mnt)], check=False)
    ctx.mounts.clear()
    g.put_home(ctx.home)


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    # Drivers probe asynchronously after modprobe: wait for the netdevs before taking the reference state.
    g.wait_for(lambda: all(g.net_interfaces(job.bdf(n)) for n in job.models if job.models[n] == "virtio-net-pci"))
    home = g.pci_state()
    rec.meta("home_overrides", sorted(bdf for bdf, (_, o) in home.items() if o is not None))
    rec.run(SCENARIOS, Ctx(job, rec, home), job.args, reset=reset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
