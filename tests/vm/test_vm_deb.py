"""The Debian package in the real-kernel bed, with the libvirt full stack: the host builds the .deb once
(scripts/build-deb.sh, lintian included), the bed boots once with test_vm_libvirt.py's topology, and the guest
`dpkg -i`s it, reloads libvirtd for its first hook, runs guest_libvirt_scenarios.py's full-stack scenarios with
the hook the package installed, then `dpkg --purge`s it while a guest holds a claim: no file of the package is
left and /run/isogroup is byte for byte as it was. Each scenario of tests/vm/guest_deb_scenarios.py is a test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci import missing_install
from isogroup import __version__
from testpaths import ROOT
from vm.bed import CACHE, VmResult, boot, require_bed
from vm.test_vm_libvirt import TOPOLOGY

pytestmark = [pytest.mark.vm, pytest.mark.package]

GUEST_SCRIPT = Path(__file__).parent / "guest_deb_scenarios.py"
BUILD_TOOLS = ("dpkg-buildpackage", "lintian", "dh")  # scripts/deb-packages.txt

SCENARIOS = [
    "daemon_starts",  # no hook at all: the package's will be libvirt's first
    "hostdev_not_viable",
    # dpkg -i, the postinst's "reload" line, the link and its target, then SIGHUP.
    "isogroup_hook_installed",
    "isogroup_start_succeeds",
    "isogroup_refuses_second_domain",
    "isogroup_refuses_absent_device",
    "isogroup_destroy_restores",
    "deb_purge_keeps_claims",
    "deb_stop_without_hook",
]


@pytest.fixture(scope="session")
def deb_run() -> Iterator[VmResult]:
    require_bed(libvirt=True)
    missing = [t for t in BUILD_TOOLS if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        missing_install(f"{', '.join(missing)} not installed: run scripts/setup.sh --test (scripts/deb-packages.txt)")
    # Not under /tmp: the guest mounts a fresh tmpfs there. The checkout's cache is seen at the same path.
    CACHE.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="deb-", dir=CACHE))
    try:
        start = time.monotonic()
        done = subprocess.run(
            [str(ROOT / "scripts" / "build-deb.sh"), str(out)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        deb = Path(done.stdout.strip().splitlines()[-1])
        assert deb == out / f"isogroup_{__version__}_all.deb"
        print(f"\nbuild-deb: {deb.name} {deb.stat().st_size} bytes in {time.monotonic() - start:.1f} s")
        result = boot(TOPOLOGY, GUEST_SCRIPT, [str(deb)], timeout=900)
        print(f"bed: {result.wall_seconds} s, meta {(result.results or {}).get('meta')}")
        for name, record in (result.results or {}).get("scenarios", {}).items():
            checks = [line for line in record["log"] if line.startswith(("ok: ", "FAILED: "))]
            print(f"  {name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s, {len(checks)} checks")
        yield result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_guest_script_completed(deb_run: VmResult) -> None:
    assert deb_run.ok, deb_run.describe()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(deb_run: VmResult, scenario: str) -> None:
    problem = deb_run.scenario_problem(scenario)
    assert problem is None, problem
