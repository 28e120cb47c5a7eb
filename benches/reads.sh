#!/usr/bin/env bash
# National read bench: reads over HTTP of 30 organisations × 40 units × 5 years of releases,
# the server's peak memory, and tick p99 while two clients download exports continuously
# against tick p99 at rest, in the same run.
#
#   bash benches/reads.sh                 # about 2 minutes once built
#   DURATION=30 REPS=50 PORT=18101 bash benches/reads.sh
#
# 1. Builds the release binary and benches/reads.rs, which writes a data directory of releases
#    drawn with the real release code (release::draw_batch, OpenDP noise) over synthetic raw
#    cells, committed through Store::commit_releases, and its policy (benches/load-policy.toml
#    with 30 organisations of 40 units).
# 2. Starts `tellestrek serve` on it (127.0.0.1:$PORT, TELLESTREK_NOW fixed) and samples its
#    resident memory (VmRSS) every 0.1 s; reports the peak, and the kernel's VmHWM at the end.
# 3. Times with curl ($REPS runs each; median and max): one release by id (period, org and
#    marginal), one organisation's year as JSON and as CSV, the first page of an unfiltered
#    listing (default 100 and the maximum 1000 releases), and a walk over every page.
# 4. Runs wrk with benches/tick.lua (-t2 -c$CONNECTIONS -d${DURATION}s) three times: at rest,
#    while two clients walk every page of the unfiltered listing in a loop (one JSON, one CSV,
#    1000 releases a page; the clients at nice 10, see below), and at rest again. Reports the
#    p99s and the loaded one's ratio to the mean of the two at rest.
# Needs wrk and curl. Stops the server and removes its data on exit. Talks only to 127.0.0.1.

set -euo pipefail

DURATION=${DURATION:-20}
REPS=${REPS:-30}
PORT=${PORT:-18090}
CONNECTIONS=${CONNECTIONS:-32}
TOKENS=${TOKENS:-64}
ADMIN=reads-bench-admin-token-0123456789 # set by benches/reads.rs
BASE="http://127.0.0.1:${PORT}"
BODY='{"org":"org-00","unit":"unit-00","tags":{"yrkesgruppe":"sykepleier",'\
'"utlosende_arsak":"krevende-situasjon","initiering":"selvhenvendt","format":"individuell",'\
'"kanal":"telefon","varighet":"15-45","oppfolging":"forste","informert":"ja","henvist":"nei"}}'

cd "$(dirname "$0")/.."
for tool in wrk curl; do
  command -v "$tool" >/dev/null || {
    echo "reads.sh: $tool is missing (Debian: apt-get install -y $tool)" >&2
    exit 2
  }
done
if curl -s -o /dev/null --max-time 2 "$BASE/healthz"; then
  echo "reads.sh: something already answers on 127.0.0.1:$PORT; set PORT" >&2
  exit 2
fi
TARGET=${CARGO_TARGET_DIR:-target}

echo "== building the release binary and the data generator"
cargo build --release --quiet --bin tellestrek
WORK=$(mktemp -d)
SERVER_PID=""
SAMPLER_PID=""
LOADERS=()
cleanup() {
  touch "$WORK/stop" 2>/dev/null || true
  for p in "${LOADERS[@]}" $SAMPLER_PID; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
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

echo "== generating 30 organisations × 40 units × 5 years of releases"
cargo bench --quiet --bench reads -- "$WORK/gen"
echo "data directory: $(du -sh "$WORK/gen/data" | cut -f1)"

echo "== starting tellestrek on 127.0.0.1:$PORT"
TELLESTREK_LOG=warn TELLESTREK_NOW=2026-11-23T10:00:00Z \
  "$TARGET/release/tellestrek" serve --data "$WORK/gen/data" --policy "$WORK/gen/policy.toml" \
  --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 100); do
  curl -sf -o /dev/null --max-time 1 "$BASE/healthz" && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null || ((i == 100)); then
    echo "reads.sh: the server did not come up:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
