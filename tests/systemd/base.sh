#!/usr/bin/env bash
# Builds the Debian 12 (bookworm) tree that tests/systemd/boot-test.sh boots with systemd-nspawn,
# unless it is already there. The tree is a cache outside the repo (default
# /var/cache/zimhook-ci/bookworm, or $ZIMHOOK_SYSTEMD_BASE) and is never written by a test run:
# each run boots a fresh copy.
#
# minbase plus what the test uses: systemd as PID 1, dbus, procps (ps and kill, for looking
# around). ca-certificates is left out on purpose: the service must start on a host without
# a CA bundle, and the test asserts that the tree has none.
#
# The tree is built in a temporary folder beside the target and renamed into place only when
# complete, so an interrupted build never leaves a half-built tree that looks usable.
#
# Needs root, debootstrap, and the Debian mirror ($ZIMHOOK_DEBIAN_MIRROR, default
# http://deb.debian.org/debian). Usage: tests/systemd/base.sh [--force]
set -euo pipefail

base=${ZIMHOOK_SYSTEMD_BASE:-/var/cache/zimhook-ci/bookworm}
mirror=${ZIMHOOK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=systemd,systemd-sysv,dbus,procps
# What the tree is made of; a tree whose stamp differs (an older recipe) is rebuilt.
recipe="$suite $packages minbase no-ca-certificates no-firstboot no-wait-online v2"

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$force" = 0 ] && [ -x "$base/usr/lib/systemd/systemd" ] \
  && [ "$(sed -n 1p "$base/.zimhook-base" 2>/dev/null)" = "$recipe" ]; then
  echo "base.sh: $base is there ($(sed -n 2p "$base/.zimhook-base"))"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "base.sh: debootstrap needs root" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is not installed" >&2; exit 1; }

parent=$(dirname "$base")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.$(basename "$base").build.XXXXXX")
trap 'rm -rf --one-file-system "$tmp"' EXIT

start=$SECONDS
echo "base.sh: debootstrap $suite into $tmp (packages: $packages)"
debootstrap --variant=minbase --include="$packages" --exclude=ca-certificates \
  "$suite" "$tmp/tree" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
  tail -n 40 "$tmp/debootstrap.log" >&2
  tail -n 40 "$tmp/tree/debootstrap/debootstrap.log" >&2 2>/dev/null || true
  echo "base.sh: debootstrap failed" >&2
  exit 1
}

# A tree for booting, not for apt: no package lists, no downloaded .debs.
rm -rf "$tmp/tree/var/cache/apt/archives/"*.deb "$tmp/tree/var/lib/apt/lists/"* 2>/dev/null || true
# No machine-id: systemd makes a fresh one on each boot (an empty file would mean "first boot").
rm -f "$tmp/tree/etc/machine-id" "$tmp/tree/var/lib/dbus/machine-id"
# No getty on the container's console and no first-boot wizard (with no machine-id every boot
# is a first boot, and systemd-firstboot would wait for answers on the console): no one is at it.
rm -f "$tmp/tree/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
ln -sf /dev/null "$tmp/tree/etc/systemd/system/systemd-firstboot.service"
# The container has a loopback only (--private-network) and nothing configures a network: on
# first boot the presets enable systemd-networkd-wait-online, which would then hold
# network-online.target (zimhook.service wants it) for its 2-minute timeout.
ln -sf /dev/null "$tmp/tree/etc/systemd/system/systemd-networkd-wait-online.service"
echo zimhook-ci >"$tmp/tree/etc/hostname"

if [ -e "$tmp/tree/etc/ssl/certs/ca-certificates.crt" ] \
  || chroot "$tmp/tree" dpkg-query -W -f='${Status}\n' ca-certificates 2>/dev/null | grep -q 'install ok'; then
  echo "base.sh: ca-certificates got into the tree" >&2
  exit 1
fi

printf '%s\nbuilt %s\n' "$recipe" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp/tree/.zimhook-base"
if [ -e "$base" ]; then
  # --force: move the old tree aside first, so the rename below is the only moment of change.
  mv "$base" "$tmp/old"
fi
mv "$tmp/tree" "$base"
echo "base.sh: built $base in $((SECONDS - start)) s ($(du -sh --one-file-system "$base" | cut -f1))"
