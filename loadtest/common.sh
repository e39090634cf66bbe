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

# oha >= 1.5 has --output-format json; older releases have --json.
if "$OHA" --help 2>/dev/null | grep -q -- '--output-format'; then
  JSON_FLAG=(--output-format json)
else
  JSON_FLAG=(--json)
fi

# A scratch directory ($WORK), removed on exit unless KEEP=1; on exit the server ($SERVER_PID) gets
# SIGTERM and is waited for, and every pid in BACKGROUND_PIDS is killed.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/prerank-$(basename "$0" .sh).XXXXXX")"
SERVER_PID=""
BACKGROUND_PIDS=()
KEEP="${KEEP:-0}"
cleanup() {
  for pid in "${BACKGROUND_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -n "$SERVER_PID" ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "$KEEP" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A free port on 127.0.0.1 (all load-test traffic stays on loopback).
ADDR="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# start_server ARGS...: `prerank serve --bind $ADDR ARGS...` in the background (log: $WORK/server.log),
# then waits up to 60 s for /readyz; exits with the log if the server dies or never gets ready.
start_server() {
  echo "== starting prerank on $ADDR"
  "$BIN" serve --bind "$ADDR" "$@" > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    if "$BIN" probe --addr "$ADDR" --path /readyz 2>/dev/null; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "server never became ready" >&2
  exit 1
}
