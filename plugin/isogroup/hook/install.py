"""Installing the hook as a libvirt qemu.d drop-in (libvirt >= 6.5 runs every executable there, after
/etc/libvirt/hooks/qemu). An existing `qemu` script is never touched."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from isogroup.errors import InputError
from isogroup.limits import HOOK_TIMEOUT_S
from isogroup.paths import DEFAULT_LEDGER_DIR, DEFAULT_POLICY

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "isogroup"
MARKER = "# isogroup hook: installed by 'isogroup install-hook', removed by 'isogroup uninstall-hook'"
# The Debian package ships the hook here and links qemu.d/isogroup to it (debian/isogroup.links): dpkg owns both,
# so neither install-hook nor uninstall-hook may replace or delete them. Its marker differs from MARKER on purpose.
PACKAGED_HOOK = Path("/usr/libexec/isogroup/qemu-hook")
PACKAGED_MARKER = "# isogroup hook: installed by the Debian package isogroup; 'apt-get remove isogroup' removes it"
# What the hook imports on its slow path (and so lxml): an interpreter that cannot import it would fail every
# guest start with PCI passthrough, and a failing hook makes libvirt refuse the start.
HOOK_MODULE = "isogroup.hook.run"
IMPORT_CHECK_SECONDS = 60.0


def hook_script(
    python: str,
    ledger_dir: str = DEFAULT_LEDGER_DIR,
    sysfs_root: str | None = None,
    policy_path: str = DEFAULT_POLICY,
    *,
    marker: str = MARKER,
    timeout: float = HOOK_TIMEOUT_S,
) -> str:
    """The executable libvirt runs. `-I`: the hook ignores PYTHON* variables, the current directory and the
    user's site-packages (so a `pip install --user` is not enough: `check_interpreter` says so)."""
    options = ""
    if ledger_dir != DEFAULT_LEDGER_DIR:
        options += f", ledger_dir={ledger_dir!r}"
    if sysfs_root is not None:
        options += f", sysfs_root={sysfs_root!r}"
    if policy_path != DEFAULT_POLICY:
        options += f", policy_path={policy_path!r}"
    if timeout != HOOK_TIMEOUT_S:
        options += f", timeout={timeout!r}"
    return (
        f"#!{python} -I\n"
        f"{marker}\n"
        "import sys\n\n"
        "from isogroup.hook.entry import main\n\n"
        f"sys.exit(main(sys.argv{options}))\n"
    )


@dataclass(frozen=True)
class Installed:
    path: Path
    first_hook: bool  # libvirtd caches whether hooks exist: it must be restarted once


def _is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def is_packaged(path: Path) -> bool:
    """The Debian package's hook: a symlink to PACKAGED_HOOK (what libvirt runs through it is dpkg's file)."""
    try:
        return path.is_symlink() and Path(os.readlink(path)) == PACKAGED_HOOK
    except OSError:
        return False


def check_interpreter(python: str) -> None:
    """Refuse to write a hook that cannot run: `python -I` must import the hook's modules, as libvirt will run
    it (-I, a minimal environment, another working directory). A `pip install --user`, a deleted venv or a
    python without lxml would otherwise make libvirt refuse every guest start with PCI passthrough."""
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    import subprocess  # noqa: PLC0415 - only install-hook runs it; the CLI's other commands need not load it

    try:
        done = subprocess.run(
            [python, "-I", "-c", f"import {HOOK_MODULE}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=IMPORT_CHECK_SECONDS,
            env=env,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"cannot run {python} to check the hook's interpreter: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise InputError(
            f"{python} -I cannot import {HOOK_MODULE} ({detail}); the hook would make libvirt refuse every guest "
            "start with PCI passthrough",
            hint="install isogroup into a virtual environment or the system, not with pip --user",
        )


def install_hook(
    hooks_dir: Path = DEFAULT_HOOKS_DIR,
    python: str = sys.executable,
    ledger_dir: str = DEFAULT_LEDGER_DIR,
    sysfs_root: str | None = None,
    policy_path: str = DEFAULT_POLICY,
    *,
    timeout: float = HOOK_TIMEOUT_S,
) -> Installed:
    drop_in = hooks_dir / "qemu.d"
    target = drop_in / HOOK_NAME
    if is_packaged(target):
        raise InputError(
            f"{target} is the hook of the Debian package isogroup, installed already; not overwriting it",
            hint="'apt-get remove isogroup' removes it",
        )
    if target.is_symlink() or (target.exists() and not _is_ours(target)):
        raise InputError(f"{target} exists and was not installed by isogroup; not overwriting it")
    others = [p for p in drop_in.iterdir() if p != target] if drop_in.is_dir() else []
    first_hook = not (hooks_dir / "qemu").exists() and not others and not target.exists()
    check_interpreter(python)
    try:
        drop_in.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = drop_in / f".{HOOK_NAME}.tmp"
        tmp.write_text(hook_script(python, ledger_dir, sysfs_root, policy_path, timeout=timeout))
        tmp.chmod(0o755)
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"cannot install the hook in {drop_in}: {exc.strerror}") from None
    return Installed(target, first_hook)


def uninstall_hook(hooks_dir: Path = DEFAULT_HOOKS_DIR) -> Path | None:
    target = hooks_dir / "qemu.d" / HOOK_NAME
    if not target.exists() and not target.is_symlink():
        return None
    if is_packaged(target):
        raise InputError(
            f"{target} belongs to the Debian package isogroup; not removing it",
            hint="'apt-get remove isogroup' removes it",
        )
    if not _is_ours(target):
        raise InputError(f"{target} was not installed by isogroup; not removing it")
    try:
        target.unlink()
    except OSError as exc:
        raise InputError(f"cannot remove {target}: {exc.strerror}") from None
    return target
