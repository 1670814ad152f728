"""The hook's slow path: a domain with PCI passthrough, or one holding a claim. Dispatches libvirt's
operation to the transaction and turns errors into one line on stderr and an exit code."""

from __future__ import annotations

import sys
from pathlib import Path

from isogroup.apply.deadline import Deadline
from isogroup.apply.transaction import Context, Stage, check, prepare, reconnect, release
from isogroup.errors import ExitCode, HostError, InputError, IsogroupError
from isogroup.formats import policyfile
from isogroup.formats.domainxml import parse_domain
from isogroup.host.kmod import running_kernel
from isogroup.host.ledger import Ledger
from isogroup.host.probes.base import ProbeSeams
from isogroup.host.sysfs import Sysfs
from isogroup.limits import HOOK_TIMEOUT_S
from isogroup.log import log, to_syslog
from isogroup.paths import DEFAULT_POLICY


def run(
    name: str,
    operation: str,
    sub: str,
    extra: str,
    xml: bytes,
    *,
    ledger_dir: str,
    sysfs_root: str | None,
    policy_path: str = DEFAULT_POLICY,
    ctx: Context | None = None,
    timeout: float = HOOK_TIMEOUT_S,
) -> int:
    """One hook call. `name` is the guest's identity exactly as libvirt passed it in argv, byte for byte: the
    claim is keyed by it, and the XML's <name> must equal it."""
    to_syslog()
    try:
        # The policy is read on every call that does work: an edit applies to the next guest start.
        ctx = ctx if ctx is not None else _context(ledger_dir, sysfs_root, policy_path, timeout)
        if operation == "release":
            log.info("%s: release (%s)", name, extra)
            left = release(ctx, name)
            if left is not None:
                raise HostError(
                    f"could not restore every device of '{name}'", hint="run 'isogroup status' and 'isogroup recover'"
                )
            return 0
        domain = parse_domain(xml, origin=f"domain '{name}' XML")
        if domain.name != name:
            # libvirt keeps spaces, tabs and \r in a name; a claim keyed by anything but argv's exact name would
            # be another guest's, or one that release never finds.
            raise InputError(
                f"the domain XML names the guest {domain.name!r}, but libvirt called the hook for {name!r}"
            )
        if operation == "reconnect":
            reconnect(ctx, domain)
        elif operation == "prepare":
            prepare(ctx, domain, Stage.PREPARE)
        elif operation == "start":
            prepare(ctx, domain, Stage.START)
        else:  # migrate, restore: the incoming guest is prepared by the prepare/start calls that follow
            check(ctx, domain)
    except IsogroupError as exc:
        if operation == "reconnect":
            # A non-zero exit here makes libvirt kill a running guest: report, never fail.
            log.error("%s: reconnect: %s", name, exc)
            return 0
        log.error("%s: %s %s: %s", name, operation, sub, exc)
        sys.stderr.write(exc.line() + "\n")
        return int(exc.exit_code)
    except Exception as exc:
        log.exception("%s: %s %s: internal error", name, operation, sub)
        if operation == "reconnect":
            return 0
        sys.stderr.write(f"isogroup: internal error during {operation}: {type(exc).__name__} (see the system log)\n")
        return int(ExitCode.SOFTWARE)
    return 0


def _context(ledger_dir: str, sysfs_root: str | None, policy_path: str, timeout: float) -> Context:
    """The live host's seams (or a tree's, in tests), the host's policy, and one deadline for the whole run."""
    deadline = Deadline.after(timeout)
    host_policy = policyfile.load(Path(policy_path), required=policy_path != DEFAULT_POLICY)
    # The host's use of a device is probed on the live host only; another tree has no /proc to match.
    kernel = Sysfs.live_host() if sysfs_root is None else Sysfs(sysfs_root)
    probes = ProbeSeams.live_host(kernel) if kernel.live else None
    # Likewise the running kernel's modules.alias (which VFIO variant driver each device goes to).
    modules_alias = running_kernel() if kernel.live else None
    return Context(
        kernel,
        Ledger(Path(ledger_dir)),
        policy=host_policy,
        probes=probes,
        deadline=deadline,
        modules_alias=modules_alias,
    )
