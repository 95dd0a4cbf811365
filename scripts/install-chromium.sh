#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser test (tests/test_dashboard_browser.py drives
# it through Playwright with executable_path, so Playwright's own browser download, which
# needs a network this machine may not have, is never used).
#   scripts/install-chromium.sh        # apt-get install chromium if missing (root)
# The path is /usr/bin/chromium, or $HYBRIDNAS_CHROMIUM.
set -euo pipefail

log() { echo "install-chromium: $*" >&2; }

browser="${HYBRIDNAS_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$browser" ]; then
    log "Chromium already installed at $browser"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "Chromium is not installed; install it (Debian/Ubuntu: sudo apt-get install chromium)"
    exit 1
fi
log "installing Chromium with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
