#!/usr/bin/env bash
# Side-by-side load comparison on loopback: phonegate vs nginx proxy_cache (two variants: no
# access log, and a buffered JSON access log) vs a bare hyper server (the ceiling), same load
# generators and settings, rounds interleaved (contenders rotated each round) and medians reported,
# because the machine is shared and noisy. Prints markdown tables and the targets, met or missed.
#
#   benches/compare.sh                          # defaults below: both set-ups, 3 rounds of 8 s
#   SETUP=percore ROUNDS=5 DURATION=10 benches/compare.sh
#   SETUP=shared ROUNDS=1 DURATION=2 TLS=0 benches/compare.sh   # a quick look
#
# Set-ups (SETUP=shared|percore|both, default both; run one after the other):
#   shared   nothing pinned; every server uses all cores (phonegate and the ceiling one tokio
#            worker per core, nginx `worker_processes auto`), wrk -t$THREADS, h2load -t$THREADS.
#   percore  the cost of a request on one core: the load generator pinned to $CLIENT_CORES (one
#            thread per core listed: wrk -t1, h2load -t1 by default), each server pinned to core
#            $SERVER_CORE with one worker
#            (PHONEGATE__SERVER__WORKER_THREADS=1, nginx `worker_processes 1`, ceiling
#            `--workers 1`). The mock upstream is pinned to the server core too: it is idle during
#            hits (everything is cached), and for misses its work shares the core of the proxy in
#            front of it, as a sidecar's would, while the "upstream direct" baseline is measured
#            from the same placement.
#            On a 2-core machine one core of wrk or h2load is not always enough: the "CPU busy"
#            column says whether the client's core or the server's was the one at 100%. With more
#            cores, give the client more (CLIENT_CORES=0,2-3).
#
# Contenders per set-up, each against phonegate, nginx (no log), nginx (JSON log) and the ceiling:
#   hits, 1 pair and 10k pairs      HTTP/1.1, wrk -c$CONNS --latency (requests/s, p50, p99)
#   hits over TLS, HTTP/1.1         wrk on an https URL (TLS 1.3, P-256 self-signed certificate)
#   hits over TLS, HTTP/2 (ALPN)    h2load -c$CONNS -m$STREAMS (requests/s, mean, sd, max latency:
#   hits, h2c (prior knowledge)       h2load prints no percentiles)
#   misses, 1 connection            phonegate with TTL 0 vs the mock upstream called directly
# TLS=0 skips the TLS and HTTP/2 contenders.
#
# Other settings: ROUNDS (3), DURATION (8 s per run), CONNS (64), THREADS (2, shared set-up only),
# STREAMS (10), CLIENT_CORES (0; a taskset list), SERVER_CORE (1), PORT_BASE (18000), KEEP=1 keeps
# the work dir.
# Installs wrk, nginx, nghttp2-client (h2load) and openssl from Debian packages when missing (needs
# root, as on the dev machines). Everything listens on 127.0.0.1 and is stopped when the script
# exits.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

SETUP=${SETUP:-both}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
STREAMS=${STREAMS:-10}
TLS=${TLS:-1}
CLIENT_CORES=${CLIENT_CORES:-0}
SERVER_CORE=${SERVER_CORE:-1}
PORT_BASE=${PORT_BASE:-18000}
ID=3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15
TOKEN=bench-key-0001

case "$SETUP" in
  shared | percore) SETUPS=("$SETUP") ;;
  both) SETUPS=(shared percore) ;;
  *) echo "SETUP must be shared, percore or both" >&2; exit 2 ;;
esac

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 ..." >&2
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need nginx nginx
need h2load nghttp2-client
need openssl openssl
need taskset util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
# `http2 on;` replaced `listen ... http2` in nginx 1.25.1.
if [ "$(printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -1)" = 1.25.1 ]; then
  NGINX_HTTP2_DIRECTIVE=1
else
  NGINX_HTTP2_DIRECTIVE=""
