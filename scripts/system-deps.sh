#!/usr/bin/env bash
# Install the system packages Proximity needs on a Debian-family machine.
# Idempotent and quick when everything is there: it only calls apt-get for what is missing.
set -euo pipefail

PACKAGES=(
  mosquitto          # the broker the tests start on a free loopback port
  mosquitto-clients  # mosquitto_sub/pub: an independent subscriber in tests and for debugging
  libzbar0           # QR decoding (pyzbar)
  ca-certificates    # TLS to external brokers
  openssl            # the TLS tests make their own certificate authority
  dbus               # dbus-daemon: the private bus the BLE tests run a mocked BlueZ on
  libdbus-1-dev      # headers to build dbus-python (python-dbusmock needs it)
  libglib2.0-dev     # likewise, for dbus-python's main-loop glue
  pkg-config         # lets dbus-python's build find those two
  gcc                # dbus-python has no wheel on PyPI: pip compiles it (meson needs a C compiler)
  libc6-dev          # the C library's headers; gcc only recommends them, and we install no recommends
  postgresql-15      # the chain's central database (proximity hq); the tests run a private cluster (initdb + pg_ctl)
  chromium           # the browser tests drive it with Playwright, which cannot download its own browser here
)

python_ok() {
  command -v python3 >/dev/null 2>&1 &&
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
}

venv_ok() {
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1
}

# Python.h for the python3 that builds .venv (Debian's own needs python3-dev; a pyenv or
# deadsnakes build carries its headers)
headers_ok() {
  python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
    >/dev/null 2>&1
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ! python_ok; then
  missing+=(python3)
fi
if ! venv_ok; then
  missing+=(python3-venv)
fi
if ! headers_ok; then
  missing+=(python3-dev)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${missing[*]}, and this is not a Debian-family system (no apt-get)." >&2
  echo "system-deps: install the equivalents by hand, then run make again." >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "system-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

log=$(mktemp -t proximity-system-deps.XXXXXX.log)
echo "system-deps: installing ${missing[*]} (apt log: $log)"
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -q &&
       "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "system-deps: apt-get failed; the whole log is $log" >&2
  exit 1
fi

if ! python_ok; then
  echo "system-deps: Proximity needs Python 3.11 or newer; python3 is $(python3 --version 2>&1)" >&2
  exit 1
fi
