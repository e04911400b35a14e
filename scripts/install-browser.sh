#!/bin/sh
# Install the browser the browser tests (test/browser/browser.test.ts) drive with
# playwright-core: Debian's chromium. Idempotent.
set -eu
APT_INSTALL_LABEL=install-browser exec "$(dirname "$0")/apt-install.sh" chromium
