#!/usr/bin/env bash
# End-to-end test of zimhook under a real systemd: boots the Debian 12 tree that
# tests/systemd/base.sh builds (systemd 252 as PID 1) with systemd-nspawn, in a throwaway
# overlay, installs zimhook into it with the commands of README.md's "Running under systemd",
# and checks the service: start, delivery, good and broken reloads, the CLI from a root shell,
# stop, socket activation across a restart, the watchdog and the unit's exposure score.
#
# Every check prints one line `step: NAME: ok` or `step: NAME: FAIL DETAIL`; the script exits 1
# if any failed (2: it could not run at all). The journal of the service is printed at the end
# of a failed run.
#
# Input (environment):
#   ZIMHOOK_BIN           the zimhook binary under test (default: target/debug/zimhook)
#   ZIMHOOK_DEPLOY        the deploy/ folder to install (default: the repo's)
#   ZIMHOOK_README        the README whose systemd commands must be in this script
#                         (default: the repo's)
#   ZIMHOOK_SYSTEMD_BASE  the base tree (default: /var/cache/zimhook-ci/bookworm)
#   ZIMHOOK_WATCHDOG_WAIT seconds to watch MainPID/NRestarts (default 40; WatchdogSec=30s)
#   ZIMHOOK_BOOT_TEST_LEADER_FILE  where to write the host pid of the container's PID 1
#
# Needs root and systemd-nspawn; works on a host whose PID 1 is not systemd (--register=no,
# --keep-unit). The container has its own network namespace (--private-network), so the
# shipped 127.0.0.1:8080 is used as is and clashes with nothing on the host.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
bin=${ZIMHOOK_BIN:-$repo/target/debug/zimhook}
deploy=${ZIMHOOK_DEPLOY:-$repo/deploy}
readme=${ZIMHOOK_README:-$repo/README.md}
base=${ZIMHOOK_SYSTEMD_BASE:-/var/cache/zimhook-ci/bookworm}
watchdog_wait=${ZIMHOOK_WATCHDOG_WAIT:-40}
max_exposure=1.5