fi
expand_cpus() { # a taskset list like 0,2-3 -> "0 2 3"
  tr ',' '\n' <<<"$1" | awk -F- '{for (i = $1; i <= (NF > 1 ? $2 : $1); i++) printf "%s%d", sep, i; sep = " "}'
}
CLIENT_CPUS=$(expand_cpus "$CLIENT_CORES")
ALL_CPUS=$(seq -s ' ' 0 $(($(nproc --all) - 1)))
if [ "$SETUP" != shared ]; then
  for cpu in $CLIENT_CPUS $SERVER_CORE; do
    if ! [[ "$cpu" =~ ^[0-9]+$ ]] || [ "$cpu" -ge "$(nproc)" ]; then
      echo "the percore set-up needs cores $CLIENT_CORES and $SERVER_CORE; this machine has $(nproc)" >&2
      exit 2
    fi
  done
  [[ " $CLIENT_CPUS " == *" $SERVER_CORE "* ]] && { echo "SERVER_CORE is one of CLIENT_CORES" >&2; exit 2; }
fi

cargo build --release --quiet --bin phonegate --example mock_vapi --example ceiling

WORK=$(mktemp -d)
PIDS=()
NGINX_PIDFILE=""
stop_servers() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$NGINX_PIDFILE" ] && [ -f "$NGINX_PIDFILE" ]; then
    kill "$(cat "$NGINX_PIDFILE")" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -f "$NGINX_PIDFILE" ] || break; sleep 0.1; done
  fi
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  NGINX_PIDFILE=""
}
cleanup() {
  local status=$?
  stop_servers
  # A failed run keeps its logs and raw figures: the tables are only printed at the end.
  if [ -n "${KEEP:-}" ] || [ "$status" != 0 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "compare.sh: line $LINENO failed (exit $?): $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

# One certificate for every TLS server: P-256, self-signed, for 127.0.0.1 and localhost.
make_cert "$WORK"

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

# The same, for filling the caches: stops sending once every pair has been answered (with a margin
# for the requests in flight on the other connections). wrk still waits out its -d, so fill() runs
# it in short sweeps until one sweep gets through all pairs (filled pairs answer fast).
sed 's/^local counter = 0$/local counter, answered = 0, 0/' "$WORK/pairs.lua" >"$WORK/pairs-fill.lua"
cat >>"$WORK/pairs-fill.lua" <<'EOF'
response = function(status, headers, body)
  answered = answered + 1
  if answered >= 10100 then wrk.thread:stop() end
end
EOF

# --- the contenders of one set-up -----------------------------------------------------------
# Ports: PORT_BASE + offset, plus 100 for the percore set-up (so nothing waits on old sockets).
set_ports() {
  local b=$((PORT_BASE + $1))
  MOCK_PORT=$((b + 1))
  PG_PORT=$((b + 10)) PG_ADMIN_PORT=$((b + 11))
  PG_MISS_PORT=$((b + 12)) PG_MISS_ADMIN_PORT=$((b + 13))
  PG_TLS_PORT=$((b + 14)) PG_TLS_ADMIN_PORT=$((b + 15))
  NGX_PORT=$((b + 20)) NGXLOG_PORT=$((b + 21))
  NGX_TLS_PORT=$((b + 22)) NGXLOG_TLS_PORT=$((b + 23))
  NGX_H2C_PORT=$((b + 24)) NGXLOG_H2C_PORT=$((b + 25))
  CEIL_PORT=$((b + 30)) CEIL_TLS_PORT=$((b + 31))
}

# start_servers SETUP: starts everything for that set-up; sets SRV_PIN, CLI_PIN, CLI_THREADS, DIR.
start_servers() {
  local setup=$1 pg_workers ceil_workers nginx_workers
  DIR="$WORK/$setup"
  mkdir -p "$DIR/nginx-cache"
  if [ "$setup" = percore ]; then
    set_ports 100
    SRV_PIN=(taskset -c "$SERVER_CORE") CLI_PIN=(taskset -c "$CLIENT_CORES")
    CLI_THREADS=$(wc -w <<<"$CLIENT_CPUS")
    pg_workers=1 ceil_workers=1 nginx_workers=1 CLI_CPUS=$CLIENT_CPUS SRV_CPUS=$SERVER_CORE
  else
    set_ports 0
    SRV_PIN=() CLI_PIN=() CLI_THREADS=$THREADS
    pg_workers=0 ceil_workers=0 nginx_workers=auto CLI_CPUS=$ALL_CPUS SRV_CPUS=$ALL_CPUS
  fi

  "${SRV_PIN[@]}" target/release/examples/mock_vapi --listen "127.0.0.1:$MOCK_PORT" 2>"$DIR/mock.log" &
  PIDS+=($!)
  wait_port "$MOCK_PORT"

  # phonegate with every feature on: redaction, JSON access log (to a file), limits, metrics.
  # Plain port: HTTP/1.1 and h2c with prior knowledge. A TTL of a day (nginx too) so that no entry
  # expires during a run: every request of the hit runs is a hit.
  PHONEGATE__LISTEN=127.0.0.1:$PG_PORT PHONEGATE__ADMIN__LISTEN=127.0.0.1:$PG_ADMIN_PORT \
  PHONEGATE__UPSTREAM__URL=http://127.0.0.1:$MOCK_PORT PHONEGATE__SERVER__WORKER_THREADS=$pg_workers \
  PHONEGATE__CACHE__TTL_SECS=86400 \
    "${SRV_PIN[@]}" target/release/phonegate >>"$DIR/phonegate.log" 2>&1 &
  PIDS+=($!)
  # The same with TLS: HTTP/2 by ALPN, and HTTP/1.1.
  PHONEGATE__LISTEN=127.0.0.1:$PG_TLS_PORT PHONEGATE__ADMIN__LISTEN=127.0.0.1:$PG_TLS_ADMIN_PORT \
  PHONEGATE__UPSTREAM__URL=http://127.0.0.1:$MOCK_PORT PHONEGATE__SERVER__WORKER_THREADS=$pg_workers \
  PHONEGATE__CACHE__TTL_SECS=86400 \
  PHONEGATE__TLS__CERT_PATH=$WORK/cert.pem PHONEGATE__TLS__KEY_PATH=$WORK/key.pem \
    "${SRV_PIN[@]}" target/release/phonegate >>"$DIR/phonegate-tls.log" 2>&1 &
  PIDS+=($!)
  # The cache off (TTL 0) and the per-key miss budget off, for the miss comparison.
  PHONEGATE__LISTEN=127.0.0.1:$PG_MISS_PORT PHONEGATE__ADMIN__LISTEN=127.0.0.1:$PG_MISS_ADMIN_PORT \
  PHONEGATE__UPSTREAM__URL=http://127.0.0.1:$MOCK_PORT PHONEGATE__SERVER__WORKER_THREADS=$pg_workers \
  PHONEGATE__CACHE__TTL_SECS=0 PHONEGATE__LIMITS__MISSES_PER_SEC_PER_KEY=0 \
    "${SRV_PIN[@]}" target/release/phonegate >>"$DIR/phonegate-miss.log" 2>&1 &
  PIDS+=($!)
  wait_port "$PG_PORT"; wait_port "$PG_TLS_PORT"; wait_port "$PG_MISS_PORT"

  BODY_BYTES=$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PG_PORT/phone-number/$ID" | wc -c)
  "${SRV_PIN[@]}" target/release/examples/ceiling --listen "127.0.0.1:$CEIL_PORT" \
    --bytes "$BODY_BYTES" --workers "$ceil_workers" 2>"$DIR/ceiling.log" &
  PIDS+=($!)
  "${SRV_PIN[@]}" target/release/examples/ceiling --listen "127.0.0.1:$CEIL_TLS_PORT" \
    --bytes "$BODY_BYTES" --workers "$ceil_workers" \
    --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" 2>"$DIR/ceiling-tls.log" &
  PIDS+=($!)
  wait_port "$CEIL_PORT"; wait_port "$CEIL_TLS_PORT"

  # nginx: one master and its workers, six server blocks sharing one cache zone: plain, TLS
  # (HTTP/1.1 and HTTP/2 by ALPN) and h2c, each without an access log and with a buffered JSON one.
  local nginx_user="" tls_listen h2c_listen http2_on=""
  # Run as root, nginx's workers drop to another user that cannot write the cache in $WORK.
  [ "$(id -u)" = 0 ] && nginx_user="user root;"
  if [ -n "$NGINX_HTTP2_DIRECTIVE" ]; then
    tls_listen="ssl" h2c_listen="" http2_on="http2 on;"
  else
    tls_listen="ssl http2" h2c_listen="http2"
  fi
  cat >"$DIR/proxy.conf" <<EOF
proxy_pass http://vapi;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_cache pg;
proxy_cache_key "\$http_authorization\$request_uri";
proxy_cache_valid 200 1d;
proxy_cache_lock on;
EOF
  local log="access_log $DIR/nginx-access.json pgjson buffer=64k flush=1s;"
  cat >"$DIR/nginx.conf" <<EOF
$nginx_user
worker_processes $nginx_workers;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # phonegate's access-log fields that nginx has. The others (route, client, key_id, reason,
  # coalesced, tier) have no nginx equivalent; level and target are constants, as in phonegate.
  # nginx's times are in seconds (ms resolution), hence duration_s and upstream_s.
  log_format pgjson escape=json '{"timestamp":"\$time_iso8601","level":"INFO","target":"nginx::access",'
    '"request_id":"\$request_id","method":"\$request_method","path":"\$uri","status":\$status,'
    '"cache":"\$upstream_cache_status","duration_s":\$request_time,'
    '"upstream_s":"\$upstream_response_time","bytes":\$body_bytes_sent}';
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  ssl_certificate $WORK/cert.pem;
  ssl_certificate_key $WORK/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305;
  ssl_prefer_server_ciphers off;
  ssl_session_cache shared:SSL:10m;
  ssl_session_timeout 10m;
  proxy_cache_path $DIR/nginx-cache levels=1:2 keys_zone=pg:64m max_size=1g inactive=1d use_temp_path=off;
  upstream vapi { server 127.0.0.1:$MOCK_PORT; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$NGX_PORT; location / { include $DIR/proxy.conf; } }
  server { listen 127.0.0.1:$NGXLOG_PORT; $log location / { include $DIR/proxy.conf; } }
  server { listen 127.0.0.1:$NGX_TLS_PORT $tls_listen; $http2_on location / { include $DIR/proxy.conf; } }
  server { listen 127.0.0.1:$NGXLOG_TLS_PORT $tls_listen; $http2_on $log location / { include $DIR/proxy.conf; } }
  server { listen 127.0.0.1:$NGX_H2C_PORT $h2c_listen; $http2_on location / { include $DIR/proxy.conf; } }
  server { listen 127.0.0.1:$NGXLOG_H2C_PORT $h2c_listen; $http2_on $log location / { include $DIR/proxy.conf; } }
}
EOF
  NGINX_PIDFILE="$DIR/nginx.pid"
  "${SRV_PIN[@]}" "$NGINX" -c "$DIR/nginx.conf" -p "$DIR" 2>>"$DIR/nginx-error.log"
  for port in "$NGX_PORT" "$NGXLOG_PORT" "$NGX_TLS_PORT" "$NGXLOG_TLS_PORT" "$NGX_H2C_PORT" "$NGXLOG_H2C_PORT"; do
    wait_port "$port"
  done

  if [ "$setup" = percore ]; then # check the pinning took (nginx's workers inherit the master's)
    local pids=("${PIDS[@]}" "$(cat "$NGINX_PIDFILE")") children
    mapfile -t children < <(pgrep -P "$(cat "$NGINX_PIDFILE")" || true)
    for pid in "${pids[@]}" "${children[@]}"; do
      local cpus
      cpus=$(taskset -pc "$pid" | awk '{print $NF}')
      [ "$cpus" = "$SERVER_CORE" ] || { echo "pid $pid runs on cores $cpus, not $SERVER_CORE" >&2; exit 1; }
    done
  fi
}

# port CONTENDER SCHEME: where a contender answers (plain HTTP/1.1, tls, or h2c).
port() {
  case "$1:$2" in
    pg:plain | pg:h2c) echo "$PG_PORT" ;; pg:tls) echo "$PG_TLS_PORT" ;;
    ngx:plain) echo "$NGX_PORT" ;; ngx:tls) echo "$NGX_TLS_PORT" ;; ngx:h2c) echo "$NGX_H2C_PORT" ;;
    ngxlog:plain) echo "$NGXLOG_PORT" ;; ngxlog:tls) echo "$NGXLOG_TLS_PORT" ;;
    ngxlog:h2c) echo "$NGXLOG_H2C_PORT" ;;
    ceil:plain | ceil:h2c) echo "$CEIL_PORT" ;; ceil:tls) echo "$CEIL_TLS_PORT" ;;
  esac
}
url() { # CONTENDER SCHEME
  local proto=http
  [ "$2" = tls ] && proto=https
  echo "$proto://127.0.0.1:$(port "$1" "$2")/phone-number/$ID"
}

