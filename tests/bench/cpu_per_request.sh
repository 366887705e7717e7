#!/usr/bin/env bash
# CPU per request: what one Tollgate (and its redis-server) spend per request under wrk
# (and Tollgate's peak resident memory),
# from the processes' own CPU accounting (/proc/PID/stat), so the cost of a feature is
# seen apart from the load generator and the upstream sharing the machine.
#
#   MODE=jwt|meter|meter-interval|meter-redis tests/bench/cpu_per_request.sh
#   BIN=/path/to/other/tollgate MODE=meter tests/bench/cpu_per_request.sh   # another build
#   C=200 D=8s PERF=1 MODE=meter tests/bench/cpu_per_request.sh   # PERF=1: perf record -g
#
# jwt: a JWT route; meter: the same with cost = 1 on the embedded redb ledger;
# meter-interval: the same with `sync = "interval"`; meter-redis: cost = 1 on a
# redis-server of the script's own. Needs a release build,
# nginx (the upstream), wrk, redis-server, curl, python3.
#
# meter-redis also prints Redis's own time per EVALSHA, ZADD and ZREM (INFO
# commandstats). For the metered modes it also prints the mean time a request waits in the ledger
# (`tollgate_credit_ledger_seconds`): with wrk's fixed number of connections, requests/s
# is connections / latency, so this wait is what a closed-loop run loses (Little's law).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODE=${MODE:-jwt}
BIN=${BIN:-$ROOT/target/release/tollgate}
W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"' EXIT
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(fp); TG=$(fp); RD=$(fp); AD=$(fp)
cat > $W/up.conf <<CONF
worker_processes 1; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $W; proxy_temp_path $W; fastcgi_temp_path $W; uwsgi_temp_path $W; scgi_temp_path $W; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{"ok":true}'; } } }
CONF
nginx -c $W/up.conf -g 'daemon off;' & PIDS+=($!)
redis-server --port $RD --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!); RPID=$!
printf 'load-benchmark-hs256-secret-0123456789abcdef' > $W/s
printf 'bench,1000000000000000\n' > $W/o.csv
mkdir -p $W/p
COST=""; CRED=""; STORE=""
case $MODE in
  meter) COST="cost = 1"; CRED="[credits]
path = \"$W/l.redb\"
opening_balances = \"$W/o.csv\"";;
  meter-interval) COST="cost = 1"; CRED="[credits]
path = \"$W/l.redb\"
opening_balances = \"$W/o.csv\"
sync = \"interval\"";;
  meter-redis) COST="cost = 1"; CRED="[credits]
opening_balances = \"$W/o.csv\""; STORE="[store]
redis_url = \"redis://127.0.0.1:$RD\"
timeout = \"200ms\"";;
esac
cat > $W/p/a.toml <<CONF
[[route]]
name = "all"
path = "/*"
auth = "jwt"
$COST
CONF
cat > $W/g.toml <<CONF
[server]
listen = ["127.0.0.1:$TG"]
[upstream]
url = "http://127.0.0.1:$UP"
[routing]
policies = "p"
[reload]
watch = false
[admin]
listen = "127.0.0.1:$AD"
[jwt]
issuer = "bench"
audience = "bench"
[[jwt.key]]
id = "bench"
algorithm = "HS256"
secret_file = "$W/s"
$CRED
$STORE
CONF
$BIN run --config $W/g.toml >/dev/null 2>&1 & PIDS+=($!); TPID=$!
sleep 1.5
T=$($BIN token mint --client bench --ttl 1h --config $W/g.toml 2>/dev/null)
curl -s -o /dev/null -w '%{http_code} ' -H "authorization: Bearer $T" http://127.0.0.1:$TG/x; echo
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# The whole machine's CPU (every process and the kernel's own threads): when it is not
# all busy, the run was bound by latency (Little's law), not by CPU.
machine() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
for t in /proc/$TPID/task/*; do echo "$(cat $t/comm)/${t##*/} $(awk "{print \$14+\$15}" $t/stat)"; done > $W/threads0; t0=$(cpu $TPID); r0=$(cpu $RPID); read -r m0 i0 <<<"$(machine)"
if [ -n "${PERF:-}" ]; then perf record -F 999 -g -p $TPID -o "${PERF_OUT:-perf.data}" -- sleep 5 >/dev/null 2>&1 & fi
OUT=$(wrk -t2 -c${C:-50} -d${D:-8s} -H "authorization: Bearer $T" http://127.0.0.1:$TG/x)
for t in /proc/$TPID/task/*; do echo "$(cat $t/comm)/${t##*/} $(awk "{print \$14+\$15}" $t/stat)"; done > $W/threads1; t1=$(cpu $TPID); r1=$(cpu $RPID); read -r m1 i1 <<<"$(machine)"
REQ=$(awk '/requests in/ {print $1}' <<<"$OUT")
# Peak resident memory: a store that caches what it writes shows here, not in CPU.
HWM=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$TPID/status)
echo "$MODE: $(awk '/Requests\/sec/ {print $2}' <<<"$OUT") rps; tollgate cpu $(( t1 - t0 )) ticks, redis $(( r1 - r0 )) ticks, for $REQ requests => tollgate $(python3 -c "print(round(($t1-$t0)*10000/$REQ,1))") us/req, redis $(python3 -c "print(round(($r1-$r0)*10000/$REQ,1))") us/req; tollgate peak RSS $HWM MiB"
echo "machine: $(python3 -c "print(round(100*($m1-$m0)/($m1-$m0+$i1-$i0)))")% busy (idle and iowait are the rest), $(python3 -c "print(round(($m1-$m0)*10000/$REQ,1))") us of CPU per request in all"
# The embedded ledger's commit groups: movements per log write (each write one fdatasync).
curl -s http://127.0.0.1:$AD/metrics | awk '/^tollgate_credit_log_writes_total/ {w=$2} /^tollgate_credit_log_movements_total/ {m=$2}
  /^tollgate_credit_ledger_seconds_sum/ {ls=$2} /^tollgate_credit_ledger_seconds_count/ {lc=$2}
  END { if (w > 0) printf "log writes %d, movements %d => %.1f movements per fdatasync\n", w, m, m/w
        if (lc > 0) printf "ledger calls on the request path: %d, mean %.0f us\n", lc, ls*1e6/lc }'
# Where Redis's CPU went (meter-redis): the scripts, per call, as Redis timed them.
if [ "$MODE" = meter-redis ]; then
  redis-cli -p $RD info commandstats | tr -d '\r' | awk -F'[:,=]' '/^cmdstat_(evalsha|zadd|zrem)/ {printf "redis %s: %d calls, %s us per call\n", substr($1, 9), $3, $7}'
fi
paste $W/threads0 $W/threads1 | awk "{d[\$1]+=\$4-\$2} END {for (k in d) print \"  thread\", k, d[k], \"ticks\"}"
