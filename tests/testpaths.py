"""Where the project's files are, for every test: defined once."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout
SAMPLES = ROOT / "xml-samples"
PLUGIN = ROOT / "plugin" / "isogroup"
