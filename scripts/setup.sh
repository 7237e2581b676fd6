#!/usr/bin/env bash
# Install what smarter-edge, its demo and its tests need on a Debian 12 machine, as root:
# Debian packages, then .venv with the project and its test extras. Idempotent; quick when done.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO/.venv"

DEBIAN_PACKAGES=(
  python3 python3-venv
  containerd runc containernetworking-plugins golang-github-containernetworking-plugin-dnsname
  dnsmasq-base iproute2 iptables
  fuse3
  qemu-system-arm gcc-arm-none-eabi libnewlib-arm-none-eabi
  busybox-static patchelf binutils python3.11
  podman buildah docker.io
)

say() { printf '==> %s\n' "$*" >&2; }

missing_packages() {
  local pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || echo "$pkg"
  done
}

install_debian_packages() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  if [ -z "${missing// /}" ]; then
    say "Debian packages: all present"
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: $missing" >&2
    exit 1
  fi
  say "Debian packages: installing $missing(this is the slow step)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
}

install_python_project() {
  local stamp="$VENV/.smarter-edge-installed" want
  want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ]; then
    say "Python: creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "Python: project and test extras already installed"
    return
  fi
  say "Python: installing the project and its test extras into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Not quiet: on a fresh machine this is a slow step, and its progress should show.
  "$VENV/bin/python" -m pip install --progress-bar off -e "$REPO[test]"
  echo "$want" > "$stamp"
}

install_debian_packages
install_python_project
say "setup done"
