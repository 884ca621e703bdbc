#!/usr/bin/env bash
# Writes the seed inputs into fuzz/corpus/{callback,config}/ (existing files are kept): the
# callback fixtures of tests/fixtures as they are and signed for the fuzz checks' secret and
# clock (tests/fuzz_checks/mod.rs: SECRET, NOW_SECS), form bodies, broken bodies; the shipped
# configs and small configs for each action kind, unit and error. Run once by hand, then
# `cargo fuzz cmin` (see fuzz/README.md); the minimised corpora are what is committed.
#   fuzz/seeds.sh [FIXTURES_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures=${1:-tests/fixtures}
cb=fuzz/corpus/callback
cfg=fuzz/corpus/config
mkdir -p "$cb" "$cfg"

secret=fuzz-secret
now=1700000000

# ZEGO's signature: sha1 of secret, timestamp and nonce sorted as byte strings, concatenated.
sign() { printf '%s\n' "$1" "$2" "$3" | LC_ALL=C sort | tr -d '\n' | sha1sum | cut -d' ' -f1; }
[ "$(sign secret 1470820198 123412)" = 5bd59fd62953a8059fb7eaba95720f66d19e4517 ]

# --- callback: every fixture as written, and signed at `now` (seconds; one in milliseconds) ---
for f in "$fixtures"/zim/*.json "$fixtures"/rtc/*.json; do
  kind=$(basename "$(dirname "$f")")
  name=$(basename "$f" .json)
  cp "$f" "$cb/seed-$kind-$name.json"
  nonce=$(sed -n 's/^ *"nonce": *"\{0,1\}\([^",]*\)"\{0,1\},\{0,1\}$/\1/p' "$f")
  for ts in $now ${now}123; do
    [ "$ts" = "$now" ] || [ "$name" = call_timeout ] || continue
    sed -e "s/\"timestamp\": \(\"\{0,1\}\)1499676978/\"timestamp\": \1$ts/" \
      -e "s/\"signature\": \"signature\"/\"signature\": \"$(sign $secret "$ts" "$nonce")\"/" \
      "$f" >"$cb/seed-$kind-$name-signed-$ts.json"
  done
done

# The other product families, each under its own nonce, timestamp and signature names
# (AI Agent and ASR in milliseconds).
for spec in cloud_recording:nonce:timestamp:signature cloud_player:Nonce:Timestamp:Signature \
  digital_human:Nonce:Timestamp:Signature mini_game:SignatureNonce:Timestamp:Signature \
  rtc_transcoding:Nonce:Timestamp:Signature rtc_moderation:Nonce:Timestamp:Signature \
  ai_agent:Nonce:Timestamp:Signature asr:Nonce:Timestamp:Signature \
  super_board:nonce:timestamp:signature; do
  IFS=: read -r kind nf tf sf <<<"$spec"
  for f in "$fixtures/$kind"/*.json; do
    name=$(basename "$f" .json)
    cp "$f" "$cb/seed-$kind-$name.json"
    nonce=$(sed -n "s/^ *\"$nf\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$f")
    ts=$now
    grep -q "\"$tf\": *\"\{0,1\}[0-9]\{13\}" "$f" && ts=${now}000
    sed -e "s/\"$tf\": \(\"\{0,1\}\)[0-9]*/\"$tf\": \1$ts/" \
      -e "s/\"$sf\": \"signature\"/\"$sf\": \"$(sign $secret "$ts" "$nonce")\"/" \
      "$f" >"$cb/seed-$kind-$name-signed-$ts.json"
  done
done

sig=$(sign $secret $now 350176)
printf '%s' "appid=1&event=call_timeout&nonce=350176&timestamp=$now&signature=$sig&call_id=3501761173612493269&user_ids=%5B%22abc%22%2C%22def%22%5D" >"$cb/seed-form-call_timeout"
printf '%s' "appid=1234567890&event=before_send_msg&nonce=350176&timestamp=$now&signature=${sig^^}&msg_body=buy+spam+now&from_user_id=u%201" >"$cb/seed-form-before_send_msg"
printf '%s' "AppId=1&Event=room_create&Nonce=350176&Timestamp=$now&Signature=$sig&payload=%7B%22a%22%3A%5B1%2C2.5e3%5D%7D" >"$cb/seed-form-pascal"
printf '%s' "=x&event=call_timeout" >"$cb/seed-form-empty-name"
printf '%s\n' "a=1&&b=%ZZ&c=%E2%82%AC&d=[not json" >"$cb/seed-form-odd"
printf '%s' "{\"AppId\":1,\"Event\":\"call_create\",\"Nonce\":350176,\"Timestamp\":$now,\"Signature\":\"$sig\",\"callee_ids\":[\"a\"]}" >"$cb/seed-json-pascal"
printf '%s' "{\"appid\":\"2\",\"event\":\"send_msg\",\"nonce\":\"9223372036854775809\",\"timestamp\":\"$now\",\"signature\":\"$(sign $secret $now 9223372036854775809)\",\"from_user_id\":\"u\",\"n\":858012925204410400123,\"f\":1.5e300,\"payload\":\"p\",\"event\":\"send_msg\"}" >"$cb/seed-json-bignum-dup"
printf '%s' '{"appid":"1","event":"call_timeout","nonce":"1","timestamp":1700000000,"signature":"x",' >"$cb/seed-broken-truncated"
printf '%s' '{"appid":"1","event":"x",}' >"$cb/seed-broken-trailing-comma"
printf '%s' '[1,2]' >"$cb/seed-broken-array"
printf '%s' '"event=call_timeout"' >"$cb/seed-broken-string"
printf '%s' '   ' >"$cb/seed-broken-blank"
printf '\xff\xfe{"event":"x"}' >"$cb/seed-broken-utf8"
printf '%s' '{"a": 1 "b": 2}' >"$cb/seed-broken-missing-comma"

