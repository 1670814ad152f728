#!/usr/bin/env bash
# Installs the isogroup .deb, checks it with Debian's python3, removes and purges it, and checks that nothing of
# it is left and that claims under /run/isogroup were never touched.
#   scripts/test-deb.sh DEB           in a clean Debian 12 root made by mmdebstrap (apt resolves the package's
#                                     Depends from the configured mirror: this proves them); needs root
#   scripts/test-deb.sh --here DEB    on this machine itself (a throwaway one); refuses where isogroup is
#                                     installed or libvirt has a qemu.d/isogroup hook already
# Prints "test-deb: ok (...)" last on success; any failed check is one line "test-deb: ..." and exit 1.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
fail() { echo "test-deb: $*" >&2; exit 1; }

mode=root
case "${1:-}" in
    --here) mode=here; shift ;;
    --inside) mode=inside; shift ;;  # internal: the clean root's customize hook
esac
deb=$(readlink -f "${1:?usage: scripts/test-deb.sh [--here] PATH.deb}")
[ -f "$deb" ] || fail "no such file: $deb"

if [ "$mode" = root ]; then
    [ "$(id -u)" -eq 0 ] || fail "needs root (mmdebstrap's root mode)"
    command -v mmdebstrap >/dev/null || fail "mmdebstrap is not installed (scripts/setup.sh --test)"
    sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=/etc/apt/sources.list
    self=$(readlink -f "$0")
    # --variant=apt: essential packages plus apt, nothing else; the .deb's Depends come in through apt.
    # The target /dev/null: mmdebstrap builds the root in a temporary directory and throws it away.
    exec mmdebstrap --quiet --variant=apt \
        --customize-hook="copy-in $deb $self /tmp" \
        --customize-hook="chroot \"\$1\" bash /tmp/$(basename "$self") --inside /tmp/$(basename "$deb")" \
        bookworm /dev/null "$sources"
fi

dpkg-query -W -f='${Status}' isogroup 2>/dev/null | grep -q "ok installed" && fail "isogroup is installed already"
hook=/etc/libvirt/hooks/qemu.d/isogroup
{ [ -e "$hook" ] || [ -L "$hook" ]; } && fail "$hook exists already"
# A claim of a running guest: install, remove and purge must leave it byte for byte.
# The ledger's own format (host/ledger.py), root-only as the ledger makes it: the hook reads it for real.
mkdir -p -m 0700 /run/isogroup /run/isogroup/claims
claim=/run/isogroup/claims/test-deb-guest.json
if [ ! -e "$claim" ]; then
    (umask 077; echo '{"version": 1, "domain": "test-deb-guest", "uuid": null, "phase": "active", "groups": [99],
 "devices": [], "updated": 0.0}' >"$claim")
    made_claim=1
fi
claims_before=$(find /run/isogroup -printf '%P %s %T@\n' | sort | md5sum)
log=$(mktemp)

apt-get install -y -q --no-install-recommends "$deb" >"$log" 2>&1 || { cat "$log" >&2; fail "apt-get install failed"; }
grep -q "libvirt had no qemu hook before: reload or restart" "$log" || fail "postinst did not say to reload the daemon"
files=$(mktemp)
dpkg -L isogroup | sort >"$files"

[ -L "$hook" ] && [ "$(readlink "$hook")" = /usr/libexec/isogroup/qemu-hook ] || fail "$hook is not the link"
[ -f "$hook" ] && [ -x "$hook" ] || fail "$hook is not an executable file through the link"
head -1 "$hook" | grep -qx '#!/usr/bin/python3 -I' || fail "hook shebang: $(head -1 "$hook")"
[ "$(command -v isogroup)" = /usr/bin/isogroup ] || fail "isogroup is not /usr/bin/isogroup"
head -1 /usr/bin/isogroup | grep -qx '#!/usr/bin/python3' || fail "isogroup shebang: $(head -1 /usr/bin/isogroup)"
/usr/bin/isogroup --help | grep -q "install-hook" || fail "isogroup --help"
/usr/bin/isogroup --version | grep -qx "isogroup $(dpkg-query -W -f='${Version}' isogroup)" || fail "--version"
# The hook as libvirt runs it: a guest without PCI passthrough is a no-op; one with a hostdev takes the slow
# path (lxml, the policy conffile) and refuses with one line on stderr, nothing on stdout.
env -i LC_ALL=C PATH=/usr/bin:/bin "$hook" plain prepare begin - <<<'<domain type="kvm"><name>plain</name><devices/></domain>' \
    >"$log.out" 2>"$log.err" || fail "hook failed on a plain guest: $(cat "$log.err")"
