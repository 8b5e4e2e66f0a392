#!/usr/bin/env bash
# A Python virtual environment with the official `openai` client, for the
# server tests (cli/tests/serve.rs runs cli/tests/serve_openai.py with it).
#
#   scripts/py-openai.sh        creates it if needed; prints its python
#
# Where: $LAMINA_PY_VENV, else target/py-openai in the repository. pip
# fetches the pinned client from the package index on first use.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAMINA_PY_VENV:-$ROOT/target/py-openai}"
OPENAI_VERSION="3.63.0"
PY="$VENV/bin/python"

if [[ -x "$PY" ]] && "$PY" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
    echo "$PY"
    exit 0
fi
python=""
for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1; then python="$p"; break; fi
done
if [[ -z "$python" ]]; then
    echo "py-openai.sh: python3 not found; install Python 3.9 or later" >&2
    exit 1
fi
# A half-made environment from an interrupted run is made again.
rm -rf "$VENV"
if ! "$python" -m venv "$VENV" >&2; then
    echo "py-openai.sh: '$python -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
"$PY" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
echo "$PY"