# --- config ---
cp config.toml "$cfg/seed-config.toml"
cp deploy/config.toml "$cfg/seed-deploy-config.toml"
w() { cat >"$cfg/seed-$1.toml"; }
w minimal <<'T'
[verify]
secrets = ["s"]
T
w insecure <<'T'
[verify]
insecure = true
max_skew = "0s"
appids = ["1", 1234567890]
T
w command <<'T'
[verify]
secrets = ["env:HOME", "literal"]
[[rule]]
name = "cmd"
events = ["call_timeout", "call_*", "*", "room_{create,destroy}", "group_?oin"]
when = "user_ids | length > 1 and appid == '1'"
command = ["/bin/echo", "{{ call_id }}", "{{ payload | tojson }}"]
env = { CALL = "{{ call_id }}", BODY = "{{ body }}" }
workdir = "data"
timeout = "10s"
concurrency = 4
order_by = "{{ call_id }}"
retry = { attempts = 3, backoff = "250ms", max_backoff = "1h 30m" }
T
w forward <<'T'
[verify]
secrets = ["k1", "k2"]
[defaults]
timeout = "5s"
retry = { attempts = 1 }
[[rule]]
name = "fwd"
events = ["room_*"]
forward = "https://example.com/zego/{{ event }}?id={{ nonce }}"
method = "put"
headers = { Authorization = "Bearer {{ env.TOKEN }}", X-Source = "zimhook" }
body = '{"e": "{{ event }}", "d": "{{ delivery_id }}", "r": "{{ rule }}"}'
T
w plugin <<'T'
[verify]
secrets = ["s"]
[plugins]
timeout = "500ms"
memory = "64MiB"
cache_dir = "cache"
[[rule]]
name = "moderate"
events = ["before_send_msg"]
plugin = "/usr/bin/env"
sync = true
fallback = '{"result": 1}'
config = { banned = ["spam", "eggs"], level = 2, nested = { on = true, ratio = 0.5 } }
[[rule]]
name = "missing-plugin"
events = ["send_msg"]
plugin = "plugins/moderate.wasm"
T
w units <<'T'
[server]
listen = "[::1]:8443"
path = "/zego/callback"
max_body = 1048576
request_timeout = "1m 30s"
header_timeout = "250ms"
max_connections = 10
shutdown_grace = "2h"
[admin]
listen = "127.0.0.1:9180"
[verify]
secrets = ["s"]
max_skew = "1day"
[store]
kind = "memory"
path = "/var/lib/zimhook/q.redb"
max_queued = 18446744073709551615
workers = 0
[plugins]
memory = "1.5 GB"
[log]
level = "zimhook=debug,info"
[defaults]
timeout = "30s"
retry = { attempts = 8, backoff = "1s", max_backoff = "10m" }
T
w sizes <<'T'
[server]
listen = "systemd"
max_body = "64 KiB"
[admin]
listen = "unix:/run/zimhook/admin.sock"
[verify]
secrets = ["s"]
[plugins]
memory = 0
T
w sync-overlap <<'T'
[verify]
secrets = ["s"]
[[rule]]
name = "a"
events = ["before_send_msg"]
sync = true
command = ["true"]
[[rule]]
name = "b"
events = ["before_*"]
sync = true
fallback = "[1, 2]"
command = ["true"]
[[rule]]
name = "typo"
events = ["call_timout", "callx_*", "my_event"]
command = ["true"]
T
w broken-syntax <<'T'
[verify
secrets = ["s"
T
w broken-values <<'T'
[server]
listen = "localhost"
path = "callback"
max_body = "lots"
request_timeout = "5 parsecs"
[admin]
listen = "tcp:1"
[verify]
secrets = ["", "env:ZIMHOOK_FUZZ_SURELY_UNSET", "file:no-such-secret", "cred:zego"]
max_skew = "-1s"
[store]
kind = "sqlite"
[log]
level = "loud=="
[defaults]
retry = { attempts = 0, backoff = "10m", max_backoff = "1s" }
T
w broken-rules <<'T'
[verify]
secrets = []
[[rule]]
name = "dup"
events = []
command = []
[[rule]]
name = "dup"
events = ["[a-"]
when = "user_ids |"
command = ["{{ a"]
forward = "ftp://x"
fallback = "not json"
order_by = "{{ x }}"
concurrency = 0
[[rule]]
name = " "
events = ["*"]
forward = "example.com"
method = "GE T"
headers = { "Bad Header" = "x" }
env = { A = "b" }
[[rule]]
events = ["x"]
T
w broken-unknown-key <<'T'
[verify]
secrets = ["s"]
[[rule]]
name = "unknown-key"
events = ["*"]
command = ["true"]
colour = "blue"
T
printf '[verify]\r\nsecrets = ["s"]\r\n[server]\r\npath = "bé"\r\nmax_body = "ü"\r\n' >"$cfg/seed-crlf-unicode.toml"
printf '[verify]\nsecrets = ["s"]\n[[rule]]\nname = "é😀"\nevents = ["*"]\ncommand = ["x"]\nsync = false\nfallback = "1"' >"$cfg/seed-no-trailing-newline.toml"
