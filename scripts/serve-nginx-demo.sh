#!/usr/bin/env bash
# Two `ledge serve` replicas behind nginx on loopback, as the README's "Serving" section
# describes: checks that requests (plain and streamed) go through, that both replicas take
# a share, and that the survivor answers when one replica is stopped. Needs nginx on PATH
# (`apt-get install nginx-light`); not part of scripts/test.sh for that reason.
#
#   scripts/serve-nginx-demo.sh [MODEL]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
LEDGE=target/release/ledge
PORT_A=18201 PORT_B=18202 PORT_LB=18200
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx-light)"; exit 1; }
[ -x "$LEDGE" ] || cargo build --release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for port in $PORT_A $PORT_B; do
  "$LEDGE" serve -m "$MODEL" --port "$port" --parallel 2 --ctx 1024 --threads 1 \
    2>"$WORK/ledge-$port.log" &
  PIDS+=($!)
done

# The configuration the README shows, with the ports filled in and the logs in $WORK.
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 256; }
http {
  access_log $WORK/access.log;
  client_body_temp_path $WORK;
  proxy_temp_path $WORK;
  upstream ledge {
    least_conn;
    server 127.0.0.1:$PORT_A max_fails=1 fail_timeout=5s;
    server 127.0.0.1:$PORT_B max_fails=1 fail_timeout=5s;
    keepalive 16;
  }
  server {
    listen 127.0.0.1:$PORT_LB;
    client_max_body_size 1m;
    location / {
      proxy_pass http://ledge;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
      proxy_next_upstream error timeout http_503 non_idempotent;
    }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK"

for port in $PORT_A $PORT_B $PORT_LB; do
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
  done
done

echo "== 16 streamed chats through nginx, 4 at a time"
python3 scripts/load_test.py --url "http://127.0.0.1:$PORT_LB" -n 16 -c 4 --max-tokens 16

served() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^ledge_requests_total\{endpoint="chat_completions"\}/ {print $2}'
}
A=$(served $PORT_A) B=$(served $PORT_B)
echo "replica :$PORT_A served $A chats, replica :$PORT_B served $B"
[ "${A%.*}" -gt 0 ] && [ "${B%.*}" -gt 0 ] || { echo "FAIL: one replica got nothing"; exit 1; }
[ $(( ${A%.*} + ${B%.*} )) -eq 16 ] || { echo "FAIL: $A + $B != 16"; exit 1; }

echo "== stop replica :$PORT_A; the other answers"
kill -TERM "${PIDS[0]}"
wait "${PIDS[0]}" || true
for i in 1 2 3 4; do
  curl -sf "http://127.0.0.1:$PORT_LB/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hi"}],"max_tokens":8,"temperature":0}' |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("  ok:", repr(r["choices"][0]["message"]["content"]))'
done
echo "nginx demo: ok"
