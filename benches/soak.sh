#!/usr/bin/env bash
# Soak test: the release binary under ticks, dashboard reads, exports and releases together for
# minutes, ending with every acknowledged tick counted, memory within a bound, and no error
# answer but the expected 429s. Not part of `cargo test`.
#
#   bash benches/soak.sh                 # 10 minutes of load (about 12 minutes in all)
#   bash benches/soak.sh --quick         # 1 minute of load
#   bash benches/soak.sh --minutes 30    # longer
#   MEM_BOUND_MB=100 PORT=18102 bash benches/soak.sh
#   KEEP=1 TELLESTREK_BIN=target/debug/tellestrek bash benches/soak.sh --quick  # keep the files
#
# One data directory, three starts of the same binary with the clock fixed by TELLESTREK_NOW
# (the way the tests move time), so periods close and are released as in production:
#
# 0. 2025-11-20, fresh directory (epoch 2025-11), benches/load-policy.toml (per-supporter cap
#    10000, two organisations): the admin makes tokens (supporters of both organisations, a
#    leader each, a researcher). Stopped with SIGTERM (every stop below too).
# A. 2026-10-20: the release job draws the eleven closed months at start (empty releases, so
#    exports and dashboards have a year of history), then ticks go to October 2026 for
#    $WARMUP seconds (15 with --quick).
# B. 2026-11-23: October is closed, and the release job draws it at start. Its total release
#    per organisation must hold the contacts acknowledged in A (see "Release check" below).
#    Then, for the soak's duration, all at once (benches/soak.py, one thread each):
#    - 6 tick clients, supporters of both organisations, random valid tags, 1 to 3 contacts,
#      each with an Idempotency-Key; about 1 in 20 acknowledged ticks is sent again with its key
#      and must come back 201, `Idempotent-Replayed: true`, same body; a tick whose answer was
#      lost is sent again with its key. A supporter's token is retired before the cap and the
#      admin makes new ones during the load;
#    - 1 flooder supporter sending count=10 until the cap, then 2 a second: exactly 10000
#      acknowledged, then only 429 `tick_cap_exceeded` (the only error answers allowed);
#    - per organisation: a leader reading GET /api/v1/dashboard (every 0.5 s) and, signed in
#      on the web, the /dashboard page (every 1 s);
#    - a researcher downloading the CSV export, its signature (releases.sig) and the JSON
#      export every second (the last of each kept), and GET /api/v1/budget;
#    - the admin asking to release October again every 5 s (drawn once: the same releases),
#      and GET /api/v1/periods; a researcher reading October's releases every 2 s, which must
#      be byte-identical every time;
#    - the server's VmRSS read from /proc every 2 s; its VmHWM at the end against the bound,
#      MEM_BOUND_MB (default 100) plus MEM_PER_CONTACT_B (default 160) bytes for each contact
#      of the open month: its idempotency record, which sled holds in memory (about 130 bytes)
#      until the month closes.
#    Stopped with SIGTERM, which must exit 0.
# Count. With the server stopped, benches/soak_count.rs opens the data directory with
#    Store::open and sums the raw cells of October and November per organisation (the crash
#    test's hook; no interface of the server reveals a raw count). Each must equal the contacts
#    the clients got a 201 for: acknowledged ticks all counted, resends counted once.
# C. 2026-12-10: November is closed and released at start. Its total release per organisation
#    must hold what B acknowledged; October's releases must be the bytes read in B; the last
#    CSV export of B, with its signature, and the JSON export are checked with
#    `tellestrek verify` against GET /api/v1/signing-key, and so are fresh ones.
#
# Release check: the released `noisy` value (unbiased, not clamped) must lie within 3 times
# the half-width of its 95% interval of the acknowledged count: a discrete Laplace noise falls
# outside that about once in 8,000 draws, so a failure here is a miscount, not bad luck.
#
# Prints a summary (ticks/s, p50/p99 per route, memory) and exits non-zero on any failure.
# Why a Python client rather than wrk: the soak needs per-request state (a key per tick,
# deliberate resends checked against the first answer, counts per organisation from each first
# 201, a signed-in web session, saved export files); python3's standard library does that with
# no package to install, and throughput is not what this measures (benches/load.sh is).
# Needs python3 and curl. Talks only to 127.0.0.1. Stops the server and removes its data on exit.

set -euo pipefail

DURATION=${DURATION:-600}
WARMUP=${WARMUP:-30}
while (($#)); do
  case "$1" in
    --quick) DURATION=60 WARMUP=15 ;;
    --minutes) DURATION=$(($2 * 60)); shift ;;
    *) echo "usage: soak.sh [--quick | --minutes N]" >&2; exit 2 ;;
  esac
  shift
done
PORT=${PORT:-18092}
# The memory bound: MEM_BOUND_MB, plus MEM_PER_CONTACT_B bytes for each contact logged in the
# open month (its idempotency record, held until the month closes; measured at about 130).
MEM_BOUND_MB=${MEM_BOUND_MB:-100}
MEM_PER_CONTACT_B=${MEM_PER_CONTACT_B:-160}
ADMIN=soak-test-admin-token-0123456789
BASE="http://127.0.0.1:${PORT}"

