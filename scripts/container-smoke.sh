#!/usr/bin/env bash
# Proves the container path without pulling any base image: builds a static (glibc, crt-static) prerank,
# packs it with the bundled models into an image FROM scratch with buildah, runs it with podman + runc,
# and checks /readyz and a ranking request against it. Traffic stays on 127.0.0.1.
#
#   scripts/container-smoke.sh            # needs: apt-get install buildah podman runc
#
# The multi-stage Dockerfile at the top level is the path for machines that can pull rust/debian bases;
# this script is the one we can run here (and records its output in docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18480}
IMAGE=${IMAGE:-localhost/prerank:scratch}
STORE=(--storage-driver vfs)

echo "== static binary"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p prerank --target x86_64-unknown-linux-gnu
BIN=target/x86_64-unknown-linux-gnu/release/prerank
file "$BIN" 2>/dev/null | grep -q "statically linked" || ldd "$BIN" 2>&1 | grep -q "not a dynamic" || { echo "not static"; exit 1; }

echo "== image FROM scratch"
ctr=$(buildah "${STORE[@]}" from scratch)
trap 'buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah "${STORE[@]}" copy "$ctr" "$BIN" /usr/local/bin/prerank >/dev/null
buildah "${STORE[@]}" copy "$ctr" models /models >/dev/null
buildah "${STORE[@]}" config \
  --entrypoint '["/usr/local/bin/prerank"]' --cmd serve \
  --env PRERANK_MODEL_ROOT=/models --env PRERANK_BIND=127.0.0.1:$PORT --env PRERANK_LOG_JSON=true \
  --user 10001:10001 --port "$PORT" \
  --healthcheck "CMD /usr/local/bin/prerank probe --addr 127.0.0.1:$PORT --path /readyz" \
  --label org.opencontainers.image.title=prerank "$ctr"
buildah "${STORE[@]}" commit --quiet --format docker "$ctr" "$IMAGE" >/dev/null
buildah "${STORE[@]}" images "$IMAGE"

echo "== run with podman (runc, host network, read-only root, non-root user)"
cid=$(podman "${STORE[@]}" --runtime runc run -d --network host --read-only "$IMAGE")
cleanup() { podman "${STORE[@]}" --runtime runc rm -f "$cid" >/dev/null 2>&1 || true; buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for _ in $(seq 1 50); do
  if curl -fsS "127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
echo "readyz: $(curl -sS "127.0.0.1:$PORT/readyz")"
ids=$("$BIN" inspect models/pfd-student/1 --ids | head -n 1000 | paste -sd, -)
resp=$(curl -sS "127.0.0.1:$PORT/v1/rank" -H 'content-type: application/json' \
  -d "{\"user\": {\"id\": 7}, \"k\": 3, \"candidates\": [$ids]}")
echo "rank: $resp"
echo "$resp" | grep -q '"items":\[{"item_id"' || { echo "ranking request failed"; podman "${STORE[@]}" logs "$cid"; exit 1; }
echo "user in container: $(podman "${STORE[@]}" --runtime runc inspect -f '{{.Config.User}}' "$cid")"
podman "${STORE[@]}" --runtime runc stop -t 10 "$cid" >/dev/null
echo "exit code after SIGTERM: $(podman "${STORE[@]}" --runtime runc inspect -f '{{.State.ExitCode}}' "$cid")"
echo "container smoke test: OK"