# --- measuring ------------------------------------------------------------------------------
warn() { # printed now, and again under the tables
  echo "warning: $*" >&2
  echo "$*" >>"$WORK/warnings"
}
# CPU time from /proc/stat: "busy idle" jiffies summed over the given cores. Busy includes steal
# (time the VM wanted but did not get) and other processes: the machine is shared.
cpu_snap() {
  awk -v list="$1" 'BEGIN { n = split(list, c, " "); for (i = 1; i <= n; i++) want["cpu" c[i]] = 1 }
    ($1 in want) { busy += $2 + $3 + $4 + $7 + $8 + $9; idle += $5 + $6 } END { print busy, idle }' /proc/stat
}
busy_pct() { # SNAP_BEFORE SNAP_AFTER -> busy % in between
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
    printf "%.0f", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}
# measure CMD...: runs the load generator; sets OUT, and CPU to "client% server%" (percore: the
# client's cores and the server's core; shared: all cores, twice).
measure() {
  local c0 s0
  c0=$(cpu_snap "$CLI_CPUS") s0=$(cpu_snap "$SRV_CPUS")
  OUT=$("$@" 2>&1)
  CPU="$(busy_pct "$c0" "$(cpu_snap "$CLI_CPUS")") $(busy_pct "$s0" "$(cpu_snap "$SRV_CPUS")")"
}
to_us() { # wrk or h2load duration like 612.00us / 1.23ms / 2.00s -> microseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
    else print v }'
}
# wrk_run NAME URL CONNS [SCRIPT] -> appends "rps p50_us p99_us client% server%" to $DIR/NAME
wrk_run() {
  local name=$1 url=$2 conns=$3 script=${4:-}
  local threads=$CLI_THREADS
  [ "$conns" -lt "$threads" ] && threads=$conns
  local args=(-t"$threads" -c"$conns" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN")
  [ -n "$script" ] && args+=(-s "$script")
  measure timeout $((DURATION + 60)) "${CLI_PIN[@]}" wrk "${args[@]}" "$url"
  local out=$OUT
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
    warn "$name: $(grep -E "Non-2xx|Socket errors" <<<"$out" | tr -s ' ')"
  fi
  echo "$rps $p50 $p99 $CPU" >>"$DIR/$name"
}
# h2_run NAME URL -> appends "rps mean_us sd_us max_us client% server%" to $DIR/NAME, the TLS
# parameters to NAME.tls
h2_run() {
  local name=$1 url=$2 out threads=$CLI_THREADS
  [ "$CONNS" -lt "$threads" ] && threads=$CONNS
  measure timeout $((DURATION + 60)) "${CLI_PIN[@]}" h2load -t"$threads" -c"$CONNS" -m"$STREAMS" \
    -D "$DURATION" -H "Authorization: Bearer $TOKEN" "$url"
  out=$OUT
  local rps mean sd max
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  # time for request:  min  max  mean  sd  +/- sd
  read -r max mean sd < <(awk '/^time for request:/ {print $5, $6, $7}' <<<"$out")
  echo "$rps $(to_us "$mean") $(to_us "$sd") $(to_us "$max") $CPU" >>"$DIR/$name"
  awk -F': ' '/^(TLS Protocol|Cipher|Server Temp Key|Application protocol):/ {printf "%s%s", sep, $2; sep = " "}' \
    <<<"$out" >"$DIR/$name.tls"
  local failed
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
  if [ "${failed:-1}" != 0 ] || ! grep -qE "status codes: [0-9]+ 2xx, 0 3xx, 0 4xx, 0 5xx" <<<"$out"; then
    warn "$name: $(grep -E '^(requests|status codes):' <<<"$out" | tr '\n' ' ')"
  fi
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { awk -v c="$3" '{print $c}' "$WORK/$1/$2" | median; } # SETUP NAME COLUMN

warm() { # PORT SECONDS [SCRIPT] [https]
  timeout 60 "${CLI_PIN[@]}" wrk -t1 -c8 -d"$2"s ${3:+-s "$3"} -H "Authorization: Bearer $TOKEN" \
    "${4:-http}://127.0.0.1:$1/phone-number/$ID" >/dev/null
}

fill() { # PORT: every one of the 10k pairs cached
  local n
  for _ in $(seq 1 40); do
    n=$(timeout 30 "${CLI_PIN[@]}" wrk -t1 -c8 -d3s -s "$WORK/pairs-fill.lua" \
      "http://127.0.0.1:$1/phone-number/$ID" | awk '/ requests in / {print $1}')
    [ "${n:-0}" -ge 10100 ] && return 0
  done
  warn "$setup: port $1: the 10k pairs did not all fill"
}

# The TLS parameters a default OpenSSL client (as wrk) gets from each TLS server.
tls_params() { # PORT [ALPN]
  # s_client's own exit status depends on how the server ends the session: only its output counts.
  { echo | timeout 10 openssl s_client -connect "127.0.0.1:$1" ${2:+-alpn "$2"} 2>/dev/null || true; } |
    awk '/^New, / {sub(/,$/, "", $2); proto = $2; cipher = $NF} /^Server Temp Key:/ {sub(/,$/, "", $4); group = $4}
         /^ALPN protocol:/ {alpn = $3} END {printf "%s %s %s, ALPN %s", proto, cipher, group, alpn}'
}

# After each round: nginx's and the caching phonegates' logs must show only cache hits (the misses
# instance aside); then all access logs are emptied, so that a long run does not fill the disk (a
# few hundred MB per round and server otherwise). phonegate's are opened for appending and nginx
# appends, so emptying them in place is safe.
check_logs() {
  sleep 1.2 # nginx flushes its access-log buffer each second
  local log="$DIR/nginx-access.json" misses
  if ! grep -q '"cache":"HIT"' "$log" 2>/dev/null; then
    warn "$setup: no HIT in nginx's JSON access log"
  fi
  misses=$(grep -c -v '"cache":"HIT"' "$log" 2>/dev/null || true)
  [ "${misses:-0}" = 0 ] || warn "$setup: $misses lines in nginx's JSON log are not cache hits"
  local f others
  for f in "$DIR/phonegate.log" "$DIR/phonegate-tls.log"; do
    misses=$(grep -cE '"cache":"(miss|stale)"' "$f" 2>/dev/null || true)
    [ "${misses:-0}" = 0 ] || warn "$setup: $misses requests in $(basename "$f") were not cache hits"
    # Anything else that is not a hit, by status and reason. (At the end of an h2load run the
    # streams still open are reset; phonegate answers a few of those, to nobody, with 400
    # body_not_allowed.)
    others=$(grep '"target":"phonegate::access"' "$f" 2>/dev/null | grep -vE '"cache":"(hit|miss|stale)"' |
      grep -oE '"status":[0-9]+|"reason":("[a-z_]*"|null)' | paste -d' ' - - | sort | uniq -c |
      awk '{printf "%s%s x%s", sep, $2 " " $3, $1; sep = ", "}' | tr -d '"' || true)
    [ -z "$others" ] || warn "$setup: answers in $(basename "$f") other than cache hits: $others"
  done
  empty_logs
}
empty_logs() {
  for f in "$DIR/nginx-access.json" "$DIR"/phonegate*.log; do [ -f "$f" ] && : >"$f"; done
  return 0
}

CONTENDERS=(pg ngx ngxlog ceil)
runs=$(( TLS == 1 ? 22 : 10 ))
echo "about $(( ${#SETUPS[@]} * (ROUNDS * runs * (DURATION + 2) + 30) / 60 + 1 )) minutes:" \
  "${#SETUPS[@]} set-up(s) x $ROUNDS round(s) x $runs runs of ${DURATION}s, plus warm-ups" >&2
for setup in "${SETUPS[@]}"; do
  echo "== set-up: $setup ==" >&2
  start_servers "$setup"
  echo "$BODY_BYTES" >"$DIR/body_bytes"
  # nginx caches and serves the upstream's body as it is (unredacted), so its body is larger.
  curl -s -H "Authorization: Bearer $TOKEN" "$(url ngx plain)" | wc -c >"$DIR/nginx_body_bytes"
  echo "warming caches ..." >&2
  warm "$PG_PORT" 2; warm "$NGX_PORT" 2
  fill "$PG_PORT"; fill "$NGX_PORT"
  warm "$PG_PORT" 1 "$WORK/pairs.lua"; warm "$NGX_PORT" 1 "$WORK/pairs.lua"
  if [ "$TLS" = 1 ]; then
    warm "$PG_TLS_PORT" 1 "" https
    for c in "${CONTENDERS[@]}"; do
      tls_params "$(port "$c" tls)" h2 >"$DIR/$c.s_client"
    done
  fi
  sleep 1.2 # the warm-up's misses are in the logs: let nginx flush them, then empty the logs
  empty_logs

  for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS ..." >&2
    # Rotate the contenders' order each round, so none always runs first or after the same one.
    shift_by=$(( (round - 1) % ${#CONTENDERS[@]} ))
    order=("${CONTENDERS[@]:$shift_by}" "${CONTENDERS[@]:0:$shift_by}")
    for c in "${order[@]}"; do wrk_run "${c}_hit1" "$(url "$c" plain)" "$CONNS"; done
    for c in "${order[@]}"; do wrk_run "${c}_hit10k" "$(url "$c" plain)" "$CONNS" "$WORK/pairs.lua"; done
    if [ "$TLS" = 1 ]; then
      for c in "${order[@]}"; do wrk_run "${c}_tls1" "$(url "$c" tls)" "$CONNS"; done
      for c in "${order[@]}"; do h2_run "${c}_h2tls" "$(url "$c" tls)"; done
      for c in "${order[@]}"; do h2_run "${c}_h2c" "$(url "$c" h2c)"; done
    fi
    # Misses: one connection, so p50 is the added latency rather than queueing.
    wrk_run pg_miss "http://127.0.0.1:$PG_MISS_PORT/phone-number/$ID" 1
    wrk_run direct_miss "http://127.0.0.1:$MOCK_PORT/phone-number/$ID" 1
    check_logs
  done
  stop_servers
done

# --- the tables -----------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }
verdict() { awk -v v="$1" -v t="$2" -v d="$3" 'BEGIN { # VALUE TARGET ge|le
  ok = (d == "ge") ? (v >= t) : (v <= t); print ok ? "met" : "**missed**" }'; }
label() {
  case "$1" in
    pg) echo "phonegate" ;; ngx) echo "nginx proxy_cache, no log" ;;
    ngxlog) echo "nginx proxy_cache, JSON log" ;; ceil) echo "bare hyper ceiling" ;;
  esac
}
KINDS=(hit1 hit10k)
[ "$TLS" = 1 ] && KINDS+=(tls1 h2tls h2c)
kind_label() {
  case "$1" in
    hit1) echo "hits, 1 pair" ;; hit10k) echo "hits, 10k pairs" ;;
    tls1) echo "hits, TLS HTTP/1.1" ;; h2tls) echo "hits, TLS HTTP/2" ;; h2c) echo "hits, h2c" ;;
  esac
}
is_h2() { [ "$1" = h2tls ] || [ "$1" = h2c ]; }
cpu_cell() { # SETUP NAME FIRST_CPU_COLUMN: medians of the client's and the server's busy %
  if [ "$1" = percore ]; then
    printf "%.0f / %.0f" "$(col "$1" "$2" "$3")" "$(col "$1" "$2" $(($3 + 1)))"
  else
    printf "%.0f" "$(col "$1" "$2" "$3")"
  fi
}

