"""Guest script for tests/test_vm_libvirt.py: a real libvirtd starts a nested QEMU with a managed PCI hostdev.
Shows the failure isogroup exists to prevent (a group member left on its host driver makes QEMU's VFIO group
"not viable") and that binding the sibling by hand makes the same `virsh start` succeed. Device names are
those of TOPOLOGY in tests/test_vm_libvirt.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vm import guest_lib as g
from vm import guest_libvirt as lv

DOMAIN = "vmbed-hostdev"
HOOK_LOG = Path("/run/vmbed-hooks.log")
# Records every hook call; reads the domain XML from stdin as libvirt expects, prints nothing to stdout.
LOGGING_HOOK = f"""#!/bin/sh
echo "$1 $2 $3 $4" >> {HOOK_LOG}
cat > /dev/null
exit 0
"""


def hook_calls() -> list[str]:
    return HOOK_LOG.read_text().splitlines() if HOOK_LOG.exists() else []


def main() -> int:
    job = g.load_job()
    rec = g.Recorder(job.out)
    nic, sibling = job.bdf("lv-e1000e"), job.bdf("lv-virtio")
    daemon = lv.Libvirtd()
    try:
        with rec.scenario("daemon_starts") as s:
            lv.configure()
            lv.install_hook(LOGGING_HOOK)
            start = time.monotonic()
            daemon.start()
            rec.meta("libvirtd_start_seconds", round(time.monotonic() - start, 1))
            s.note(lv.virsh("version").stdout.strip())
            lv.define(DOMAIN, lv.domain_xml(DOMAIN, [nic]))
            s.equal(lv.domain_state(DOMAIN), "shut off", "domain defined")

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

        with rec.scenario("hostdev_viable_after_sibling_bound") as s:
            s.equal(g.bind_vfio(sibling), "vfio-pci", "sibling bound to vfio-pci by hand")
            start = time.monotonic()
            done = lv.virsh("start", DOMAIN, timeout=180)
            rec.meta("start_seconds", round(time.monotonic() - start, 1))
            if done.returncode != 0:
                s.note(f"{done.stderr.strip()}\n{lv.qemu_log(DOMAIN)}")
            s.check(done.returncode == 0, "virsh start succeeds")
            s.equal(lv.domain_state(DOMAIN), "running", "domain running")
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
    finally:
        if rec.data["scenarios"] and not all(r["ok"] for r in rec.data["scenarios"].values()):
            print(lv.Libvirtd.log_tail(), flush=True)
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
