"""`check` validates domain files against libvirt's own RelaxNG schema (Debian: libvirt0 installs
/usr/share/libvirt/schemas/domain.rng), as `virsh define --validate` would."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ci import needs_install
from isogroup.cli.main import main
from isogroup.errors import ExitCode, InputError
from isogroup.formats.schema import find_domain_schema, load_schema, validate_domain
from testpaths import SAMPLES

HOST = SAMPLES / "hosts" / "desktop-gpu.json"
SCHEMA = find_domain_schema()

needs_schema = needs_install(
    SCHEMA is not None, "libvirt's schemas are not installed (Debian package libvirt0: scripts/setup.sh)"
)

GOOD = """<domain type='kvm'>
  <name>win10</name>
  <memory unit='KiB'>4194304</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>
    </hostdev>
  </devices>
</domain>
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@needs_schema
@pytest.mark.parametrize("path", sorted((SAMPLES / "domains").glob("*.xml")), ids=lambda p: p.stem)
def test_every_sample_domain_is_valid_for_libvirt(path: Path) -> None:
    validate_domain(path.read_bytes(), str(path), SCHEMA)


@needs_schema
@pytest.mark.parametrize(
    ("broken", "line", "message"),
    [
        # isogroup's reader passes over what it does not need; libvirt's schema does not.
        (GOOD.replace("</source>", "</source><rom bar='maybe'/>"), 6, "rejects this <hostdev>"),
        (GOOD.replace("unit='KiB'", "unit='parsecs'"), 3, "Invalid attribute unit for element memory"),
        (
            GOOD.replace(
                "  </devices>", "    <interface type='bridge'>\n<sorce bridge='br0'/></interface>\n  </devices>"
            ),
            9,
            "rejects this <interface>",
        ),
        (GOOD.replace("  <devices>", "  <gizmo/>\n  <devices>"), 5, "gizmo"),
    ],
    ids=["rom-bar", "memory-unit", "interface-typo", "unknown-element"],
)
def test_what_libvirt_would_refuse_fails_check_with_its_line(
    broken: str, line: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "win10.xml"
    path.write_text(broken)
    code, out, err = run(capsys, "check", "--host", HOST, path)
    assert (code, out) == (ExitCode.INPUT, "")
    assert err.startswith(f"isogroup: {path} line {line}: ") and err.count("\n") == 1, err
    assert message in err
    assert "--no-schema" in err


@needs_schema
def test_no_schema_turns_it_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "win10.xml"
    path.write_text(GOOD.replace("unit='KiB'", "unit='parsecs'"))
    code, out, _ = run(capsys, "check", "--host", HOST, "--no-schema", path)
    assert code == ExitCode.OK
    assert "domain 'win10': OK, can start" in out


@needs_schema
def test_live_xml_with_the_vf_libvirt_picked_is_valid() -> None:
    """`<interface><actual>` exists only in live and status XML; the schema describes definitions."""
    live = (SAMPLES / "domains" / "server-vf-network-live.xml").read_bytes()
    assert b"<actual" in live
    validate_domain(live, "live.xml", SCHEMA)


def test_without_libvirts_schemas_nothing_is_validated(tmp_path: Path) -> None:
    assert find_domain_schema([tmp_path / "nowhere", tmp_path]) is None
    validate_domain(b"<domain><gizmo/></domain>", "x.xml", None)


def test_a_broken_schema_file_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "domain.rng"
    bad.write_text(
        "<grammar xmlns='http://relaxng.org/ns/structure/1.0'><start><ref name='nowhere'/></start></grammar>"
    )
    assert find_domain_schema([tmp_path]) == bad
    with pytest.raises(InputError, match="cannot load libvirt's schema"):
        validate_domain(GOOD.encode(), "x.xml", bad)


@needs_schema
def test_the_schema_is_compiled_once_per_process() -> None:
    assert SCHEMA is not None
    load_schema(SCHEMA)
    hits = load_schema.cache_info().hits
    started = time.monotonic()
    for _ in range(200):
        validate_domain(GOOD.encode(), "x.xml", SCHEMA)
    assert load_schema.cache_info().hits == hits + 200
    assert time.monotonic() - started < 5  # ~0.3 ms each; compiling domain.rng each time would be ~15 ms