(
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || true
    sleep 0.1
  done
) >"$WORK/rss" &
SAMPLER_PID=$!

token() { # role [org]
  local body="{\"role\":\"$1\"${2:+,\"org\":\"$2\"}}" reply t
  reply=$(curl -sS --max-time 10 -X POST "$BASE/api/v1/tokens" -H "Authorization: Bearer $ADMIN" \
    -H 'Content-Type: application/json' -d "$body")
  t=$(printf '%s' "$reply" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  if [[ -z "$t" ]]; then
    echo "reads.sh: creating a $1 token failed: $reply" >&2
    exit 1
  fi
  echo "$t"
}
RESEARCHER=$(token researcher)
: >"$WORK/tokens"
for _ in $(seq "$TOKENS"); do token supporter org-00 >>"$WORK/tokens"; done
status=$(curl -sS -o "$WORK/first.json" -w '%{http_code}' -X POST "$BASE/api/v1/ticks" \
  -H "Authorization: Bearer $(head -n1 "$WORK/tokens")" -H 'Content-Type: application/json' -d "$BODY")
[[ "$status" == 201 ]] || {
  echo "reads.sh: a test tick got $status: $(cat "$WORK/first.json")" >&2
  exit 1
}

# time PATH: REPS timed GETs as the researcher; prints "median_ms max_ms bytes".
timed() {
  for _ in $(seq "$REPS"); do
    curl -sS -o /dev/null -H "Authorization: Bearer $RESEARCHER" \
      -w '%{time_total} %{size_download} %{http_code}\n' "$BASE$1"
  done | awk '$3 != 200 { bad++ } { print $1 * 1000, $2 }
    END { if (bad) { print "non-200 answers: " bad > "/dev/stderr"; exit 1 } }' |
    sort -n | awk '{ t[NR] = $1; b = $2 } END { printf "%.2f %.2f %d\n", t[int((NR + 1) / 2)], t[NR], b }'
}

# walk FORMAT: every page of the unfiltered listing, 1000 releases a page; prints "ms bytes pages".
walk() {
  local cursor="" pages=0 bytes=0 start end hf="$WORK/h.$1.$BASHPID"
  start=$(date +%s%N)
  while :; do
    local url="$BASE/api/v1/releases?limit=1000&format=$1${cursor:+&cursor=$cursor}"
    local out
    out=$(curl -sS -D "$hf" -o /dev/null -w '%{size_download}' \
      -H "Authorization: Bearer $RESEARCHER" "$url")
    bytes=$((bytes + out))
    pages=$((pages + 1))
    cursor=$(sed -n 's/^x-tellestrek-next: *\([A-Za-z0-9_-]*\).*/\1/p' "$hf")
    [[ -n "$cursor" ]] || break
  done
  end=$(date +%s%N)
  echo "$(((end - start) / 1000000)) $bytes $pages"
}

echo "== reads ($REPS runs each)"
declare -A ROW
ROW[one]=$(timed "/api/v1/releases?period=2025-Q4&org=org-07&marginal=unit")
ROW[year_json]=$(timed "/api/v1/releases?org=org-07&from=2025-01&to=2025-12")
ROW[year_csv]=$(timed "/api/v1/releases?org=org-07&from=2025-01&to=2025-12&format=csv")
ROW[first]=$(timed "/api/v1/releases")
ROW[first_max]=$(timed "/api/v1/releases?limit=1000")
read -r walk_ms walk_bytes walk_pages < <(walk json)
read -r walkc_ms walkc_bytes walkc_pages < <(walk csv)

WRK=(timeout $((DURATION + 60)) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency)
p99() {
  awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
         if (v ~ /s$/) return v * 1000; return v + 0 }
       $1 == "99%" { printf "%.2f", ms($2) }' "$1"
}
echo "== ticks at rest (${DURATION}s)"
"${WRK[@]}" -s benches/tick.lua "$BASE/api/v1/ticks" -- "$WORK/tokens" 2 "$BODY" >"$WORK/rest.txt"
echo "== ticks while two clients download every page continuously (${DURATION}s)"
loader() {
  local n=0
  while [[ ! -e "$WORK/stop" ]]; do
    walk "$1" >/dev/null
    n=$((n + 1))
  done
  echo "$n" >"$WORK/walks.$1"
}
# The clients run at nice 10: on a real deployment they are on other machines, and here
# their own CPU (curl and this shell loop, on the same cores) must not count against the
# server. wrk runs at normal priority in both runs.
(
  renice -n 10 -p "$BASHPID" >/dev/null
  loader json
) &
LOADERS+=($!)
(
  renice -n 10 -p "$BASHPID" >/dev/null
  loader csv
) &
LOADERS+=($!)
sleep 1
"${WRK[@]}" -s benches/tick.lua "$BASE/api/v1/ticks" -- "$WORK/tokens" 2 "$BODY" >"$WORK/load.txt"
touch "$WORK/stop"
for p in "${LOADERS[@]}"; do wait "$p" || true; done
LOADERS=()
# At rest again: the machine's other load drifts, so the loaded run is compared with the
# mean of the runs just before and after it.
echo "== ticks at rest again (${DURATION}s)"
"${WRK[@]}" -s benches/tick.lua "$BASE/api/v1/ticks" -- "$WORK/tokens" 2 "$BODY" >"$WORK/rest2.txt"
kill -0 "$SERVER_PID" || {
  echo "reads.sh: the server died; its log:" >&2
  cat "$WORK/server.log" >&2
  exit 1
}
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$SERVER_PID/status")
peak=$(sort -n "$WORK/rss" | tail -n1)
rest_p99=$(p99 "$WORK/rest.txt")
rest2_p99=$(p99 "$WORK/rest2.txt")
load_p99=$(p99 "$WORK/load.txt")
for f in rest load rest2; do
  grep -q 'non201=0 ' "$WORK/$f.txt" || {
    echo "reads.sh: some ticks were not acknowledged ($f):" >&2
    grep '^TICK' "$WORK/$f.txt" >&2
    exit 1
  }