[ ! -s "$log.out" ] && [ ! -s "$log.err" ] || fail "hook printed something for a plain guest"
rc=0
env -i LC_ALL=C PATH=/usr/bin:/bin "$hook" g prepare begin - >"$log.out" 2>"$log.err" <<'XML' || rc=$?
<domain type="kvm"><name>g</name><devices><hostdev mode="subsystem" type="pci" managed="yes"><source>
<address domain="0x0000" bus="0x7f" slot="0x1f" function="0x7"/></source></hostdev></devices></domain>
XML
[ "$rc" -eq 1 ] && [ ! -s "$log.out" ] && grep -q "^isogroup refused 'g': " "$log.err" && [ "$(wc -l <"$log.err")" -eq 1 ] \
    || fail "hook on an absent hostdev: exit $rc, stderr: $(cat "$log.err")"
# The policy conffile changes nothing, and the CLI leaves dpkg's hook alone.
grep -qx /etc/isogroup/policy.toml /var/lib/dpkg/info/isogroup.conffiles || fail "policy.toml is no conffile"
grep -v '^#' /etc/isogroup/policy.toml | grep -q . && fail "policy.toml has a line that is not a comment"
grep -q 'may_relax = false' /etc/isogroup/policy.toml || fail "policy.toml does not say may_relax = false"
rc=0; out=$(/usr/bin/isogroup install-hook 2>&1) || rc=$?
[ "$rc" -eq 2 ] && grep -q "hook of the Debian package isogroup" <<<"$out" || fail "install-hook over dpkg's: $rc $out"
rc=0; out=$(/usr/bin/isogroup uninstall-hook 2>&1) || rc=$?
[ "$rc" -eq 2 ] && grep -q "belongs to the Debian package" <<<"$out" || fail "uninstall-hook of dpkg's: $rc $out"
[ -L "$hook" ] || fail "the CLI removed dpkg's hook"
[ -f /usr/share/man/man1/isogroup.1.gz ] || fail "no man page"
zcat /usr/share/man/man1/isogroup.1.gz | grep -q '^\.SH EXIT STATUS' || fail "man page has no EXIT STATUS"
[ -f /usr/share/bash-completion/completions/isogroup ] || fail "no bash completion"
bash -n /usr/share/bash-completion/completions/isogroup || fail "the completion is not valid bash"

apt-get remove -y -q isogroup >"$log" 2>&1 || { cat "$log" >&2; fail "apt-get remove failed"; }
{ [ -e "$hook" ] || [ -L "$hook" ]; } && fail "apt-get remove left $hook"
[ -e /usr/libexec/isogroup/qemu-hook ] && fail "apt-get remove left the hook's file"
[ -f /etc/isogroup/policy.toml ] || fail "apt-get remove took the conffile (only purge may)"
grep -q "guests still hold IOMMU groups" "$log" || fail "prerm did not warn about the claim"
dpkg --purge isogroup >"$log" 2>&1 || { cat "$log" >&2; fail "dpkg --purge failed"; }
left=$(while read -r f; do
    if { [ -e "$f" ] || [ -L "$f" ]; } && ! [ -d "$f" ]; then echo "$f"; fi
done <"$files")
[ -z "$left" ] || fail "left behind: $left"
[ -e /etc/isogroup ] && fail "purge left /etc/isogroup"
dirs=$(while read -r f; do
    if [ -d "$f" ] && [ "$f" != / ] && [ "$f" != /. ] && ! dpkg -S "$f" >/dev/null 2>&1; then echo "$f"; fi
done <"$files")
[ -z "$dirs" ] || fail "directories left that no package owns: $dirs"
[ "$(find /run/isogroup -printf '%P %s %T@\n' | sort | md5sum)" = "$claims_before" ] || fail "/run/isogroup changed"
[ -n "${made_claim:-}" ] && rm -f "$claim" && rmdir /run/isogroup/claims /run/isogroup 2>/dev/null
echo "test-deb: ok ($mode; $(wc -l <"$files") paths installed, none left; claims untouched)"
