#!/usr/bin/env bash
# Builds isogroup_VERSION_all.deb with Debian's own tools and Python (Debian 12) from a clean copy of the
# checkout (the files git tracks or would track: no .venv, no build leftovers), then lints it.
#   scripts/build-deb.sh [OUTDIR]     default OUTDIR: dist/; prints the .deb's path last
#   DEB_BUILD_OPTIONS=nocheck ...     skips the smoke test in debian/rules
# The build tools come from scripts/deb-packages.txt (scripts/setup.sh --test installs them); when one is
# missing this script installs the Build-Depends of debian/control with apt.
set -euo pipefail
cd "$(dirname "$0")/.."
# A pyenv shim or a venv first in PATH would be the python that pybuild and dh_python3 find.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg-checkbuilddeps 2>/dev/null || ! command -v lintian >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dpkg-dev lintian >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get build-dep -y -qq --no-install-recommends . >/dev/null
fi

version=$(dpkg-parsechangelog -S Version)
work=$(mktemp -d /tmp/isogroup-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/isogroup-$version"
mkdir "$src"
# dpkg-buildpackage writes its results next to the source tree: build in a copy, so nothing lands beside the
# checkout and no leftover of a developer's tree (egg-info, caches) can get into the package.
if git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
    done | tar --null -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude=./.venv --exclude=./dist -cf - . | tar -xf - -C "$src"
fi
(cd "$src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || { cat "$work/build.log" >&2; exit 1; }
deb="isogroup_${version}_all.deb"
cp "$work/$deb" "$out/"
# --fail-on error,warning: a new warning fails the build too. lintian says it should not run as root: harmless.
status=0
lint=$(lintian --fail-on error,warning --info "$out/$deb" 2>&1) || status=$?
lint=$(printf '%s\n' "$lint" | grep -v 'running with root privileges' || true)
[ -z "$lint" ] || printf '%s\n' "$lint" >&2
[ "$status" -eq 0 ] || { echo "build-deb: lintian failed on $out/$deb" >&2; exit 1; }
echo "$out/$deb"
