#!/usr/bin/env bash
# Installs everything isogroup needs on a Debian 12 machine, into the system (apt) and into ./.venv (pip).
#   scripts/setup.sh          runtime: libvirt-python's build deps, lxml, pyudev, isogroup itself
#   scripts/setup.sh --test   also the test tools, the real-kernel test bed (QEMU, busybox, a kernel) and the
#                             tools that build and test the Debian package (debhelper, lintian, mmdebstrap)
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
    case "$arg" in
        --test) want_test=1 ;;
        *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
    esac
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# libvirt0 (also pulled in by libvirt-dev) ships libvirt's RelaxNG schemas, /usr/share/libvirt/schemas/domain.rng,
# which `isogroup check` validates domain XML against.
apt_pkgs=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev libvirt0)
if [ "$want_test" -eq 1 ]; then
    # shellcheck source=scripts/vm-packages.txt
    mapfile -t vm_pkgs < <(grep -v '^#' scripts/vm-packages.txt | grep -v '^$')
    mapfile -t deb_pkgs < <(grep -v '^#' scripts/deb-packages.txt | grep -v '^$')
    apt_pkgs+=("${vm_pkgs[@]}" "${deb_pkgs[@]}")
fi

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if [ "$want_test" -eq 1 ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    tests/vm/fetch-kernel.sh
    # OpenStack nova's own device_spec parser checks `isogroup inventory --format nova` (tests/unit/
    # test_nova_devspec.py). Its own venv: about 150 packages, never a dependency of isogroup. Pinned to the
    # versions that install and import here without a cloud (nova 34.0.0 = 2025.2 "Flamingo").
    if [ ! -x .cache/nova-venv/bin/python ] || ! .cache/nova-venv/bin/python -c 'import nova.pci.whitelist' 2>/dev/null; then
        "$PY" -m venv .cache/nova-venv
        .cache/nova-venv/bin/python -m pip install -q --disable-pip-version-check \
            nova==34.0.0 oslo.config==10.7.0 oslo.utils==10.2.0 oslo.serialization==5.11.0 oslo.log==8.3.2 \
            oslo.i18n==6.9.0 os-traits==3.9.0 os-resource-classes==1.1.0 eventlet==0.41.3
    fi
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
