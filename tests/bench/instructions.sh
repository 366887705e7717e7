#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable for one binary whatever else
# the machine is doing, so two builds can be compared on a busy box.
#
#   tests/bench/instructions.sh [BINARY] [CASE]
#
# BINARY defaults to target/release/tollgate. CASE is one of:
#   anonymous      GET through an auth = "none" route (default)
#   jwt            GET with a bearer token (HS256) through an auth = "jwt" route
#   jwt-sessions   the same with [sessions] on (the revocation check)
#   local-limit    anonymous, with a rate limit counted in process
#   redis-limit    anonymous, with a rate limit counted in a redis-server of its own
#   meter          jwt, with cost = 1 on the embedded ledger (sync before forwarding)
#   meter-interval the same with `sync = "interval"`
#
# One worker serves N requests on one keep-alive connection under valgrind; the figure
# is (instructions for 2,500 requests - instructions for 500) / 2,000, so start-up and
# shutdown cancel out. KEEP=DIR keeps the callgrind profiles. BEARER=token compares builds with one token (else each binary
# mints its own). Needs valgrind, python3 (and redis-server for redis-limit).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/tollgate}")
CASE=${2:-anonymous}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

UP=$(free_port)
"$BIN" demo --backend-only "127.0.0.1:$UP" >/dev/null 2>&1 & PIDS+=($!)

AUTH=none LIMITS="" EXTRA="" COST="" BEARER=${BEARER:-}
JWT="[jwt]
issuer = \"bench\"
audience = \"bench\"
[[jwt.key]]
id = \"bench\"
algorithm = \"HS256\"
secret_file = \"$ROOT/dev-keys/jwt-hs256.secret\""
case "$CASE" in
  anonymous) ;;
  jwt) AUTH=jwt EXTRA="$JWT" ;;
  jwt-sessions) AUTH=jwt EXTRA="$JWT
[sessions]
[store]
path = \"$WORK/state.redb\"" ;;
  local-limit) LIMITS='"per-address"' ;;
  redis-limit)
    RD=$(free_port)
    redis-server --port "$RD" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
    LIMITS='"per-address"' EXTRA="[store]
redis_url = \"redis://127.0.0.1:$RD\"" ;;
  meter|meter-interval)
    printf '1001,1000000000\n' > "$WORK/opening.csv"
    SYNC=""; [ "$CASE" = meter-interval ] && SYNC='sync = "interval"'
    AUTH=jwt COST="cost = 1" EXTRA="$JWT
[credits]
path = \"$WORK/ledger.redb\"
opening_balances = \"$WORK/opening.csv\"
$SYNC" ;;
  *) echo "unknown case $CASE" >&2; exit 2 ;;
esac

mkdir -p "$WORK/policies"
cat > "$WORK/policies/a.toml" <<CONF
[limits.per-address]
rate = 1000000
period = "1s"
key = ["ip"]

[[route]]
name = "everything"
path = "/*"
auth = "$AUTH"
limits = [$LIMITS]
$COST
CONF

run() { # run N: prints the instruction total of a run serving N requests
  local n=$1 port
  rm -f "$WORK"/ledger.redb*  # each run starts from the opening balances alone
  port=$(free_port) admin=$(free_port)
  cat > "$WORK/gateway.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
workers = 1
[upstream]
url = "http://127.0.0.1:$UP"
[routing]
policies = "policies"
[reload]
watch = false
[admin]
listen = "127.0.0.1:$admin"
$EXTRA
CONF
  if [ "$AUTH" = jwt ] && [ -z "$BEARER" ]; then
    BEARER=$("$BIN" token mint --client 1001 --ttl 1h --config "$WORK/gateway.toml" 2>/dev/null | tail -1)
  fi
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$n" \
    "$BIN" run --config "$WORK/gateway.toml" >/dev/null 2>&1 & local gw=$!
  BEARER="$BEARER" python3 - "$port" "$n" "$admin" <<'PY'
import os, socket, sys, time, urllib.request
port, n, admin = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + 60
# Ready: listening, and (when metered) the ledger open with its opening balances in.
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.time() > deadline:
        raise SystemExit("the gateway never became ready")
    time.sleep(0.1)
s = socket.create_connection(("127.0.0.1", port))
bearer = os.environ.get("BEARER", "")
head = "GET /echo/x HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\nUser-Agent: bench\r\n"
if bearer:
    head += f"Authorization: Bearer {bearer}\r\n"
req = (head + "\r\n").encode()
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for line in buf[:end].decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            if len(buf) >= end + 4 + length:
                status = buf.split(b" ", 2)[1]
                assert status == b"200", buf[:800]
                buf = buf[end + 4 + length:]
                break
        buf += s.recv(65536)
PY
  kill -INT "$gw"; wait "$gw" 2>/dev/null || true
  grep -E "^(summary|totals):" "$WORK/cg.$n" | head -1 | awk '{print $2}'
}

small=$(run 500)
large=$(run 2500)
# KEEP=DIR keeps both callgrind profiles, for callgrind_annotate.
[ -n "${KEEP:-}" ] && cp "$WORK"/cg.500 "$WORK"/cg.2500 "$KEEP"/
echo "$CASE: $(( (large - small) / 2000 )) instructions per request ($BIN)"
