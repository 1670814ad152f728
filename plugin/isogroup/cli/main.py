"""The `isogroup` command line. Each subcommand is a small function; errors map to exit codes in one place."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from isogroup import __version__
from isogroup.apply.transaction import Host, recover
from isogroup.core import policy, report
from isogroup.core.address import PciAddress
from isogroup.core.model import HostTopology
from isogroup.core.planner import plan
from isogroup.errors import ExitCode, InputError, IsogroupError, StateError
from isogroup.formats import snapshot
from isogroup.formats.domainxml import DomainSpec, parse_domain
from isogroup.formats.schema import find_domain_schema, validate_domain
from isogroup.hook.install import DEFAULT_HOOKS_DIR, install_hook, uninstall_hook
from isogroup.host.hostscan import read_topology
from isogroup.host.ledger import Claim, Ledger, Phase, claim_to_json
from isogroup.host.probes import ProbeSeams
from isogroup.host.sysfs import Sysfs
from isogroup.logsetup import to_syslog
from isogroup.paths import DEFAULT_LEDGER_DIR, DEFAULT_POLICY


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; make its message one line like ours."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"isogroup: {message} (see 'isogroup --help')\n")
        sys.exit(ExitCode.INPUT)


def _add_host_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--host", type=Path, metavar="FILE", help="a host snapshot (from 'isogroup snapshot')")
    src.add_argument("--sysfs", type=Path, metavar="DIR", help="a tree laid out like /sys (default: /sys)")
    # The live host is probed for host use (mounts, routes, open devices...); a --sysfs tree only with these.
    p.add_argument("--proc", type=Path, metavar="DIR", help="with --sysfs: the matching /proc, to probe host use")
    p.add_argument("--dev", type=Path, metavar="DIR", help="with --sysfs --proc: the matching /dev (disk labels)")


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")


def load_host(args: argparse.Namespace, scope: Iterable[PciAddress] | None = None) -> HostTopology:
    if args.host is not None:
        if getattr(args, "proc", None) is not None or getattr(args, "dev", None) is not None:
            raise InputError("--proc and --dev go with --sysfs: a snapshot carries its findings already")
        return snapshot.load(args.host)
    root = args.sysfs if args.sysfs is not None else Path("/sys")
    if not (root / "bus").is_dir():
        raise InputError(f"{root} does not look like sysfs (no bus/ directory)")
    return read_topology(Sysfs(root), scope, probes=_probe_seams(args, Sysfs(root)))


def _probe_seams(args: argparse.Namespace, sysfs: Sysfs) -> ProbeSeams | None:
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


def _read_domain_file(path: Path, schema: Path | None = None) -> DomainSpec:
    """The domain document at `path` ('-': stdin); with `schema` (libvirt's domain.rng), also valid for libvirt."""
    try:
        data = path.read_bytes() if str(path) != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    spec = parse_domain(data, origin=str(path))
    validate_domain(data, str(path), schema)
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


def cmd_check(args: argparse.Namespace) -> int:
    if args.libvirt_domain or args.all:
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
    domains = [_read_domain_file(p, schema) for p in args.domains]
    scope = {r.address for d in domains for r in d.pci}
    host = load_host(args, scope)
    claims = load_claims(args)
    host_policy = policy.load(args.policy, required=args.policy is not None)
    # Probing the live host without root leaves much unknown: say so, and leave the verdict to a root run.
    lenient = host.probed and args.host is None and args.sysfs is None and os.geteuid() != 0
    plans = [plan(d, host, claims, host_policy, unknown_refuses=not lenient) for d in domains]
    if args.format == "json":
        sys.stdout.write(report.dumps(report.plans_to_json(plans)))
    else:
        sys.stdout.write(report.plans_to_text(plans))
    return ExitCode.OK if all(p.ok for p in plans) else ExitCode.REFUSED


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
    if args.host is not None:
        host = snapshot.load(args.host)
    else:
        root = args.sysfs if args.sysfs is not None else Path("/sys")
        if not (root / "bus").is_dir():
            raise InputError(f"{root} does not look like sysfs (no bus/ directory)")
        host = read_topology(Sysfs(root))  # the topology only: explaining needs no host-use probes
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
        policy.load(args.policy, required=True)  # refuse to install a hook that would refuse every start
    installed = install_hook(
        args.hooks_dir,
        ledger_dir=str(args.ledger),
        sysfs_root=str(args.sysfs),
        policy_path=str(args.policy or DEFAULT_POLICY),
    )
    sys.stderr.write(f"installed {installed.path}\n")
    if installed.first_hook:
        sys.stderr.write(
            "libvirt had no qemu hook before: restart the daemon once so it sees this one "
            "(systemctl restart libvirtd, or virtqemud on modular daemons)\n"
        )
    return ExitCode.OK


def cmd_uninstall_hook(args: argparse.Namespace) -> int:
    removed = uninstall_hook(args.hooks_dir)
    sys.stderr.write(f"removed {removed}\n" if removed else "no isogroup hook was installed\n")
    return ExitCode.OK


def _claims_to_text(claims: Sequence[Claim]) -> str:
    if not claims:
        return "no claims: isogroup holds no IOMMU group and has moved no device\n"
    out = []
    for c in claims:
        out.append(f"guest '{c.domain}': {c.phase.value}, IOMMU group(s) {', '.join(map(str, c.groups)) or '-'}")
        for d in c.devices:
            was = d.original_driver or "(no driver)"
            out.append(f"  {d.address}  group {d.group}  {d.state.value}, originally on {was}")
    return "\n".join(out) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    if args.libvirt:
        from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

        return cli_libvirt.status(args)
    if args.connect is not None or args.status_dir is not None:
        raise InputError("-c/--connect and --status-dir compare with libvirt: use them with --libvirt")
    claims = Ledger(args.ledger).read_all_unlocked()
    if args.format == "json":
        sys.stdout.write(report.dumps([claim_to_json(c) for c in claims]))
    else:
        sys.stdout.write(_claims_to_text(claims))
    return ExitCode.OK


def cmd_recover(args: argparse.Namespace) -> int:
    to_syslog()
    host = Host(Sysfs(args.sysfs), Ledger(args.ledger))
    left = recover(host, set(args.domain) if args.domain else None)
    sys.stdout.write(_claims_to_text(left))
    return ExitCode.OK if not any(c.phase is Phase.FAILED for c in left) else ExitCode.HOST


def cmd_attach_device(args: argparse.Namespace) -> int:
    from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

    return cli_libvirt.attach(args)


def cmd_detach_device(args: argparse.Namespace) -> int:
    from isogroup.cli import libvirt as cli_libvirt  # noqa: PLC0415 - libvirt's side is loaded only when asked for

    return cli_libvirt.detach(args)


def _add_connect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--connect", metavar="URI", help="libvirt URI (default: libvirt's default, as for virsh)")


def _add_hotplug(sub: argparse._SubParsersAction[_Parser], name: str, help_text: str) -> _Parser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("domain", metavar="DOMAIN", help="the guest's name")
    p.add_argument("file", type=Path, metavar="FILE.xml", help="one device element, as for virsh ('-': stdin)")
    p.add_argument("--live", action="store_true", help="affect the running guest")
    p.add_argument("--config", action="store_true", help="affect the persistent definition")
    _add_connect(p)
    _add_state_options(p, sysfs=True)
    return p


def _add_state_options(p: argparse.ArgumentParser, *, sysfs: bool) -> None:
    p.add_argument("--ledger", type=Path, default=Path(DEFAULT_LEDGER_DIR), metavar="DIR", help="state directory")
    if sysfs:
        p.add_argument("--sysfs", type=Path, default=Path("/sys"), metavar="DIR", help="sysfs root (default /sys)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="isogroup",
        description="Give a guest whole IOMMU groups, safely, and put them back.",
        epilog="Exit codes: 0 ok, 1 refused, 2 bad input or usage, 3 host write failed (rolled back), "
        "4 state ledger unusable.",
    )
    parser.add_argument("--version", action="version", version=f"isogroup {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("check", help="can these domains start? (exit 0 yes, 1 refused, 2 bad input)")
    p.add_argument("domains", nargs="*", type=Path, metavar="DOMAIN.xml")
    p.add_argument(
        "--domain",
        dest="libvirt_domain",
        action="append",
        default=[],
        metavar="NAME",
        help="check this libvirt domain instead of a file (repeatable); running guests' groups count as taken",
    )
    p.add_argument("--all", action="store_true", help="check every domain libvirt has, defined and running")
    _add_connect(p)
    p.add_argument("--no-schema", action="store_true", help="do not validate files against libvirt's RelaxNG schema")
    _add_host_options(p)
    p.add_argument("--ledger", type=Path, metavar="DIR", help="take claims from this ledger (live host: /run/isogroup)")
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default: /etc/isogroup/policy.toml)")
    _add_format(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("groups", help="list every IOMMU group, its members, and whether VFIO can use it")
    _add_host_options(p)
    _add_format(p)
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser(
        "explain",
        help="why a device shares its IOMMU group, by the kernel's rules, and what would split it",
    )
    p.add_argument("address", metavar="ADDRESS", help="the device, as DDDD:BB:SS.F or BB:SS.F")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--host", type=Path, metavar="FILE", help="a host snapshot (from 'isogroup snapshot')")
    src.add_argument("--sysfs", type=Path, metavar="DIR", help="a tree laid out like /sys (default: /sys)")
    _add_format(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("snapshot", help="capture the host's PCI topology as JSON, for --host")
    _add_host_options(p)
    p.add_argument("-o", "--output", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("install-hook", help="install the libvirt qemu hook as a qemu.d drop-in")
    p.add_argument("--hooks-dir", type=Path, default=DEFAULT_HOOKS_DIR, metavar="DIR")
    p.add_argument("--policy", type=Path, metavar="FILE", help="the hook's policy (default: /etc/isogroup/policy.toml)")
    _add_state_options(p, sysfs=True)
    p.set_defaults(func=cmd_install_hook)

    p = sub.add_parser("uninstall-hook", help="remove the hook installed by install-hook")
    p.add_argument("--hooks-dir", type=Path, default=DEFAULT_HOOKS_DIR, metavar="DIR")
    p.set_defaults(func=cmd_uninstall_hook)

    p = sub.add_parser("status", help="which guests hold which groups, and every device moved")
    _add_state_options(p, sysfs=False)
    _add_format(p)
    p.add_argument(
        "--libvirt",
        action="store_true",
        help="also compare with libvirt's node devices and running guests (exit 1 when they disagree)",
    )
    _add_connect(p)
    p.add_argument(
        "--status-dir",
        type=Path,
        metavar="DIR",
        help="with --libvirt: also read libvirt's status files (qemu:///system: /run/libvirt/qemu)",
    )
    p.set_defaults(func=cmd_status)

    p = _add_hotplug(
        sub, "attach-device", "attach a PCI device to a guest with its whole IOMMU group (libvirt runs no hook)"
    )
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default: /etc/isogroup/policy.toml)")
    p.set_defaults(func=cmd_attach_device)

    p = _add_hotplug(sub, "detach-device", "detach a device from a guest and restore its group once unused")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the guest may take to release the device (default 10)",
    )
    p.set_defaults(func=cmd_detach_device)

    p = sub.add_parser(
        "recover",
        help="finish or undo what an interrupted run left; --domain also releases a gone guest's claim",
    )
    _add_state_options(p, sysfs=True)
    p.add_argument("--domain", action="append", metavar="NAME", help="release this guest's claim (repeatable)")
    p.set_defaults(func=cmd_recover)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except IsogroupError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"isogroup: {exc}\n")
        return int(exc.exit_code)
    except BrokenPipeError:
        return ExitCode.OK
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
