#!/usr/bin/env bash
# Make sure a Vulkan driver is available for wgpu.
#
# If no Vulkan ICD (driver manifest) or no Vulkan loader (libvulkan.so.1) is
# found, install Mesa's drivers, which include lavapipe, a CPU Vulkan
# implementation: `apt-get install mesa-vulkan-drivers libvulkan1`.
# Uses sudo (non-interactively) only when not root. Never fails hard: if
# nothing can be installed it says so and exits 0, and the GPU tests report
# the missing adapter themselves.
set -euo pipefail

log() { printf 'ensure-vulkan: %s\n' "$*" >&2; }

if [[ "$(uname -s)" != Linux ]]; then
    log "not Linux; skipping the Vulkan check (wgpu uses the platform's native backend)"
    exit 0
fi

has_icd() {
    local d f
    # Explicitly configured drivers count too.
    for f in ${VK_ICD_FILENAMES//:/ } ${VK_DRIVER_FILES//:/ }; do
        [[ -f "$f" ]] && return 0
    done
    for d in /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d /etc/vulkan/icd.d; do
        for f in "$d"/*.json; do
            [[ -f "$f" ]] && return 0
        done
    done
    return 1
}

has_loader() {
    local ldconfig out f
    ldconfig="$(command -v ldconfig || true)"
    [[ -z "$ldconfig" && -x /sbin/ldconfig ]] && ldconfig=/sbin/ldconfig
    if [[ -n "$ldconfig" ]]; then
        # Capture first: `ldconfig -p | grep -q` can SIGPIPE under pipefail.
        out="$("$ldconfig" -p 2>/dev/null || true)"
        [[ "$out" == *libvulkan.so.1* ]] && return 0
    fi
    for f in /usr/lib/*/libvulkan.so.1 /lib/*/libvulkan.so.1 /usr/lib/libvulkan.so.1 /usr/lib64/libvulkan.so.1; do
        [[ -e "$f" ]] && return 0
    done
    return 1
}

VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-}"
VK_DRIVER_FILES="${VK_DRIVER_FILES:-}"

if has_icd && has_loader; then
    log "Vulkan driver and loader found"
    exit 0
fi

log "no Vulkan driver/loader found; installing Mesa's Vulkan drivers (lavapipe)"

if ! command -v apt-get >/dev/null 2>&1; then
    log "WARNING: apt-get is not available. Install a Vulkan driver (e.g. Mesa's lavapipe) and the"
    log "         Vulkan loader with your package manager; GPU tests will fail without an adapter."
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        log "WARNING: not root and no password-less sudo; cannot install the Vulkan drivers."
        log "         Run as root: apt-get update && apt-get install -y mesa-vulkan-drivers libvulkan1"
        exit 0
    fi
fi

if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 \
    && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        mesa-vulkan-drivers libvulkan1 </dev/null >&2; then
    if has_icd && has_loader; then
        log "installed Mesa's Vulkan drivers (lavapipe)"
    else
        log "WARNING: packages installed but no Vulkan driver/loader detected afterwards"
    fi
else
    log "WARNING: installing mesa-vulkan-drivers and libvulkan1 failed; GPU tests will fail without an adapter."
    log "         Install them by hand: apt-get update && apt-get install -y mesa-vulkan-drivers libvulkan1"
fi
exit 0
