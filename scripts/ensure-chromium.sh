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

if ! command -v apt-get >/dev/null 2>&1; then
    log "ERROR: apt-get is not available. Install Chromium with your package manager and put"
    log "       \`chromium\` on PATH, or set LAMINA_CHROMIUM to its binary."
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        log "ERROR: not root and no password-less sudo; cannot install Chromium."
        log "       Run as root: apt-get update && apt-get install -y chromium"
        exit 1
    fi
fi

if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 \
    && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        chromium </dev/null >&2; then
    if found; then
        log "installed Chromium: $(command -v chromium)"
        exit 0
    fi
    log "ERROR: the chromium package is installed but \`chromium\` is not on PATH"
else
    log "ERROR: installing the chromium package failed."
    log "       Install it by hand: apt-get update && apt-get install -y chromium"
fi
exit 1
