#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/test_browser.py), if it can be installed.
#
#     bash tools/install_browser.sh
#
# Idempotent: does nothing when /usr/bin/chromium is already there. Never fails the build: when
# Chromium cannot be installed (not root, no apt-get, no network, apt timed out) it says why and
# exits 0, and the browser test then skips with that reason. Playwright never downloads a browser
# here: the test launches this system Chromium.
set -u

CHROMIUM=/usr/bin/chromium
APT_TIMEOUT=${QLAB_APT_TIMEOUT:-600}  # seconds for `apt-get update` and for `apt-get install` each

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM is already installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_browser: not root, cannot apt-get install chromium; the browser test will skip"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get on this machine; the browser test will skip"
    exit 0
fi

echo "install_browser: installing Debian's chromium (timeout ${APT_TIMEOUT}s per step)"
export DEBIAN_FRONTEND=noninteractive
if ! timeout "$APT_TIMEOUT" apt-get update -qq; then
    echo "install_browser: apt-get update failed or timed out; the browser test will skip"
    exit 0
fi
if ! timeout "$APT_TIMEOUT" apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    echo "install_browser: apt-get install chromium failed or timed out; the browser test will skip"
    exit 0
fi
if [ -x "$CHROMIUM" ]; then
    echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
    echo "install_browser: apt-get finished but $CHROMIUM is missing; the browser test will skip"
fi
exit 0
