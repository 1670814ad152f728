"""Issue 10 §7: the claim file parser under hostile input (random bytes, random JSON, valid claims mutated one
field at a time). Whatever the bytes, reading them back raises StateError or gives a claim that writes back
the same, never another exception; and a refused read changes no file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes.hostfixtures import tree_digest
from isogroup.core.address import PciAddress
from isogroup.core.claims import Claim, DeviceState, MovedDevice, Phase
from isogroup.errors import StateError
from isogroup.formats.claimfile import claim_to_json, parse
from isogroup.host.ledger import Ledger
from isogroup.paths import claim_filename

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
_names = st.text(min_size=1, max_size=30)
_addresses = st.builds(PciAddress, st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 31), st.integers(0, 7))
_drivers = st.none() | st.sampled_from(["snd_hda_intel", "ehci-pci", "nvidia", "pci-stub"])


@st.composite
def _claims(draw: st.DrawFn) -> Claim:
    devices = draw(
        st.lists(
            st.builds(
                MovedDevice,
                st.builds(
                    PciAddress, st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 31), st.integers(0, 7)
                ),
                st.integers(0, 2**31 - 1),
                _drivers,
                _drivers,
                st.sampled_from(DeviceState),
            ),
            max_size=4,
            unique_by=lambda d: d.address,
        )
    )
    groups = tuple(draw(st.lists(st.integers(0, 2**31 - 1), max_size=4)))
    uuid = draw(st.none() | st.uuids().map(str))
    return Claim(draw(_names), draw(st.sampled_from(Phase)), groups, tuple(devices), uuid, draw(st.floats(0, 2e9)))


def _child(target: object, step: str | int) -> object:
    if isinstance(target, dict):
        return target.get(step)
    if isinstance(target, list) and isinstance(step, int) and step < len(target):
        return target[step]
    return None


def _mutate(doc: dict[str, Any], path: list[str | int], value: object) -> dict[str, Any]:
    """doc with the field at `path` (keys and indexes, as far as they exist) replaced by `value`."""
    target: object = doc
    for step in path[:-1]:
        child = _child(target, step)
        if not isinstance(child, dict | list):
            break
        target = child
    last = path[-1]
    if isinstance(target, dict):
        target[str(last)] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    return doc


def _check(data: bytes) -> None:
    try:
        claim = parse(data, "claims/x.json")
    except StateError as exc:
        assert "\n" not in str(exc)
        return
    # Accepted: it must be exactly what the writer would write for that claim, read back.
    assert parse(json.dumps(claim_to_json(claim)).encode("utf-8", "surrogatepass"), "again") == claim


@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@given(_json)
def test_random_json(doc: object) -> None:
    _check(json.dumps(doc).encode())


_fields = st.sampled_from(
    [["version"], ["domain"], ["uuid"], ["phase"], ["groups"], ["groups", 0], ["devices"], ["updated"], ["extra"]]
    + [["devices", 0, k] for k in ("address", "group", "original_driver", "original_override", "state", "extra")]
)


@given(_claims(), _fields, _json)
def test_valid_claims_mutated_one_field(claim: Claim, path: list[str | int], value: object) -> None:
    _check(json.dumps(_mutate(claim_to_json(claim), path, value)).encode("utf-8", "surrogatepass"))


@given(_claims(), st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_valid_claims_with_bytes_spliced_in(claim: Claim, at: int, junk: bytes) -> None:
    data = json.dumps(claim_to_json(claim)).encode("utf-8", "surrogatepass")
    _check(data[:at] + junk + data[at + len(junk) :])


@given(_claims())
def test_every_claim_the_writer_writes_reads_back(claim: Claim) -> None:
    assert parse(json.dumps(claim_to_json(claim)).encode("utf-8", "surrogatepass"), "x") == claim


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_claims(), st.binary(max_size=300) | _json.map(lambda d: json.dumps(d).encode()))
def test_through_the_ledger_a_refused_read_changes_no_file(claim: Claim, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "run", lock_timeout=1)
        claim = replace(claim, domain="good")
        with ledger.locked() as session:
            session.write(claim)
        name = claim_filename("hostile guest")
        Path(tmp, "run", "claims", name).write_bytes(data)
        os.chmod(Path(tmp, "run", "claims", name), 0o600)
        before = tree_digest(Path(tmp) / "run")
        with ledger.locked() as session:
            with contextlib.suppress(StateError):
                session.claim("hostile guest")
            view = session.scan()
            assert claim in view.claims
            assert len(view.claims) + len(view.corrupt) == 2
            try:
                session.holders()
            except StateError:
                assert view.corrupt
        assert tree_digest(Path(tmp) / "run") == before
