#!/usr/bin/env bash
# Lamina's test suite, as run by CI (.ci/run) and by developers:
#
#   scripts/test.sh [extra `cargo test` arguments]
#
# 1. makes sure a Vulkan driver is available (installs lavapipe if needed),
# 2. fetches the default model into the cache (`lamina fetch`; skipped when
#    LAMINA_SKIP_FETCH=1),
# 3. runs `cargo test --workspace "$@"`.
# Works from any directory, without a terminal or standard input.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

phase() { printf '\n==> %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi

export RUST_BACKTRACE=1

phase "Vulkan driver"
bash "$ROOT/scripts/ensure-vulkan.sh" </dev/null

if [[ "${LAMINA_SKIP_FETCH:-0}" == 1 ]]; then
    phase "Default model: skipped (LAMINA_SKIP_FETCH=1)"
else
    # Same (dev) profile as the tests, so this build is reused by them.
    phase "Default model (lamina fetch)"
    cargo run -q -p lamina-cli -- fetch </dev/null
fi

phase "cargo test --workspace $*"
cargo test --workspace "$@" </dev/null
