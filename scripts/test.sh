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
# 5. builds the browser bundle (scripts/web.sh --build: the engine and model
#    crates for wasm32 with WebGPU, installing rustup's wasm32 target and
#    wasm-bindgen-cli once) and makes sure headless Chromium is installed
#    (scripts/ensure-chromium.sh); both skipped when LAMINA_SKIP_WASM=1,
# 6. runs `cargo test --workspace "$@"`, which reuses the build, with the
#    headless-browser tests (tests/tests/browser.rs, ignored by a plain
#    `cargo test`) included unless LAMINA_SKIP_WASM=1.
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

web=1
[[ "${LAMINA_SKIP_WASM:-0}" == 1 ]] && web=0
if [[ $web == 1 ]]; then
    phase "Browser bundle (scripts/web.sh --build)"
    bash "$ROOT/scripts/web.sh" --build </dev/null
    phase "Headless Chromium (scripts/ensure-chromium.sh)"
    bash "$ROOT/scripts/ensure-chromium.sh" </dev/null
else
    phase "Browser bundle and Chromium: skipped (LAMINA_SKIP_WASM=1)"
fi

if [[ $web == 1 ]]; then
    # The headless-browser tests (tests/tests/browser.rs) are the only
    # ignored tests; they run in this same invocation, so nothing is built
    # again (another `cargo test` selecting fewer targets resolves some
    # dependencies' features anew). bench_against_native is a benchmark
    # (docs/benchmarks.md), run by hand.
    # Test-binary flags go after the one `--` (a second would make them
    # name filters, matching no test).
    sep=(--)
    for arg in "$@"; do
        [[ "$arg" == -- ]] && sep=()
    done
    phase "cargo test --workspace $* (with the headless-browser tests)"
    cargo test --workspace "$@" "${sep[@]}" --include-ignored --skip bench_against_native </dev/null
else
    phase "cargo test --workspace $*"
    cargo test --workspace "$@" </dev/null
fi