done

echo
echo "== results ($(date -u +%Y-%m-%d), $(nproc) cores; ms are median / max of $REPS)"
printf '%-48s %10s %10s %12s\n' "read" "median ms" "max ms" "bytes"
row() { read -r a b c <<<"${ROW[$2]}"; printf '%-48s %10s %10s %12s\n' "$1" "$a" "$b" "$c"; }
row "one release (period, org, marginal)" one
row "one organisation's year, JSON (24 releases)" year_json
row "one organisation's year, CSV" year_csv
row "first page, unfiltered (100 releases)" first
row "first page, unfiltered, limit=1000" first_max
printf '%-48s %10s %10s %12s\n' "every page, JSON ($walk_pages pages of 1000)" "$walk_ms" "" "$walk_bytes"
printf '%-48s %10s %10s %12s\n' "every page, CSV ($walkc_pages pages of 1000)" "$walkc_ms" "" "$walkc_bytes"
echo "server memory: peak VmRSS sampled $((peak / 1024)) MB, VmHWM $((hwm / 1024)) MB"
echo "tick p99: at rest $rest_p99 ms, while downloading $load_p99 ms, at rest again $rest2_p99 ms" \
  "(ratio to the mean at rest $(awk -v a="$load_p99" -v b="$rest_p99" -v c="$rest2_p99" \
    'BEGIN { printf "%.2f", 2 * a / (b + c) }'));" \
  "full walks during the loaded run: json $(cat "$WORK/walks.json" 2>/dev/null || echo ?)," \
  "csv $(cat "$WORK/walks.csv" 2>/dev/null || echo ?)"
grep '^TICK_RESULT' "$WORK/rest.txt" | sed 's/^/at rest: /'
grep '^TICK_RESULT' "$WORK/load.txt" | sed 's/^/loaded:  /'
grep '^TICK_RESULT' "$WORK/rest2.txt" | sed 's/^/at rest: /'
