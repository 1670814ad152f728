"""The strict JSON reader (formats/jsondoc.py): depth bounded before decoding, duplicate keys refused."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isogroup.formats.jsondoc import JsonRefused, check_depth, loads

# Strings that can fool a bracket counter: brackets, quotes and backslashes inside them.
TEXT = st.text(alphabet='[]{}"\\ab', max_size=6)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(VALUES, st.integers(0, 6))
def test_depth_is_that_of_the_document_whatever_its_strings_hold(value: object, limit: int) -> None:
    data = json.dumps(value).encode()
    if depth(value) > limit:
        with pytest.raises(JsonRefused):
            check_depth(data, limit)
    else:
        check_depth(data, limit)


def _reference_skeleton(data: bytes) -> bytes:
    """The skeleton as check_depth computed it before its shortcuts (no backslash test, `""` removed first)."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    return re.sub(rb'"[^"]*"', b"", bytes(b for b in unescaped if b in b'"[]{}'))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40).map(lambda b: bytes(b'"[]{}\\a'[x % 7] for x in b)), st.integers(0, 6))
def test_hostile_bytes_get_the_verdict_of_the_plain_algorithm(data: bytes, limit: int) -> None:
    """Unbalanced quotes, stray backslashes: the shortcuts change how fast, never what is refused."""
    skeleton = _reference_skeleton(data)
    expected_ok = skeleton.count(b"[") + skeleton.count(b"{") == len(skeleton) / 2
    for _ in range(limit):
        skeleton = re.sub(rb"\[\]|\{\}", b"", skeleton)
    expected_ok = expected_ok and not skeleton
    try:
        check_depth(data, limit)
    except JsonRefused:
        assert not expected_ok
    else:
        assert expected_ok


@pytest.mark.parametrize(
    "data", [b'{"a": 1, "a": 2}', b'[{"b": {"x": 0, "y": 1, "x": 2}}]', b'{"a": 1, "b": 2, "a": 1}']
)
def test_a_duplicate_key_anywhere_is_refused_and_named(data: bytes) -> None:
    with pytest.raises(JsonRefused, match=r"key '[ax]' appears twice"):
        loads(data, max_depth=5)


def test_distinct_keys_keep_their_order() -> None:
    doc = loads(b'{"b": 1, "a": 2, "c": 3}', max_depth=2)
    assert isinstance(doc, dict) and list(doc) == ["b", "a", "c"]
