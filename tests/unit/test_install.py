"""install-hook's two guards: it never writes a hook its interpreter cannot run (libvirt would then refuse every
guest start), and it recognises the Debian package's hook and leaves it to dpkg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from isogroup.cli.main import main
from isogroup.errors import ExitCode, InputError
from isogroup.hook.install import PACKAGED_HOOK, check_interpreter, install_hook, uninstall_hook


def test_a_python_that_cannot_import_the_hook_gets_no_hook(tmp_path: Path) -> None:
    # A fresh venv has no isogroup: the state a `pip install --user` (hidden by -I) or a deleted venv leaves.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    with pytest.raises(InputError, match=r"-I cannot import isogroup\.hook\.run \(ModuleNotFoundError"):
        install_hook(tmp_path / "hooks", python=bare)
    assert not (tmp_path / "hooks").exists()
    with pytest.raises(InputError, match="cannot run"):
        check_interpreter(str(tmp_path / "no-such-python"))
    check_interpreter(sys.executable)  # this one can


def test_the_packaged_hook_is_left_to_dpkg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    link = hooks / "qemu.d" / "isogroup"
    link.symlink_to(PACKAGED_HOOK)
    with pytest.raises(InputError, match="hook of the Debian package isogroup"):
        install_hook(hooks)
    assert main(["uninstall-hook", "--hooks-dir", str(hooks)]) == ExitCode.INPUT
    assert "belongs to the Debian package isogroup; not removing it ('apt-get remove isogroup' removes it)" in (
        capsys.readouterr().err
    )
    assert link.is_symlink() and os.readlink(link) == str(PACKAGED_HOOK)
    # Any other symlink is still someone else's.
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="not installed by isogroup"):
        install_hook(hooks)
    with pytest.raises(InputError, match="not installed by isogroup"):
        uninstall_hook(hooks)
