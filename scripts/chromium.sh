#!/usr/bin/env bash
# Headless Chromium for the web page tests (tests/test_web.py): Debian's `chromium` and `chromium-driver`
# packages, which put the browser at /usr/bin/chromium and its WebDriver at /usr/bin/chromedriver.
# Installs them when missing and we are root on a Debian-like system (as scripts/postgres.sh installs
# PostgreSQL); otherwise says what is missing and exits 1. Selenium is always given both paths, so it never
# downloads a driver or a browser.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "chromium.sh: /usr/bin/chromium or /usr/bin/chromedriver not found; installing Debian's chromium and chromium-driver" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium chromium-driver >&2; }
fi
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
echo "chromium.sh: no /usr/bin/chromium and /usr/bin/chromedriver (install Debian's chromium and chromium-driver packages)" >&2
exit 1
