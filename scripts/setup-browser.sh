#!/usr/bin/env bash
# Installs Debian's Chromium for test/browser.test.ts (playwright-core drives /usr/bin/chromium; it
# downloads no browser of its own). Idempotent: does nothing when Chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium is already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: installing a Debian package needs root: sudo $0" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found. Install Chromium another way and point LLAMA2_CHROMIUM at its binary." >&2
  exit 1
fi

echo "+ apt-get update"
apt-get update
echo "+ apt-get install -y --no-install-recommends chromium"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
echo "installed: $(/usr/bin/chromium --version)"
