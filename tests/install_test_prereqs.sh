#!/usr/bin/env bash
# Test prerequisites that are not Python packages: Debian's chromium (browser tests, driven by
# Playwright; never `playwright install`) and PostgreSQL 15 (review-store tests start their own
# throwaway server). Idempotent: installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
    echo "test prerequisites present: chromium, postgresql 15"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]} and no apt-get: install them with your package manager;" \
         "without them the browser / PostgreSQL tests are skipped (and fail when CI=true)" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