t0=$SECONDS
failed=()
step() { # step NAME ok | step NAME FAIL DETAIL...
  local name=$1 result=$2
  shift 2
  if [ "$result" = ok ]; then
    echo "step: $name: ok${*:+ ($*)} [$((SECONDS - t0)) s]"
  else
    echo "step: $name: FAIL $* [$((SECONDS - t0)) s]"
    failed+=("$name")
  fi
}
note() { echo "  $*"; }
indent() { sed -u 's/^/    | /'; }
die() { echo "boot-test: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn is not installed (apt-get install systemd-container)"
[ -x "$base/usr/lib/systemd/systemd" ] || die "no base tree at $base (run tests/systemd/base.sh)"
[ -x "$bin" ] || die "no zimhook binary at $bin (set ZIMHOOK_BIN)"
for f in zimhook.service zimhook.socket config.toml; do
  [ -f "$deploy/$f" ] || die "no $deploy/$f"
done
[ -f "$readme" ] || die "no README at $readme"

# --- README consistency ---------------------------------------------------------------------
# Every command line of the ```sh blocks in README's "## Running under systemd" must be a line,
# or part of one, of this script: what the README tells people to run is what this test runs.
# Ignored: blank and comment-only lines, trailing `# comments`, a leading `sudo ` (and one after
# `| `: this test runs as root), and `cargo build --release` (the binary under test stands in).
readme_commands() {
  awk '
    /^## / { in_section = ($0 ~ /^## Running under systemd[[:space:]]*$/); next }
    !in_section { next }
    /^```/ { if (in_block) { in_block = 0 } else if ($0 ~ /^```(sh|bash|shell)[[:space:]]*$/) { in_block = 1 }; next }
    in_block { print }
  ' "$readme" | sed -E \
    -e 's/^[[:space:]]+//' \
    -e 's/(^|[[:space:]])#.*$//' \
    -e 's/[[:space:]]+$//' \
    -e 's/^sudo //' \
    -e 's/\| sudo /| /g' |
    grep -v -x -e '' -e 'cargo build --release' || true
}
readme_check() {
  local missing=() n=0 line
  while IFS= read -r line; do
    n=$((n + 1))
    grep -qF -- "$line" "$self" || missing+=("$line")
  done < <(readme_commands)
  if [ "$n" = 0 ]; then
    step readme-commands FAIL "no sh command lines found under '## Running under systemd' in $readme"
  elif [ ${#missing[@]} = 0 ]; then
    step readme-commands ok "$n README command lines, all run here"
  else
    local m
    for m in "${missing[@]}"; do note "README line not in boot-test.sh: $m"; done
    step readme-commands FAIL "${#missing[@]} of $n README command lines are not in boot-test.sh: $(printf '`%s` ' "${missing[@]}")"
  fi
}
readme_check

# --- Container ------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/var/tmp}/zimhook-boot.XXXXXX")
machine="zimhook-test-$$"
nspawn_pid=""
leader=""
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

stop_container() {
  [ -n "$nspawn_pid" ] || return 0
  if kill -0 "$nspawn_pid" 2>/dev/null; then
    # SIGTERM: nspawn asks the container's systemd to halt (SIGRTMIN+3); a second one, or
    # SIGKILL of the container's PID 1, ends it at once.
    kill -TERM "$nspawn_pid" 2>/dev/null
    local i
    for i in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done

    if kill -0 "$nspawn_pid" 2>/dev/null; then
      echo "boot-test: the container did not halt in 10 s; killing it" >&2
      [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null
      kill -KILL "$nspawn_pid" 2>/dev/null
    fi
  fi
  wait "$nspawn_pid" 2>/dev/null
  nspawn_pid=""
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP PIPE
  local t=$SECONDS
  stop_container
  rm -rf --one-file-system "$work"
  echo "boot-test: container stopped and removed in $((SECONDS - t)) s" >&2
  rm -rf "/run/systemd/nspawn/propagate/$machine" 2>/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "boot-test: interrupted" >&2; exit 130' INT TERM HUP PIPE

# The base is booted with --volatile=overlay: read-only below a tmpfs-backed overlayfs that
# nspawn mounts in its own mount namespace, so every run starts from the pristine tree, writes
# nothing to it, and its changes vanish with the container. (A copy on disk costs a second to
# make but, with ext4's discard and a busy disk, 10-15 s to delete.)
# /src, laid out like a checkout: deploy/ (a snapshot of the files under test) and
# target/release/zimhook (the binary under test, bind-mounted over the empty file).
mkdir -p "$work/src/target/release" "$work/src/deploy"
cp "$deploy/zimhook.service" "$deploy/zimhook.socket" "$deploy/config.toml" "$work/src/deploy/"
: >"$work/src/target/release/zimhook"

systemd-nspawn -D "$base" --volatile=overlay -b -M "$machine" --register=no --keep-unit \
  --private-network --console=read-only --setenv=SYSTEMD_LOG_COLOR=0 \
  --bind-ro="$work/src:/src" --bind-ro="$bin:/src/target/release/zimhook" \
  </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1 is the child of systemd-nspawn once that child is systemd.
for _ in $(seq 200); do
  kill -0 "$nspawn_pid" 2>/dev/null || break
  for c in $(pgrep -P "$nspawn_pid"); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && leader=$c
  done
  [ -n "$leader" ] && break
  sleep 0.05
done
# For a caller that may have to SIGKILL this script: the container outlives systemd-nspawn
# killed with SIGKILL, but not its PID 1 killed so.
[ -z "${ZIMHOOK_BOOT_TEST_LEADER_FILE:-}" ] || echo "$leader" >"$ZIMHOOK_BOOT_TEST_LEADER_FILE"
if [ -z "$leader" ]; then
  tail -n 30 "$work/console.log" | indent
  step boot FAIL "systemd-nspawn did not start systemd"
  exit 1
fi

ct_env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
  LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 SECRET="$secret")
# ct 'SHELL CODE': runs as root in the booted container (no $CREDENTIALS_DIRECTORY), in /src,
# bounded by $ct_timeout seconds.
ct_timeout=60
ct() {
  timeout -k 5 "$ct_timeout" nsenter -t "$leader" -a "${ct_env[@]}" bash -c "cd /src && $1"
}
# ct_cmd < COMMAND: runs COMMAND (kept literal in this file, as the README has it) with ct.
ct_cmd() {
  local command
  command=$(cat)
  ct "$command"
}
# ct_script < SCRIPT: runs the lines of SCRIPT in the container, each echoed first, and
# stops at the first that fails; 0 if all succeeded.
ct_script() {
  local script
  script=$(cat)
  timeout -k 5 "$ct_timeout" nsenter -t "$leader" -a "${ct_env[@]}" PS4="+ " \
    bash -euxo pipefail -c "cd /src; $script" </dev/null 2>&1 | indent
  return "${PIPESTATUS[0]}"
}

# --- Boot -----------------------------------------------------------------------------------
boot_state=""
for _ in $(seq 60); do
  boot_state=$(ct 'systemctl is-system-running --wait' 2>/dev/null) && break
  case "$boot_state" in degraded) break ;; esac
  sleep 0.5
done
case "$boot_state" in
  running) step boot ok "systemd $(ct 'systemctl --version | sed -n "1s/^systemd \([0-9]*\).*/\1/p"'), $((SECONDS - t0)) s" ;;
  degraded)
    ct 'systemctl --failed --no-pager --no-legend' | indent
    step boot ok "degraded, $((SECONDS - t0)) s" ;;
  *)
    tail -n 30 "$work/console.log" | indent
    step boot FAIL "system state '$boot_state'"
    exit 1 ;;
