#!/usr/bin/env bash
# Make sure Chromium is available for the browser test (tests/tests/browser.rs).
#
# If $LAMINA_CHROMIUM names a binary, or `chromium` is on PATH, there is
# nothing to do. Otherwise install Debian's `chromium` package:
# `apt-get install chromium`. Uses sudo (non-interactively) only when not
# root. Unlike ensure-vulkan.sh this fails (exit 1) when Chromium cannot be
# had, since the browser test cannot run without it.
set -euo pipefail

log() { printf 'ensure-chromium: %s\n' "$*" >&2; }

found() {
    if [[ -n "${LAMINA_CHROMIUM:-}" ]]; then
        [[ -x "$LAMINA_CHROMIUM" ]]
    else
        command -v chromium >/dev/null 2>&1
    fi
}

if found; then
    log "Chromium found: ${LAMINA_CHROMIUM:-$(command -v chromium)}"
    exit 0
fi
if [[ -n "${LAMINA_CHROMIUM:-}" ]]; then
    log "ERROR: LAMINA_CHROMIUM=$LAMINA_CHROMIUM is not an executable file"
    exit 1
fi

log "chromium is not on PATH; installing Debian's chromium package"

if bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" ensure-chromium chromium; then
    if found; then
        log "installed Chromium: $(command -v chromium)"
        exit 0
    fi
    log "ERROR: the chromium package is installed but \`chromium\` is not on PATH"
else
    log "ERROR: Chromium could not be installed (above); the browser tests need it."
fi
exit 1
