"""The cluster commands: `inventory` (what this host can give whole, for a scheduler) and the fleet form of
`check` (which of many hosts can run each domain). Inputs are read here, at the edge; the judgement is core's."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from isogroup.cli.inputs import load_claims, load_host
from isogroup.core import fleet, report
from isogroup.core.claims import is_reservation
from isogroup.core.domain import DomainSpec
from isogroup.core.export import kubevirt, neutral, nfd, nova, proxmox
from isogroup.core.inventory import judge
from isogroup.core.model import HostTopology
from isogroup.core.policy import Policy
from isogroup.errors import ExitCode, InputError
from isogroup.formats import policyfile, snapshot

MAX_FLEET_HOSTS = 100_000  # a bound on hostile input: a directory of a million files is not a fleet


def inventory(args: argparse.Namespace) -> int:
    host = load_host(args)
    node = args.node or (args.host.stem if args.host is not None else socket.gethostname())
    holders = load_claims(args)
    policy = policyfile.load(args.policy, required=args.policy is not None)
    reservations = {group: holder for group, holder in holders.items() if is_reservation(holder)}
    inv = judge(host, node, holders, policy, reservations=reservations)
    if args.format == "json":
        sys.stdout.write(report.dumps(neutral.to_json(inv)))
    elif args.format == "nova":
        sys.stdout.write(nova.render(inv))
    elif args.format == "kubevirt":
        sys.stdout.write(kubevirt.render(inv))
    elif args.format == "nfd":
        sys.stdout.write(nfd.render(inv))
    else:
        sys.stdout.write(proxmox.render(inv))
        for group in proxmox.mappings(inv)[1]:
            sys.stderr.write(
                f"isogroup: group {group.group} left out: the topology does not record its subsystem IDs, which "
                "Proxmox checks (take the snapshot again with this isogroup)\n"
            )
    return ExitCode.OK


def fleet_hosts(args: argparse.Namespace) -> list[tuple[str, HostTopology]]:
    """--host FILE (repeatable) and --hosts DIR (every *.json in it), named by file stem; names must differ."""
    files: list[Path] = list(args.host or [])
    if args.hosts is not None:
        try:
            found = sorted(p for p in args.hosts.iterdir() if p.suffix == ".json" and p.is_file())
        except OSError as exc:
            raise InputError(f"cannot read {args.hosts}: {exc.strerror}") from None
        if not found:
            raise InputError(f"{args.hosts} holds no host snapshots (*.json)")
        files += found
    if len(files) > MAX_FLEET_HOSTS:
        raise InputError(f"{len(files)} host snapshots: at most {MAX_FLEET_HOSTS} in one check")
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two host snapshots are named {dup!r}: hosts are told apart by file name")
    return [(p.stem, snapshot.load(p)) for p in files]


def check_fleet(args: argparse.Namespace, domains: list[DomainSpec], policy: Policy) -> int:
    """Exit 0 when every domain can run on at least one host, 1 when some domain can run nowhere."""
    if args.ledger is not None or args.sysfs is not None:
        raise InputError("--ledger and --sysfs describe one host: a fleet check takes snapshots (--host/--hosts)")
    results = fleet.check(domains, fleet_hosts(args), policy)
    if args.format == "json":
        sys.stdout.write(report.dumps(fleet.to_json(results)))
    else:
        sys.stdout.write(fleet.to_text(results))
    return ExitCode.OK if all(r.runs_on for r in results) else ExitCode.REFUSED
