"""Hostile input through the command line, for every parser isogroup has: domain XML, a device element, a
libvirt status file, a host snapshot, a policy file. Whatever the bytes, `isogroup` answers with a documented
exit code; bad input (exit 2) is one line on stderr and nothing on stdout; nothing is ever a traceback (an
exception out of `main` fails the test). A refusal (exit 1) prints its verdict on stdout and at most one line
on stderr.

Generated documents are a valid one with fragments spliced in, numbers and names replaced by hostile text, or
plain bytes, so that both the parsers and what reads their results see odd input.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes.simkernel import SimKernel
from isogroup.cli.main import main
from isogroup.errors import ExitCode
from isogroup.formats import snapshot
from testpaths import SAMPLES

HOST = SAMPLES / "hosts" / "desktop-gpu.json"
URI = f"test://{SAMPLES / 'libvirt' / 'desktop-gpu.xml'}"
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What an attacker or bad luck puts where a number or a name goes.
HOSTILE = st.one_of(
    st.sampled_from(["", "0x", "-1", "0x1" + "0" * 5000, "9" * 5000, "1e9", "0o7", " 1", "1_0", "\u0661", "&x;"]),
    st.sampled_from(["../../x", "a\nb", "\x1b[2J", "\r", "]]>", "<", "'", '"', "\x00"]),
    st.text(max_size=12),
)
FRAGMENTS = st.sampled_from(
    [
        "<!DOCTYPE d [<!ENTITY x 'y'>]>",
        "<hostdev mode='subsystem' type='pci'><source><address/></source></hostdev>",
        "<hostdev mode='subsystem' type='pci' managed='maybe'/>",
        "<interface type='hostdev'><source><address bus='1'/></source></interface>",
        "<interface type='network'><source network='n'/><actual type='hostdev'/></interface>",
        "<hostdev mode='subsystem' type='mdev'><source><address/></source></hostdev>",
        "<metadata><policy xmlns='https://isogroup.dev/xmlns/policy/1' mode='lax'/></metadata>",
        "<devices>",
        "</devices>",
        "<" * 3,
        "<a>" * 300,
    ]
)


def hostdev(domain: str, bus: str, slot: str, function: str, managed: str) -> str:
    return (
        f"<hostdev mode='subsystem' type='pci' managed='{managed}'><source>"
        f"<address domain='{domain}' bus='{bus}' slot='{slot}' function='{function}'/></source></hostdev>"
    )


@st.composite
def devices(draw: st.DrawFn) -> str:
    number = st.one_of(HOSTILE, st.just("0x01"), st.just("0"))
    domain, bus, slot, function = (draw(number) for _ in range(4))
    managed = draw(st.one_of(st.sampled_from(["yes", "no"]), HOSTILE))
    parts = [hostdev(domain, bus, slot, function, managed), *draw(st.lists(FRAGMENTS, max_size=3))]
    return "".join(draw(st.permutations(parts)))


@st.composite
def domains(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    name = draw(st.one_of(st.just("w"), HOSTILE))
    return f"<domain type='kvm'><name>{name}</name><devices>{draw(devices())}</devices></domain>".encode()


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code in allowed, (code, err)
    assert "Traceback" not in err
    if code == ExitCode.INPUT:
        assert out == "", out
        assert err.startswith("isogroup: ") and err.count("\n") == 1 and err.endswith("\n"), err
    elif code != ExitCode.OK:
        assert err.count("\n") <= 1, err


@FAST
@given(domains())
def test_domain_xml(capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    with scratch() as tmp:
        (tmp / "d.xml").write_bytes(data)
        run(capsys, "check", "--host", HOST, tmp / "d.xml")


@FAST
@given(st.one_of(devices(), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_device_xml(capsys: pytest.CaptureFixture[str], text: str) -> None:
    # The persistent definition of a shut-off guest: nothing moves. libvirt's test driver refuses any change
    # to a persistent definition, so a well-formed device that passes isogroup ends in exit 3 (its refusal).
    with scratch() as tmp:
        SimKernel.materialize(tmp / "sys", snapshot.load(HOST))
        (tmp / "dev.xml").write_text(text, encoding="utf-8", errors="surrogateescape")
        run(
            capsys, "attach-device", "usb-guest", tmp / "dev.xml", "--config", "-c", URI,
            "--sysfs", tmp / "sys", "--ledger", tmp / "run", allowed=(0, 1, 2, 3),
        )  # fmt: skip


@FAST
@given(domains(), st.sampled_from(["domstatus", "domain", "other"]))
def test_status_file(capsys: pytest.CaptureFixture[str], domain: bytes, wrapper: str) -> None:
    with scratch() as tmp:
        (tmp / "qemu").mkdir()
        body = (
            domain
            if wrapper == "domain"
            else f"<{wrapper} state='running'>".encode() + domain + f"</{wrapper}>".encode()
        )
        (tmp / "qemu" / "win10.xml").write_bytes(body)
        run(capsys, "status", "--libvirt", "-c", URI, "--status-dir", tmp / "qemu", "--ledger", tmp / "run")


SNAPSHOT = json.loads(HOST.read_text())


@st.composite
def snapshots(draw: st.DrawFn) -> bytes:
    doc = json.loads(json.dumps(SNAPSHOT))
    for _ in range(draw(st.integers(1, 3))):
        function = draw(st.sampled_from(doc["functions"]))
        key = draw(st.sampled_from(sorted(function)))
        function[key] = draw(
            st.one_of(
                HOSTILE, st.integers(-(2**70), 2**70), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
            )
        )
    text = json.dumps(doc)
    if draw(st.booleans()):
        text = text.replace(
            '"iommu_group": 1', '"iommu_group": ' + draw(st.sampled_from(["9" * 5000, "1e999", "NaN", "[" * 5000])), 1
        )
    return text.encode()


@FAST
@given(snapshots())
def test_snapshot_json(capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    with scratch() as tmp:
        (tmp / "host.json").write_bytes(data)
        run(capsys, "check", "--host", tmp / "host.json", SAMPLES / "domains" / "desktop-gpu.xml")
        run(capsys, "groups", "--host", tmp / "host.json")


POLICY_LINES = st.sampled_from(
    [
        'mode = "strict"', 'mode = "lax"', "mode = 1", "[allow]", 'ids = ["10de:*"]', 'ids = ["0x10:*", "10de:-001"]',
        'addresses = ["0000:01:00.1"]', 'addresses = ["01:00"]', 'classes = ["0403", "zz"]', "[deny]", "[probes]",
        'usb = "warn"', 'gpu = "warn"', "[domains]", "may_relax = true", "may_relax = 1", "x = " + "[" * 5000,
        "x = " + "{a=" * 3000, "= broken",
    ]
)  # fmt: skip


@FAST
@given(st.lists(st.one_of(POLICY_LINES, HOSTILE), max_size=8))
def test_policy_toml(capsys: pytest.CaptureFixture[str], lines: list[str]) -> None:
    with scratch() as tmp:
        (tmp / "policy.toml").write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        run(capsys, "check", "--host", HOST, "--policy", tmp / "policy.toml", SAMPLES / "domains" / "desktop-gpu.xml")
