#!/usr/bin/env bash
# Side-by-side load comparison on loopback: phonegate vs nginx proxy_cache vs a bare hyper server
# (the ceiling), same load generator and settings, rounds interleaved (A B C A B C ...) and medians
# reported, because the machine is shared and noisy. Prints one markdown table.
#
#   benches/compare.sh                 # defaults below
#   ROUNDS=5 DURATION=10 CONNS=64 benches/compare.sh
#
# Installs wrk and nginx from Debian packages when missing (needs root, as on the dev machines).
# Everything listens on 127.0.0.1 and is stopped when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
MOCK_PORT=${MOCK_PORT:-18181}
PG_PORT=${PG_PORT:-18080}
PG_ADMIN_PORT=${PG_ADMIN_PORT:-18090}
PG_MISS_PORT=${PG_MISS_PORT:-18082}
PG_MISS_ADMIN_PORT=${PG_MISS_ADMIN_PORT:-18092}
NGINX_PORT=${NGINX_PORT:-18083}
CEIL_PORT=${CEIL_PORT:-18099}
ID=3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15
TOKEN=bench-key-0001

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 ..." >&2
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need nginx nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin phonegate --example mock_vapi --example ceiling

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on port $1" >&2
  exit 1
}

# --- the contenders -------------------------------------------------------------------------
target/release/examples/mock_vapi --listen "127.0.0.1:$MOCK_PORT" 2>"$WORK/mock.log" &
PIDS+=($!)
wait_port "$MOCK_PORT"

# phonegate with every feature on: redaction, JSON access log (to a file), limits, metrics.
PHONEGATE__LISTEN=127.0.0.1:$PG_PORT PHONEGATE__ADMIN__LISTEN=127.0.0.1:$PG_ADMIN_PORT \
PHONEGATE__UPSTREAM__URL=http://127.0.0.1:$MOCK_PORT \
  target/release/phonegate >"$WORK/phonegate.log" 2>&1 &
PIDS+=($!)
wait_port "$PG_PORT"

# phonegate with the cache off (TTL 0) and the per-key miss budget off, for the miss comparison.
PHONEGATE__LISTEN=127.0.0.1:$PG_MISS_PORT PHONEGATE__ADMIN__LISTEN=127.0.0.1:$PG_MISS_ADMIN_PORT \
PHONEGATE__UPSTREAM__URL=http://127.0.0.1:$MOCK_PORT PHONEGATE__CACHE__TTL_SECS=0 \
PHONEGATE__LIMITS__MISSES_PER_SEC_PER_KEY=0 \
  target/release/phonegate >"$WORK/phonegate-miss.log" 2>&1 &
PIDS+=($!)
wait_port "$PG_MISS_PORT"

BODY_BYTES=$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PG_PORT/phone-number/$ID" | wc -c)
target/release/examples/ceiling --listen "127.0.0.1:$CEIL_PORT" --bytes "$BODY_BYTES" 2>"$WORK/ceiling.log" &
PIDS+=($!)
wait_port "$CEIL_PORT"

