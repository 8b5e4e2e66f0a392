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

if bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" ensure-vulkan mesa-vulkan-drivers libvulkan1; then
    if has_icd && has_loader; then
        log "installed Mesa's Vulkan drivers (lavapipe)"
    else
        log "WARNING: packages installed but no Vulkan driver/loader detected afterwards"
    fi
else
    log "WARNING: no Vulkan driver could be installed (above); GPU tests will fail without an adapter."
fi
exit 0