cd "$(dirname "$0")/.."
for tool in python3 curl; do
  command -v "$tool" >/dev/null || {
    echo "soak.sh: $tool is missing" >&2
    exit 2
  }
done
if curl -s -o /dev/null --max-time 2 "$BASE/healthz"; then
  echo "soak.sh: something already answers on 127.0.0.1:$PORT; set PORT" >&2
  exit 2
fi
TARGET=${CARGO_TARGET_DIR:-target}
# TELLESTREK_BIN: soak a binary already built (say a debug one) instead of building release.
BIN=${TELLESTREK_BIN:-$TARGET/release/tellestrek}

echo "== building the release binary and the offline counter"
[[ -n "${TELLESTREK_BIN:-}" ]] || cargo build --release --quiet --bin tellestrek
# The counter is not timed, so it is built in the dev profile the tests already use.
cargo bench --profile dev --quiet --bench soak_count --no-run 2>/dev/null ||
  cargo bench --profile dev --bench soak_count --no-run

WORK=$(mktemp -d)
DATA="$WORK/data"
SERVER_PID=""
FAILED=()
stop_server() { # stops the server with SIGTERM; fails the soak unless it exits 0
  [[ -n "$SERVER_PID" ]] || return 0
  local rc=0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  if ((rc != 0)); then
    FAILED+=("the server exited $rc on SIGTERM")
  fi
}
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  [[ -n "${KEEP:-}" ]] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() { # NOW LOG: starts the server at the fixed instant NOW, waits for /healthz
  local t0 t1
  t0=$(date +%s%N)
  TELLESTREK_ADMIN_TOKEN="$ADMIN" TELLESTREK_LOG=warn TELLESTREK_NOW="$1" \
    "$BIN" serve --data "$DATA" --policy benches/load-policy.toml \
    --listen "127.0.0.1:$PORT" >>"$WORK/$2" 2>&1 &
  SERVER_PID=$!
  for i in $(seq 3000); do
    curl -sf -o /dev/null --max-time 1 "$BASE/healthz" && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null || ((i == 3000)); then
      echo "soak.sh: the server did not come up; its log:" >&2
      cat "$WORK/$2" >&2
      exit 1
    fi
    sleep 0.01
  done
  t1=$(date +%s%N)
  STARTUP_MS=$(((t1 - t0) / 1000000))
}

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

echo "== 0: 2025-11-20, a fresh data directory (epoch 2025-11); the admin makes the tokens"
start_server 2025-11-20T10:00:00Z server-0.log
STARTUP_FRESH_MS=$STARTUP_MS
python3 benches/soak.py setup "$BASE" "$ADMIN" "$WORK/state.json"
stop_server

echo "== A: 2026-10-20, eleven months closed and released at start; ${WARMUP}s of ticks into October"
start_server 2026-10-20T10:00:00Z server-a.log
STARTUP_A_MS=$STARTUP_MS
python3 benches/soak.py ticks "$BASE" "$WORK/state.json" "$WARMUP" "$WORK/a.json" - ||
  FAILED+=("phase A had unexpected answers: $(json "$WORK/a.json" 'd["failure_samples"][:3]')")
stop_server

echo "== B: 2026-11-23, October closed and released at start"
start_server 2026-11-23T10:00:00Z server-b.log
STARTUP_B_MS=$STARTUP_MS
python3 benches/soak.py check "$BASE" "$WORK/state.json" 2026-10 "$WORK/a.json" "$WORK" ||
  FAILED+=("October's released totals do not hold what phase A acknowledged")
echo "== B: ${DURATION}s of ticks, dashboards (API and page), exports and releases together"
python3 benches/soak.py soak "$BASE" "$WORK/state.json" "$DURATION" "$WORK/b.json" - \
  "$SERVER_PID" "$WORK" 2026-10 "$MEM_BOUND_MB" "$MEM_PER_CONTACT_B" ||
  FAILED+=("the soak had failures: $(json "$WORK/b.json" 'd["failure_samples"][:5]')")
stop_server

echo "== count: the stopped server's raw cells against the acknowledged contacts"
cargo bench --profile dev --quiet --bench soak_count -- "$DATA" 2026-10 2026-11 >"$WORK/count.txt"
COUNT_REPORT=$(python3 - "$WORK/count.txt" "$WORK/a.json" "$WORK/b.json" <<'PY'
import json, sys
counted = {}
for line in open(sys.argv[1]):
    period, org, n = line.split()
    counted[(period, org)] = int(n)
bad = 0
for period, path in (("2026-10", sys.argv[2]), ("2026-11", sys.argv[3])):
    acked = json.load(open(path))["acked"]
    for org in sorted(set(acked) | {o for p, o in counted if p == period}):
        a, c = acked.get(org, 0), counted.get((period, org), 0)
        bad += a != c
        print(f"  {period} {org}: acknowledged {a}, counted {c}: {'ok' if a == c else 'MISMATCH'}")
print("BAD" if bad else "OK")
PY
)
echo "$COUNT_REPORT" | grep -v '^OK$\|^BAD$'
[[ "$(echo "$COUNT_REPORT" | tail -n1)" == OK ]] || FAILED+=("acknowledged and counted differ")

