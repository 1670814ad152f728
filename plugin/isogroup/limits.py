"""Sizes isogroup accepts from its inputs, shared by the hook's fast path and the parsers. Imports nothing."""

from __future__ import annotations

MAX_XML_BYTES = 4 * 1024 * 1024  # libvirt's own domain documents are a few KiB; this is generous
