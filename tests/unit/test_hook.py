"""The hook as libvirt runs it: argv and stdin in, stderr and an exit code out, stdout never written."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.hostfixtures import (
    AUDIO,
    GPU,
    NIC,
    assert_home,
    domain_xml,
    drivers,
    libvirt_detach,
    libvirt_reattach,
    make_host,
)
from isogroup.apply.transaction import Context
from isogroup.hook import entry as hookentry
from isogroup.hook import run as hook
from isogroup.hook.install import MARKER, hook_script, install_hook, uninstall_hook
from isogroup.host.ledger import Ledger
from testpaths import ROOT

PLAIN = (
    b"<domain type='kvm'><name>plain</name><devices><disk type='file' device='disk'/>"
    b"<interface type='network'><source network='default'/></interface></devices></domain>"
)


def call(host: Context, name: str, op: str, sub: str, xml: bytes, extra: str = "-") -> int:
    """The slow path with the simulated kernel injected (the seams are parameters, not globals)."""
    return hook.run(name, op, sub, extra, xml, ledger_dir="", sysfs_root="", ctx=host)


def test_the_whole_lifecycle_through_the_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim, host = make_host(tmp_path)
    xml = domain_xml("g", GPU)
    assert call(host, "g", "prepare", "begin", xml) == 0
    libvirt_detach(sim, GPU)
    assert call(host, "g", "start", "begin", xml) == 0
    assert call(host, "g", "started", "begin", xml) == 0
    assert call(host, "g", "stopped", "end", xml) == 0
    libvirt_reattach(sim, GPU)
    assert call(host, "g", "release", "end", xml, "shutdown") == 0
    assert_home(sim, tmp_path / "run")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")


def test_a_refusal_is_one_line_on_stderr_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim, host = make_host(tmp_path)
    assert call(host, "first", "prepare", "begin", domain_xml("first", GPU)) == 0
    before = drivers(sim)
    assert call(host, "second", "prepare", "begin", domain_xml("second", AUDIO)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("isogroup refused 'second': IOMMU group 1 is in use by guest")
    assert drivers(sim) == before
    # libvirt then runs stopped and release for the failed start: the first guest keeps everything.
    assert call(host, "second", "release", "end", domain_xml("second", AUDIO), "failed") == 0
    assert drivers(sim) == before


def test_bad_xml_is_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim, host = make_host(tmp_path)
    before = drivers(sim)
    assert call(host, "g", "prepare", "begin", b"<domain><name>g</name><devices><hostdev") == 2
    _, err = capsys.readouterr()
    assert err.startswith("isogroup: domain 'g' XML: malformed XML") and err.count("\n") == 1
    assert drivers(sim) == before


def test_migrate_and_restore_check_without_moving_or_printing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, host = make_host(tmp_path)
    before = drivers(sim)
    for op in ("migrate", "restore"):
        assert call(host, "g", op, "begin", domain_xml("g", GPU)) == 0
    assert drivers(sim) == before and host.ledger.read_all_unlocked() == []
    call(host, "first", "prepare", "begin", domain_xml("first", GPU))
    assert call(host, "g", "migrate", "begin", domain_xml("g", AUDIO)) == 1
    out, _ = capsys.readouterr()
    assert out == ""  # libvirt would take anything here as replacement XML


def test_reconnect_adopts_a_running_guest_and_never_fails(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    assert call(host, "running", "reconnect", "begin", domain_xml("running", NIC)) == 0
    assert [c.groups for c in host.ledger.read_all_unlocked()] == [(2,)]
    # Even a corrupt ledger must not make libvirt kill a healthy guest.
    (tmp_path / "run" / "claims" / "running.json").write_text("{corrupt")
    assert call(host, "running", "reconnect", "begin", domain_xml("running", NIC)) == 0
    assert sim.driver(NIC) == "e1000e"


def test_other_operations_do_nothing(tmp_path: Path) -> None:
    sim, _ = make_host(tmp_path)
    for op, sub in (("started", "begin"), ("stopped", "end"), ("attach", "begin"), ("whatever", "-")):
        assert (
            hookentry.main(
                ["hook", "g", op, sub, "-"], stdin=io.BytesIO(domain_xml("g", GPU)), ledger_dir=str(tmp_path / "run")
            )
            == 0
        )
    assert not (tmp_path / "run").exists() and drivers(sim)[AUDIO] == "snd_hda_intel"


def test_the_fast_path_touches_nothing_without_hostdev(tmp_path: Path) -> None:
    ledger = tmp_path / "run"
    for op, sub in hookentry.OPERATIONS:
        assert hookentry.main(["hook", "plain", op, sub, "-"], stdin=io.BytesIO(PLAIN), ledger_dir=str(ledger)) == 0
    assert not ledger.exists()
    assert not hookentry.needs_work("plain", "prepare", "begin", PLAIN, str(ledger))
    assert hookentry.needs_work("plain", "prepare", "begin", domain_xml("g", GPU), str(ledger))


def test_release_finds_a_claim_even_when_the_xml_no_longer_names_the_device(tmp_path: Path) -> None:
    sim, host = make_host(tmp_path)
    call(host, "g", "prepare", "begin", domain_xml("g", GPU))
    assert hookentry.needs_work("g", "release", "end", PLAIN, str(tmp_path / "run"))
    assert call(host, "g", "release", "end", PLAIN) == 0
    assert_home(sim, tmp_path / "run")


def test_the_fast_path_imports_nothing_heavy() -> None:
    code = (
        "import sys, io; from isogroup.hook import entry as hookentry; "
        "hookentry.main(['h', 'plain', 'prepare', 'begin', '-'], "
        f"stdin=io.BytesIO({PLAIN!r}), ledger_dir='/nonexistent'); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typing', 'lxml', 'json', 'logging', 'libvirt', 'pyudev', 'subprocess') or m == 'isogroup.hook.run'); "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_installed_hook_runs_as_libvirt_runs_it(tmp_path: Path) -> None:
    installed = install_hook(tmp_path / "hooks", python=sys.executable, ledger_dir=str(tmp_path / "run"))
    assert installed.first_hook
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(installed.path), "plain", "prepare", "begin", "-"], input=PLAIN, capture_output=True, env=env, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    # A real host without an IOMMU: the hook reads /sys and refuses with one line.
    bogus = domain_xml("g", GPU.__class__.parse("0000:7f:1f.7"))
    done = subprocess.run(
        [str(installed.path), "g", "prepare", "begin", "-"], input=bogus, capture_output=True, env=env, check=False
    )
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().startswith("isogroup refused 'g': ") and done.stderr.count(b"\n") == 1


def test_install_never_overwrites_a_foreign_hook_and_uninstall_removes_only_ours(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    (hooks / "qemu").write_text("#!/bin/sh\nexit 0\n")
    installed = install_hook(hooks, python=sys.executable)
    assert not installed.first_hook  # a qemu hook existed: no restart needed
    assert (hooks / "qemu").read_text() == "#!/bin/sh\nexit 0\n"
    assert os.access(installed.path, os.X_OK) and MARKER in installed.path.read_text()
    install_hook(hooks, python=sys.executable)  # reinstalling our own is fine
    installed.path.write_text("#!/bin/sh\n# someone else's\n")
    with pytest.raises(Exception, match="not installed by isogroup"):
        install_hook(hooks)
    with pytest.raises(Exception, match="not installed by isogroup"):
        uninstall_hook(hooks)
    installed.path.unlink()
    install_hook(hooks)
    assert uninstall_hook(hooks) == installed.path and not installed.path.exists()
    assert uninstall_hook(hooks) is None


def test_the_repository_hook_is_what_install_hook_writes() -> None:
    assert (ROOT / "hooks" / "isogroup").read_text() == hook_script("/usr/bin/python3")


def test_status_lists_claims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from isogroup.cli.main import main

    _, host = make_host(tmp_path)
    call(host, "g", "prepare", "begin", domain_xml("g", GPU))
    assert main(["status", "--ledger", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "guest 'g': active, IOMMU group(s) 1" in out
    assert "0000:01:00.1  group 1  moved, originally on snd_hda_intel" in out
    assert main(["status", "--ledger", str(tmp_path / "run"), "--format", "json"]) == 0
    assert '"original_driver": "xhci_hcd"' in capsys.readouterr().out
    assert isinstance(host.ledger, Ledger)


def test_the_hooks_policy_refuses_and_a_broken_policy_refuses_every_start(tmp_path: Path) -> None:
    installed = install_hook(
        tmp_path / "hooks",
        python=sys.executable,
        ledger_dir=str(tmp_path / "run"),
        policy_path=str(tmp_path / "p.toml"),
    )
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    xml = domain_xml("g", GPU.__class__.parse("0000:7f:1f.7"))
    (tmp_path / "p.toml").write_text("mode = 'sloppy'\n")
    done = subprocess.run(
        [str(installed.path), "g", "prepare", "begin", "-"], input=xml, capture_output=True, env=env, check=False
    )
    assert done.returncode == 2 and done.stdout == b""
    assert (
        done.stderr.decode()
        == f"isogroup: {tmp_path / 'p.toml'}: mode: mode must be 'expand' or 'strict', not 'sloppy'\n"
    )
    (tmp_path / "p.toml").unlink()  # named explicitly at install: its absence is an error too
    done = subprocess.run(
        [str(installed.path), "g", "prepare", "begin", "-"], input=xml, capture_output=True, env=env, check=False
    )
    assert done.returncode == 2 and b"does not exist" in done.stderr