echo "== C: 2026-12-10, November closed and released at start"
start_server 2026-12-10T10:00:00Z server-c.log
python3 benches/soak.py check "$BASE" "$WORK/state.json" 2026-11 "$WORK/b.json" "$WORK" ||
  FAILED+=("November's released totals do not hold what phase B acknowledged")
RESEARCHER=$(json "$WORK/state.json" 'd["researcher"]')
KEY=$(curl -fsS "$BASE/api/v1/signing-key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])')
curl -fsS -H "Authorization: Bearer $RESEARCHER" "$BASE/api/v1/releases?period=2026-10" \
  >"$WORK/october-after.json"
if ! cmp -s "$WORK/released-period.json" "$WORK/october-after.json"; then
  FAILED+=("October's releases changed between B and C")
fi
curl -fsS -H "Authorization: Bearer $RESEARCHER" "$BASE/api/v1/releases?format=csv&limit=1000" \
  -D "$WORK/final.h" -o "$WORK/final.csv"
curl -fsS -H "Authorization: Bearer $RESEARCHER" "$BASE/api/v1/releases.sig?format=csv&limit=1000" \
  -o "$WORK/final.csv.sig"
curl -fsS -H "Authorization: Bearer $RESEARCHER" "$BASE/api/v1/releases?limit=1000" -o "$WORK/final.json"
echo "== verify: the last exports of B and fresh ones, with tellestrek verify"
for pair in "export.csv export.csv.sig" "final.csv final.csv.sig"; do
  read -r f s <<<"$pair"
  "$BIN" verify "$WORK/$f" --signature "$WORK/$s" --public-key "$KEY" ||
    FAILED+=("tellestrek verify refused $f")
done
for f in export.json final.json; do
  "$BIN" verify "$WORK/$f" --public-key "$KEY" || FAILED+=("tellestrek verify refused $f")
done
stop_server

python3 - "$WORK/b.json" "$MEM_BOUND_MB" "$STARTUP_FRESH_MS" "$STARTUP_A_MS" "$STARTUP_B_MS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
acked = sum(d["acked"].values())
print(f"\n== soak summary ({d['seconds']:.0f} s of load)")
print(f"contacts acknowledged: {acked} in {d['keys']} requests ({acked / d['seconds']:.0f}/s), "
      f"{d['resends']} resends answered as replays, {d['lost_answers']} lost answers sent again")
print(f"flooder: {d['flooder_acked']} acknowledged (the cap), then {d['flooder_429']} × 429")
print(f"{'route':<28} {'answers':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for route, l in sorted(d["latency"].items()):
    print(f"{route:<28} {l['n']:>8} {l['p50_ms']:>8} {l['p99_ms']:>8} {l['max_ms']:>8}")
print("answers by route and status:", ", ".join(f"{k}: {v}" for k, v in d["answers"].items()))
mb = lambda kb: f"{kb / 1024:.1f} MB" if kb else "?"
print(f"memory: at rest {mb(d.get('rss_at_rest_kb'))}, VmRSS max under load "
      f"{mb(d.get('rss_max_kb'))} ({d.get('rss_samples')} samples, every 2 s), last "
      f"{mb(d.get('rss_last_kb'))}, VmHWM {mb(d.get('hwm_kb'))} (bound {d.get('bound_mb')} MB: "
      f"{sys.argv[2]} MB and 160 B a contact of the open month)")
series = d.get("rss_series") or []
# The first sample is taken as the load starts, while the start's release job may still hold
# the closed month's database: the growth a contact is measured from the second one on.
if len(series) >= 3 and series[-1][2] > series[1][2]:
    (t0, r0, a0), (t1, r1, a1) = series[1], series[-1]
    print(f"VmRSS every 30 s (s, MB, contacts): "
          + ", ".join(f"{t} {r / 1024:.0f} {a}" for t, r, a in series)
          + f"; {(r1 - r0) * 1024 / (a1 - a0):.0f} bytes per contact acknowledged "
          f"from {t0} s to {t1} s")
print(f"exports downloaded (CSV + sig + JSON): {d.get('exports')}; "
      f"startup to /healthz: {sys.argv[3]} ms on a fresh directory, {sys.argv[4]} ms with 11 "
      f"months to release, {sys.argv[5]} ms with October to release")
PY

if ((${#FAILED[@]})); then
  printf 'soak.sh: FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "soak.sh: PASSED: no error answer but the flooder's 429s, every acknowledged tick counted once, memory within $(json "$WORK/b.json" 'd["bound_mb"]') MB (${MEM_BOUND_MB} MB and ${MEM_PER_CONTACT_B} B a contact of the open month)"
