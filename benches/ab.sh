#!/usr/bin/env bash
# A/B of phonegate builds or settings: each variant is its own phonegate process in front of one
# mock upstream, all loaded the same way in interleaved, rotated rounds; medians printed. For
# measuring one change against the commit before it (compare.sh measures against other servers).
#
#   VARIANTS="before=/tmp/pg-before after=target/release/phonegate" benches/ab.sh
#   VARIANTS="steal=target/release/phonegate nosteal=target/release/phonegate:PHONEGATE__SERVER__WORK_STEALING=false" \
#     LOAD=h2tls SETUP=shared ROUNDS=7 benches/ab.sh
#
# VARIANTS: space-separated NAME=BINARY[:ENV=VALUE,ENV=VALUE...]. Build the binaries first (for
# an older commit: a `git worktree` and `cargo build --release` there).
# LOAD: hit (wrk, 1 pair, the default), tls (wrk over TLS), h2c or h2tls (h2load -m10), or miss
#   (TTL 0, `wrk -t1 -c1`; the mock upstream called directly is measured too, as `direct`).
# SETUP: percore (the default: wrk on core CLIENT_CORE, every server on core SERVER_CORE with one
#   worker) or shared (nothing pinned, one worker per core, wrk with 2 threads).
# ROUNDS (default 7), DURATION in seconds (default 4), CONNS (default 64), PORT_BASE.
# Needs wrk, h2load (nghttp2-client), openssl and taskset; builds the mock upstream.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
LOAD=${LOAD:-hit}
SETUP=${SETUP:-percore}
CLIENT_CORE=${CLIENT_CORE:-0}
SERVER_CORE=${SERVER_CORE:-1}
PORT_BASE=${PORT_BASE:-19000}
ID=3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15
TOKEN=bench-key-0001
: "${VARIANTS:?set VARIANTS=\"name=binary[:ENV=V,...] ...\"}"

for tool in wrk h2load openssl taskset; do
  command -v "$tool" >/dev/null || { echo "ab.sh needs $tool (apt-get install wrk nghttp2-client openssl util-linux)" >&2; exit 2; }
done
case "$SETUP" in
  percore) SRV=(taskset -c "$SERVER_CORE") CLI=(taskset -c "$CLIENT_CORE") WORKERS=1 THREADS=1 ;;
  shared) SRV=() CLI=() WORKERS=0 THREADS=2 ;;
  *) echo "SETUP must be percore or shared" >&2; exit 2 ;;
esac
case "$LOAD" in
  hit | h2c) SCHEME=http ;;
  tls | h2tls) SCHEME=https ;;
  miss) SCHEME=http ;;
  *) echo "LOAD must be hit, tls, h2c, h2tls or miss" >&2; exit 2 ;;
esac
cargo build --release --quiet --example mock_vapi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "ab.sh: line $LINENO failed (exit $?): $BASH_COMMAND" >&2' ERR

make_cert "$WORK"

MOCK_PORT=$((PORT_BASE + 1))
"${SRV[@]}" target/release/examples/mock_vapi --listen "127.0.0.1:$MOCK_PORT" 2>/dev/null &
PIDS+=($!)
wait_port "$MOCK_PORT"

declare -A URL
NAMES=()
port=$((PORT_BASE + 10))
for variant in $VARIANTS; do
  name=${variant%%=*} spec=${variant#*=}
  binary=${spec%%:*} envs=()
  [[ "$spec" == *:* ]] && IFS=, read -r -a envs <<<"${spec#*:}"
  [ -x "$binary" ] || { echo "$name: $binary is not an executable" >&2; exit 2; }
  settings=(PHONEGATE__LISTEN="127.0.0.1:$port" PHONEGATE__ADMIN__LISTEN="127.0.0.1:$((port + 1))"
    PHONEGATE__UPSTREAM__URL="http://127.0.0.1:$MOCK_PORT" PHONEGATE__SERVER__WORKER_THREADS=$WORKERS)
  if [ "$LOAD" = miss ]; then
    settings+=(PHONEGATE__CACHE__TTL_SECS=0 PHONEGATE__LIMITS__MISSES_PER_SEC_PER_KEY=0)
  else
    settings+=(PHONEGATE__CACHE__TTL_SECS=86400)
  fi
  if [ "$SCHEME" = https ]; then
    settings+=(PHONEGATE__TLS__CERT_PATH="$WORK/cert.pem" PHONEGATE__TLS__KEY_PATH="$WORK/key.pem")
  fi
  env "${settings[@]}" "${envs[@]}" "${SRV[@]}" "$binary" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
  URL[$name]="$SCHEME://127.0.0.1:$port/phone-number/$ID"
  NAMES+=("$name")
  port=$((port + 10))
done
if [ "$LOAD" = miss ]; then
  URL[direct]="http://127.0.0.1:$MOCK_PORT/phone-number/$ID"
  NAMES+=(direct)
fi
for name in "${NAMES[@]}"; do # warm up (and fill the caches)
  "${CLI[@]}" wrk -t1 -c8 -d1s -H "Authorization: Bearer $TOKEN" "${URL[$name]}" >/dev/null
done

# run NAME -> "rps latency" (wrk: p50 for misses, p99 for hits; h2load: mean)
run() {
  local out
  case "$LOAD" in
    hit | tls)
      out=$("${CLI[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "${URL[$1]}")
      echo "$(awk '/^Requests\/sec/ {print $2}' <<<"$out") $(awk '$1 == "99%" {print $2}' <<<"$out")" ;;
    miss)
      out=$("${CLI[@]}" wrk -t1 -c1 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "${URL[$1]}")
      echo "$(awk '/^Requests\/sec/ {print $2}' <<<"$out") $(awk '$1 == "50%" {print $2}' <<<"$out")" ;;
    h2c | h2tls)
      out=$("${CLI[@]}" h2load -t"$THREADS" -c"$CONNS" -m10 -D "$DURATION" -H "Authorization: Bearer $TOKEN" "${URL[$1]}")
      echo "$(awk '/^finished in/ {print $4}' <<<"$out") $(awk '/^time for request:/ {print $6}' <<<"$out")" ;;
  esac
}
to_us() { # 138.00us / 1.23ms / 1.5s -> microseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
    else print v }'
}
median() { sort -n "$1" | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
case "$LOAD" in miss) latency="p50" ;; h2c | h2tls) latency="mean" ;; *) latency="p99" ;; esac

echo "ab.sh: LOAD=$LOAD SETUP=$SETUP, $ROUNDS rounds of ${DURATION}s, $(date -u +%FT%TZ), $(git rev-parse --short HEAD)"
echo
echo "| round | $(printf '%s | ' "${NAMES[@]}")"
echo "| --- |$(printf ' ---: |%.0s' "${NAMES[@]}")"
for round in $(seq 1 "$ROUNDS"); do
  shift_by=$(( (round - 1) % ${#NAMES[@]} ))
  order=("${NAMES[@]:$shift_by}" "${NAMES[@]:0:$shift_by}")
  declare -A cell=()
  for name in "${order[@]}"; do
    read -r rps lat < <(run "$name")
    echo "$rps" >>"$WORK/$name.rps"
    to_us "$lat" >>"$WORK/$name.lat"
    cell[$name]="$rps ($lat)"
  done
  line="| $round |"
  for name in "${NAMES[@]}"; do line+=" ${cell[$name]} |"; done
  echo "$line"
done
echo
echo "medians: requests/s, $latency"
for name in "${NAMES[@]}"; do
  echo "- $name: $(median "$WORK/$name.rps") requests/s, $latency $(median "$WORK/$name.lat") µs"
done