esac

# --- 1. no CA bundle ------------------------------------------------------------------------
ca=$(ct 'dpkg-query -W -f="\${db:Status-Status}" ca-certificates 2>/dev/null; [ -e /etc/ssl/certs/ca-certificates.crt ] && echo " bundle"')
if [ -z "$ca" ] || [ "$ca" = not-installed ]; then
  step no-ca-certificates ok
else
  step no-ca-certificates FAIL "ca-certificates: ${ca}"
fi

# --- Install (README) -----------------------------------------------------------------------
# The container's clock, to read the journal from (`--since=@SECONDS`). Not a cursor:
# journalctl 252 returns nothing for --after-cursor together with -p.
journal_mark() { ct 'date +%s.%6N'; }
start_mark=$(journal_mark)

install_ok=1
ct_script <<'EOF' || install_ok=0
install -m 0755 target/release/zimhook /usr/local/bin/zimhook
install -m 0644 deploy/zimhook.service deploy/zimhook.socket /etc/systemd/system/
install -d -m 0755 /etc/zimhook
install -m 0644 deploy/config.toml /etc/zimhook/config.toml
printf '%s\n' "$SECRET" | install -m 0600 /dev/stdin /etc/zimhook/callback-secret
EOF
# "now edit /etc/zimhook/config.toml: your rules and appids": the shipped rules (a forward to
# an example backend) give way to one that records every callback where the service may write,
# and only appid 1234567890 is allowed (`zimhook send` signs for the config's first appid).
[ "$install_ok" = 1 ] && ct_script <<'EOF' || install_ok=0
sed -i '/^\[\[rule\]\]/,$d; /^#* *appids *=/d' /etc/zimhook/config.toml
sed -i '/^\[verify\]/a appids = [1234567890]' /etc/zimhook/config.toml
cat >>/etc/zimhook/config.toml <<'RULE'
[[rule]]
name = "record"
events = ["*"]
command = ["/bin/sh", "-c", "cat >> /var/lib/zimhook/delivered.jsonl; echo >> /var/lib/zimhook/delivered.jsonl"]
RULE
EOF
[ "$install_ok" = 1 ] && ct_script <<'EOF' || install_ok=0
systemctl daemon-reload
systemctl enable --now zimhook
systemctl status zimhook
EOF
if [ "$install_ok" = 1 ]; then step install ok; else step install FAIL "a README command failed (above)"; fi

