#!/usr/bin/env bash
# Load test of the HTTP service with wrk: acknowledged ticks per second against GET /healthz.
#
#   bash benches/load.sh            # 15 s per run
#   DURATION=30 bash benches/load.sh
#
# Builds the release binary, starts `tellestrek serve` on 127.0.0.1:$PORT over a fresh data
# directory with benches/load-policy.toml (the default policy with the per-supporter cap raised
# to 10000), creates $TOKENS supporter tokens, then runs wrk twice with the same settings
# (-t$THREADS -c$CONNECTIONS -d${DURATION}s --latency): POST /api/v1/ticks through
# benches/tick.lua, and GET /healthz. Prints requests/s, p50 and p99 of both and the ratio.
# Every 201 from the tick route means the tick was fsynced (group commit), so expect ticks well
# below /healthz. The server is stopped and the data directory removed on exit. Talks only to
# 127.0.0.1. Needs wrk (Debian: apt-get install -y wrk) and curl.
#
# Exits non-zero if any tick got another answer than 201 (the table is still printed).

set -euo pipefail

DURATION=${DURATION:-15}
PORT=${PORT:-18089}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
CAP=10000 # max_per_supporter_per_period in benches/load-policy.toml
# Enough tokens that the cap cannot be reached even at 20000 ticks/s, and at least one per
# connection so no two requests in flight share a token.
MIN_TOKENS=$(((DURATION * 20000 + CAP - 1) / CAP))
TOKENS=${TOKENS:-$((MIN_TOKENS > 64 ? MIN_TOKENS : 64))}
ADMIN_TOKEN=${ADMIN_TOKEN:-load-test-admin-token-0123456789}
BASE="http://127.0.0.1:${PORT}"
# A valid tick: one value for each dimension of policy/default.toml (and the load policy).
BODY='{"org":"helse-vestfjord","unit":"akuttmottak","tags":{"yrkesgruppe":"sykepleier",'\
'"utlosende_arsak":"krevende-situasjon","initiering":"selvhenvendt","format":"individuell",'\
'"kanal":"telefon","varighet":"15-45","oppfolging":"forste","informert":"ja","henvist":"nei"}}'

cd "$(dirname "$0")/.."

for tool in wrk curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "load.sh: $tool is missing (Debian: apt-get update && apt-get install -y $tool)" >&2
    exit 2
  fi
done
if ((TOKENS < CONNECTIONS || TOKENS < THREADS)); then
  echo "load.sh: TOKENS ($TOKENS) must be at least CONNECTIONS ($CONNECTIONS)" >&2
  exit 2
fi
if curl -s -o /dev/null --max-time 2 "$BASE/healthz"; then
  echo "load.sh: something already answers on 127.0.0.1:$PORT; set PORT" >&2
  exit 2
fi

echo "== building the release binary"
cargo build --release --quiet

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting tellestrek on 127.0.0.1:$PORT (data in $WORK/data)"
TELLESTREK_ADMIN_TOKEN="$ADMIN_TOKEN" TELLESTREK_LOG=warn \
  "${CARGO_TARGET_DIR:-target}/release/tellestrek" serve --data "$WORK/data" --listen "127.0.0.1:$PORT" \
  --policy benches/load-policy.toml >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for i in $(seq 100); do
  if curl -sf -o /dev/null --max-time 1 "$BASE/healthz"; then
    break
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null || ((i == 100)); then
    echo "load.sh: the server did not come up; its log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  sleep 0.1
done

echo "== creating $TOKENS supporter tokens"
: >"$WORK/tokens"
for _ in $(seq "$TOKENS"); do
  reply=$(curl -sS --max-time 10 -X POST "$BASE/api/v1/tokens" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"role":"supporter","org":"helse-vestfjord"}')
  token=$(printf '%s' "$reply" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  if [[ -z "$token" ]]; then
    echo "load.sh: creating a token failed: $reply" >&2
    exit 1
  fi
  echo "$token" >>"$WORK/tokens"
done

# One tick by hand, so a broken body fails here with the server's message rather than as a
# count of non-201 answers.
first=$(head -n1 "$WORK/tokens")
status=$(curl -sS --max-time 10 -o "$WORK/first.json" -w '%{http_code}' -X POST \
  "$BASE/api/v1/ticks" -H "Authorization: Bearer $first" \
  -H 'Content-Type: application/json' -d "$BODY")
if [[ "$status" != 201 ]]; then
  echo "load.sh: a test tick got $status: $(cat "$WORK/first.json")" >&2
  exit 1
fi

WRK=(timeout $((DURATION + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)

echo "== wrk POST /api/v1/ticks (${DURATION}s, $THREADS threads, $CONNECTIONS connections)"
"${WRK[@]}" -s benches/tick.lua "$BASE/api/v1/ticks" -- "$WORK/tokens" "$THREADS" "$BODY" |
  tee "$WORK/ticks.txt"

echo "== wrk GET /healthz (${DURATION}s, $THREADS threads, $CONNECTIONS connections)"
"${WRK[@]}" "$BASE/healthz" | tee "$WORK/healthz.txt"

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "load.sh: the server died during the run; its log:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi

# wrk prints latencies as 812.00us, 1.52ms or 1.02s; report milliseconds.
stats() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000
      if (v ~ /s$/) return v * 1000
      return v + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    $1 == "Requests/sec:" { rps = $2 }
    END { printf "%s %.3f %.3f\n", rps, p50, p99 }
  ' "$1"
}
read -r tick_rps tick_p50 tick_p99 < <(stats "$WORK/ticks.txt")
read -r hz_rps hz_p50 hz_p99 < <(stats "$WORK/healthz.txt")
result=$(grep '^TICK_RESULT' "$WORK/ticks.txt" || true)
field() { printf '%s\n' "$result" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
acked=$(field acked_per_s)
non201=$(field non201)
ratio=$(awk -v a="$acked" -v b="$hz_rps" 'BEGIN { printf "%.4f", (b > 0 ? a / b : 0) }')

echo
echo "== results ($(date -u +%Y-%m-%d), $(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s)"
printf '%-22s %12s %10s %10s\n' "route" "requests/s" "p50 ms" "p99 ms"
# The tick row counts only 201 answers (acknowledged, flushed ticks).
printf '%-22s %12.0f %10.2f %10.2f\n' "POST /api/v1/ticks" "${acked:-0}" "$tick_p50" "$tick_p99"
printf '%-22s %12.0f %10.2f %10.2f\n' "GET /healthz" "$hz_rps" "$hz_p50" "$hz_p99"
echo "tick/healthz throughput ratio: $ratio"
echo "ticks: $(field acked) acknowledged (201), ${non201:-?} other answers; wrk counted $tick_rps requests/s in all"

if [[ -z "$non201" || "$non201" != 0 ]]; then
  echo "load.sh: some ticks were not acknowledged:" >&2
  grep '^TICK_NON201_SAMPLE' "$WORK/ticks.txt" >&2 || true
  exit 1
fi
