"""The commands that need no libvirt: check, groups, explain, snapshot, install-hook, uninstall-hook, status,
recover, forget. Each takes the parsed arguments and returns an exit code; errors are raised, and mapped to exit codes
in one place (`cli.main`)."""

from __future__ import annotations

import argparse
import os
import sys

from isogroup.cli.inputs import engine_context, kernel, load_claims, load_host, load_variants, read_domain_file
from isogroup.core import report
from isogroup.core.address import PciAddress
from isogroup.core.claims import Phase
from isogroup.core.planner import plan
from isogroup.errors import ExitCode, InputError
from isogroup.formats import policyfile, snapshot
from isogroup.formats.schema import find_domain_schema
from isogroup.hook.install import install_hook, uninstall_hook
from isogroup.host.hostscan import read_topology
from isogroup.host.ledger import CorruptClaim, Ledger, claim_to_json
from isogroup.log import log, to_syslog
from isogroup.paths import DEFAULT_POLICY


def cmd_check(args: argparse.Namespace) -> int:
    fleet = args.hosts is not None or len(args.host or ()) > 1  # which of these hosts can run each domain
    if not fleet:
        args.host = args.host[0] if args.host else None
    if args.libvirt_domain or args.all:
        if fleet:
            raise InputError("a fleet check (several --host, or --hosts) takes DOMAIN.xml files, not libvirt domains")
        if args.domains:
            raise InputError("give DOMAIN.xml files, or --domain/--all to read domains from libvirt, not both")
        from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

        return cli_libvirt.check(args)
    if not args.domains:
        raise InputError(
            "nothing to check: give DOMAIN.xml files, or --domain NAME / --all to read them from libvirt",
            hint="see 'isogroup --help'",
        )
    if args.connect is not None:
        raise InputError("-c/--connect reads domains from libvirt: use it with --domain NAME or --all")
    schema = None if args.no_schema else find_domain_schema()
    domains = [read_domain_file(p, schema) for p in args.domains]
    if fleet:
        from isogroup.cli import cluster  # noqa: PLC0415 - the cluster side is loaded only when asked for

        return cluster.check_fleet(args, domains, policyfile.load(args.policy, required=args.policy is not None))
    scope = {r.address for d in domains for r in d.pci}
    host = load_host(args, scope)
    claims = load_claims(args)
    host_policy = policyfile.load(args.policy, required=args.policy is not None)
    # Probing the live host without root leaves much unknown: say so, and leave the verdict to a root run.
    lenient = host.probed and args.host is None and args.sysfs is None and os.geteuid() != 0
    variants = load_variants(args)
    plans = [plan(d, host, claims, host_policy, unknown_refuses=not lenient, variants=variants) for d in domains]
    if args.format == "json":
        sys.stdout.write(report.dumps(report.plans_to_json(plans)))
    else:
        sys.stdout.write(report.plans_to_text(plans))
    return ExitCode.OK if all(p.ok for p in plans) else ExitCode.REFUSED


def cmd_inventory(args: argparse.Namespace) -> int:
    from isogroup.cli import cluster  # noqa: PLC0415 - the cluster side is loaded only when asked for

    return cluster.inventory(args)


def cmd_groups(args: argparse.Namespace) -> int:
    host = load_host(args)
    if args.format == "json":
        sys.stdout.write(report.dumps(report.groups_to_json(host)))
    else:
        sys.stdout.write(report.groups_to_text(host))
    return ExitCode.OK


def cmd_explain(args: argparse.Namespace) -> int:
    from isogroup.core import explain  # noqa: PLC0415 - loaded only when asked for

    address = PciAddress.parse(args.address)
    # The topology only: explaining needs no host-use probes.
    host = snapshot.load(args.host) if args.host is not None else read_topology(kernel(args))
    why = explain.explain(host, address)
    sys.stdout.write(report.dumps(explain.to_json(why)) if args.format == "json" else explain.to_text(why))
    return ExitCode.OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    text = snapshot.dumps(load_host(args))
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror}") from None
    return ExitCode.OK


