"""argv is input too (issue 10 §7): whatever libvirt or a person passes, the hook and the command line answer with
a documented exit code and at most one line on stderr, never a traceback, never a byte on the hook's stdout."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes.hostfixtures import tree_digest
from isogroup.cli.main import build_parser, main
from isogroup.hook import entry

# Words libvirt passes, words a person types, and anything else hypothesis makes of them.
WORDS = st.sampled_from(
    ["prepare", "start", "started", "stopped", "release", "reconnect", "migrate", "restore", "begin", "end", "-",
     "shutdown", "failed", "check", "groups", "status", "--format", "json", "--host", "--sysfs", "--debug", "", " ",
     "\t", "\r", "x" * 300, "0000:01:00.0", "%", "../..", "\x1b[2J", "é"]
)  # fmt: skip
ARGV = st.lists(st.one_of(WORDS, st.text(max_size=40)), max_size=6)
DOCUMENTED = {0, 1, 2, 3, 4}
COMMANDS = frozenset(
    name
    for action in build_parser()._actions
    if isinstance(action, argparse._SubParsersAction)
    for name in action.choices
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV, xml=st.sampled_from([b"", b"<domain><name>g</name></domain>", b"\x00\xff", b"hostdev"]))
def test_the_hook_takes_any_argv(
    argv: list[str], xml: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "run"
    tree = tmp_path / "sys"
    (tree / "bus" / "pci" / "devices").mkdir(parents=True, exist_ok=True)
    before = tree_digest(tree, ledger)
    code = entry.main(["hook", *argv], stdin=io.BytesIO(xml), ledger_dir=str(ledger), sysfs_root=str(tree))
    out, err = capsys.readouterr()
    assert code in DOCUMENTED, (argv, code, err)
    assert out == "" and "Traceback" not in err and err.count("\n") <= 1, (argv, err)
    if code != 0:
        assert tree_digest(tree, ledger) == before  # a refusal or bad input changes nothing


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV)
def test_the_command_line_takes_any_argv(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # A real subcommand would read or change this machine (the live /sys, /run/isogroup, libvirt's hooks): this is
    # about argv, so such a draw asks for the version instead; any other first word is a usage error to handle.
    if argv and argv[0].lstrip("-") in COMMANDS | {"debug"}:
        argv = ["--version", *argv[1:]]
    try:
        code = main(argv)
    except SystemExit as done:  # argparse: --help/--version (0) or a usage error (2)
        code = done.code if isinstance(done.code, int) else 2
    out, err = capsys.readouterr()
    assert code in DOCUMENTED, (argv, code, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("isogroup"), (argv, err)
