"""Strict JSON for the documents isogroup reads back (claims; any JSON input may use it): UTF-8 only, nesting
bounded before the decoder sees it, no duplicate keys, no NaN or Infinity, no number longer than a few dozen
digits. Every refusal is one `JsonRefused` (a ValueError) whose text says why in a few words; the caller names
the file and picks the error class.

Why each rule: `json.loads` recurses once per nesting level and raises RecursionError on deep input; it takes
the last of duplicate keys silently (two readers of one file could disagree); it accepts `NaN`, and it turns a
5,000-digit integer into a ValueError with a message about Python's conversion limit.
"""

from __future__ import annotations

import json
import math
import re

# Every byte but quotes and brackets, deleted by bytes.translate at C speed before any regex runs.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
# A string once its escapes are gone: quote, anything but a quote, quote.
_STRING = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
MAX_NUMBER_CHARS = 40


class JsonRefused(ValueError):
    """The bytes are not a JSON document this reader accepts; `str()` says why."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    doc = dict(pairs)
    if len(doc) != len(pairs):  # only then look for which key it was
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRefused(f"key {key!r} appears twice")
            seen.add(key)
    return doc


def _refuse_constant(name: str) -> float:
    raise JsonRefused(f"{name} is not a number")


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonRefused(f"a number of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise JsonRefused(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def check_depth(data: bytes, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` (or brackets that do not pair up) without recursing: strip the
    strings, keep only the brackets, then remove innermost pairs `max_depth` times; anything left is too deep."""
    # Only `\\` and `\"` can hide a string's end; drop those pairs (left to right, as a decoder reads them), then
    # everything but quotes and brackets, then the strings, brackets inside them included.
    # Most documents have no backslash at all, and the search for one is far cheaper than the two copies.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in data else data
    # Strings without brackets inside leave `""`: removing adjacent quote pairs at C speed first leaves the regex
    # little to do. Each remaining quote keeps its place in its pair (an even number before it went), so the
    # skeleton is the same; with an odd number of quotes (a string never closed) only the wording of the refusal
    # may differ.
    skeleton = _STRING.sub(b"", unescaped.translate(None, _NOT_STRUCTURE).replace(b'""', b""))
    opens = skeleton.count(b"[") + skeleton.count(b"{")
    if opens * 2 != len(skeleton):  # cheap first: a megabyte of "[" is refused without a pass per level
        raise JsonRefused("unbalanced brackets")
    for _ in range(max_depth):
        if not skeleton:
            return
        skeleton = _INNERMOST.sub(b"", skeleton)
    if skeleton:
        raise JsonRefused(f"nested deeper than {max_depth} levels (or unbalanced brackets)")


def loads(data: bytes, *, max_depth: int) -> object:
    """The document in `data`; JsonRefused for anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"not UTF-8 (byte {exc.start})") from None
    check_depth(data, max_depth)
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except JsonRefused:
        raise
    except RecursionError:  # check_depth makes this unreachable for a well-formed document; kept as a backstop
        raise JsonRefused("nested too deeply") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise JsonRefused(str(exc)) from None
