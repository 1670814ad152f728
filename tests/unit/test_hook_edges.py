"""The hook and the command line at their edges: a guest's identity, stdin that is closed or huge, a logging
socket that vanishes, and the exit-code contract for errors that are bugs (exit 70, never 1)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes.hostfixtures import GPU, assert_home, domain_xml, make_host, tree_digest
from isogroup.cli import commands
from isogroup.cli.main import main
from isogroup.core.address import PciAddress
from isogroup.errors import ExitCode
from isogroup.hook import entry
from isogroup.hook import run as hook
from isogroup.limits import MAX_XML_BYTES
from isogroup.log import SyslogSink, log
from testpaths import SAMPLES


def _named(xml_name: str, device: PciAddress = GPU) -> bytes:
    return domain_xml("placeholder", device).replace(b"<name>placeholder</name>", f"<name>{xml_name}</name>".encode())


@pytest.mark.parametrize(("argv_name", "xml_name"), [("w", " w"), (" w", "w"), ("w", "w\t"), ("a b", "a  b")])
def test_the_xml_name_must_equal_the_name_libvirt_passed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_name: str, xml_name: str
) -> None:
    """libvirt keeps spaces and tabs in a name: a claim keyed by a stripped or otherwise different name would be
    another guest's, or one release never finds. Such a run refuses with exit 2 and changes nothing."""
    _, ctx = make_host(tmp_path)
    before = tree_digest(tmp_path)
    code = hook.run(argv_name, "prepare", "begin", "-", _named(xml_name), ledger_dir="", sysfs_root="", ctx=ctx)
    out, err = capsys.readouterr()
    assert (code, out) == (ExitCode.INPUT, "")
    assert err.count("\n") == 1 and f"libvirt called the hook for {argv_name!r}" in err, err
    assert tree_digest(tmp_path) == before


def test_a_name_with_spaces_is_kept_through_start_and_release(tmp_path: Path) -> None:
    sim, ctx = make_host(tmp_path)
    xml = _named(" w ")
    assert hook.run(" w ", "prepare", "begin", "-", xml, ledger_dir="", sysfs_root="", ctx=ctx) == 0
    assert [c.domain for c in ctx.ledger.read_all_unlocked()] == [" w "]
    # "w" is another guest: its release must not touch " w "'s claim.
    assert hook.run("w", "release", "end", "-", b"", ledger_dir="", sysfs_root="", ctx=ctx) == 0
    assert [c.domain for c in ctx.ledger.read_all_unlocked()] == [" w "]
    assert hook.run(" w ", "release", "end", "-", b"", ledger_dir="", sysfs_root="", ctx=ctx) == 0
    assert ctx.ledger.read_all_unlocked() == []
    assert_home(sim, tmp_path / "run")


class _Endless(io.RawIOBase):
    """A stdin that never ends: the hook must keep a bounded prefix and stop reading at a bounded total."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = len(buffer)
        buffer[:n] = b"x" * n
        self.served += n
        return n


def test_stdin_is_read_bounded() -> None:
    stream = _Endless()
    kept = entry.read_stdin(io.BufferedReader(stream))
    assert kept is not None and len(kept) == MAX_XML_BYTES + 1
    assert stream.served <= 17 * MAX_XML_BYTES + (1 << 17)


def test_an_oversized_domain_is_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, ctx = make_host(tmp_path)
    xml = domain_xml("g", GPU).replace(b"</domain>", b"<!--" + b"x" * MAX_XML_BYTES + b"--></domain>")
    kept = entry.read_stdin(io.BytesIO(xml))
    assert kept is not None
    assert hook.run("g", "prepare", "begin", "-", kept, ledger_dir="", sysfs_root="", ctx=ctx) == ExitCode.INPUT
    assert capsys.readouterr().err.count("\n") == 1


def _hook_with_closed_stdin(tmp_path: Path, operation: str, sub: str) -> subprocess.CompletedProcess[bytes]:
    code = (
        "import sys; from isogroup.hook.entry import main; "
        f"sys.exit(main(sys.argv, ledger_dir={str(tmp_path / 'run')!r}, sysfs_root={str(tmp_path)!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "g", operation, sub, "-"], stdin=subprocess.DEVNULL, capture_output=True,
        check=False, preexec_fn=lambda: os.close(0),
    )  # fmt: skip


@pytest.mark.parametrize(("operation", "sub", "code"), [("prepare", "begin", 2), ("stopped", "end", 0)])
def test_a_closed_stdin_is_one_line_not_a_traceback(tmp_path: Path, operation: str, sub: str, code: int) -> None:
    """Without the XML nobody can tell whether the guest has PCI devices: fail closed where the XML matters."""
    done = _hook_with_closed_stdin(tmp_path, operation, sub)
    assert done.returncode == code and done.stdout == b""
    assert done.stderr.count(b"\n") == code // 2, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_vanished_syslog_socket_never_reaches_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Records go to syslog as `isogroup[PID]: ...`; when the socket vanishes mid-run they are dropped, and
    nothing reaches stderr, which virsh would show as the hook's refusal."""
    address = str(tmp_path / "log")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    saved = log.sink
    log.sink = SyslogSink(address)
    try:
        log.info("%s: first record", "g")
        assert receiver.recv(4096) == f"<30>isogroup[{os.getpid()}]: g: first record".encode()
        receiver.close()
        os.unlink(address)
        for _ in range(3):
            log.error("the socket is gone")
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            log.exception("%s: internal error", "g")
    finally:
        log.sink = saved
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_a_bug_in_a_command_is_exit_70_and_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash must never read as a verdict: exit 1 is "refused" to a CI job."""

    def crash(_args: object) -> int:
        raise KeyError("boom")

    monkeypatch.setattr(commands, "cmd_groups", crash)
    host = str(SAMPLES / "hosts" / "desktop-gpu.json")
    assert main(["groups", "--host", host]) == int(ExitCode.SOFTWARE) == 70
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("isogroup: internal error: KeyError")
    assert main(["groups", "--host", host, "--format", "json"]) == 70
    out, _ = capsys.readouterr()
    assert json.loads(out)["error"]["exit"] == 70
    with pytest.raises(KeyError):
        main(["--debug", "groups", "--host", host])


def test_the_hook_run_has_one_deadline(tmp_path: Path) -> None:
    """install-hook --timeout bounds the whole run. Over a plain tree (no kernel reacts to the writes) every bind
    waits in vain: without the deadline each device would wait its own 10 s; with it the run stops after about
    one second, exit 3, one line."""
    from isogroup.hook.install import install_hook

    sim, _ = make_host(tmp_path)
    installed = install_hook(
        tmp_path / "hooks", python=sys.executable, ledger_dir=str(tmp_path / "run"), sysfs_root=str(sim.root),
        timeout=1.0,
    )  # fmt: skip
    assert "timeout=1.0" in installed.path.read_text()
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    start = time.monotonic()
    done = subprocess.run(
        [str(installed.path), "g", "prepare", "begin", "-"], input=domain_xml("g", GPU), capture_output=True,
        env=env, check=False, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert done.returncode == ExitCode.HOST, done.stderr
    assert done.stdout == b"" and done.stderr.count(b"\n") == 1 and b"longer than 1 s" in done.stderr, done.stderr
    assert elapsed < 8, elapsed