mkdir -p "$WORK/nginx-cache"
# Run as root, nginx's workers drop to another user that cannot write the cache in $WORK.
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
cat >"$WORK/nginx.conf" <<EOF
$NGINX_USER
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx-access.log;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=pg:64m max_size=1g inactive=10m use_temp_path=off;
  upstream vapi { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://vapi;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache pg;
      proxy_cache_key "\$http_authorization\$request_uri";
      proxy_cache_valid 200 60s;
      proxy_cache_lock on;
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" 2>>"$WORK/nginx-error.log"
wait_port "$NGINX_PORT"

# 10,000 distinct (id, credential) pairs: 5 ids x 2,000 keys.
cat >"$WORK/pairs.lua" <<'EOF'
local ids = {
  "3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15", "7c4e2d90-1a5b-4f3c-8e67-2d9a0b4f6c38",
  "a9d3e1f4-6b2c-4a87-b5d0-9e1c3f7a2b64", "d2f8b4a6-3e9c-4b1d-9a75-4c6e8f0a1d93",
  "e5a7c3b9-0d4f-4e62-8b1a-7f3d5c9e2a06",
}
local counter = 0
request = function()
  counter = counter + 1
  local n = counter % 10000
  local headers = { ["Authorization"] = "Bearer bench-pair-" .. math.floor(n / 5) }
  return wrk.format("GET", "/phone-number/" .. ids[(n % 5) + 1], headers)
end
EOF

# --- measuring ------------------------------------------------------------------------------
# run NAME PORT CONNS SCRIPT -> appends "rps p50_us p99_us" to $WORK/NAME
to_us() { # wrk latency like 612.00us / 1.23ms / 2.00s -> microseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
    else print v }'
}
run() {
  local name=$1 port=$2 conns=$3 script=${4:-}
  local args=(-t"$THREADS" -c"$conns" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN")
  [ -n "$script" ] && args+=(-s "$script")
  local threads=$THREADS
  [ "$conns" -lt "$threads" ] && args[0]="-t$conns"
  local out
  out=$(wrk "${args[@]}" "http://127.0.0.1:$port/phone-number/$ID")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
    echo "warning: $name: $(grep -E "Non-2xx|Socket errors" <<<"$out" | tr -s ' ')" >&2
  fi
  echo "$rps $p50 $p99" >>"$WORK/$name"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1" | median; }

warm() { wrk -t1 -c8 -d"$2"s ${3:+-s "$3"} -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/phone-number/$ID" >/dev/null; }
echo "warming caches ..." >&2
warm "$PG_PORT" 2; warm "$NGINX_PORT" 2
warm "$PG_PORT" 4 "$WORK/pairs.lua"; warm "$NGINX_PORT" 4 "$WORK/pairs.lua"

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS ..." >&2
  run pg_hit1 "$PG_PORT" "$CONNS"
  run nginx_hit1 "$NGINX_PORT" "$CONNS"
  run ceil_hit1 "$CEIL_PORT" "$CONNS"
  run pg_hit10k "$PG_PORT" "$CONNS" "$WORK/pairs.lua"
  run nginx_hit10k "$NGINX_PORT" "$CONNS" "$WORK/pairs.lua"
  run ceil_hit10k "$CEIL_PORT" "$CONNS" "$WORK/pairs.lua"
  # Misses: one connection, so p50 is the added latency rather than queueing.
  run pg_miss "$PG_MISS_PORT" 1
  run direct_miss "$MOCK_PORT" 1
done

# --- the table ------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }
row() { # label name
  printf "| %s | %.0f | %.0f | %.0f |\n" "$1" "$(col "$2" 1)" "$(col "$2" 2)" "$(col "$2" 3)"
}
echo
echo "Machine: $(nproc) cores, $(uname -sr); wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds, medians; body $BODY_BYTES bytes"
echo
echo "| contender | requests/s | p50 µs | p99 µs |"
echo "| --- | ---: | ---: | ---: |"
row "phonegate, hits, 1 pair" pg_hit1
row "nginx proxy_cache, hits, 1 pair" nginx_hit1
row "bare hyper ceiling, 1 pair" ceil_hit1
row "phonegate, hits, 10k pairs" pg_hit10k
row "nginx proxy_cache, hits, 10k pairs" nginx_hit10k
row "bare hyper ceiling, 10k pairs" ceil_hit10k
row "phonegate, misses (TTL 0), 1 conn" pg_miss
row "upstream direct, 1 conn" direct_miss
echo
for pairs in 1 10k; do
  echo "- hits, $pairs: phonegate/nginx $(ratio "$(col pg_hit$pairs 1)" "$(col nginx_hit$pairs 1)")x requests/s (target >= 1.25), phonegate/ceiling $(ratio "$(col pg_hit$pairs 1)" "$(col ceil_hit$pairs 1)")x (target >= 0.85), p99 phonegate $(col pg_hit$pairs 3) µs vs nginx $(col nginx_hit$pairs 3) µs"
done
added=$(awk -v a="$(col pg_miss 2)" -v b="$(col direct_miss 2)" 'BEGIN { printf "%.0f", a - b }')
echo "- misses: phonegate adds ${added} µs at p50 over the upstream direct (target <= 150)"
