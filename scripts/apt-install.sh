#!/bin/sh
# Installs the Debian packages named on the command line that are not installed yet, with
# --no-install-recommends. Idempotent: does nothing when every package is there. Not root: says
# what to run and exits 1. Used by install-guest-deps.sh and install-browser.sh.
set -eu

label="${APT_INSTALL_LABEL:-apt-install}"
missing=""
for pkg in "$@"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [ "$status" != "installed" ]; then
    missing="$missing $pkg"
  fi
done

if [ -z "$missing" ]; then
  echo "$label: all packages already installed:$(printf ' %s' "$@")"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "$label: missing packages:$missing" >&2
  echo "$label: not running as root; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing" >&2
  exit 1
fi

echo "$label: missing:$missing"
echo "$label: running apt-get update"
DEBIAN_FRONTEND=noninteractive apt-get update -q
echo "$label: installing (--no-install-recommends):$missing"
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
echo "$label: installed:$missing"
