#!/usr/bin/env bash
# Debian's Chromium, for the test that opens the demo report in a real headless browser.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
echo "[setup] installing Debian's chromium (report rendering test)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
