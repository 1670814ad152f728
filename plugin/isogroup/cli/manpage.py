"""isogroup(1), the bash completion and the commented policy file, written from the parser the command line uses
(`main.build_parser`), the exit codes the code returns and the policy format the policy reader documents, so
none of them can drift from the program.

    python3 -m isogroup.cli.manpage OUTDIR     writes OUTDIR/isogroup.1, OUTDIR/isogroup.bash, OUTDIR/policy.toml

The Debian package's build runs it (debian/rules); the date in the page comes from SOURCE_DATE_EPOCH, which
dpkg-buildpackage sets from debian/changelog, so two builds of one source give the same page.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from isogroup import __version__
from isogroup.cli.main import build_parser
from isogroup.errors import ExitCode
from isogroup.formats import policyfile
from isogroup.formats.schema import DEFAULT_SCHEMA_DIRS
from isogroup.hook.install import DEFAULT_HOOKS_DIR, HOOK_NAME, PACKAGED_HOOK
from isogroup.paths import CLAIMS, DEFAULT_LEDGER_DIR, DEFAULT_POLICY

# Every code the command and the hook return (tests/package/test_docs.py fails when one has no line here).
EXIT_STATUS: dict[int, str] = {
    ExitCode.OK: "ok: every guest can start, or the operation succeeded",
    ExitCode.REFUSED: "refused: isolation would be broken; nothing was changed",
    ExitCode.INPUT: "bad input or usage: malformed or hostile XML, an unknown address, an invalid snapshot or "
    "policy; nothing was read from or changed on the host",
    ExitCode.HOST: "the host did not do what was asked (a sysfs write failed, a bind never came); this run's "
    "changes were rolled back",
    ExitCode.STATE: "the state ledger is unusable (an unsafe directory, a corrupt claim, locked too long)",
    ExitCode.SOFTWARE: "a bug in isogroup (one line; the traceback with --debug); the hook then refuses the start "
    "rather than let a guest run unprotected",
    ExitCode.INTERRUPTED: "interrupted (SIGINT)",
}

FILES: tuple[tuple[str, str], ...] = (
    (DEFAULT_POLICY, "the host's policy (see POLICY); without it the defaults apply"),
    (
        str(DEFAULT_HOOKS_DIR / "qemu.d" / HOOK_NAME),
        "the libvirt qemu hook: written by install-hook, or a link to the Debian package's hook",
    ),
    (str(PACKAGED_HOOK), "the hook the Debian package installs"),
    (
        f"{DEFAULT_LEDGER_DIR}/{CLAIMS}/",
        "one claim per guest: the groups it holds and every device's original "
        "driver (tmpfs: a reboot forgets them with the bindings they describe)",
    ),
    (str(DEFAULT_SCHEMA_DIRS[0]), "libvirt's RelaxNG schemas, which check validates domain XML against"),
)

CONFFILE_HEADER = f"""\
isogroup's host policy: what the libvirt qemu hook may move to vfio-pci, and what a domain's XML may change.
See isogroup(1), section POLICY. Every line here is a comment: without settings the defaults apply, which are
mode "expand", every probe refuses, no device allowed or denied, and [domains] may_relax = false (a domain's
<metadata> may tighten the policy, never relax it). Uncomment and edit what you need.
An invalid file makes the hook refuse every guest start with PCI passthrough; check it with
  isogroup check --policy {DEFAULT_POLICY} --domain NAME
"""


def policy_example() -> list[str]:
    """The example block of the policy reader's docstring: the format as the code documents it."""
    doc = policyfile.__doc__ or ""
    block = [line[4:] for line in doc.splitlines() if line.startswith("    ")]
    if not block:
        raise RuntimeError("isogroup.formats.policyfile's docstring has no indented example")
    return block


def commented_policy() -> str:
    """/etc/isogroup/policy.toml as the package ships it: the header and the example, every line commented."""
    lines = [f"# {line}".rstrip() for line in CONFFILE_HEADER.splitlines()]
    lines += ["#"] + [f"# {line}".rstrip() for line in policy_example()]
    return "\n".join(lines) + "\n"


# -- the parser ----------------------------------------------------------------------------------------------------
def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every subcommand, in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _arguments(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction | argparse._VersionAction):
            yield action


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


# -- the man page ----------------------------------------------------------------------------------------------
def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in _arguments(parser):
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if action.option_strings:
            head = ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
            if _takes_value(action):
                value = "|".join(str(c) for c in action.choices) if action.choices else metavar or action.dest.upper()
                head += f" \\fI{roff(value)}\\fR"
        else:
            head = f"\\fI{roff(metavar or action.dest)}\\fR"
        text = action.help or ""
        if action.choices and action.default not in (None, argparse.SUPPRESS) and "default" not in text:
            text = f"{text} (default: {action.default})".lstrip()
        out += [".TP", head, roff(text) if text else "\\&"]
    return out


