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
BIN=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/prerank
file "$BIN" | grep -qE "static(-pie)? linked" || { echo "not a static binary: $(file "$BIN")"; exit 1; }

SMALL=$(mktemp)
strip --strip-debug -o "$SMALL" "$BIN"
echo "== image FROM scratch"
ctr=$(buildah "${STORE[@]}" from --format docker scratch)
trap 'buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah "${STORE[@]}" copy --chmod 0755 "$ctr" "$SMALL" /usr/local/bin/prerank >/dev/null
buildah "${STORE[@]}" copy "$ctr" models /models >/dev/null
buildah "${STORE[@]}" config \
  --entrypoint '["/usr/local/bin/prerank"]' --cmd serve \
  --env PRERANK_MODEL_ROOT=/models --env PRERANK_BIND=127.0.0.1:$PORT --env PRERANK_LOG_JSON=true \
  --user 10001:10001 --port "$PORT" \
  --healthcheck "CMD /usr/local/bin/prerank probe --addr 127.0.0.1:$PORT --path /readyz" \
  --label org.opencontainers.image.title=prerank "$ctr"
buildah "${STORE[@]}" commit --quiet --format docker "$ctr" "$IMAGE" >/dev/null
buildah "${STORE[@]}" images "$IMAGE"

echo "== run the image"
# podman's run applies default RLIMIT_NOFILE/NPROC settings that this sandbox refuses ("error setting
# rlimits ... operation not permitted"), so we try podman first and otherwise run the same image with
# runc directly: an OCI bundle whose rootfs is the image's filesystem (exported by podman) and whose
# process (entrypoint, env, user 10001, read-only root) is taken from the image config.
STATE=$(mktemp -d)
cleanup() {
  runc delete -f prerank-smoke >/dev/null 2>&1 || true
  podman "${STORE[@]}" rm -f prerank-smoke >/dev/null 2>&1 || true
  buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT
if podman "${STORE[@]}" --runtime runc run -d --name prerank-smoke --network host --read-only --no-healthcheck "$IMAGE" >/dev/null 2>"$STATE/podman.err"; then
  RUNNER=podman
  execin() { podman "${STORE[@]}" --runtime runc exec prerank-smoke "$@"; }
  stop() { podman "${STORE[@]}" --runtime runc stop -t 10 prerank-smoke >/dev/null; podman "${STORE[@]}" inspect -f '{{.State.ExitCode}}' prerank-smoke; }
else
  echo "podman run refused here: $(tail -1 "$STATE/podman.err")"
  RUNNER=runc
  mkdir -p "$STATE/bundle/rootfs"
  tmp=$(podman "${STORE[@]}" create "$IMAGE")
  podman "${STORE[@]}" export "$tmp" | tar -x -C "$STATE/bundle/rootfs"
  podman "${STORE[@]}" rm "$tmp" >/dev/null
  runc spec --bundle "$STATE/bundle"
  podman "${STORE[@]}" image inspect "$IMAGE" > "$STATE/image.json"
  python3 - "$STATE" <<'PY'
import json, sys
state = sys.argv[1]
img = json.load(open(f"{state}/image.json"))[0]["Config"]
spec = json.load(open(f"{state}/bundle/config.json"))
uid, gid = (int(x) for x in img["User"].split(":"))
spec["process"].update(terminal=False, args=img["Entrypoint"] + img["Cmd"], rlimits=[],
                       env=img["Env"], user={"uid": uid, "gid": gid}, cwd="/")
spec["root"]["readonly"] = True
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
json.dump(spec, open(f"{state}/bundle/config.json", "w"))
PY
  runc run -d --bundle "$STATE/bundle" prerank-smoke > "$STATE/stdout.log" 2> "$STATE/stderr.log" < /dev/null
  execin() { runc exec prerank-smoke "$@"; }
  stop() {
    runc kill prerank-smoke TERM
    for _ in $(seq 1 50); do
      [ "$(runc state prerank-smoke 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')" = stopped ] && { echo "stopped (runc)"; return; }
      sleep 0.2
    done
    echo "still running after 10 s"
  }
fi
echo "runner: $RUNNER"
for _ in $(seq 1 50); do
  if curl -fsS "127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
echo "readyz: $(curl -sS "127.0.0.1:$PORT/readyz")"
ids=$("$BIN" inspect models/pfd-student/1 --ids | head -n 1000 | paste -sd, -)
resp=$(curl -sS "127.0.0.1:$PORT/v1/rank" -H 'content-type: application/json' \
  -d "{\"user\": {\"id\": 7}, \"k\": 3, \"candidates\": [$ids]}")
echo "rank: $resp"
echo "$resp" | grep -q '"items":\[{"item_id"' || { echo "ranking request failed"; cat "$STATE"/*.log 2>/dev/null; exit 1; }
execin /usr/local/bin/prerank probe --addr "127.0.0.1:$PORT" --path /readyz \
  && echo "HEALTHCHECK command (prerank probe /readyz) inside the container: exit 0"
echo "image healthcheck: $(podman "${STORE[@]}" image inspect -f '{{.HealthCheck.Test}}' "$IMAGE")"
echo "image user: $(podman "${STORE[@]}" image inspect -f '{{.Config.User}}' "$IMAGE")"
echo "after SIGTERM: $(stop)"
echo "container smoke test: OK"
