#!/usr/bin/env bash
# Resident memory at rest: the release binary started on a fresh data directory (the default
# policy) and on the national read bench's directory (3,600 releases of 30 organisations × 40
# units × 5 years, written by `cargo bench --bench reads -- OUT_DIR`); VmRSS 5 s after the first
# /healthz answer of each.
#
#   bash benches/rest.sh               # about 1 minute once built
#   PORT=18200 bash benches/rest.sh
#
# Needs curl. Stops each server and removes its data on exit. Talks only to 127.0.0.1.

set -euo pipefail

PORT=${PORT:-18095}
BASE="http://127.0.0.1:${PORT}"
cd "$(dirname "$0")/.."
command -v curl >/dev/null || {
  echo "rest.sh: curl is missing (Debian: apt-get install -y curl)" >&2
  exit 2
}
if curl -s -o /dev/null --max-time 2 "$BASE/healthz"; then
  echo "rest.sh: something already answers on 127.0.0.1:$PORT; set PORT" >&2
  exit 2
fi
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building the release binary and the national data"
cargo build --release --quiet --bin tellestrek
cargo bench --quiet --bench reads -- "$WORK/gen" >/dev/null

for case in fresh national; do
  if [[ $case == fresh ]]; then
    args=(--data "$WORK/fresh" --policy policy/default.toml)
  else
    args=(--data "$WORK/gen/data" --policy "$WORK/gen/policy.toml")
  fi
  TELLESTREK_LOG=warn TELLESTREK_NOW=2026-11-23T10:00:00Z \
    "$TARGET/release/tellestrek" serve "${args[@]}" --listen "127.0.0.1:$PORT" \
    >"$WORK/$case.log" 2>&1 &
  SERVER_PID=$!
  for i in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "$BASE/healthz" && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null || ((i == 100)); then
      echo "rest.sh: the server did not come up:" >&2
      cat "$WORK/$case.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  sleep 5
  rss=$(awk '/^VmRSS/ { printf "%.1f MB", $2 / 1000 }' "/proc/$SERVER_PID/status")
  echo "$case: VmRSS $rss, 5 s after the first /healthz answer"
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=""
done
