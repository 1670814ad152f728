"""Skips that hide a missing install step: in CI (CI=true, as GitHub Actions and most CI systems set it)
scripts/setup.sh --test installs every prerequisite, so a missing one there is a broken setup, not a reason to
skip. Outside CI a developer may lack it, and the test skips with the reason and the install step."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing_install(reason: str) -> NoReturn:
    """Skip (a developer's machine) or fail (CI) a test whose prerequisite setup.sh installs is absent."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: scripts/setup.sh --test installs this, so its absence fails]", pytrace=False)
    pytest.skip(reason)


def needs_install(installed: bool, reason: str) -> pytest.MarkDecorator:
    """A marker like skipif, but in CI the missing install fails the test (tests/conftest.py applies it)."""
    return pytest.mark.needs_install(installed, reason=reason)
