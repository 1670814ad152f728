"""isogroup(1), the bash completion and the packaged files, checked against the parser and the code they come
from: every command and option in the page, every exit code, a policy conffile that changes nothing, a
completion that completes in a real bash, and one version everywhere."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from isogroup import __version__
from isogroup.cli.main import build_parser
from isogroup.cli.manpage import EXIT_STATUS, commented_policy, completion, manpage, subcommands, write
from isogroup.core.policy import DEFAULT
from isogroup.errors import ExitCode
from isogroup.formats.policyfile import parse_toml
from isogroup.hook.install import PACKAGED_MARKER, hook_script
from testpaths import ROOT


def _render(page: str) -> str:
    """The page as man shows it; groff's warnings (-ww) fail the test."""
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed: run scripts/setup.sh --test (groff-base)")
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-rLL=200n", "-P-cbou"],
        input=page,
        capture_output=True,
        text=True,
        check=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    assert done.stderr == ""
    return done.stdout.replace("\u2010", "-").replace("\u2212", "-")


def test_the_man_page_names_every_command_and_option() -> None:
    text = _render(manpage())
    parser = build_parser()
    assert re.search(r"^NAME\n\s+isogroup - give a guest whole IOMMU groups", text, re.M)
    commands = subcommands(parser)
    assert len(commands) >= 10
    for name, help_text, sub in commands:
        assert re.search(rf"^   {re.escape(name)}$", text, re.M), name
        assert " ".join(help_text.split()) in " ".join(text.split()), name
        for action in sub._actions:
            for option in action.option_strings:
                assert re.search(rf"(^|[\s\[(|,]){re.escape(option)}\b", text, re.M), f"{name} {option}"


def test_every_exit_code_is_in_the_page() -> None:
    assert set(EXIT_STATUS) == {int(c) for c in ExitCode}
    text = _render(manpage())
    section = text.split("EXIT STATUS", 1)[1].split("FILES", 1)[0]
    assert [int(c) for c in re.findall(r"^       (\d+)\s", section, re.M)] == [0, 1, 2, 3, 4, 70, 130]


def test_the_page_has_files_and_the_policy_format() -> None:
    text = _render(manpage())
    for path in ("/etc/isogroup/policy.toml", "/etc/libvirt/hooks/qemu.d/isogroup", "/run/isogroup/claims/"):
        assert path in text.split("FILES", 1)[1]
    policy = text.split("POLICY", 1)[1]
    for key in ('mode = "expand"', "[allow]", "[deny]", "[probes]", "[domains]", "may_relax = false"):
        assert key in policy


def test_the_page_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764547200")
    assert manpage() == manpage()
    assert manpage().startswith(f'.TH ISOGROUP 1 "2025-12-01" "isogroup {__version__}"')


def test_the_policy_conffile_is_all_comments_and_changes_nothing() -> None:
    text = commented_policy()
    assert all(line.startswith("#") for line in text.splitlines())
    assert "may_relax = false" in text and "may_relax = true" not in text
    assert tomllib.loads(text) == {}
    assert dataclasses.replace(parse_toml(text, "policy.toml"), source=DEFAULT.source) == DEFAULT
    # Uncommented, the example is a valid policy: the conffile documents keys the reader accepts.
    example = "\n".join(line.removeprefix("# ") for line in text.splitlines() if not line.startswith("#   "))
    parse_toml(example.split("#\n", 1)[1], "example")


def _complete(tmp_path: Path, words: list[str]) -> list[str]:
    """COMPREPLY of the generated completion in a real bash with bash-completion loaded; the last word is the
    one being completed."""
    framework = Path("/usr/share/bash-completion/bash_completion")
    if not framework.exists():
        pytest.skip("bash-completion is not installed: run scripts/setup.sh --test")
    script = tmp_path / "isogroup.bash"
    script.write_text(completion())
    line = " ".join(words)
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {framework}; source {script}; "
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; COMP_POINT={len(line)}; "
        "_isogroup isogroup; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True, cwd=tmp_path)
    return sorted(w for w in done.stdout.splitlines() if w)


def test_bash_completes_commands_options_and_values(tmp_path: Path) -> None:
    assert "check" in _complete(tmp_path, ["isogroup", ""])
    assert _complete(tmp_path, ["isogroup", "unin"]) == ["uninstall-hook"]
    assert _complete(tmp_path, ["isogroup", "check", "--fo"]) == ["--format"]
    assert _complete(tmp_path, ["isogroup", "check", "--format", ""]) == ["json", "text"]
    assert "--libvirt" in _complete(tmp_path, ["isogroup", "status", "--"])
    (tmp_path / "d.xml").write_text("")
    (tmp_path / "sub").mkdir()
    assert _complete(tmp_path, ["isogroup", "check", "--sysfs", ""]) == ["sub"]  # a DIR: directories only
    assert "d.xml" in _complete(tmp_path, ["isogroup", "check", ""])


def test_write_makes_the_three_files(tmp_path: Path) -> None:
    assert sorted(p.name for p in write(tmp_path)) == ["isogroup.1", "isogroup.bash", "policy.toml"]


def test_the_packaged_hook_is_what_install_hook_writes_with_the_packages_marker() -> None:
    assert (ROOT / "debian" / "qemu-hook").read_text() == hook_script("/usr/bin/python3", marker=PACKAGED_MARKER)


def test_one_version_in_pyproject_changelog_and_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert pyproject["project"]["version"] == __version__
    assert changelog.startswith(f"isogroup ({__version__}) ")


def test_setup_installs_every_build_dependency() -> None:
    control = (ROOT / "debian" / "control").read_text()
    build_depends = control.split("Build-Depends:", 1)[1].split("\nStandards-Version", 1)[0]
    wanted = {re.sub(r"\s*\(.*", "", d).strip() for d in build_depends.split(",") if d.strip()}
    # debhelper-compat is provided by debhelper; dh-sequence-bash-completion by bash-completion.
    provided = {"debhelper-compat": "debhelper", "dh-sequence-python3": "dh-python"}
    provided["dh-sequence-bash-completion"] = "bash-completion"
    listed = {
        line.strip()
        for line in (ROOT / "scripts" / "deb-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {provided.get(d, d) for d in wanted} <= listed
