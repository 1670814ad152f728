"""The CI rule for missing install steps (tests/ci.py): a skip on a developer's machine, a failure in CI."""

from __future__ import annotations

import pytest

from ci import missing_install
from vm import bed


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_install_fails_only_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="libvirt0"):
        missing_install("no schemas (libvirt0)")


def test_a_missing_qemu_is_an_install_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    missing = bed.unavailable()
    assert missing is not None
    assert missing.installable
    assert bed.QEMU in missing.reason
