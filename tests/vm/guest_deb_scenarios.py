"""Guest script for tests/vm/test_vm_deb.py: the Debian package in the real-kernel bed. `dpkg -i` installs the .deb
the host built (its Depends are the host's packages, seen over 9p; everything dpkg writes lands in the guest's
tmpfs overlay), its hook is the first and only one libvirt has, one SIGHUP makes libvirtd run it, and the
full-stack scenarios of guest_libvirt_scenarios.py run with it: the start QEMU refuses without isogroup ("not
viable") succeeds, a second domain sharing the group is refused with isogroup's one line, destroy puts every
driver back. Then `dpkg --purge` while a guest holds a claim: no file of the package is left, /run/isogroup is
byte for byte as it was, and the stop that follows has no hook (the sibling stays on vfio-pci, as prerm warns).
Device names are those of TOPOLOGY in tests/vm/test_vm_libvirt.py; the .deb's path is the job's one argument.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from vm import guest_lib as g
from vm import guest_libvirt as lv
from vm import guest_libvirt_scenarios as scenarios

HOOK = lv.HOOKS_DIR / "qemu.d" / "isogroup"
TARGET = Path("/usr/libexec/isogroup/qemu-hook")  # debian/isogroup.links
LEDGER = Path("/run/isogroup")
# An administrator's environment, not the bed's: no PYTHONPATH into the checkout, no venv in PATH.
ADMIN = ("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
FIRST_HOOK = "isogroup: libvirt had no qemu hook before: reload or restart"  # debian/isogroup.postinst
CLAIMS_HELD = "isogroup: guests still hold IOMMU groups"  # debian/isogroup.prerm
# man-db's trigger rebuilds the index of every manual page of the host (minutes under TCG); it runs only when
# this file exists (/usr/share/doc/man-db/README.Debian). The guest's overlay drops it: nothing of isogroup's.
MAN_DB_AUTO_UPDATE = Path("/var/lib/man-db/auto-update")


def dpkg_files() -> list[str]:
    return sorted(set(g.run([*ADMIN, "dpkg", "-L", "isogroup"]).stdout.splitlines()) - {"/."})


def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under root: relative path -> (mode, size, mtime_ns, sha256 of a file's bytes)."""
    found: dict[str, tuple[int, int, int, str]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return found


def owned(paths: list[str]) -> set[str]:
    """Which of `paths` some installed package owns: one `dpkg -S` for all (a call per path costs seconds under
    TCG). It prints "pkg[, pkg]: path" per owned path and exits 1 when one has no owner."""
    if not paths:
        return set()
    out = g.run([*ADMIN, "dpkg", "-S", *paths], check=False).stdout
    return {line.split(": ", 1)[1] for line in out.splitlines() if ": " in line}


def exists(path: str) -> bool:
    return os.path.lexists(path)


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    (deb,) = job.args
    nic, sibling = job.bdf("lv-e1000e"), job.bdf("lv-virtio")
    g.wait_for(lambda: bool(g.net_interfaces(sibling)))
    home = g.pci_state()
    group = g.iommu_group(nic)
    version = g.run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    installed: list[str] = []

    def install(s: g.Scenario) -> None:
        status = g.run([*ADMIN, "dpkg-query", "-W", "-f=${Status}", "isogroup"], check=False).stdout
        s.check("ok installed" not in status, f"isogroup is not installed before dpkg -i: {status!r}")
        s.check(not exists(str(HOOK)) and not (lv.HOOKS_DIR / "qemu").exists(), "libvirt has no qemu hook yet")
        MAN_DB_AUTO_UPDATE.unlink(missing_ok=True)
        start = time.monotonic()
        done = g.run([*ADMIN, "dpkg", "-i", deb], timeout=300, check=False)
        rec.meta("dpkg_install_seconds", round(time.monotonic() - start, 1))
        s.check(done.returncode == 0, f"dpkg -i {Path(deb).name} succeeds: {done.stderr.strip()}")
        s.check(FIRST_HOOK in done.stdout + done.stderr, "postinst says to reload libvirt (its first hook)")
        installed.extend(dpkg_files())
        s.note(f"dpkg -L isogroup: {len(installed)} paths")
        s.check(str(HOOK) in installed, f"{HOOK} is the package's file")
        s.equal(os.readlink(HOOK), str(TARGET), f"{HOOK} is the package's link")
        s.check(HOOK.is_file() and os.access(HOOK, os.X_OK), "an executable file through the link")
        s.equal(TARGET.read_text().splitlines()[0], "#!/usr/bin/python3 -I", "the hook runs Debian's python3")
        out = g.run([*ADMIN, "isogroup", "--version"]).stdout.strip()
        s.equal(out, f"isogroup {version}", "/usr/bin/isogroup is the package's")

    isogroup = scenarios.Isogroup((*ADMIN, "/usr/bin/isogroup"), install, hook_log=False)
    daemon = lv.Libvirtd()
    try:
        scenarios.daemon_starts(job, rec, daemon, hook_log=False)
        scenarios.hostdev_not_viable(job, rec)
        scenarios.isogroup_full_stack(job, rec, daemon, home, group, isogroup)

        with rec.scenario("deb_purge_keeps_claims") as s:
            s.check(bool(installed), "the install recorded dpkg -L isogroup")
            s.equal(g.pci_state(), home, "every device on its original driver")
            done = lv.virsh("start", scenarios.DOMAIN, timeout=180)
            s.check(done.returncode == 0, f"virsh start with isogroup again: {done.stderr.strip()}")
            s.equal(g.driver(sibling), "vfio-pci", "isogroup moved the sibling to vfio-pci")
            claims = scenarios.isogroup_status(isogroup)
            s.equal([c["domain"] for c in claims], [scenarios.DOMAIN], "the running guest holds a claim")
            ledger = tree(LEDGER)
            s.note(f"{LEDGER}: {sorted(ledger)}")
            start = time.monotonic()
            done = g.run([*ADMIN, "dpkg", "--purge", "isogroup"], timeout=300, check=False)
            rec.meta("dpkg_purge_seconds", round(time.monotonic() - start, 1))
            s.check(done.returncode == 0, f"dpkg --purge isogroup succeeds: {done.stderr.strip()}")
            s.check(CLAIMS_HELD in done.stdout + done.stderr, "prerm warns that a guest holds groups")
            s.check(not exists(str(HOOK)) and not exists(str(TARGET)), "the hook and its link are gone")
            left = [f for f in installed if exists(f) and not os.path.isdir(f)]
            s.equal(left, [], "no file or link of the package is left")
            dirs = [f for f in installed if os.path.isdir(f)]
            s.equal(sorted(set(dirs) - owned(dirs)), [], "no directory of the package is left that no other owns")
            package_dir = Path("/usr/lib/python3/dist-packages/isogroup")
            s.check(not package_dir.exists(), f"{package_dir} is gone, byte code (py3clean) too")
            s.check(not Path("/etc/isogroup").exists(), "purge removed /etc/isogroup")
            after = tree(LEDGER)
            diff = sorted(k for k in set(ledger) | set(after) if ledger.get(k) != after.get(k))
            s.check(not diff, f"{LEDGER} byte for byte as before (mode, size, mtime, content): {diff}")
            s.equal(lv.domain_state(scenarios.DOMAIN), "running", "the guest still runs")

        with rec.scenario("deb_stop_without_hook") as s:
            ledger = tree(LEDGER)
            lv.virsh("destroy", scenarios.DOMAIN, check=True)
            s.equal(lv.domain_state(scenarios.DOMAIN), "shut off", "domain destroyed")
            s.check(g.wait_for(lambda: g.driver(nic) == "e1000e"), "libvirt gave its hostdev back to e1000e")
            s.equal(g.driver(sibling), "vfio-pci", "no hook ran release: the sibling stays on vfio-pci (prerm's word)")
            s.equal(tree(LEDGER), ledger, f"the claim is still in {LEDGER}, for 'isogroup recover'")
            s.equal(g.restore_host_driver(sibling), "virtio-pci", "sibling restored by hand")
            s.check(g.wait_for(lambda: g.pci_state() == home), f"every driver home {g.state_diff(home, g.pci_state())}")
    finally:
        daemon.stop_after(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
