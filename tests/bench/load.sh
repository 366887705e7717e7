#!/usr/bin/env bash
# Load benchmark: Tollgate passthrough against HAProxy and nginx as plain reverse
# proxies, in one run, on this machine, in front of the same upstream.
#
#   tests/bench/load.sh            # 3 rounds x 10 s per proxy, 50 connections
#   DURATION=30s ROUNDS=5 CONNECTIONS=100 tests/bench/load.sh
#
# The proxies take turns within each round (haproxy, nginx, tollgate, then again), so
# drift on a shared machine hits them alike; each figure is the median over the rounds.
#
# Every proxy may use all cores (HAProxy nbthread = nproc, nginx worker_processes =
# nproc, Tollgate's runtime = nproc threads); the upstream is one nginx worker answering
# `return 200` with a small body, so it is the same work behind every proxy. wrk runs on
# the same machine (2 threads). Tollgate runs with its access log on (written to
# /dev/null); HAProxy and nginx log nothing. Prints requests/s, p50 and p99 for each
# and Tollgate's ratios to the others.
#
# Two more Tollgates run the same route with a rate limit that never trips (keyed by
# client address, 1,000,000/s): `tg-local` counts in process (governor), `tg-redis` in a
# redis-server of the script's own (one EVALSHA per request). Their ratios to the
# unlimited Tollgate are the cost of limiting; tg-redis / tg-local is the cost of
# sharing the count across instances. Set LIMITS=0 to skip them.
#
# Three more measure token credits on a JWT route (the same token every request):
# `tg-jwt` (no cost), `tg-meter` (cost 1, the embedded ledger: the reservation durable
# in its group-committed log before forwarding, the post logged after),
# `tg-meter-interval` (the same ledger with `sync = "interval"`: the log synced every
# 10 ms, nobody waiting for it) and `tg-meter-redis` (cost 1, the ledger in the
# same redis-server: two Lua scripts and a deadline index per request). Their ratios to
# tg-jwt are the cost of metering (targets: embedded >= 0.90, Redis >= 0.85). Set
# METERING=0 to skip them.
#
# COMPARE="before=/path/to/tollgate other=/path/to/tollgate" adds, for each pair, the
# same unlimited Tollgate run by another build (say, the previous commit's), so a change
# is measured against its baseline in the same run: tollgate / tg-before is printed.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CORES=$(nproc)

need() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian's packages" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
LIMITS=${LIMITS:-1}
METERING=${METERING:-1}
need wrk:wrk haproxy:haproxy nginx:nginx-light redis-server:redis-server

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on $1" >&2
  exit 1
}

echo "building tollgate (release)" >&2
(cd "$ROOT" && cargo build --release -q -p tollgate)

UP=$(free_port); NG=$(free_port); HA=$(free_port); TG=$(free_port)
TL=$(free_port); TR=$(free_port); RD=$(free_port)
TJ=$(free_port); TM=$(free_port); TMR=$(free_port); TMI=$(free_port)
declare -A AUTHZ
BODY='{"ok":true,"campaigns":[{"id":1,"name":"Spring outreach"},{"id":2,"name":"Renewals"}]}'

