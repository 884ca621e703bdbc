#!/usr/bin/env bash
# Load benchmark against the release binary, all on this machine with one load generator (wrk):
#   (a)  ceiling: a bare hyper server that only answers 200 (benches/ceiling.rs)
#   (w0) adnanh/webhook (when installed): a hook whose trigger rule never matches
#   (w1) adnanh/webhook: a hook that runs /bin/true
#   (b0) zimhook: signature check, replay table, no rules, durable store (redb)
#   (b)  zimhook: the same with one queued forward rule
#   (b') the same with the in-memory store
#   (c)  zimhook: a sync before_send_msg rule answered by the moderate Wasm plugin
#   (a1) the ceiling again with one wrk thread and one connection
#   (d)  zimhook: no rules, durable store, one connection: its p50 against this disk's fdatasync
#   (L)  with LONG=1 only: (b) for 60 s against one daemon, first 10 s against last 10 s
# Every request carries a fresh signed nonce. One line per case: requests/s and its ratio to the
# ceiling of the same run ((a); (a1) for the one-connection case), p50/p99 latency, for queued
# cases the deliveries the forward target answered per second of load and the queue depth when
# the load stopped, and the process's peak RSS.
# Usage: benches/load.sh      (DURATION=10s CONNECTIONS=64 THREADS=2 BASE_PORT=9100 to change;
#                             LONG=1 adds (L))
# The stores live in a fresh folder of mktemp -d (set TMPDIR to bench another disk).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
LONG=${LONG:-0}
WEBHOOK=${WEBHOOK:-webhook} # adnanh/webhook's binary; the peer cases are skipped without it
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 1; }
# DURATION in whole seconds (10, 10s, 2m, 1h), handed to wrk as "${seconds}s".
seconds=$(awk -v d="$DURATION" 'BEGIN { n = d + 0; u = substr(d, length(n "") + 1);
  m = (u == "" || u == "s") ? 1 : u == "m" ? 60 : u == "h" ? 3600 : 0; print int(n * m) }')
[ "$seconds" -gt 0 ] || { echo "DURATION=$DURATION: not a duration (10, 10s, 2m)" >&2; exit 1; }

# Ports on 127.0.0.1: BASE_PORT (the ceiling), +1 (the forward target), +2 (webhook), +80
# (zimhook). A port already in use stops the run rather than benchmarking someone else's server.
BASE_PORT=${BASE_PORT:-9100}
CEIL_PORT=$BASE_PORT TARGET_PORT=$((BASE_PORT + 1)) WEBHOOK_PORT=$((BASE_PORT + 2)) ZIMHOOK_PORT=$((BASE_PORT + 80))

cargo build --quiet --release --bin zimhook --example ceiling
have_plugin=0
if rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2 && [ -f plugins/Cargo.toml ]; then
  cargo build --quiet --release --manifest-path plugins/Cargo.toml --target wasm32-wasip2 -p moderate
  have_plugin=1
