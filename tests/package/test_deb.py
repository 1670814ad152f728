"""The Debian package, the wheel and the sdist, built from this checkout and installed the way an administrator
would: the .deb by scripts/build-deb.sh (debhelper, pybuild, Debian 12's python3; lintian must pass) and
scripts/test-deb.sh (into a clean Debian 12 root made by mmdebstrap, so apt has to resolve the Depends; then
remove and purge, nothing of the package left, claims untouched); the wheel and sdist by `python3 -m build`
and pip into a venv outside the checkout, where `isogroup install-hook` must write a hook that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from isogroup import __version__
from testpaths import ROOT

pytestmark = pytest.mark.package

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # never the venv's or pyenv's python
PLAIN = b'<domain type="kvm"><name>plain</name><devices/></domain>'
ABSENT = (
    b'<domain type="kvm"><name>g</name><devices><hostdev mode="subsystem" type="pci" managed="yes"><source>'
    b'<address domain="0x0000" bus="0x7f" slot="0x1f" function="0x7"/></source></hostdev></devices></domain>'
)


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t, path=SYSTEM_PATH) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run scripts/setup.sh --test (scripts/deb-packages.txt)")


@dataclass(frozen=True)
class Built:
    deb: Path
    seconds: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _need("dpkg-buildpackage", "lintian", "dh")
    out = tmp_path_factory.mktemp("deb")
    start = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-deb.sh"), str(out)], capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr  # lintian errors and warnings fail it too
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb == out / f"isogroup_{__version__}_all.deb"
    print(f"\nbuild-deb: {deb.name} {deb.stat().st_size} bytes, built and linted in {seconds:.1f} s")
    return Built(deb, seconds)


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_the_deb_holds_the_command_the_hook_link_and_a_conffile(built: Built) -> None:
    listing = _dpkg_deb("-c", str(built.deb))
    for path in (
        "./usr/bin/isogroup",
        "./usr/libexec/isogroup/qemu-hook",
        "./etc/isogroup/policy.toml",
        "./usr/share/man/man1/isogroup.1.gz",
        "./usr/share/bash-completion/completions/isogroup",
        "./usr/lib/python3/dist-packages/isogroup/hook/entry.py",
        "./usr/lib/python3/dist-packages/isogroup/cli/manpage.py",
    ):
        assert f" {path}" in listing, path
    assert "./etc/libvirt/hooks/qemu.d/isogroup -> /usr/libexec/isogroup/qemu-hook" in listing
    assert "__pycache__" not in listing
    assert _dpkg_deb("--ctrl-tarfile", str(built.deb)) and "conffiles" in _dpkg_deb("-I", str(built.deb))
    depends = _dpkg_deb("-f", str(built.deb), "Depends")
    for package in ("python3-libvirt", "python3-lxml", "python3-pyudev", "kmod"):
        assert package in depends


def test_installs_into_a_clean_root_and_purges_to_nothing(built: Built) -> None:
    if os.geteuid() != 0:
        pytest.skip("mmdebstrap's root mode needs root (CI runs as root)")
    _need("mmdebstrap")
    start = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "test-deb.sh"), str(built.deb)], capture_output=True, text=True, check=False
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 0 and lines[-1].startswith("test-deb: ok"), "\n".join(lines[-30:])
    print(f"\n{lines[-1]} in {time.monotonic() - start:.1f} s")


def _hook_runs(hook: Path) -> None:
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(hook), "plain", "prepare", "begin", "-"], input=PLAIN, capture_output=True, env=env, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    done = subprocess.run(
        [str(hook), "g", "prepare", "begin", "-"], input=ABSENT, capture_output=True, env=env, check=False
    )
    assert done.returncode == 1 and done.stdout == b"", done.stderr
    assert done.stderr.startswith(b"isogroup refused 'g': ") and done.stderr.count(b"\n") == 1


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_wheel_and_sdist_install_with_pip_and_their_hook_runs(kind: str, tmp_path: Path) -> None:
    _need("python3")
    dist = tmp_path / "dist"
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "HOME": str(tmp_path)}
    # Debian's python3-build, without isolation: Debian's setuptools 66 must build it (pyproject/setup.cfg).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "dist", "build", "*.egg-info", ".*cache"))
    done = subprocess.run(
        ["python3", "-m", "build", "--no-isolation", f"--{kind}", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (artifact,) = dist.iterdir()
    # A venv outside the checkout; lxml, pyudev and libvirt come from Debian's packages (system site-packages),
    # so pip needs no index.
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, env=env)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-build-isolation", str(artifact)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    hooks = tmp_path / "hooks"
    done = subprocess.run(
        [str(venv / "bin" / "isogroup"), "install-hook", "--hooks-dir", str(hooks), "--ledger", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    hook = hooks / "qemu.d" / "isogroup"
    assert hook.read_text().splitlines()[0] == f"#!{venv / 'bin' / 'python3'} -I"
    _hook_runs(hook)
