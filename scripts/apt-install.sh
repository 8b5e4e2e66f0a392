#!/usr/bin/env bash
# Installs Debian packages for the ensure-*.sh scripts:
#
#   scripts/apt-install.sh NAME PACKAGE...
#
# NAME prefixes the messages. Runs `apt-get update` and `apt-get install -y
# --no-install-recommends PACKAGE...`, with sudo (non-interactively) only
# when not root. Exits 0 when the packages are installed, 1 (saying why and
# how to install them by hand) when apt-get is missing, there is no way to
# root, or the install fails; the caller decides whether that is fatal.
set -euo pipefail

name="$1"
shift
log() { printf '%s: %s\n' "$name" "$*" >&2; }
by_hand="apt-get update && apt-get install -y $*"

if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get is not available: install $* with your package manager"
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        log "not root and no password-less sudo; run as root: $by_hand"
        exit 1
    fi
fi

if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 \
    && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "$@" </dev/null >&2; then
    exit 0
fi
log "installing $* failed; install by hand: $by_hand"
exit 1
