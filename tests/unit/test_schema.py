"""`check` validates domain files against libvirt's own RelaxNG schema (Debian: libvirt0 installs
/usr/share/libvirt/schemas/domain.rng), as `virsh define --validate` would."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from ci import needs_install
from clirun import run
from isogroup.errors import ExitCode, InputError
from isogroup.formats.schema import find_domain_schema, load_schema, schema_version, validate_domain, validate_tree
from isogroup.formats.xml import parse_xml
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


def inputs_domain(count: int, bad: int) -> bytes:
    """A ~128 KB domain: `count` <input>s, the one at index `bad` with a bus libvirt does not know."""
    inputs = "".join(f"<input type='mouse' bus='{'parsecs' if i == bad else 'ps2'}'/>\n" for i in range(count))
    return GOOD.replace("  </devices>", inputs + "  </devices>").encode()


@needs_schema
def test_one_bad_child_among_thousands_is_found_in_a_few_validations() -> None:
    """libxml2 blames <devices>; finding the <input> to fix must not cost a validation per child (4,000
    children once took over a minute). The figure: a whole rejection against one plain validation."""
    assert SCHEMA is not None
    schema = load_schema(SCHEMA)
    data = inputs_domain(4000, 2000)
    assert len(data) > 120_000
    tree = etree.fromstring(data).getroottree()
    singles, rejections = [], []
    for _ in range(3):
        started = time.perf_counter()
        assert not schema.validate(tree)
        singles.append(time.perf_counter() - started)
        started = time.perf_counter()
        with pytest.raises(InputError) as info:
            validate_domain(data, "inputs.xml", SCHEMA)
        rejections.append(time.perf_counter() - started)
    # line 9 is the first <input> (GOOD's <devices> opens on line 5, its hostdev takes three lines)
    assert info.value.message == "inputs.xml line 2009: libvirt's schema rejects this <input>"
    ratio = statistics.median(rejections) / statistics.median(singles)
    # Binary search: about log2(4000) = 12 validations; one per child would be thousands.
    assert ratio < 200, f"a rejection costs {ratio:.0f} validations"


@needs_schema
def test_a_rejection_names_libvirts_version_and_what_plain_define_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert SCHEMA is not None
    path = tmp_path / "win10.xml"
    path.write_text(GOOD.replace("unit='KiB'", "unit='parsecs'"))
    code, _, err = run(capsys, "check", "--host", HOST, path)
    assert code == ExitCode.INPUT
    version = schema_version(SCHEMA)
    assert (version or "its version unknown") in err
    assert "'virsh define --validate' refuses it, plain 'virsh define' may still accept it" in err
    assert "libvirt would refuse it" not in err


def test_the_schemas_version_is_the_dpkg_package_that_owns_it(tmp_path: Path) -> None:
    schema = tmp_path / "share" / "domain.rng"
    schema.parent.mkdir()
    schema.write_text("<grammar/>")
    dpkg = tmp_path / "dpkg"
    (dpkg / "info").mkdir(parents=True)
    (dpkg / "info" / "other:amd64.list").write_text("/.\n/usr/bin/other\n")
    (dpkg / "info" / "libvirt0:amd64.list").write_text(f"/.\n{schema.parent}\n{schema}\n")
    (dpkg / "status").write_text(
        "Package: libvirt0\nStatus: install ok installed\nArchitecture: i386\nVersion: 1.0\n\n"
        "Package: libvirt0\nStatus: install ok installed\nArchitecture: amd64\nVersion: 9.0.0-4+deb12u2\n"
        "Description: library\n for interfacing: with virtualization\n"
    )
    assert schema_version(schema, dpkg) == "libvirt0 9.0.0-4+deb12u2"
    assert schema_version(tmp_path / "elsewhere.rng", dpkg) is None
    assert schema_version(schema, tmp_path / "no-dpkg") is None


@needs_schema
def test_validation_does_not_change_the_tree_the_domain_reader_reads() -> None:
    assert SCHEMA is not None
    live = (SAMPLES / "domains" / "server-vf-network-live.xml").read_bytes()
    root = parse_xml(live, "live.xml")
    before = etree.tostring(root)
    validate_tree(root, "live.xml", SCHEMA)
    assert etree.tostring(root) == before


def test_check_parses_each_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The domain reader and the schema read one tree: lxml parses the document once."""
    path = tmp_path / "win10.xml"
    path.write_text(GOOD)
    calls: list[object] = []
    real = etree.fromstring

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(etree, "fromstring", counting)
    code, out, _ = run(capsys, "check", "--host", HOST, path)
    assert code == ExitCode.OK, out
    assert len(calls) == 1
