"""Sizes isogroup accepts from its inputs, shared by the hook's fast path and the parsers. Imports nothing."""

from __future__ import annotations

MAX_XML_BYTES = 4 * 1024 * 1024  # libvirt's own domain documents are a few KiB; this is generous
# libvirt gives a hook no timeout and waits for it with its own locks held: the hook's whole run has one deadline
# (install-hook --timeout). Long enough for a group of several devices whose drivers take seconds to let go.
HOOK_TIMEOUT_S = 60.0
