#!/usr/bin/env bash
# TLS benchmark: Tollgate terminating TLS against HAProxy and nginx doing the same, in one
# run, on this machine, in front of the same upstream (one nginx worker answering
# `return 200`). Three figures per proxy, each the median of ROUNDS runs, proxies taking
# turns within a round:
#
#   h1      HTTP/1.1 over TLS on kept-alive connections (wrk, CONNECTIONS connections);
#   h2      HTTP/2 over TLS, ALPN h2 (h2load, CONNECTIONS connections x 10 streams);
#   hs      full TLS handshakes per second: h2load --h1 with HANDSHAKES connections of
#           one request each, all at once (h2load never resumes a session; ECDSA P-256
#           certificate, TLS 1.3, X25519). (wrk is not used for this: it reconnects with
#           SSL_clear, which resumes the last session.)
#
# The plain HTTP/1.1 figure of tests/bench/load.sh is the baseline these add to.
#
#   tests/bench/tls.sh
#   DURATION=30s ROUNDS=5 CONNECTIONS=100 tests/bench/tls.sh
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
HANDSHAKES=${HANDSHAKES:-1000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CORES=$(nproc)
CERTS=$ROOT/tests/fixtures/tls

missing=()
for pair in wrk:wrk h2load:nghttp2-client haproxy:haproxy nginx:nginx-light; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

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
BODY='{"ok":true,"campaigns":[{"id":1,"name":"Spring outreach"},{"id":2,"name":"Renewals"}]}'
cat "$CERTS/server.pem" "$CERTS/server.key.pem" > "$WORK/haproxy.pem"

mkdir -p "$WORK/up" "$WORK/ng" "$WORK/tg/policies"
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
    listen 127.0.0.1:$NG ssl http2;
    ssl_certificate $CERTS/server.pem;
    ssl_certificate_key $CERTS/server.key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://legacy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
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
frontend fe
  bind 127.0.0.1:$HA ssl crt $WORK/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  default_backend be
backend be
  server legacy 127.0.0.1:$UP
CONF
haproxy -f "$WORK/haproxy.cfg" -db & PIDS+=($!)

cat > "$WORK/tg/policies/10-all.toml" <<CONF
[[route]]
name = "everything"
path = "/*"
auth = "none"
CONF
cat > "$WORK/tg/gateway.toml" <<CONF
[server]
listen = ["127.0.0.1:0"]
[server.tls]
listen = ["127.0.0.1:$TG"]
certificates = [{ cert_file = "$CERTS/server.pem", key_file = "$CERTS/server.key.pem" }]
[upstream]
url = "http://127.0.0.1:$UP"
[routing]
policies = "policies"
[log]
access_log = true
[reload]
watch = false
CONF
"$ROOT/target/release/tollgate" run --config "$WORK/tg/gateway.toml" >/dev/null 2>/dev/null & PIDS+=($!)

TARGETS="haproxy:$HA nginx:$NG tollgate:$TG"
for p in $UP $NG $HA $TG; do wait_port "$p"; done
for pair in $TARGETS; do
  got=$(curl -s --cacert "$CERTS/ca.pem" "https://localhost:${pair#*:}/campaigns")
  [ "$got" = "$BODY" ] || { echo "${pair%%:*} returned: $got" >&2; exit 1; }
  curl -s -o /dev/null -w '%{http_version}' --http2 --cacert "$CERTS/ca.pem" "https://localhost:${pair#*:}/campaigns" | grep -q '^2' \
    || { echo "${pair%%:*} does not speak h2" >&2; exit 1; }
done

wrk_rps() { # port [header]
  local out; out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" ${2:+-H "$2"} "https://localhost:$1/campaigns")
  local errors; errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errors" ] || echo "port $1: $errors" >&2
  awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}
h2_rps() { # port
  local out; out=$(h2load -t"$THREADS" -c"$CONNECTIONS" -m10 -D"${DURATION%s}" "https://localhost:$1/campaigns")
  grep -q ' 0 failed' <<<"$out" || echo "port $1: $(grep 'requests:' <<<"$out")" >&2
  awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out"
}
handshakes() { # port: the median of five bursts
  for _ in 1 2 3 4 5; do
    h2load --h1 -t"$THREADS" -c"$HANDSHAKES" -n"$HANDSHAKES" "https://localhost:$1/campaigns" \
      | awk '/^finished in/ {gsub(",", "", $4); print $4}'
  done | median
}
median() { sort -g | awk '{ v[NR]=$1 } END { print v[int((NR+1)/2)] }'; }

echo "TLS: wrk / h2load -t$THREADS -c$CONNECTIONS -d$DURATION x $ROUNDS rounds, $CORES cores" >&2
declare -A H1 H2 HS
for round in $(seq 1 "$ROUNDS"); do
  for pair in $TARGETS; do
    name=${pair%%:*}; port=${pair#*:}
    h1=$(wrk_rps "$port"); h2=$(h2_rps "$port"); hs=$(handshakes "$port")
    H1[$name]+="$h1"$'\n'; H2[$name]+="$h2"$'\n'; HS[$name]+="$hs"$'\n'
    echo "round $round $name: h1 $h1, h2 $h2, handshakes $hs" >&2
  done
done
printf '%-10s %14s %14s %14s\n' proxy "h1 TLS req/s" "h2 req/s" "handshakes/s"
declare -A M1 M2 MS
for pair in $TARGETS; do
  name=${pair%%:*}
  M1[$name]=$(awk 'NF' <<<"${H1[$name]}" | median)
  M2[$name]=$(awk 'NF' <<<"${H2[$name]}" | median)
  MS[$name]=$(awk 'NF' <<<"${HS[$name]}" | median)
  printf '%-10s %14.0f %14.0f %14.0f\n' "$name" "${M1[$name]}" "${M2[$name]}" "${MS[$name]}"
done
for peer in haproxy nginx; do
  awk -v p="$peer" -v a="${M1[tollgate]}" -v b="${M1[$peer]}" -v c="${M2[tollgate]}" -v d="${M2[$peer]}" \
      -v e="${MS[tollgate]}" -v f="${MS[$peer]}" 'BEGIN {
    printf "tollgate / %-7s h1 over TLS %.2fx, h2 %.2fx, handshakes %.2fx\n", p, a/b, c/d, e/f }'
done
