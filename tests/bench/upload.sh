#!/usr/bin/env bash
# Upload benchmark: 1 GiB through Tollgate (JWT-authenticated /upload-csv, backend key
# added, body streamed) against the same upload straight to the demo backend, in turns,
# and Tollgate's peak memory growth while doing it.
#
#   tests/bench/upload.sh              # 3 rounds of 1 GiB each way
#   SIZE_MB=4096 ROUNDS=5 tests/bench/upload.sh
#
# curl sends the body chunked from a pipe (`head -c ... /dev/zero`), so the client and the
# backend (which hashes every byte with SHA-256) do the same work in both paths.
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }

echo "building tollgate (release)" >&2
(cd "$ROOT" && cargo build --release -q -p tollgate)
BIN="$ROOT/target/release/tollgate"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }

BACKEND=$(free_port); GATEWAY=$(free_port)
"$BIN" demo --backend-only "127.0.0.1:$BACKEND" >/dev/null & PIDS+=($!)
mkdir -p "$WORK/policies"
cat > "$WORK/policies/10.toml" <<CONF
[[route]]
name = "upload-csv"
methods = ["POST"]
path = "/upload-csv"
auth = "jwt"
upstream_credential = "client-key"
client_id = { inject = ["query", "header"] }
CONF
cat > "$WORK/gateway.toml" <<CONF
[server]
listen = ["127.0.0.1:$GATEWAY"]
[upstream]
url = "http://127.0.0.1:$BACKEND"
[routing]
policies = "policies"
[reload]
watch = false
[jwt]
[[jwt.key]]
id = "bench"
algorithm = "HS256"
secret_file = "$ROOT/dev-keys/jwt-hs256.secret"
[credentials.client-key]
kind = "client_map"
header = "x-api-key"
file = "$ROOT/dev-keys/legacy-client-keys.toml"
CONF
"$BIN" run --config "$WORK/gateway.toml" >/dev/null 2>&1 & TG=$!; PIDS+=($TG)
wait_port "$BACKEND"; wait_port "$GATEWAY"
TOKEN=$("$BIN" token mint --client 1001 --ttl 1h --config "$WORK/gateway.toml" 2>/dev/null)

rss_kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }

upload() { # url header -> seconds
  local start end
  start=$(date +%s.%N)
  head -c "$((SIZE_MB * 1024 * 1024))" /dev/zero |
    curl -sS -o "$WORK/out" -X POST -T - -H "$2" -H 'content-type: multipart/form-data; boundary=x' "$1"
  end=$(date +%s.%N)
  grep -q '"ok":true' "$WORK/out" || { echo "upload failed: $(cat "$WORK/out")" >&2; exit 1; }
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }'
}

# Warm up both paths and the connection pool.
SIZE_MB_SAVED=$SIZE_MB; SIZE_MB=16
upload "http://127.0.0.1:$BACKEND/upload-csv" "x-api-key: demo-legacy-key-1001" >/dev/null
upload "http://127.0.0.1:$GATEWAY/upload-csv" "authorization: Bearer $TOKEN" >/dev/null
SIZE_MB=$SIZE_MB_SAVED
RSS_BEFORE=$(rss_kib "$TG" VmRSS)

median() { sort -g | awk '{ v[NR]=$1 } END { print v[int((NR+1)/2)] }'; }
DIRECT=(); THROUGH=()
for round in $(seq 1 "$ROUNDS"); do
  d=$(upload "http://127.0.0.1:$BACKEND/upload-csv" "x-api-key: demo-legacy-key-1001")
  t=$(upload "http://127.0.0.1:$GATEWAY/upload-csv" "authorization: Bearer $TOKEN")
  echo "round $round: direct ${d}s, through tollgate ${t}s" >&2
  DIRECT+=("$d"); THROUGH+=("$t")
done
PEAK=$(rss_kib "$TG" VmHWM)
d=$(printf '%s\n' "${DIRECT[@]}" | median)
t=$(printf '%s\n' "${THROUGH[@]}" | median)
awk -v mb="$SIZE_MB" -v d="$d" -v t="$t" -v before="$RSS_BEFORE" -v peak="$PEAK" 'BEGIN {
  printf "upload of %d MiB (median of rounds)\n", mb
  printf "direct to backend : %8.1f MiB/s\n", mb / d
  printf "through tollgate  : %8.1f MiB/s\n", mb / t
  printf "tollgate / direct : %.2fx\n", d / t
  printf "tollgate RSS before uploads %.1f MiB, peak %.1f MiB, growth %.1f MiB\n", before/1024, peak/1024, (peak-before)/1024
}'
