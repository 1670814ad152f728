"""The hook's slow path: a domain with PCI passthrough, or one holding a claim. Dispatches libvirt's
operation to the transaction and turns errors into one line on stderr and an exit code."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from isogroup.apply.transaction import Context, Stage, check, prepare, reconnect, release
from isogroup.errors import ExitCode, IsogroupError
from isogroup.formats import policyfile
from isogroup.formats.domainxml import parse_domain
from isogroup.host.ledger import Ledger
from isogroup.host.probes import ProbeSeams
from isogroup.host.sysfs import Sysfs
from isogroup.logsetup import to_syslog
from isogroup.paths import DEFAULT_POLICY

log = logging.getLogger("isogroup")

EX_SOFTWARE = 70  # an isogroup bug: never silently let a guest start unprotected


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
    host: Context | None = None,
) -> int:
    to_syslog()
    origin = f"domain '{name}' XML"
    try:
        # The policy is read on every call that does work: an edit applies to the next guest start.
        if host is None:
            host_policy = policyfile.load(Path(policy_path), required=policy_path != DEFAULT_POLICY)
            # The host's use of a device is probed on the live host only; another tree has no /proc to match.
            kernel = Sysfs.live_host() if sysfs_root is None else Sysfs(sysfs_root)
            probes = ProbeSeams.live_host(kernel) if kernel.live else None
            host = Context(kernel, Ledger(Path(ledger_dir)), policy=host_policy, probes=probes)
        if operation == "release":
            log.info("%s: release (%s)", name, extra)
            left = release(host, name)
            if left is not None:
                sys.stderr.write(
                    f"isogroup: could not restore every device of '{name}': run 'isogroup status' and "
                    "'isogroup recover'\n"
                )
                return int(ExitCode.HOST)
            return 0
        domain = parse_domain(xml, origin=origin)
        if operation == "reconnect":
            reconnect(host, domain)
        elif operation == "prepare":
            prepare(host, domain, Stage.PREPARE)
        elif operation == "start":
            prepare(host, domain, Stage.START)
        else:  # migrate, restore: the incoming guest is prepared by the prepare/start calls that follow
            check(host, domain)
    except IsogroupError as exc:
        if operation == "reconnect":
            # A non-zero exit here makes libvirt kill a running guest: report, never fail.
            log.error("%s: reconnect: %s", name, exc)
            return 0
        log.error("%s: %s %s refused: %s", name, operation, sub, exc)
        sys.stderr.write(f"{exc}\n" if str(exc).startswith("isogroup") else f"isogroup: {exc}\n")
        return int(exc.exit_code)
    except Exception as exc:
        log.exception("%s: %s %s: internal error", name, operation, sub)
        if operation == "reconnect":
            return 0
        sys.stderr.write(f"isogroup: internal error during {operation}: {exc!r} (see the system log)\n")
        return EX_SOFTWARE
    return 0