# Upstream: one nginx worker.
mkdir -p "$WORK/up" "$WORK/ng"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up; uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '$BODY'; } }
}
CONF
nginx -c "$WORK/up/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# nginx as a reverse proxy with upstream keep-alive.
cat > "$WORK/ng/nginx.conf" <<CONF
worker_processes $CORES;
pid $WORK/ng/nginx.pid;
error_log $WORK/ng/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/ng; proxy_temp_path $WORK/ng; fastcgi_temp_path $WORK/ng; uwsgi_temp_path $WORK/ng; scgi_temp_path $WORK/ng;
  keepalive_requests 1000000;
  upstream legacy { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://legacy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
nginx -c "$WORK/ng/nginx.conf" -g 'daemon off;' & PIDS+=($!)

cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread $CORES
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
  option forwardfor
frontend fe
  bind 127.0.0.1:$HA
  default_backend be
backend be
  server legacy 127.0.0.1:$UP
CONF
haproxy -f "$WORK/haproxy.cfg" -db & PIDS+=($!)

# tollgate NAME PORT LIMITS STORE [BINARY] [ROUTE] [CONFIG]: one Tollgate with the
# route's `limits` and [store]; ROUTE replaces `auth = "none"` (auth, cost), CONFIG is
# more of gateway.toml ([jwt], [credits]).
tollgate() {
  mkdir -p "$WORK/$1/policies"
  cat > "$WORK/$1/policies/10-all.toml" <<CONF
[limits.per-address]
rate = 1000000
period = "1s"
key = ["ip"]

[[route]]
name = "everything"
path = "/*"
${6:-auth = \"none\"}
limits = [$3]
CONF
  cat > "$WORK/$1/gateway.toml" <<CONF
[server]
listen = ["127.0.0.1:$2"]
[upstream]
url = "http://127.0.0.1:$UP"
[routing]
policies = "policies"
[log]
access_log = ${ACCESS_LOG:-true}
[reload]
watch = false
$4
${7:-}
CONF
  "${5:-$ROOT/target/release/tollgate}" run --config "$WORK/$1/gateway.toml" >/dev/null 2>/dev/null & PIDS+=($!)
}
tollgate tg "$TG" "" ""
PORTS="$UP $NG $HA $TG"
TARGETS="haproxy:$HA nginx:$NG tollgate:$TG"
if [ "$LIMITS" = 1 ] || [ "$METERING" = 1 ]; then
  redis-server --port "$RD" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
  PORTS="$PORTS $RD"
fi
if [ "$METERING" = 1 ]; then
  printf 'load-benchmark-hs256-secret-0123456789abcdef' > "$WORK/hs256.secret"
  # A balance that never runs out.
  printf 'bench,1000000000000000\n' > "$WORK/opening.csv"
  JWT="[jwt]
issuer = \"bench\"
audience = \"bench\"
[[jwt.key]]
id = \"bench\"
algorithm = \"HS256\"
secret_file = \"$WORK/hs256.secret\""
  METERED='auth = "jwt"
cost = 1'
  tollgate tg-jwt "$TJ" "" "" "" 'auth = "jwt"' "$JWT"
  mkdir -p "$WORK/tg-meter" "$WORK/tg-meter-redis" "$WORK/tg-meter-interval"
  tollgate tg-meter "$TM" "" "" "" "$METERED" "$JWT
[credits]
path = \"$WORK/tg-meter/ledger.redb\"
opening_balances = \"$WORK/opening.csv\""
  tollgate tg-meter-interval "$TMI" "" "" "" "$METERED" "$JWT
[credits]
path = \"$WORK/tg-meter-interval/ledger.redb\"
opening_balances = \"$WORK/opening.csv\"
sync = \"interval\""
  tollgate tg-meter-redis "$TMR" "" "[store]
redis_url = \"redis://127.0.0.1:$RD\"
timeout = \"200ms\"" "" "$METERED" "$JWT
[credits]
opening_balances = \"$WORK/opening.csv\""
  PORTS="$PORTS $TJ $TM $TMR $TMI"
  TARGETS="$TARGETS tg-jwt:$TJ tg-meter:$TM tg-meter-interval:$TMI tg-meter-redis:$TMR"
fi
if [ "$LIMITS" = 1 ]; then
  tollgate tg-local "$TL" '"per-address"' ""
  tollgate tg-redis "$TR" '"per-address"' "[store]
redis_url = \"redis://127.0.0.1:$RD\""
  PORTS="$PORTS $TL $TR"
  TARGETS="$TARGETS tg-local:$TL tg-redis:$TR"
fi

COMPARED=()
for pair in ${COMPARE:-}; do
  port=$(free_port)
  tollgate "tg-${pair%%=*}" "$port" "" "" "${pair#*=}"
  PORTS="$PORTS $port"
  TARGETS="$TARGETS tg-${pair%%=*}:$port"
  COMPARED+=("tg-${pair%%=*}")
done

for p in $PORTS; do wait_port "$p"; done
if [ "$METERING" = 1 ]; then
  TOKEN=$("$ROOT/target/release/tollgate" token mint --client bench --ttl 2h --config "$WORK/tg-jwt/gateway.toml" 2>/dev/null)
  for name in tg-jwt tg-meter tg-meter-interval tg-meter-redis; do AUTHZ[$name]="authorization: Bearer $TOKEN"; done
  # The ledgers open (and credit the opening balance) right after the listeners.
  for p in $TM $TMI $TMR; do
    for _ in $(seq 1 100); do
      curl -s -o /dev/null -w '%{http_code}' -H "${AUTHZ[tg-jwt]}" "http://127.0.0.1:$p/campaigns" | grep -q 200 && break
      sleep 0.05
    done
  done
fi

# Sanity: every proxy returns the upstream's body.
for pair in $TARGETS; do
  p=${pair#*:}
  h=${AUTHZ[${pair%%:*}]:-x-none: 1}
  got=$(curl -s -H "$h" "http://127.0.0.1:$p/campaigns")
  [ "$got" = "$BODY" ] || { echo "proxy on $p returned: $got" >&2; exit 1; }
done

to_ms() { # wrk latency like 1.23ms / 456.00us / 1.01s -> ms
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

run() { # port [header] -> "rps p50 p99"
  local out; out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency ${2:+-H "$2"} "http://127.0.0.1:$1/campaigns")
  local errors; errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errors" ] || echo "port $1: $errors" >&2
  echo "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

median() { sort -g | awk '{ v[NR]=$1 } END { print v[int((NR+1)/2)] }'; }

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION x $ROUNDS rounds, $CORES cores, GET /campaigns ($(printf %s "$BODY" | wc -c) byte body)" >&2
for pair in $TARGETS; do
  h=${AUTHZ[${pair%%:*}]:-x-none: 1}
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$h" "http://127.0.0.1:${pair#*:}/campaigns" >/dev/null
done
if [ "$METERING" = 1 ]; then
  # The metered Tollgates really charge: one header check per store.
  for p in $TM $TMI $TMR; do
    curl -si -H "${AUTHZ[tg-jwt]}" "http://127.0.0.1:$p/campaigns" | grep -qi '^x-token-cost: 1' || { echo "port $p does not meter" >&2; exit 1; }
  done
fi
if [ "$LIMITS" = 1 ]; then
  # The limited Tollgates really decide: one header check per store.
  curl -si "http://127.0.0.1:$TL/campaigns" | grep -qi '^x-ratelimit-limit: 1000000' || { echo "tg-local sends no rate-limit headers" >&2; exit 1; }
  curl -si "http://127.0.0.1:$TR/campaigns" | grep -qi '^x-ratelimit-limit: 1000000' || { echo "tg-redis sends no rate-limit headers" >&2; exit 1; }
  redis-cli -p "$RD" INFO commandstats | grep -q '^cmdstat_evalsha:' || { echo "tg-redis never ran the script in redis" >&2; exit 1; }
fi
declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
  for pair in $TARGETS; do
    r=$(run "${pair#*:}" "${AUTHZ[${pair%%:*}]:-}")
    RESULTS[${pair%%:*}]+="$r"$'\n'
    echo "round $round ${pair%%:*}: $r" >&2
  done
done

printf '%-10s %12s %10s %10s\n' proxy "requests/s" "p50 ms" "p99 ms"
declare -A RPS
declare -A P99
for pair in $TARGETS; do
  name=${pair%%:*}
  rows=${RESULTS[$name]}
  rps=$(awk 'NF {print $1}' <<<"$rows" | median)
  p50=$(awk 'NF {print $2}' <<<"$rows" | median)
  p99=$(awk 'NF {print $3}' <<<"$rows" | median)
  RPS[$name]=$rps
  P99[$name]=$p99
  printf '%-10s %12.0f %10s %10s\n' "$name" "$rps" "$p50" "$p99"
done
awk -v t="${RPS[tollgate]}" -v h="${RPS[haproxy]}" -v n="${RPS[nginx]}" 'BEGIN {
  printf "tollgate / haproxy requests/s: %.2fx\ntollgate / nginx   requests/s: %.2fx\n", t/h, t/n }'
if [ "$LIMITS" = 1 ]; then
  awk -v t="${RPS[tollgate]}" -v l="${RPS[tg-local]}" -v r="${RPS[tg-redis]}" \
      -v tp="${P99[tollgate]}" -v lp="${P99[tg-local]}" -v rp="${P99[tg-redis]}" 'BEGIN {
    printf "rate limit in process / no limit   requests/s: %.2fx, p99 %+.2f ms\n", l/t, lp-tp
    printf "rate limit in redis   / no limit   requests/s: %.2fx, p99 %+.2f ms\n", r/t, rp-tp
    printf "rate limit in redis   / in process requests/s: %.2fx (target >= 0.85)\n", r/l }'
fi
if [ "$METERING" = 1 ]; then
  awk -v j="${RPS[tg-jwt]}" -v m="${RPS[tg-meter]}" -v r="${RPS[tg-meter-redis]}" -v i="${RPS[tg-meter-interval]}" \
      -v jp="${P99[tg-jwt]}" -v mp="${P99[tg-meter]}" -v rp="${P99[tg-meter-redis]}" -v ip="${P99[tg-meter-interval]}" 'BEGIN {
    printf "metered (embedded)  / unmetered jwt requests/s: %.2fx, p99 %+.2f ms (target >= 0.90)\n", m/j, mp-jp
    printf "metered (interval)  / unmetered jwt requests/s: %.2fx, p99 %+.2f ms\n", i/j, ip-jp
    printf "metered (redis)     / unmetered jwt requests/s: %.2fx, p99 %+.2f ms (target >= 0.85)\n", r/j, rp-jp }'
fi
for name in "${COMPARED[@]}"; do
  awk -v t="${RPS[tollgate]}" -v c="${RPS[$name]}" -v tp="${P99[tollgate]}" -v cp="${P99[$name]}" -v n="$name" 'BEGIN {
    printf "tollgate / %s requests/s: %.2fx, p99 %+.2f ms\n", n, t/c, tp-cp }'
done
