"""The `isogroup` command line: the parser, and the one place where errors become exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from isogroup import __version__
from isogroup.cli import commands
from isogroup.core import report
from isogroup.errors import ExitCode, IsogroupError, RefusedError
from isogroup.hook.install import DEFAULT_HOOKS_DIR
from isogroup.limits import HOOK_TIMEOUT_S
from isogroup.paths import DEFAULT_LEDGER_DIR


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; make its message one line like ours."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"isogroup: {message} (see 'isogroup --help')\n")
        sys.exit(ExitCode.INPUT)


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse turns the ValueError into a usage error, exit 2)."""
    value = float(text)
    if not 0 < value < 86400:
        raise ValueError(text)
    return value


def _group(text: str) -> int:
    """An IOMMU group number: decimal, as /sys/kernel/iommu_groups names them (argparse: a usage error, exit 2)."""
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > 2**31 - 1:
        raise ValueError(text)
    return int(text)


def _add_host_options(p: argparse.ArgumentParser, *, fleet: bool = False) -> None:
    src = p.add_mutually_exclusive_group()
    if fleet:  # check: several snapshots make it a fleet check (which hosts can run each domain)
        src.add_argument("--host", type=Path, action="append", metavar="FILE", help="a host snapshot (repeatable)")
        p.add_argument("--hosts", type=Path, metavar="DIR", help="every host snapshot (*.json) in DIR: a fleet check")
    else:
        src.add_argument("--host", type=Path, metavar="FILE", help="a host snapshot (from 'isogroup snapshot')")
    src.add_argument("--sysfs", type=Path, metavar="DIR", help="a tree laid out like /sys (default: /sys)")
    # The live host is probed for host use (mounts, routes, open devices...); a --sysfs tree only with these.
    p.add_argument("--proc", type=Path, metavar="DIR", help="with --sysfs: the matching /proc, to probe host use")
    p.add_argument("--dev", type=Path, metavar="DIR", help="with --sysfs --proc: the matching /dev (disk labels)")


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")


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
        p.add_argument("--sysfs", type=Path, metavar="DIR", help="a tree laid out like /sys (default: the live /sys)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="isogroup",
        description="Give a guest whole IOMMU groups, safely, and put them back.",
        epilog="Exit codes: 0 ok, 1 refused, 2 bad input or usage, 3 host write failed (rolled back), "
        "4 state ledger unusable, 70 an isogroup bug (--debug shows where), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"isogroup {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error (exit 70)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "check",
        help="can these domains start? (exit 0 yes, 1 refused, 2 bad input)",
        description="Judge whether each domain's PCI passthrough keeps its IOMMU groups isolated on this host "
        "(or a --host snapshot), as the hook would at start: exit 0 yes, 1 refused, 2 bad input. It reads only "
        "what isolation needs, and validates files against libvirt's RelaxNG schema (what 'virsh define "
        "--validate' checks) when that is installed. It does not check every rule libvirt applies to a domain: "
        "libvirt may still refuse to define or start a domain that check accepts (an unknown emulator, a "
        "missing disk, a machine type QEMU lacks), and plain 'virsh define' may accept one the schema rejects.",
    )
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
    _add_host_options(p, fleet=True)
    p.add_argument("--ledger", type=Path, metavar="DIR", help="take claims from this ledger (live host: /run/isogroup)")
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default: /etc/isogroup/policy.toml)")
    p.add_argument(
        "--modules-alias",
        type=Path,
        metavar="FILE",
        help="the host kernel's modules.alias, whose vfio_pci: aliases choose each device's VFIO driver "
        "(live host: /lib/modules/$(uname -r)/modules.alias; a snapshot or --sysfs tree: none, so vfio-pci)",
    )
    _add_format(p)
    p.set_defaults(func=commands.cmd_check)

    p = sub.add_parser("inventory", help="the IOMMU groups this host can give whole, for a cluster's scheduler")
    _add_host_options(p)
    p.add_argument("--ledger", type=Path, metavar="DIR", help="take claims from this ledger (live host: /run/isogroup)")
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default: /etc/isogroup/policy.toml)")
    p.add_argument("--node", metavar="NAME", help="the host's name in the cluster (default: snapshot's stem, hostname)")
    p.add_argument("--format", choices=("json", "nova", "kubevirt", "proxmox", "nfd"), default="json")
    p.set_defaults(func=commands.cmd_inventory)

    p = sub.add_parser("groups", help="list every IOMMU group, its members, and whether VFIO can use it")
    _add_host_options(p)
    _add_format(p)
    p.set_defaults(func=commands.cmd_groups)

    p = sub.add_parser(
        "explain",
        help="why a device shares its IOMMU group, by the kernel's rules, and what would split it",
    )
    p.add_argument("address", metavar="ADDRESS", help="the device, as DDDD:BB:SS.F or BB:SS.F")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--host", type=Path, metavar="FILE", help="a host snapshot (from 'isogroup snapshot')")
    src.add_argument("--sysfs", type=Path, metavar="DIR", help="a tree laid out like /sys (default: /sys)")
    _add_format(p)
    p.set_defaults(func=commands.cmd_explain)

    p = sub.add_parser("snapshot", help="capture the host's PCI topology as JSON, for --host")
    _add_host_options(p)
    p.add_argument("-o", "--output", type=Path, metavar="FILE")
    p.set_defaults(func=commands.cmd_snapshot)

    p = sub.add_parser("install-hook", help="install the libvirt qemu hook as a qemu.d drop-in")
    p.add_argument("--hooks-dir", type=Path, default=DEFAULT_HOOKS_DIR, metavar="DIR")
    p.add_argument("--policy", type=Path, metavar="FILE", help="the hook's policy (default: /etc/isogroup/policy.toml)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=HOOK_TIMEOUT_S,
        metavar="SECONDS",
        help=f"the longest one hook run may take; past it the run rolls back what it can and exits 3 "
        f"(default {HOOK_TIMEOUT_S:g})",
    )
    _add_state_options(p, sysfs=True)
    p.set_defaults(func=commands.cmd_install_hook)

    p = sub.add_parser("uninstall-hook", help="remove the hook installed by install-hook")
    p.add_argument("--hooks-dir", type=Path, default=DEFAULT_HOOKS_DIR, metavar="DIR")
    p.set_defaults(func=commands.cmd_uninstall_hook)

    p = sub.add_parser(
        "status",
        help="which guests hold which groups, every device moved, and every corrupt claim (exit 4 if any)",
    )
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
    p.set_defaults(func=commands.cmd_status)

    p = _add_hotplug(
        sub, "attach-device", "attach a PCI device to a guest with its whole IOMMU group (libvirt runs no hook)"
    )
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default: /etc/isogroup/policy.toml)")
    p.set_defaults(func=commands.cmd_attach_device)

    p = _add_hotplug(sub, "detach-device", "detach a device from a guest and restore its group once unused")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the guest may take to release the device (default 10)",
    )
    p.set_defaults(func=commands.cmd_detach_device)

    p = sub.add_parser(
        "reserve",
        help="bind whole IOMMU groups to vfio-pci ahead of time (for KubeVirt), with the hook's refusals; a guest "
        "later started on a reserved group runs on the reservation",
    )
    p.add_argument("groups", nargs="+", type=_group, metavar="GROUP", help="an IOMMU group number")
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default: /etc/isogroup/policy.toml)")
    _add_state_options(p, sysfs=True)
    p.set_defaults(func=commands.cmd_reserve)

    p = sub.add_parser(
        "unreserve", help="give reserved IOMMU groups back to their original drivers (refused while a guest runs)"
    )
    p.add_argument("groups", nargs="+", type=_group, metavar="GROUP", help="an IOMMU group number")
    _add_state_options(p, sysfs=True)
    p.set_defaults(func=commands.cmd_unreserve)

    p = sub.add_parser(
        "recover",
        help="finish or undo what an interrupted run left; --domain also releases a gone guest's claim "
        "(corrupt claims are listed, never acted on: see 'forget'; exit 4 while one exists)",
    )
    _add_state_options(p, sysfs=True)
    p.add_argument("--domain", action="append", metavar="NAME", help="release this guest's claim (repeatable)")
    p.set_defaults(func=commands.cmd_recover)

    p = sub.add_parser(
        "forget",
        help="remove a corrupt claim file that 'isogroup status' lists, once you have put its devices right",
        description="A corrupt claim file (unreadable, or not what isogroup writes) may have held any IOMMU group, "
        "so while one exists every guest start is refused. Check the devices it may have moved ('isogroup groups', "
        "'lspci -k': a device left on vfio-pci by a guest that is gone), give them back to their drivers, then "
        "remove the file with this command. A readable claim is refused: 'isogroup recover --domain NAME' restores "
        "its devices. Exit 0 removed, 2 not a corrupt claim file, 4 the ledger is unusable.",
    )
    p.add_argument("file", metavar="FILE", help="the corrupt claim's path as 'isogroup status' prints it")
    _add_state_options(p, sysfs=False)
    p.set_defaults(func=commands.cmd_forget)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every way out of a command is an exit code from `ExitCode`: an error of isogroup's own is its class's code
    and one line; anything else is a bug, exit 70 and one line (the traceback with --debug), never exit 1, which
    would read as "refused" to a CI job."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except IsogroupError as exc:
        if args.debug:
            raise
        _report(args, exc.line(), exc.exit_code, exc)
        return int(exc.exit_code)
    except BrokenPipeError:  # the reader went away (`isogroup status | head`): not an error of ours
        return ExitCode.OK
    except KeyboardInterrupt:
        sys.stderr.write("isogroup: interrupted\n")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        line = f"isogroup: internal error: {type(exc).__name__}: {_one_line(str(exc))} (a bug; --debug shows where)"
        _report(args, line, ExitCode.SOFTWARE, exc)
        return int(ExitCode.SOFTWARE)
    return code


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _report(args: argparse.Namespace, line: str, code: ExitCode, exc: BaseException) -> None:
    """The error's one line on stderr; with --format json also a JSON object on stdout, so that a CI job reading
    stdout gets a document either way: {"error": {"exit": N, "kind": ..., "message": ..., "file": ..., "line": ...}}."""
    sys.stderr.write(line + "\n")
    if getattr(args, "format", None) == "json":
        sys.stdout.write(report.dumps({"error": error_to_json(exc, code)}))


def error_to_json(exc: BaseException, code: ExitCode) -> dict[str, object]:
    origin = exc.origin if isinstance(exc, IsogroupError) else None
    return {
        "exit": int(code),
        "kind": code.name.lower(),
        "message": str(exc) if isinstance(exc, IsogroupError) else f"internal error: {type(exc).__name__}",
        "file": origin.file if origin is not None else None,
        "line": origin.line if origin is not None else None,
        "codes": list(exc.codes) if isinstance(exc, RefusedError) else [],
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
