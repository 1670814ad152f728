"""The CLI run in-process, the way the unit, golden and libvirt tests call it."""

from __future__ import annotations

from pathlib import Path

import pytest

from isogroup.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """main(argv) in-process: its exit code (a usage error's SystemExit becomes its code), stdout, stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else -1
    out, err = capsys.readouterr()
    return code, out, err
