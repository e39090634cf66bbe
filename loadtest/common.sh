# Shared preamble of the oha load scripts (sourced, not run): finds oha and python3, moves to the repo
# root and sets BIN to a release prerank (PRERANK_BIN, or built here).
# shellcheck shell=bash

OHA="${OHA:-$(command -v oha || true)}"
TOOLS_ROOT="${PRERANK_TOOLS:-$HOME/.local/oha-install}"
if [[ -z "$OHA" && -x "$TOOLS_ROOT/bin/oha" ]]; then OHA="$TOOLS_ROOT/bin/oha"; fi
if [[ -z "$OHA" ]]; then
  cat >&2 <<'MSG'
oha is not on PATH. Install it (once, cached) with:
    loadtest/install-tools.sh
(or set OHA=/path/to/oha), then run this script again.
MSG
  exit 2
fi
command -v python3 >/dev/null || { echo "python3 is needed for the report" >&2; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${PRERANK_BIN:-}" ]]; then
  BIN="$PRERANK_BIN"
else
  echo "== building the release binary"
  cargo build --release --bin prerank
  BIN="${CARGO_TARGET_DIR:-target}/release/prerank"
fi
