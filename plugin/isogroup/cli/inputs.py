"""Where a command's inputs come from: the host (`--host` snapshot, `--sysfs` tree or the live /sys, with its
probes), domain files, and the claims that count as taken. Parsed once, here, at the edge."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from isogroup.core.address import PciAddress
from isogroup.core.domain import DomainSpec
from isogroup.core.model import HostTopology
from isogroup.errors import InputError, StateError
from isogroup.formats import snapshot
from isogroup.formats.domainxml import read_domain
from isogroup.formats.schema import validate_tree
from isogroup.formats.xml import parse_xml
from isogroup.host.hostscan import read_topology
from isogroup.host.ledger import Ledger
from isogroup.host.probes import ProbeSeams
from isogroup.host.sysfs import Sysfs
from isogroup.paths import DEFAULT_LEDGER_DIR


def load_host(args: argparse.Namespace, scope: Iterable[PciAddress] | None = None) -> HostTopology:
    if args.host is not None:
        if getattr(args, "proc", None) is not None or getattr(args, "dev", None) is not None:
            raise InputError("--proc and --dev go with --sysfs: a snapshot carries its findings already")
        return snapshot.load(args.host)
    sysfs = kernel(args)
    return read_topology(sysfs, scope, probes=probe_seams(args, sysfs))


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


def read_domain_file(path: Path, schema: Path | None = None) -> DomainSpec:
    """The domain document at `path` ('-': stdin); with `schema` (libvirt's domain.rng), also valid for libvirt."""
    try:
        data = path.read_bytes() if str(path) != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    root = parse_xml(data, str(path))  # once: the domain reader and the schema read the same tree
    spec = read_domain(root, str(path))
    validate_tree(root, str(path), schema)
    return spec


def load_claims(args: argparse.Namespace) -> dict[int, str]:
    """Claims are an input to planning: `--ledger DIR`, or on the live host the live ledger when this user can
    read it (root); a snapshot or another tree has none unless a ledger is named."""
    if args.ledger is not None:
        claims = Ledger(args.ledger).read_all_unlocked()
    elif args.host is None and args.sysfs is None:
        try:
            claims = Ledger(DEFAULT_LEDGER_DIR).read_all_unlocked()
        except (OSError, StateError):
            claims = []
    else:
        return {}
    return {g: c.domain for c in claims for g in c.groups}