echo
echo "Machine: $(nproc) cores, $(uname -sr); nginx $NGINX_VERSION, $({ wrk -v 2>&1 || true; } | head -1 | awk '{print "wrk", $2}'), $(h2load --version | awk '{print $2}'); $ROUNDS interleaved rounds of ${DURATION}s, medians"
for setup in "${SETUPS[@]}"; do
  DIR="$WORK/$setup"
  if [ "$setup" = percore ]; then
    echo
    th=$(wc -w <<<"$CLIENT_CPUS")
    echo "### Set-up: percore (load generator on core(s) $CLIENT_CORES, $th thread(s); each server and the mock upstream on core $SERVER_CORE with 1 worker)"
  else
    echo
    echo "### Set-up: shared (nothing pinned, every server on all $(nproc) cores)"
    th=$THREADS
  fi
  echo
  echo "wrk -t$th -c$CONNS -d${DURATION}s --latency; misses wrk -t1 -c1. Body: $(cat "$DIR/body_bytes") bytes from phonegate (redacted) and the ceiling, $(cat "$DIR/nginx_body_bytes") bytes from nginx (the upstream's body, unredacted)."
  echo
  if [ "$setup" = percore ]; then
    cpu_head="CPU busy % (client / server)"
  else
    cpu_head="CPU busy % (all cores)"
  fi
  echo "| contender | requests/s | p50 µs | p99 µs | $cpu_head |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for kind in "${KINDS[@]}"; do
    is_h2 "$kind" && continue
    for c in "${CONTENDERS[@]}"; do
      printf "| %s, %s | %.0f | %.0f | %.0f | %s |\n" "$(label "$c")" "$(kind_label "$kind")" \
        "$(col "$setup" "${c}_$kind" 1)" "$(col "$setup" "${c}_$kind" 2)" "$(col "$setup" "${c}_$kind" 3)" \
        "$(cpu_cell "$setup" "${c}_$kind" 4)"
    done
  done
  printf "| phonegate, misses (TTL 0), 1 conn | %.0f | %.0f | %.0f | %s |\n" \
    "$(col "$setup" pg_miss 1)" "$(col "$setup" pg_miss 2)" "$(col "$setup" pg_miss 3)" \
    "$(cpu_cell "$setup" pg_miss 4)"
  printf "| upstream direct, 1 conn | %.0f | %.0f | %.0f | %s |\n" \
    "$(col "$setup" direct_miss 1)" "$(col "$setup" direct_miss 2)" "$(col "$setup" direct_miss 3)" \
    "$(cpu_cell "$setup" direct_miss 4)"
  if [ "$TLS" = 1 ]; then
    echo
    echo "h2load -t$th -c$CONNS -m$STREAMS -D $DURATION (h2load reports no percentiles: mean, sd and max of the time per request)."
    echo
    echo "| contender | requests/s | mean µs | sd µs | max µs | $cpu_head |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for kind in h2tls h2c; do
      for c in "${CONTENDERS[@]}"; do
        printf "| %s, %s | %.0f | %.0f | %.0f | %.0f | %s |\n" "$(label "$c")" "$(kind_label "$kind")" \
          "$(col "$setup" "${c}_$kind" 1)" "$(col "$setup" "${c}_$kind" 2)" \
          "$(col "$setup" "${c}_$kind" 3)" "$(col "$setup" "${c}_$kind" 4)" \
          "$(cpu_cell "$setup" "${c}_$kind" 5)"
      done
    done
    echo
    echo "TLS negotiated (openssl s_client with ALPN h2, as wrk's OpenSSL defaults; h2load's own):"
    for c in "${CONTENDERS[@]}"; do
      echo "- $(label "$c"): s_client: $(cat "$DIR/$c.s_client"); h2load: $(cat "$DIR/${c}_h2tls.tls")"
    done
  fi
  echo
  echo "| target ($setup) | vs nginx, no log | vs nginx, JSON log |"
  echo "| --- | --- | --- |"
  for kind in "${KINDS[@]}"; do
    pg=$(col "$setup" "pg_$kind" 1)
    cells=()
    for n in ngx ngxlog; do
      r=$(ratio "$pg" "$(col "$setup" "${n}_$kind" 1)")
      cells+=("${r}x $(verdict "$r" 1.25 ge)")
    done
    echo "| $(kind_label "$kind"): requests/s ≥ 1.25x nginx | ${cells[0]} | ${cells[1]} |"
    cells=()
    for n in ngx ngxlog; do
      if is_h2 "$kind"; then
        a=$(col "$setup" "pg_$kind" 2) b=$(col "$setup" "${n}_$kind" 2)
        cells+=("no p99 from h2load; mean $(printf %.0f "$a") vs $(printf %.0f "$b") µs, $(verdict "$a" "$b" le)")
      else
        a=$(col "$setup" "pg_$kind" 3) b=$(col "$setup" "${n}_$kind" 3)
        cells+=("$(printf %.0f "$a") vs $(printf %.0f "$b") µs, $(verdict "$a" "$b" le)")
      fi
    done
    echo "| $(kind_label "$kind"): p99 no worse than nginx | ${cells[0]} | ${cells[1]} |"
  done
  echo
  echo "| target ($setup) | phonegate / ceiling |"
  echo "| --- | --- |"
  for kind in "${KINDS[@]}"; do
    r=$(ratio "$(col "$setup" "pg_$kind" 1)" "$(col "$setup" "ceil_$kind" 1)")
    echo "| $(kind_label "$kind"): requests/s ≥ 0.85x the ceiling | ${r}x $(verdict "$r" 0.85 ge) |"
  done
  added=$(awk -v a="$(col "$setup" pg_miss 2)" -v b="$(col "$setup" direct_miss 2)" 'BEGIN { printf "%.0f", a - b }')
  echo "| misses: added p50 over the upstream direct ≤ 75 µs | +$added µs $(verdict "$added" 75 le) |"
done
if [ -f "$WORK/warnings" ]; then
  echo
  echo "Warnings during the run (the figures above include these runs):"
  sed 's/^/- /' "$WORK/warnings"
fi