def manpage(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    description = (parser.description or "").rstrip(".")
    lines = [
        f'.TH ISOGROUP 1 "{date}" "isogroup {__version__}" "User Commands"',
        ".SH NAME",
        f"isogroup \\- {roff(description[:1].lower() + description[1:])}",
        ".SH SYNOPSIS",
        "\\fBisogroup\\fR [\\fB\\-\\-debug\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".br",
        "\\fBisogroup\\fR \\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        "It is a libvirt qemu hook and a command line tool: before a guest with PCI passthrough starts, the hook "
        "moves every member of the devices' IOMMU groups to vfio\\-pci, refuses the start when the host still "
        "uses one of them, and puts every device back when the guest stops.",
        ".SH OPTIONS",
        *_option_lines(parser),
        ".SH COMMANDS",
    ]
    for name, help_text, sub in subcommands(parser):
        usage = " ".join(sub.format_usage().removeprefix("usage: ").split())
        lines += [f".SS {roff(name)}", roff(help_text), ".PP", roff(usage), *_option_lines(sub)]
    lines += [".SH EXIT STATUS"]
    for code, meaning in sorted(EXIT_STATUS.items()):
        lines += [".TP", f"\\fB{int(code)}\\fR", roff(meaning)]
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(meaning)]
    lines += [
        ".SH POLICY",
        f"The policy file is TOML, read on every hook call that has work to do. The keys, with an example value "
        f"each (every key is optional; an unknown key is an error, exit {int(ExitCode.INPUT)}):",
        ".PP",
        ".nf",
        *(roff(line) for line in policy_example()),
        ".fi",
        ".PP",
        "A domain may tighten the policy in its own XML, in \\fI<metadata><isogroup:policy "
        f'xmlns:isogroup="{roff(policyfile.XMLNS)}">\\fR with \\fImode=\\fR, \\fI<allow>\\fR, '
        "\\fI<deny>\\fR and \\fI<probe family= action=>\\fR; relaxing needs \\fBmay_relax = true\\fR.",
        ".SH SEE ALSO",
        "\\fBvirsh\\fR(1), \\fBlibvirtd\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


# -- bash completion -------------------------------------------------------------------------------------------
def _value_completion(action: argparse.Action) -> str:
    """The bash that completes this option's value (or positional)."""
    if action.choices:
        words = " ".join(str(c) for c in action.choices)
        return f"COMPREPLY=($(compgen -W '{words}' -- \"$cur\"))"
    if action.type is Path:
        return "_filedir -d" if action.metavar == "DIR" else "_filedir"
    return "COMPREPLY=()"  # a name, an address, a number: nothing to offer


def _command_case(name: str, sub: argparse.ArgumentParser) -> list[str]:
    options = [a for a in _arguments(sub) if a.option_strings]
    words = " ".join(o for a in sub._actions for o in a.option_strings)
    lines = [f"        {name})", "            case $prev in"]
    for action in options:
        if _takes_value(action):
            lines.append(f"                {'|'.join(action.option_strings)}) {_value_completion(action)}; return ;;")
    lines.append("            esac")
    lines.append(f'            if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "{words}" -- "$cur")); return; fi')
    positionals = [a for a in _arguments(sub) if not a.option_strings]
    files = any(a.type is Path for a in positionals)
    lines.append("            _filedir" if files else "            COMPREPLY=()")
    lines.append("            ;;")
    return lines


def completion(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    subs = subcommands(parser)
    top = " ".join([*(o for a in parser._actions for o in a.option_strings), *(n for n, _, _ in subs)])
    lines = [
        "# bash completion for isogroup(1); generated by isogroup.cli.manpage from the command's own parser",
        "_isogroup() {",
        '    local cur prev words cword cmd="" i',
        "    _init_completion || return",
        "    for ((i = 1; i < cword; i++)); do",
        "        [[ ${words[i]} != -* ]] && { cmd=${words[i]}; break; }",
        "    done",
        "    case $cmd in",
        f'        "") COMPREPLY=($(compgen -W "{top}" -- "$cur")) ;;',
    ]
    for name, _, sub in subs:
        lines += _command_case(name, sub)
    lines += ["    esac", "} && complete -F _isogroup isogroup"]
    return "\n".join(lines) + "\n"


def write(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    written = []
    for name, text in (
        ("isogroup.1", manpage(parser)),
        ("isogroup.bash", completion(parser)),
        ("policy.toml", commented_policy()),
    ):
        (outdir / name).write_text(text)
        written.append(outdir / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python3 -m isogroup.cli.manpage OUTDIR\n")
        return ExitCode.INPUT
    write(Path(args[0]))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