def cmd_install_hook(args: argparse.Namespace) -> int:
    if args.policy is not None:
        policyfile.load(args.policy, required=True)  # refuse to install a hook that would refuse every start
    installed = install_hook(
        args.hooks_dir,
        ledger_dir=str(args.ledger),
        sysfs_root=str(args.sysfs) if args.sysfs is not None else None,
        policy_path=str(args.policy or DEFAULT_POLICY),
        timeout=args.timeout,
    )
    sys.stderr.write(f"installed {installed.path}\n")
    if installed.first_hook:
        sys.stderr.write(
            "libvirt had no qemu hook before: reload the daemon once so it sees this one "
            "(systemctl reload libvirtd, or virtqemud on modular daemons: SIGHUP re-reads which hooks exist)\n"
        )
    return ExitCode.OK


def cmd_uninstall_hook(args: argparse.Namespace) -> int:
    removed = uninstall_hook(args.hooks_dir)
    sys.stderr.write(f"removed {removed}\n" if removed else "no isogroup hook was installed\n")
    return ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.libvirt:
        from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

        return cli_libvirt.status(args)
    if args.connect is not None or args.status_dir is not None:
        raise InputError("-c/--connect and --status-dir compare with libvirt: use them with --libvirt")
    view = Ledger(args.ledger).read_unlocked()
    if args.format == "json":
        doc = [claim_to_json(c) for c in view.claims] + [_corrupt_to_json(c) for c in view.corrupt]
        sys.stdout.write(report.dumps(doc))
    else:
        if view.claims or not view.corrupt:
            sys.stdout.write(report.claims_to_text(view.claims))
        sys.stdout.write(_corrupt_to_text(view.corrupt))
    # A corrupt claim makes the ledger unusable for starts: say so in the exit code too.
    return ExitCode.STATE if view.corrupt else ExitCode.OK


def _corrupt_to_json(corrupt: CorruptClaim) -> dict[str, object]:
    """A corrupt claim among `status --format json`'s claims: it has `corrupt` where a claim has `domain`."""
    return {"corrupt": corrupt.reason, "file": corrupt.path, "clear": corrupt.forget_command}


def _corrupt_to_text(corrupt: tuple[CorruptClaim, ...]) -> str:
    return "".join(
        f"corrupt claim {c}\n  nobody knows which IOMMU groups it held, so every guest start is refused: check its "
        f"devices ('isogroup groups'), put them back, then run '{c.forget_command}'\n"
        for c in corrupt
    )


def cmd_recover(args: argparse.Namespace) -> int:
    to_syslog()
    ledger = Ledger(args.ledger)
    # The engine is loaded by the command that moves devices, not by every `check`.
    from isogroup.apply.transaction import Context, recover  # noqa: PLC0415

    left = recover(Context(kernel(args), ledger), set(args.domain) if args.domain else None)
    corrupt = ledger.read_unlocked().corrupt  # recover leaves these alone: nobody knows what they held
    if left or not corrupt:
        sys.stdout.write(report.claims_to_text(left))
    sys.stdout.write(_corrupt_to_text(corrupt))
    if any(c.phase is Phase.FAILED for c in left):
        return ExitCode.HOST
    return ExitCode.STATE if corrupt else ExitCode.OK


def cmd_reserve(args: argparse.Namespace) -> int:
    to_syslog()
    from isogroup.apply.reserve import reserve  # noqa: PLC0415 - the engine only for commands that move

    plans = reserve(engine_context(args), dict.fromkeys(args.groups))
    sys.stdout.write(report.plans_to_text(plans))
    return ExitCode.OK


def cmd_unreserve(args: argparse.Namespace) -> int:
    to_syslog()
    from isogroup.apply.reserve import unreserve  # noqa: PLC0415

    left = unreserve(engine_context(args), dict.fromkeys(args.groups))
    if left:
        sys.stdout.write(report.claims_to_text(left))
        return ExitCode.HOST
    sys.stdout.write(report.lines([f"IOMMU group {g} given back to the host" for g in dict.fromkeys(args.groups)]))
    return ExitCode.OK


def cmd_forget(args: argparse.Namespace) -> int:
    to_syslog()
    forgotten = Ledger(args.ledger).forget(args.file)
    log.warning("forgot the corrupt claim %s", forgotten)
    sys.stderr.write(f"removed the corrupt claim {forgotten}\n")
    return ExitCode.OK


def cmd_attach_device(args: argparse.Namespace) -> int:
    from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

    return cli_libvirt.attach(args)


def cmd_detach_device(args: argparse.Namespace) -> int:
    from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

    return cli_libvirt.detach(args)
