"""Installing the hook as a libvirt qemu.d drop-in (libvirt >= 6.5 runs every executable there, after
/etc/libvirt/hooks/qemu). An existing `qemu` script is never touched."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from isogroup.errors import InputError
from isogroup.paths import DEFAULT_LEDGER_DIR, DEFAULT_POLICY

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "isogroup"
MARKER = "# isogroup hook: installed by 'isogroup install-hook', removed by 'isogroup uninstall-hook'"


def hook_script(
    python: str,
    ledger_dir: str = DEFAULT_LEDGER_DIR,
    sysfs_root: str | None = None,
    policy_path: str = DEFAULT_POLICY,
) -> str:
    """The executable libvirt runs. `-I`: the hook ignores PYTHON* variables and the current directory."""
    options = ""
    if ledger_dir != DEFAULT_LEDGER_DIR:
        options += f", ledger_dir={ledger_dir!r}"
    if sysfs_root is not None:
        options += f", sysfs_root={sysfs_root!r}"
    if policy_path != DEFAULT_POLICY:
        options += f", policy_path={policy_path!r}"
    return (
        f"#!{python} -I\n"
        f"{MARKER}\n"
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


def install_hook(
    hooks_dir: Path = DEFAULT_HOOKS_DIR,
    python: str = sys.executable,
    ledger_dir: str = DEFAULT_LEDGER_DIR,
    sysfs_root: str | None = None,
    policy_path: str = DEFAULT_POLICY,
) -> Installed:
    drop_in = hooks_dir / "qemu.d"
    target = drop_in / HOOK_NAME
    if target.is_symlink() or (target.exists() and not _is_ours(target)):
        raise InputError(f"{target} exists and was not installed by isogroup; not overwriting it")
    others = [p for p in drop_in.iterdir() if p != target] if drop_in.is_dir() else []
    first_hook = not (hooks_dir / "qemu").exists() and not others and not target.exists()
    try:
        drop_in.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = drop_in / f".{HOOK_NAME}.tmp"
        tmp.write_text(hook_script(python, ledger_dir, sysfs_root, policy_path))
        tmp.chmod(0o755)
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"cannot install the hook in {drop_in}: {exc.strerror}") from None
    return Installed(target, first_hook)


def uninstall_hook(hooks_dir: Path = DEFAULT_HOOKS_DIR) -> Path | None:
    target = hooks_dir / "qemu.d" / HOOK_NAME
    if not target.exists() and not target.is_symlink():
        return None
    if not _is_ours(target):
        raise InputError(f"{target} was not installed by isogroup; not removing it")
    try:
        target.unlink()
    except OSError as exc:
        raise InputError(f"cannot remove {target}: {exc.strerror}") from None
    return target
