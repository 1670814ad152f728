"""The command line's libvirt side: `check --domain/--all`, `attach-device`, `detach-device`,
`status --libvirt`. Imported by `isogroup.cli.main` only when one of them runs; libvirt itself only on connecting."""

from __future__ import annotations

import argparse
import sys

from isogroup.apply.hotplug import attach_device, detach_device
from isogroup.cli.inputs import engine_context, load_claims, load_host, load_variants, read_input
from isogroup.core import report
from isogroup.core.domain import DomainSpec
from isogroup.core.plan import DomainPlan
from isogroup.core.planner import plan
from isogroup.errors import ExitCode
from isogroup.formats import policyfile
from isogroup.host.ledger import Ledger, claim_to_json
from isogroup.libvirt import agreement
from isogroup.libvirt.live import groups_in_use, spec_of
from isogroup.libvirt.virt import LibvirtDomain, Virt
from isogroup.log import to_syslog


def _write_plans(args: argparse.Namespace, plans: list[DomainPlan]) -> None:
    if args.format == "json":
        sys.stdout.write(report.dumps(report.plans_to_json(plans)))
    else:
        sys.stdout.write(report.plans_to_text(plans))


def check(args: argparse.Namespace) -> int:
    """`check --domain NAME... | --all`: libvirt's domains (a running one as it runs, a shut-off one as
    defined) against the host, with the groups every running guest holds counted as taken."""
    with Virt.open(args.connect, read_only=True) as virt:
        everything = virt.domains()
        chosen = everything if args.all else [virt.domain(n) for n in dict.fromkeys(args.libvirt_domain)]
    specs = [spec_of(d) for d in chosen]
    running = [spec_of(d) for d in everything if d.active]
    scope = {r.address for s in [*specs, *running] for r in s.pci}
    host = load_host(args, scope)
    claims = groups_in_use(load_claims(args), running, host)
    host_policy = policyfile.load(args.policy, required=args.policy is not None)
    variants = load_variants(args)
    plans = [plan(s, host, claims, host_policy, variants=variants) for s in specs]
    _write_plans(args, plans)
    return ExitCode.OK if all(p.ok for p in plans) else ExitCode.REFUSED


def attach(args: argparse.Namespace) -> int:
    to_syslog()
    data = read_input(args.file)
    with Virt.open(args.connect, read_only=False) as virt:
        device_plan = attach_device(
            engine_context(args),
            virt,
            args.domain,
            data,
            str(args.file),
            live=args.live,
            config=args.config,
        )
    sys.stdout.write(_hotplug_text(device_plan))
    sys.stdout.write(f"device from {args.file} attached to '{args.domain}'\n")
    return ExitCode.OK


def _hotplug_text(device_plan: DomainPlan) -> str:
    lines = []
    for group in device_plan.groups:
        lines.append(f"IOMMU group {group.group}")
        for m in group.members:
            mark = "*" if m.requested else " "
            lines.append(f"  {mark}{m.address}  {m.driver or '(none)'}  {m.action.value}  {m.why}")
    lines += [f"note: {n.subject}: {n.message}" for n in device_plan.notes]
    return report.lines(lines)


def detach(args: argparse.Namespace) -> int:
    to_syslog()
    data = read_input(args.file)
    with Virt.open(args.connect, read_only=False) as virt:
        freed = detach_device(
            engine_context(args),
            virt,
            args.domain,
            data,
            str(args.file),
            live=args.live,
            config=args.config,
            wait=args.wait,
        )
    sys.stdout.write(f"device from {args.file} detached from '{args.domain}'\n")
    if freed:
        sys.stdout.write(f"IOMMU group(s) {', '.join(map(str, freed))} restored to the host\n")
    return ExitCode.OK


def status(args: argparse.Namespace) -> int:
    """`status --libvirt`: the ledger, then whether libvirt agrees with it. Exit 1 on any disagreement."""
    claims = Ledger(args.ledger).read_all_unlocked()  # a corrupt claim is exit 4 here: nothing could be compared
    with Virt.open(args.connect, read_only=True) as virt:
        running_domains: list[LibvirtDomain] = virt.domains(active_only=True)
        nodes = virt.node_devices()
        uri = virt.uri
    running: list[DomainSpec] = [spec_of(d) for d in running_domains]
    status_files = agreement.read_status_dir(args.status_dir) if args.status_dir is not None else None
    found = agreement.compare(claims, running, nodes, status_files)
    if args.format == "json":
        doc = {
            "claims": [claim_to_json(c) for c in claims],
            "libvirt": {
                "uri": uri,
                "running": [s.name for s in running],
                "agree": not found,
                "disagreements": [d.to_json() for d in found],
            },
        }
        sys.stdout.write(report.dumps(doc))
    else:
        sys.stdout.write(report.claims_to_text(claims))
        sys.stdout.write(agreement.to_text(uri, [s.name for s in running], found))
    return ExitCode.OK if not found else ExitCode.REFUSED