# --- Helpers --------------------------------------------------------------------------------
# send ID [CONFIG [ARGS]]: one signed call_timeout callback with call_id ID; prints zimhook
# send's output. CONFIG (default /etc/zimhook/config.toml) tells send where and as which appid.
send() {
  local id=$1 config=${2:-/etc/zimhook/config.toml}
  shift $(($# < 2 ? $# : 2))
  ct "zimhook send -c $config --secret-file /etc/zimhook/callback-secret $* call_timeout '{\"call_id\":\"$id\"}'"
}
# delivered ID: how many lines of delivered.jsonl hold call_id ID.
delivered() { ct "grep -c -F '\"$1\"' /var/lib/zimhook/delivered.jsonl 2>/dev/null || echo 0" | head -n 1; }
# undelivered ID...: the IDs that are in no line of delivered.jsonl yet.
undelivered() {
  ct "for id in $*; do grep -q -F \"\$id\" /var/lib/zimhook/delivered.jsonl 2>/dev/null || echo \$id; done"
}
# wait_delivered ID [SECONDS]: 0 once ID was delivered.
wait_delivered() {
  local i
  for i in $(seq $((${2:-10} * 4))); do
    [ "$(delivered "$1")" -ge 1 ] 2>/dev/null && return 0
    sleep 0.25
  done
  return 1
}
# send_and_check STEP ID: sends ID, checks the 2xx and the delivery.
send_and_check() {
  local out rc
  out=$(send "$2" 2>&1)
  rc=$?
  echo "$out" | indent
  if [ "$rc" != 0 ]; then
    step "$1" FAIL "zimhook send exited $rc: $(echo "$out" | head -n 3 | tr '\n' ' ')"
  elif ! wait_delivered "$2" 10; then
    step "$1" FAIL "call_id $2 got $(echo "$out" | head -n 1) but was not in delivered.jsonl after 10 s"
  else
    step "$1" ok "$(echo "$out" | head -n 1), delivered"
  fi
}
status_text() { ct 'systemctl show -p StatusText --value zimhook'; }
config_hash() { ct 'sha256sum /etc/zimhook/config.toml' | cut -c1-12; }
# write_config: stdin becomes /etc/zimhook/config.toml in one rename (the daemon watches it).
write_config() {
  ct 'cat >/root/config.toml.new && chmod 0644 /root/config.toml.new && mv /root/config.toml.new /etc/zimhook/config.toml'
}

# --- 2. start -------------------------------------------------------------------------------
active=$(ct 'systemctl is-active zimhook')
warnings=$(ct "journalctl -q -u zimhook -p warning --no-pager --since=@$start_mark")
if [ "$active" != active ]; then
  step start FAIL "zimhook is $active"
elif [ -n "$warnings" ]; then
  echo "$warnings" | indent
  step start FAIL "active, but $(echo "$warnings" | wc -l) journal line(s) at warning or worse since the start"
else
  step start ok "active, nothing at warning or worse"
fi

# --- 3. delivery ----------------------------------------------------------------------------
send_and_check deliver "boot-deliver-1"

# --- 4. reload, good config -----------------------------------------------------------------
good=$(ct 'cat /etc/zimhook/config.toml')
good2="$good
[[rule]]
name = \"record-rooms\"
events = [\"room_*\"]
command = [\"/bin/sh\", \"-c\", \"cat >> /var/lib/zimhook/rooms.jsonl\"]"
printf '%s\n' "$good2" | write_config
# A copy for `zimhook send` while the live file is broken (send reads its listener from it).
ct 'cp /etc/zimhook/config.toml /root/config.good.toml'
hash2=$(config_hash)
mark=$(journal_mark)
out=$(ct 'systemctl reload zimhook' 2>&1)
rc=$?
echo "$out" | indent
st=""
for _ in $(seq 40); do
  st=$(status_text)
  case "$st" in *"$hash2"*) break ;; esac
  sleep 0.25
done
check_out=$(ct 'zimhook check -c /etc/zimhook/config.toml' 2>&1)
if [ "$rc" != 0 ]; then
  ct "journalctl -q -u zimhook --no-pager --since=@$mark" | indent
  step reload-good FAIL "systemctl reload exited $rc"
elif [[ "$st" != *"$hash2"* ]]; then
  step reload-good FAIL "Status: '$st' does not show config $hash2"
elif [[ "$check_out" != *"$hash2"* ]]; then
  step reload-good FAIL "zimhook check does not show config $hash2: $(echo "$check_out" | tail -n 1)"
else
  step reload-good ok "Status: '$st'; zimhook check: $(echo "$check_out" | grep -F "$hash2" | head -n 1)"
fi

# --- 5. reload, broken config ---------------------------------------------------------------
mark=$(journal_mark)
broken="$good2
[[rule]]
name = \"broken\"
events = [\"*\"]
command = [\"/bin/true\"]
no_such_key = true"
printf '%s\n' "$broken" | write_config
bad_line=$(printf '%s\n' "$broken" | grep -n '^no_such_key' | cut -d: -f1)
out=$(ct 'systemctl reload zimhook' 2>&1)
rc=$?
echo "$out" | indent
sleep 1
broken_journal=$(ct "journalctl -q -u zimhook -p warning --no-pager --since=@$mark")
echo "$broken_journal" | indent
problems=()
[ "$rc" != 0 ] || problems+=("systemctl reload exited 0")
echo "$broken_journal" | grep -qF "config.toml:$bad_line:" ||
  problems+=("no 'config.toml:$bad_line:COL' in journalctl -u zimhook -p warning")
out=$(send boot-broken-1 /root/config.good.toml 2>&1) || problems+=("zimhook send failed: $(echo "$out" | head -n 2 | tr '\n' ' ')")
wait_delivered boot-broken-1 10 || problems+=("a callback was not delivered with the old rules")
if [ ${#problems[@]} = 0 ]; then
  step reload-broken ok "reload refused (exit $rc), old rules serve, error at config.toml:$bad_line"
else
  step reload-broken FAIL "$(IFS=';'; echo "${problems[*]}")"
fi
printf '%s\n' "$good2" | write_config
ct 'systemctl reload zimhook' 2>&1 | indent || note "systemctl reload of the restored config failed"

# --- 6. the CLI from a root shell -----------------------------------------------------------
problems=()
out=$(ct_cmd 2>&1 <<'EOF'
zimhook check -c /etc/zimhook/config.toml
EOF
)
rc=$?
echo "$out" | indent
if [ "$rc" != 0 ]; then
  problems+=("zimhook check exited $rc: $(echo "$out" | head -n 2 | tr '\n' ' ')")
elif ! echo "$out" | grep -qi 'credential'; then
  problems+=("zimhook check does not say that the credential is only available to the service")
fi
out=$(ct_cmd 2>&1 <<'EOF'
zimhook deliveries list -c /etc/zimhook/config.toml
EOF
)
rc=$?
echo "$out" | indent
[ "$rc" = 0 ] || problems+=("zimhook deliveries list exited $rc: $(echo "$out" | head -n 2 | tr '\n' ' ')")
out=$(ct_cmd 2>&1 <<'EOF'
zimhook send -c /etc/zimhook/config.toml --secret-file /etc/zimhook/callback-secret call_timeout '{"call_id":"c1"}'
EOF
)
rc=$?
echo "$out" | indent
if [ "$rc" != 0 ]; then
  problems+=("zimhook send (c1) exited $rc: $(echo "$out" | head -n 2 | tr '\n' ' ')")
elif ! wait_delivered c1 10; then
  problems+=("c1 got $(echo "$out" | head -n 1) but was not delivered in 10 s")
fi
if [ ${#problems[@]} = 0 ]; then step root-cli ok; else step root-cli FAIL "$(IFS=';'; echo "${problems[*]}")"; fi

# --- 7. stop --------------------------------------------------------------------------------
was=$(ct 'systemctl is-active zimhook')
out=$(ct 'systemctl stop zimhook' 2>&1)
rc=$?
echo "$out" | indent
st=$(status_text)
if [ "$was" != active ]; then
  step stop FAIL "zimhook was $was before the stop"
elif [ "$rc" != 0 ]; then
  step stop FAIL "systemctl stop exited $rc"
elif [[ "$st" == *stopping* ]]; then
  step stop FAIL "after the stop, Status: '$st'"
else
  step stop ok "Status: '$st'"
fi

# --- 8. socket activation across a restart --------------------------------------------------
sock_ok=1
ct_script <<'EOF' || sock_ok=0
systemctl stop zimhook
sed -i 's/^listen = "127.0.0.1:8080"/listen = "systemd"/' /etc/zimhook/config.toml
systemctl enable --now zimhook.socket
systemctl start zimhook
EOF
if [ "$sock_ok" = 1 ]; then
  out=$(ct_cmd 2>&1 <<'EOF'
zimhook send -c /etc/zimhook/config.toml --url http://127.0.0.1:8080/callback --secret-file /etc/zimhook/callback-secret call_timeout '{"call_id":"c2"}'
EOF
  )
  rc=$?
  echo "$out" | indent
  if [ "$rc" != 0 ]; then
    sock_ok=0
    note "zimhook send (c2) through the passed socket exited $rc"
  elif ! wait_delivered c2 10; then
    sock_ok=0
    note "c2 got $(echo "$out" | head -n 1) but was not delivered in 10 s"
  fi
fi
if [ "$sock_ok" = 0 ]; then
  step socket-restart FAIL "a README command failed (above)"
else
  n=20
  pid_before=$(ct 'systemctl show -p MainPID --value zimhook')
  problems=()
  # 01-07 one after another; then the restart, and 08-14 at once while it runs (they wait in
  # the socket's backlog while no daemon accepts); then 15-20 one after another.
  sock_send() { # sock_send I: the result in $work/send-I.{out,rc}
    send "sock-$1-$$" /etc/zimhook/config.toml --url http://127.0.0.1:8080/callback \
      >"$work/send-$1.out" 2>&1
    echo $? >"$work/send-$1.rc"
  }
  restart_pid=""
  during=0
  burst=()
  for i in $(seq -w 1 $n); do
    if [ "$i" = 08 ]; then
      ct 'systemctl restart zimhook' >"$work/restart.log" 2>&1 &
      restart_pid=$!
    fi
    running=0
    [ -n "$restart_pid" ] && kill -0 "$restart_pid" 2>/dev/null && running=1
    during=$((during + running))
    if [ "$i" -ge 8 ] && [ "$i" -le 14 ]; then
      sock_send "$i" &
      burst+=($!)
    else
      sock_send "$i"
    fi
    [ "$i" = 14 ] && wait "${burst[@]}"
  done
  wait "$restart_pid" || problems+=("systemctl restart exited $?: $(tr '\n' ' ' <"$work/restart.log")")
  for i in $(seq -w 1 $n); do
    [ "$(cat "$work/send-$i.rc" 2>/dev/null)" = 0 ] ||
      problems+=("send sock-$i: $(head -n 2 "$work/send-$i.out" 2>/dev/null | tr '\n' ' ')")
  done
  [ "$during" -gt 0 ] || problems+=("no send began while systemctl restart ran")
  pid_after=$(ct 'systemctl show -p MainPID --value zimhook')
  [ "$pid_before" != "$pid_after" ] || problems+=("MainPID $pid_before did not change: no restart happened")
  ids=$(for i in $(seq -w 1 $n); do printf 'sock-%s-%s ' "$i" "$$"; done)
  missing=$(undelivered $ids)
  for _ in $(seq 60); do
    [ -z "$missing" ] && break
    sleep 0.25
    missing=$(undelivered $missing)
  done
  [ -z "$missing" ] || problems+=("not delivered within 15 s: $(echo $missing)")
  dups=$(ct "grep -o '\"sock-[0-9]*-$$\"' /var/lib/zimhook/delivered.jsonl 2>/dev/null | sort | uniq -d")
  [ -z "$dups" ] || note "delivered more than once (at least once is the promise): $(echo $dups)"
  if [ ${#problems[@]} = 0 ]; then
    step socket-restart ok "$n callbacks, $during of them sent while systemctl restart ran, all 2xx and delivered; MainPID $pid_before -> $pid_after"
  else
    step socket-restart FAIL "$(IFS=';'; echo "${problems[*]}")"
  fi
fi

# --- 9. watchdog ----------------------------------------------------------------------------
before=$(ct 'systemctl show -p MainPID,NRestarts zimhook' | sort | tr '\n' ' ')
sleep "$watchdog_wait"
after=$(ct 'systemctl show -p MainPID,NRestarts zimhook' | sort | tr '\n' ' ')
if [[ "$before" == *MainPID=0* ]]; then
  step watchdog FAIL "zimhook is not running: $before"
elif [ "$before" != "$after" ]; then
  step watchdog FAIL "over ${watchdog_wait} s: $before -> $after"
else
  step watchdog ok "${watchdog_wait} s, unchanged: $after"
fi

# --- 10. exposure ---------------------------------------------------------------------------
out=$(ct 'systemd-analyze security --no-pager zimhook' 2>&1)
score=$(echo "$out" | sed -n 's/.*Overall exposure level for zimhook.service: \([0-9.]*\).*/\1/p')
note "$(echo "$out" | tail -n 1)"
if [ -z "$score" ]; then
  echo "$out" | tail -n 5 | indent
  step security FAIL "no exposure score"
elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
  step security ok "exposure $score <= $max_exposure"
else
  step security FAIL "exposure $score > $max_exposure"
fi

# --- Summary --------------------------------------------------------------------------------
if [ ${#failed[@]} -gt 0 ]; then
  echo "--- journalctl -u zimhook -b"
  ct 'journalctl -u zimhook -b --no-pager -o short-precise' 2>&1 | tail -n 300 | indent
  echo "--- journalctl -u zimhook -b -p warning"
  ct 'journalctl -u zimhook -b -p warning --no-pager -o short-precise' 2>&1 | tail -n 100 | indent
  echo "boot-test: ${#failed[@]} step(s) failed: ${failed[*]} ($((SECONDS - t0)) s)"
  exit 1
fi
echo "boot-test: all steps ok ($((SECONDS - t0)) s)"
