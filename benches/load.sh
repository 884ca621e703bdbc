#!/usr/bin/env bash
# Load benchmark against the release binary, all on this machine with one load generator (wrk):
#   (a) ceiling: a bare hyper server that only answers 200 (benches/ceiling.rs)
#   (b) zimhook: signature check, replay table, one queued forward rule, durable store (redb)
#   (b') the same with the in-memory store
#   (c) zimhook: a sync before_send_msg rule answered by the moderate Wasm plugin
# Every request carries a fresh signed nonce. Prints requests/s, p50/p99 latency, peak RSS and
# each zimhook figure as a ratio to (a).
# Usage: benches/load.sh            (DURATION=10s CONNECTIONS=64 THREADS=2 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

cargo build --quiet --release --bin zimhook --example ceiling
have_plugin=0
if rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2 && [ -f plugins/Cargo.toml ]; then
  cargo build --quiet --release --manifest-path plugins/Cargo.toml --target wasm32-wasip2 -p moderate
  have_plugin=1
fi
BIN=$PWD/target/release/zimhook
CEILING=$PWD/target/release/examples/ceiling
MODERATE=$PWD/plugins/target/wasm32-wasip2/release/moderate.wasm
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Enough unique signed bodies that none repeats during a run.
python3 - "$work" <<'PY'
import hashlib, json, random, sys, time
work = sys.argv[1]
ts = str(int(time.time()))
def sign(n):
    return hashlib.sha1("".join(sorted(["bench-secret", ts, n])).encode()).hexdigest()
for name, event, fields in [
    ("calls", "call_timeout", lambda i: {"call_id": f"c{i}", "user_ids": ["abc", "def"]}),
    ("msgs", "before_send_msg", lambda i: {"request_id": f"r{i}", "from_user_id": "u1", "conv_id": "g1",
        "conv_type": 2, "msg_id": str(7254119327986670315 + i), "payload": "", "msg_type": 1,
        "sub_msg_type": 0, "msg_body": "hello everyone" if i % 10 else "buy spam now"}),
]:
    with open(f"{work}/{name}.txt", "w") as f:
        for i in range(600_000):
            nonce = str(random.getrandbits(63))
            body = {"appid": "1", "event": event, "nonce": nonce, "timestamp": int(ts), "signature": sign(nonce)}
            body.update(fields(i))
            f.write(json.dumps(body, separators=(",", ":")) + "\n")
PY

wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }

# run NAME URL BODIES PID -> one result line
results=()
run() {
  local name=$1 url=$2 bodies=$3 pid=$4 out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/signed.lua "$url" -- "$bodies" "$THREADS")
  local rps p50 p99 errors rss
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out"); errors=${errors:-0}
  rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/"$pid"/status)
  results+=("$name|$rps|$p50|$p99|$rss|$errors")
}

zimhook_config() { # FILE STORE_KIND RULES
  cat >"$1" <<EOF2
[server]
listen = "127.0.0.1:9180"
[verify]
secrets = ["bench-secret"]
[store]
kind = "$2"
path = "$work/store-$2.redb"
max_queued = 10000000
[log]
level = "warn"
$3
EOF2
}

"$CEILING" 127.0.0.1:9100 & pids+=($!); wait_port 9100
run "(a) ceiling: bare hyper" http://127.0.0.1:9100/callback "$work/calls.txt" "${pids[-1]}"
ceiling_rps=$(cut -d'|' -f2 <<<"${results[0]}")

# The forward target for (b): another bare server.
"$CEILING" 127.0.0.1:9101 & pids+=($!); wait_port 9101
FORWARD='[[rule]]
name = "crm"
events = ["call_*"]
forward = "http://127.0.0.1:9101/zego"'
for kind in redb memory; do
  zimhook_config "$work/b-$kind.toml" "$kind" "$FORWARD"
  "$BIN" run -c "$work/b-$kind.toml" 2>"$work/b-$kind.log" & pid=$!; pids+=($pid); wait_port 9180
  label="(b) zimhook: queued forward, durable store"
  [ "$kind" = memory ] && label="(b') zimhook: queued forward, memory store"
  run "$label" http://127.0.0.1:9180/callback "$work/calls.txt" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

if [ "$have_plugin" = 1 ]; then
  zimhook_config "$work/c.toml" redb "[[rule]]
name = \"moderate\"
events = [\"before_send_msg\"]
plugin = \"$MODERATE\"
sync = true
fallback = '{\"result\": 1}'
config = { banned = [\"spam\"] }"
  "$BIN" run -c "$work/c.toml" 2>"$work/c.log" & pid=$!; pids+=($pid); wait_port 9180
  run "(c) zimhook: sync plugin (before_send_msg)" http://127.0.0.1:9180/callback "$work/msgs.txt" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

printf '\n%s, %s connections, %s wrk threads, %s each, on %s cores\n' "$(date -u +%F)" "$CONNECTIONS" "$THREADS" "$DURATION" "$(nproc)"
printf '%-46s %12s %9s %9s %9s %8s %8s\n' scenario "requests/s" p50 p99 "RSS MiB" non-2xx "vs (a)"
for r in "${results[@]}"; do
  IFS='|' read -r name rps p50 p99 rss errors <<<"$r"
  ratio=$(awk -v a="$rps" -v c="$ceiling_rps" 'BEGIN {printf "%.2f", a/c}')
  printf '%-46s %12s %9s %9s %9s %8s %8s\n' "$name" "$rps" "$p50" "$p99" "$rss" "$errors" "$ratio"
done
