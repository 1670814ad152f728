"""Where a command's inputs come from: the host (`--host` snapshot, `--sysfs` tree or the live /sys, with its
probes), domain files, and the claims that count as taken. Parsed once, here, at the edge."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from isogroup.core.address import PciAddress
from isogroup.core.claims import holders
from isogroup.core.domain import DomainSpec
from isogroup.core.model import HostTopology
from isogroup.core.policy import DEFAULT
from isogroup.core.variants import NO_VARIANTS, VariantTable
from isogroup.errors import InputError, Origin, StateError
from isogroup.formats import policyfile, snapshot
from isogroup.formats.domainxml import read_domain
from isogroup.formats.schema import validate_tree
from isogroup.formats.xml import parse_xml
from isogroup.host.hostscan import read_topology
from isogroup.host.kmod import read_variants, running_kernel
from isogroup.host.ledger import Ledger
from isogroup.host.probes import ProbeSeams
from isogroup.host.sysfs import Sysfs
from isogroup.limits import MAX_XML_BYTES
from isogroup.paths import DEFAULT_LEDGER_DIR

if TYPE_CHECKING:
    from isogroup.apply.transaction import Context


def load_host(args: argparse.Namespace, scope: Iterable[PciAddress] | None = None) -> HostTopology:
    if args.host is not None:
        if getattr(args, "proc", None) is not None or getattr(args, "dev", None) is not None:
            raise InputError("--proc and --dev go with --sysfs: a snapshot carries its findings already")
        return snapshot.load(args.host)
    sysfs = kernel(args)
    return read_topology(sysfs, scope, probes=probe_seams(args, sysfs))


def load_variants(args: argparse.Namespace) -> VariantTable:
    """`--modules-alias FILE`; else the running kernel's file when the host is the live one (the kernel that
    will bind the devices); else none: a snapshot or a --sysfs tree does not say which kernel it came from."""
    given = getattr(args, "modules_alias", None)
    if given is not None:
        if not given.exists():
            raise InputError(f"{given}: no such file")
        return read_variants(given)
    if args.host is None and args.sysfs is None:
        return read_variants(running_kernel())
    return NO_VARIANTS


def kernel(args: argparse.Namespace) -> Sysfs:
    """`--sysfs DIR`, or the live host's /sys when none is given: an explicit choice, never a path compared."""
    sysfs = Sysfs.live_host() if args.sysfs is None else Sysfs(args.sysfs)
    if not (sysfs.root / "bus").is_dir():
        raise InputError(f"{sysfs.root} does not look like sysfs (no bus/ directory)")
    return sysfs


def probe_seams(args: argparse.Namespace, sysfs: Sysfs) -> ProbeSeams | None:
    """The live host is probed; a --sysfs tree only with --proc (and --dev for disk labels)."""
    proc, dev = getattr(args, "proc", None), getattr(args, "dev", None)
    if args.sysfs is None:
        if proc is not None or dev is not None:
            raise InputError("--proc and --dev go with --sysfs: the live host is probed through its own /proc")
        return ProbeSeams.live_host(sysfs)
    if proc is None:
        if dev is not None:
            raise InputError("--dev needs --proc: a tree is probed only with its /proc")
        return None
    if not (proc / "self").exists() and not (proc / "net").is_dir():
        raise InputError(f"{proc} does not look like /proc (no self/ or net/)")
    return ProbeSeams.tree(sysfs, proc, dev)


def read_input(path: Path) -> bytes:
    """A document named on the command line ('-': stdin), at most MAX_XML_BYTES + 1 bytes of it (the parser
    refuses a larger one). A FIFO is read as a person at a shell means it: `check <(virsh dumpxml vm)`."""
    try:
        if str(path) == "-":
            stream = getattr(sys.stdin, "buffer", None)
            if stream is None:
                raise InputError("cannot read the document from stdin: it is closed")
            return bytes(stream.read(MAX_XML_BYTES + 1))
        with open(path, "rb") as f:
            return f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}", origin=Origin(str(path))) from None


def read_domain_file(path: Path, schema: Path | None = None) -> DomainSpec:
    """The domain document at `path` ('-': stdin); with `schema` (libvirt's domain.rng), also valid for libvirt."""
    data = read_input(path)
    try:
        root = parse_xml(data, str(path))  # once: the domain reader and the schema read the same tree
        spec = read_domain(root, str(path))
        validate_tree(root, str(path), schema)
    except InputError as exc:
        exc.origin = exc.origin or Origin(str(path))
        raise
    return spec


def load_claims(args: argparse.Namespace) -> dict[int, str]:
    """Claims are an input to planning: `--ledger DIR`, or on the live host the live ledger; a snapshot or
    another tree has none unless a ledger is named. A ledger that cannot be read is never "no claims": as root
    (who can read it) that is an error; without root (who cannot) a warning, since the verdict then cannot
    count the running guests' groups."""
    if args.ledger is not None:
        claims = Ledger(args.ledger).read_all_unlocked()
    elif args.host is None and args.sysfs is None:
        try:
            claims = Ledger(DEFAULT_LEDGER_DIR).read_all_unlocked()
        except (OSError, StateError) as exc:
            if os.geteuid() == 0:
                raise StateError(f"cannot read the ledger {DEFAULT_LEDGER_DIR}: {exc}") from None
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            sys.stderr.write(
                f"isogroup: warning: cannot read the ledger {DEFAULT_LEDGER_DIR} ({why}); groups held by running "
                "guests are not counted (run as root for a verdict)\n"
            )
            claims = []
    else:
        return {}
    return holders(claims)


def engine_context(args: argparse.Namespace) -> Context:
    """What a command that moves devices works with: the kernel (`--sysfs`, or the live host), the ledger, the
    host's policy (`--policy`, where the command takes one) and, on the live host only, the host-use probes and
    the running kernel's modules.alias: a --sysfs tree has no /proc to probe with, nor a kernel that binds."""
    from isogroup.apply.transaction import Context  # noqa: PLC0415 - the engine only for commands that move

    sysfs = kernel(args)
    host_policy = policyfile.load(args.policy, required=args.policy is not None) if "policy" in args else DEFAULT
    probes = ProbeSeams.live_host(sysfs) if sysfs.live else None
    modules_alias = running_kernel() if sysfs.live else None
    return Context(sysfs, Ledger(args.ledger), policy=host_policy, probes=probes, modules_alias=modules_alias)
