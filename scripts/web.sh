#!/usr/bin/env bash
# Builds Lamina for the browser and serves the page on localhost:
#
#   scripts/web.sh            build, then serve on http://127.0.0.1:8080/
#   scripts/web.sh --build    build only (the headless browser test's step)
#   scripts/web.sh --port N   serve on port N
#
# The bundle is $CARGO_TARGET_DIR/web (default target/web): the page
# (web/www) and pkg/, the lamina-web crate built for wasm32-unknown-unknown
# in release mode and bound to JavaScript by wasm-bindgen. Installs what it
# needs: rustup's wasm32 target, and wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock (the two must match), with cargo install.
# Serving uses python3's http.server (bound to 127.0.0.1 only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

build_only=0
port=8080
while [[ $# -gt 0 ]]; do
    case "$1" in
        --build) build_only=1 ;;
        --port)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "web.sh: --port needs a number" >&2; exit 2; }
            port="$2"
            shift
            ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "web.sh: unknown argument \`$1\` (try --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf 'web.sh: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    log "adding rustup's wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown </dev/null
fi

# The wasm-bindgen version the crate graph uses.
want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [[ -z "$want" ]]; then
    log "no wasm-bindgen in Cargo.lock"; exit 1
fi
have="$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)"
if [[ "$have" != "$want" ]]; then
    log "installing wasm-bindgen-cli $want (found: ${have:-none}); this takes a few minutes once"
    # Only the binder itself: no TLS stack (that is for the test runner's downloads).
    cargo install wasm-bindgen-cli --version "$want" --no-default-features --bin wasm-bindgen </dev/null
fi

target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
out="$target_dir/web"
log "building lamina-web for wasm32 (release)"
cargo build --release --target wasm32-unknown-unknown -p lamina-web </dev/null
rm -rf "$out"
mkdir -p "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" \
    "$target_dir/wasm32-unknown-unknown/release/lamina_web.wasm"
cp web/www/* "$out/"
log "bundle: $out ($(du -sh "$out/pkg" | cut -f1) of wasm and bindings)"

if [[ $build_only == 1 ]]; then
    exit 0
fi
log "serving http://127.0.0.1:$port/ (Ctrl-C stops); open it in a browser with WebGPU"
exec python3 -m http.server --bind 127.0.0.1 --directory "$out" "$port"
