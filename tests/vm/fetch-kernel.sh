#!/usr/bin/env bash
# Fetches Debian's standard kernel (the one linux-image-amd64 currently depends on) for the real-kernel test bed
# and unpacks it into .cache/vm/kernel/ of this checkout. Called by scripts/setup.sh --test.
#
# Why Debian's standard kernel and not the host's: the host kernel is whatever the machine runs (often a cloud or
# custom kernel without e1000e/9p modules); the bed needs a known kernel with vfio, vfio-pci, the Intel IOMMU,
# e1000e, 9p and overlay. The version is never hard-coded: it is whatever the metapackage points at today.
#
# Result: .cache/vm/kernel/{boot/vmlinuz-VER, lib/modules/VER/ (with modules.dep), VERSION, PACKAGE}
# Idempotent: when PACKAGE already names the resolved package and the files are there, it does nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.cache/vm/kernel

resolve() {
    # `apt-cache depends linux-image-amd64` prints "  Depends: linux-image-6.1.0-NN-amd64"; take the first
    # concrete linux-image-* dependency. (Captured first: no pipeline that could die of SIGPIPE under pipefail.)
    local deps
    deps=$(apt-cache depends linux-image-amd64 2>/dev/null) || return 0
    awk '($1 == "Depends:" || $1 == "|Depends:") && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' <<<"$deps"
}

pkg=$(resolve)
if [ -z "$pkg" ]; then
    # A fresh machine may not have package lists yet.
    apt-get update -qq
    pkg=$(resolve)
fi
[ -n "$pkg" ] || { echo "fetch-kernel: cannot resolve linux-image-amd64's kernel package" >&2; exit 1; }
version=${pkg#linux-image-}

if [ -f "$dest/PACKAGE" ] && [ "$(cat "$dest/PACKAGE")" = "$pkg" ] \
    && [ -f "$dest/boot/vmlinuz-$version" ] && [ -f "$dest/lib/modules/$version/modules.dep" ]; then
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download writes into the current directory and must be able to drop privileges to _apt there.
chmod 755 "$tmp"
if ! (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
    # Stale lists name a .deb the mirror no longer has: refresh once and retry.
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
fi

rm -rf "$dest.new"
mkdir -p "$dest.new"
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dest.new"
# The package ships no modules.dep; both the initramfs builder and modprobe in the guest need it.
depmod -b "$dest.new" "$version"
echo "$version" >"$dest.new/VERSION"
echo "$pkg" >"$dest.new/PACKAGE"
# Swap in atomically enough: a half-extracted tree is never left under the final name.
rm -rf "$dest"
mv "$dest.new" "$dest"
# Built initramfs images depend on the kernel version: drop stale ones.
rm -f .cache/vm/initramfs-*.cpio.gz
echo "fetch-kernel: $pkg in $dest"
