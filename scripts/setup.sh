#!/usr/bin/env bash
# Install everything infratool and its lab need on a fresh Debian 12 machine
# (as root): system packages, then a virtualenv in .venv with infratool and
# its test extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client   # the lab's hosts are real sshd processes
  nix-bin                         # real nix: builds, stores, caches, nix-instantiate
  age                             # age-keygen for operators; sops uses age keys
  sbsigntool systemd-boot-efi efitools   # real Secure Boot signatures for the sbctl emulator
  nginx-light                     # the binary cache's HTTP server in the lab
  postgresql                      # a real service whose password gets rotated
  pass gnupg                      # a real password store behind `generator: command` (tests)
  util-linux procps iproute2 curl git
  strace                          # the tests record every exec (argv, env) on both ends of a run
  debootstrap                     # the Debian rootfs a real systemd boots from (tests/realsystemd.py)
  python3 python3-venv python3-dev gcc
  python3-cryptography            # lab hosts run helper scripts (sbctl emulator) with the system Python
)

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (the lab starts sshd in mount namespaces)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Services must not start on install: the lab starts its own, per host.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
mkdir -p /run/sshd

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's output goes to a log (this machine's pip config is chatty); shown on failure.
log=$(mktemp)
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[test]' -e ./lab; } >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
# Editable install + PYTHONDONTWRITEBYTECODE=1 here: no run writes .pyc, so each run would recompile what it imports.
.venv/bin/python -m compileall -q infratool lab/infratool_lab
echo "setup.sh: ready ($(.venv/bin/infratool --version); $(nix-store --version); sops $(.venv/bin/sops --disable-version-check --version 2>/dev/null | head -n1 | awk '{print $2}'))"
