#!/usr/bin/env bash
# Lamina's test suite, as run by CI (.ci/run) and by developers:
#
#   scripts/test.sh [extra `cargo test` arguments]
#
# 1. makes sure a Vulkan driver is available (installs lavapipe if needed),
# 2. builds the workspace's tests and the `lamina` binary once
#    (`cargo test --workspace --no-run`),
# 3. fetches the default model into the cache with that binary (`lamina
#    fetch`; skipped when LAMINA_SKIP_FETCH=1),
# 4. makes the Python environment with the `openai` client that the server
#    tests drive `lamina serve` with (scripts/py-openai.sh),
# 5. checks that the engine and model crates still compile for the browser
#    (`cargo check --target wasm32-unknown-unknown`, the target added with
#    rustup; skipped when LAMINA_SKIP_WASM=1),
# 6. runs `cargo test --workspace "$@"`, which reuses the build.
# Works from any directory, without a terminal or standard input.
#
# One build serves every step: `cargo run -p lamina-cli` would resolve the
# dependencies' features for the CLI alone and compile them a second time.
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

phase "Build: cargo test --workspace --no-run $*"
cargo test --workspace --no-run "$@" </dev/null

if [[ "${LAMINA_SKIP_FETCH:-0}" == 1 ]]; then
    phase "Default model: skipped (LAMINA_SKIP_FETCH=1)"
else
    phase "Default model (lamina fetch)"
    profile=debug
    for arg in "$@"; do
        [[ "$arg" == --release ]] && profile=release
    done
    target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    "$target_dir/$profile/lamina" fetch </dev/null
fi

phase "Python openai client (scripts/py-openai.sh)"
LAMINA_TEST_PYTHON="$(bash "$ROOT/scripts/py-openai.sh" </dev/null)"
export LAMINA_TEST_PYTHON

if [[ "${LAMINA_SKIP_WASM:-0}" == 1 ]]; then
    phase "wasm32 check: skipped (LAMINA_SKIP_WASM=1)"
else
    phase "wasm32 check: cargo check --target wasm32-unknown-unknown -p lamina-engine -p lamina-model"
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        rustup target add wasm32-unknown-unknown </dev/null
    fi
    cargo check --target wasm32-unknown-unknown -p lamina-engine -p lamina-model </dev/null
fi

phase "cargo test --workspace $*"
cargo test --workspace "$@" </dev/null