fi
BIN=$PWD/target/release/zimhook
CEILING=$PWD/target/release/examples/ceiling
MODERATE=$PWD/plugins/target/wasm32-wasip2/release/moderate.wasm
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d)
# The configs in a folder of their own: zimhook watches its config's folder, and a store, log or
# socket there would wake the watcher on every write.
mkdir "$work/conf"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Enough unique signed bodies that none repeats during a run (signed.lua says "wrapped" if one
# did), in the fixed-width records signed.lua reads. The daemons accept a skew of 30 min so the bodies stay fresh through a long run; the
# check is the same work whatever the window.
# With LONG=1 also long-1.txt .. long-6.txt, one for each 10 s of (L).
long_files=0
if [ "$LONG" = 1 ]; then long_files=6; fi
python3 - "$work" "$long_files" <<'PY'
import hashlib, json, random, sys, time
work, long_files = sys.argv[1], int(sys.argv[2])
ts = str(int(time.time()))
def sign(n):
    return hashlib.sha1("".join(sorted(["bench-secret", ts, n])).encode()).hexdigest()
call = lambda i: {"call_id": f"c{i}", "user_ids": ["abc", "def"]}
msg = lambda i: {"request_id": f"r{i}", "from_user_id": "u1", "conv_id": "g1",
    "conv_type": 2, "msg_id": str(7254119327986670315 + i), "payload": "", "msg_type": 1,
    "sub_msg_type": 0, "msg_body": "hello everyone" if i % 10 else "buy spam now"}
for name, event, fields, n in [
    ("calls", "call_timeout", call, 600_000),
    ("msgs", "before_send_msg", msg, 600_000),
] + [(f"long-{k}", "call_timeout", call, 400_000) for k in range(1, long_files + 1)]:
    bodies = []
    for i in range(n):
        nonce = str(random.getrandbits(63))
        body = {"appid": "1", "event": event, "nonce": nonce, "timestamp": int(ts), "signature": sign(nonce)}
        body.update(fields(i))
        bodies.append(json.dumps(body, separators=(",", ":")))
    # Fixed-width records, as signed.lua reads them.
    width = max(map(len, bodies))
    with open(f"{work}/{name}.txt", "w") as f:
        f.writelines(b.ljust(width) + "\n" for b in bodies)
PY

port_open() { (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# start NAME PORT LOG CMD... : starts CMD in the background (its pid in $pid), waits until it
# listens on PORT; fails the run, with the end of its log, if it exits or does not listen in 60 s.
start() {
  local name=$1 port=$2 log=$3
  shift 3
  if port_open "$port"; then
    echo "port $port is already in use; cannot start $name there" >&2
    exit 1
  fi
  "$@" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1200); do
    port_open "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited before listening on port $port; the end of its log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "$name did not listen on port $port within 60 s; the end of its log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

# forget PID: a process that is gone and waited for leaves the list cleanup kills.
forget() {
  local p kept=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
  pids=("${kept[@]}")
}

# stop PID: SIGTERM, then SIGKILL after 10 s.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}

target_count() {
  curl -sf --max-time 5 "http://127.0.0.1:$TARGET_PORT/count" || { echo "the forward target does not answer" >&2; return 1; }
}
metrics() { curl -sf --max-time 5 --unix-socket "$1" http://localhost/metrics; }
metric() { awk -v m="$2" '$1 == m { v = $2 } END { print (v == "" ? "?" : v + 0) }' <<<"$1"; }
peak_rss() { awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/"$1"/status; }
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; u = substr(v, length(v) - 1);
  if (u == "us") n /= 1000; else if (u == "ms") n += 0; else n *= 1000; printf "%.3f", n }'; }

# load URL BODIES THREADS CONNECTIONS SECONDS [ADMIN_SOCKET]: one wrk run. Sets rps p50 p99
# errors; done_count, the requests the forward target answered while the load
# ran; and depth, zimhook_queue_depth when it stopped (with ADMIN_SOCKET; else "-"). Both are
# sampled when wrk says "Running" (its clock starts then) and SECONDS
# later, so deliveries drained after the load are not counted. wrapped=1 if the bodies ran out.
load() {
  local url=$1 bodies=$2 t=$3 c=$4 secs=$5 socket=${6:-} out=$work/wrk.out wrk_pid before after m
  stdbuf -oL wrk -t"$t" -c"$c" -d"${secs}s" --latency -s benches/signed.lua "$url" -- "$bodies" "$t" >"$out" 2>&1 &
  wrk_pid=$!
  pids+=("$wrk_pid")
  until grep -q "^Running" "$out" 2>/dev/null; do
    if ! kill -0 "$wrk_pid" 2>/dev/null; then
      wait "$wrk_pid" || true
      echo "wrk did not start:" >&2; cat "$out" >&2; exit 1
    fi
    sleep 0.01
  done
  before=$(target_count)
  sleep "$secs"
  after=$(target_count)
  depth=-
  if [ -n "$socket" ]; then
    m=$(metrics "$socket") || { echo "no metrics from the admin socket $socket" >&2; exit 1; }
    depth=$(metric "$m" zimhook_queue_depth)
  fi
  wait "$wrk_pid" || { echo "wrk failed:" >&2; cat "$out" >&2; exit 1; }
  forget "$wrk_pid"
  done_count=$((after - before))
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1=="50%" {print $2}' "$out")
  p99=$(awk '$1=="99%" {print $2}' "$out")
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out"); errors=${errors:-0}
  grep 'Socket errors:' "$out" >&2 || true
  wrapped=0
  if grep -qx wrapped "$out"; then wrapped=1; fi
  if [ -z "$rps" ] || [ -z "$p50" ]; then echo "wrk gave no result:" >&2; cat "$out" >&2; exit 1; fi
}

# run NAME URL BODIES PID [ADMIN_SOCKET [QUEUED]]: one result line. ADMIN_SOCKET: zimhook's, for
# the queue depth; QUEUED: the case forwards, so completed/s is the forward target's count.
# ONE=1: one wrk thread and one connection.
results=()
run() {
  local name=$1 url=$2 bodies=$3 pid=$4 socket=${5:-} queued=${6:-} t=$THREADS c=$CONNECTIONS done_rate=-
  if [ "${ONE:-0}" = 1 ]; then t=1 c=1; fi
  echo "running $name" >&2
  load "$url" "$bodies" "$t" "$c" "$seconds" "$socket"
  if [ -n "$queued" ]; then
    done_rate=$(awk -v n="$done_count" -v s="$seconds" 'BEGIN {printf "%.0f", n/s}')
  fi
  results+=("$name|$rps|$p50|$p99|$done_rate|$depth|$(peak_rss "$pid")|$errors|$t/$c")
  if [ "$wrapped" = 1 ]; then wrapped_cases+=("${name%%:*}"); fi
}
wrapped_cases=()

zimhook_config() { # FILE STORE_KIND STORE_NAME RULES
  cat >"$1" <<EOF2
[server]
listen = "127.0.0.1:$ZIMHOOK_PORT"
shutdown_grace = "1s"
[admin]
listen = "unix:$work/$3.sock"
[verify]
secrets = ["bench-secret"]
max_skew = "30m"
[store]
kind = "$2"
path = "$work/$3.redb"
max_queued = 10000000
[log]
level = "warn"
$4
EOF2
}

# The ceiling, and the forward target of the queued cases: another bare server, which counts.
start ceiling "$CEIL_PORT" "$work/ceiling.log" "$CEILING" "127.0.0.1:$CEIL_PORT"
ceiling_pid=$pid
start "forward target" "$TARGET_PORT" "$work/target.log" "$CEILING" "127.0.0.1:$TARGET_PORT"
run "(a) ceiling: bare hyper" "http://127.0.0.1:$CEIL_PORT/callback" "$work/calls.txt" "$ceiling_pid"

# adnanh/webhook as a peer. "Matches nothing" is a hook that exists and parses the JSON body but
# whose trigger rule (the body's event is "no_such_event") never holds: it answers 200 "Hook
# rules were not satisfied." (A hook id that does not exist would be 404 before any body is
# read.) webhook has no way to check ZEGO's signature (sha1 of the sorted secret, timestamp and
# nonce) and stores nothing, so it does less per request than any zimhook case. The /bin/true
# hook is webhook's default kind: it answers 200 at once and runs the command in the background.
webhook_note=""
if command -v "$WEBHOOK" >/dev/null; then
  cat >"$work/hooks.json" <<'EOF2'
[
  {"id": "nomatch", "execute-command": "/bin/true",
   "trigger-rule": {"match": {"type": "value", "value": "no_such_event",
                              "parameter": {"source": "payload", "name": "event"}}}},
  {"id": "true", "execute-command": "/bin/true"}
]
EOF2
  # A webhook of its own for each case, so that each peak RSS is that case's.
  for hook in nomatch true; do
    start webhook "$WEBHOOK_PORT" "$work/webhook-$hook.log" \
      "$WEBHOOK" -hooks "$work/hooks.json" -port "$WEBHOOK_PORT" -ip 127.0.0.1
    if [ "$hook" = nomatch ]; then
      reply=$(curl -s -XPOST -H 'Content-Type: application/json' -d '{"event":"call_timeout"}' \
        "http://127.0.0.1:$WEBHOOK_PORT/hooks/nomatch")
      [ "$reply" = "Hook rules were not satisfied." ] || { echo "webhook's nomatch hook answered: $reply" >&2; exit 1; }
      run "(w0) webhook: hook matching nothing" "http://127.0.0.1:$WEBHOOK_PORT/hooks/nomatch" "$work/calls.txt" "$pid"
    else
      run "(w1) webhook: hook running /bin/true" "http://127.0.0.1:$WEBHOOK_PORT/hooks/true" "$work/calls.txt" "$pid"
    fi
    stop "$pid"
  done
else
  webhook_note="(w0), (w1) skipped: webhook not installed (apt-get install webhook)"
  echo "skipped: webhook not installed" >&2
fi

# start_zimhook NAME CONFIG STORE: a daemon on a config of its own and a fresh store; sets $pid.
start_zimhook() {
  start "zimhook ($1)" "$ZIMHOOK_PORT" "$work/$1.log" "$BIN" run -c "$2"
  for _ in $(seq 100); do [ -S "$work/$1.sock" ] && return 0; sleep 0.05; done
  echo "zimhook ($1) has no admin socket at $work/$1.sock" >&2
  exit 1
}

zimhook_config "$work/conf/b0.toml" redb b0 ""
start_zimhook b0 "$work/conf/b0.toml"
run "(b0) zimhook: verified, no rules, durable" "http://127.0.0.1:$ZIMHOOK_PORT/callback" "$work/calls.txt" "$pid" "$work/b0.sock"
stop "$pid"

FORWARD="[[rule]]
name = \"crm\"
events = [\"call_*\"]
forward = \"http://127.0.0.1:$TARGET_PORT/zego\""
for kind in redb memory; do
  zimhook_config "$work/conf/b-$kind.toml" "$kind" "b-$kind" "$FORWARD"
  start_zimhook "b-$kind" "$work/conf/b-$kind.toml"
  label="(b) zimhook: queued forward, durable"
  [ "$kind" = redb ] || label="(b') zimhook: queued forward, memory"
  run "$label" "http://127.0.0.1:$ZIMHOOK_PORT/callback" "$work/calls.txt" "$pid" "$work/b-$kind.sock" queued
  stop "$pid"
done

if [ "$have_plugin" = 1 ]; then
  zimhook_config "$work/conf/c.toml" redb c "[[rule]]
name = \"moderate\"
events = [\"before_send_msg\"]
plugin = \"$MODERATE\"
sync = true
fallback = '{\"result\": 1}'
config = { banned = [\"spam\"] }"
  start_zimhook c "$work/conf/c.toml"
  run "(c) zimhook: sync plugin (before_send_msg)" "http://127.0.0.1:$ZIMHOOK_PORT/callback" "$work/msgs.txt" "$pid" "$work/c.sock"
  stop "$pid"
fi

# One connection: each request waits for its own commit, so p50 is one commit's fdatasync plus
# the request's own work. The fdatasync is measured here, in the stores' folder, right before and
# right after (d) (this disk's sync time drifts with what else the machine does), two ways: 4 KiB
# written in place into a file that does not grow (what a redb commit does: a few 4 KiB pwrites,
# then one fdatasync, the file's size almost always unchanged), and 4 KiB appended (the file
# grows: the journal commits its size too). The target is against the faster of the two in-place
# figures: a probe that happens to catch the disk in a slow spell must not make (d) pass.
fdatasync_probe() { # -> "IN_PLACE_MS APPENDED_MS", medians of 200
  python3 - "$work" <<'PY'
import os, statistics, sys
from time import perf_counter
path = os.path.join(sys.argv[1], "fdatasync.probe")
block = os.urandom(4096)
def median_ms(in_place):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if in_place:
        os.write(fd, block * 256)
        os.fsync(fd)
    took = []
    for i in range(200):
        start = perf_counter()
        if in_place:
            os.pwrite(fd, block, (i % 256) * 4096)
        else:
            os.write(fd, block)
        os.fdatasync(fd)
        took.append(perf_counter() - start)
    os.close(fd)
    os.unlink(path)
    return statistics.median(took) * 1000
print(f"{median_ms(True):.3f} {median_ms(False):.3f}")
PY
}
ONE=1 run "(a1) ceiling: bare hyper, 1 connection" "http://127.0.0.1:$CEIL_PORT/callback" "$work/calls.txt" "$ceiling_pid"
zimhook_config "$work/conf/d.toml" redb d ""
start_zimhook d "$work/conf/d.toml"
read -r sync_before append_before <<<"$(fdatasync_probe)"
ONE=1 run "(d) zimhook: no rules, durable, 1 connection" "http://127.0.0.1:$ZIMHOOK_PORT/callback" "$work/calls.txt" "$pid" "$work/d.sock"
d_p50=$p50
read -r sync_after append_after <<<"$(fdatasync_probe)"
stop "$pid"

# (L): the durable forward case for 60 s against one daemon, as six back-to-back 10 s runs
# (each with bodies of its own), each with its completed/s and the queue depth at its end. The
# half second between two runs, while wrk reads its bodies, is in no slice.
long_lines=()
if [ "$LONG" = 1 ]; then
  zimhook_config "$work/conf/L.toml" redb L "$FORWARD"
  start_zimhook L "$work/conf/L.toml"
  echo "running (L) zimhook: queued forward, durable, 60 s" >&2
  first_rps="" last_rps="" first_done="" last_done=""
  for slice in 1 2 3 4 5 6; do
    load "http://127.0.0.1:$ZIMHOOK_PORT/callback" "$work/long-$slice.txt" "$THREADS" "$CONNECTIONS" 10 "$work/L.sock"
    if [ "$wrapped" = 1 ]; then wrapped_cases+=("(L) $(((slice - 1) * 10))-$((slice * 10)) s"); fi
    done_rate=$(awk -v n="$done_count" 'BEGIN {printf "%.0f", n/10}')
    long_lines+=("$(printf '  %2d-%2d s %10s req/s  p50 %8s  p99 %8s  %7s completed/s  queue %7s  non-2xx %s' \
      $(((slice - 1) * 10)) $((slice * 10)) "$rps" "$p50" "$p99" "$done_rate" "$depth" "$errors")")
    if [ "$slice" = 1 ]; then first_rps=$rps first_done=$done_rate; fi
    last_rps=$rps last_done=$done_rate
  done
  long_m=$(metrics "$work/L.sock")
  long_dups=$(awk '/^zimhook_callbacks_total\{/ && /outcome="duplicate"/ { n += $2 } END { print n + 0 }' <<<"$long_m")
  long_rss=$(peak_rss "$pid")
  stop "$pid"
fi

ratio() { awk -v a="$1" -v c="$2" 'BEGIN {printf "%.2f", a/c}'; }
ceiling_rps=$(cut -d'|' -f2 <<<"${results[0]}")
ceiling1_rps=""
for r in "${results[@]}"; do
  case $r in "(a1) "*) ceiling1_rps=$(cut -d'|' -f2 <<<"$r") ;; esac
done

printf '\n%s, %s connections, %s wrk threads, %s each, on %s cores; load average %s at the start, %s now\n' \
  "$(date -u +%F)" "$CONNECTIONS" "$THREADS" "$DURATION" "$(nproc)" "$load_at_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
fmt='%-46s %11s %7s %9s %9s %11s %9s %8s %8s\n'
printf "$fmt" case "requests/s" "vs ceil" p50 p99 completed/s "queue end" "RSS MiB" non-2xx
for r in "${results[@]}"; do
  IFS='|' read -r name rps p50 p99 done_rate depth rss errors tc <<<"$r"
  base=$ceiling_rps
  if [ "$tc" = 1/1 ]; then base=$ceiling1_rps; fi
  printf "$fmt" "$name" "$rps" "$(ratio "$rps" "$base")" "$p50" "$p99" "$done_rate" "$depth" "$rss" "$errors"
done
echo "vs ceil: to (a); the 1-connection cases to (a1). completed/s: deliveries the forward target"
echo "answered during the load, per second of load. queue end: zimhook_queue_depth when it stopped."
if [ -n "$webhook_note" ]; then echo "$webhook_note"; fi

d_ms=$(to_ms "$d_p50")
sync_ms=$(awk -v a="$sync_before" -v b="$sync_after" 'BEGIN {printf "%.3f", (a < b) ? a : b}')
verdict=$(awk -v p="$d_ms" -v f="$sync_ms" 'BEGIN {print (p <= f + 0.1) ? "PASS" : "FAIL"}')
printf '\n(d) p50 %s ms. fdatasync of 4 KiB in the stores'"'"' folder (%s), median of 200:\n' "$d_ms" "$work"
printf '  written in place %s ms before (d), %s ms after; appended %s ms before, %s ms after\n' \
  "$sync_before" "$sync_after" "$append_before" "$append_after"
printf '  target: p50 <= fdatasync (in place, the faster: %s ms) + 0.1 ms = %s ms: %s\n' \
  "$sync_ms" "$(awk -v f="$sync_ms" 'BEGIN {printf "%.3f", f + 0.1}')" "$verdict"

if [ "$LONG" = 1 ]; then
  printf '\n(L) zimhook: queued forward, durable, 60 s on one daemon (%s connections), peak RSS %s MiB\n' "$CONNECTIONS" "$long_rss"
  printf '%s\n' "${long_lines[@]}"
  printf '  last 10 s / first 10 s: requests %s, completed %s; duplicates answered: %s\n' \
    "$(ratio "$last_rps" "$first_rps")" \
    "$(awk -v a="$last_done" -v b="$first_done" 'BEGIN {print (b > 0) ? sprintf("%.2f", a/b) : "-"}')" "$long_dups"
fi
if [ "${#wrapped_cases[@]}" -gt 0 ]; then
  printf '\nbodies ran out and some were sent twice in: %s\n' "${wrapped_cases[*]}"
  echo "(the ceiling and webhook do not care; zimhook answers a repeat as a duplicate, which is less work)"
fi
