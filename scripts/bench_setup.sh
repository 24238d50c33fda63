#!/usr/bin/env bash
# What scripts/bench.py compares netmount with, installed when missing (safe to run twice):
#   apt: nginx (the CDN) + libnginx-mod-http-echo (its WAN delay), curl, aria2, fio, rclone, httpdirfs
#   pip: py-spy (--profile) into the venv ($NETMOUNT_VENV, default .venv; or the python on PATH)
# A tool still missing after this only skips its rows: the bench prints one line for it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${NETMOUNT_VENV:-$here/.venv}/bin/python"
say() { printf '[bench-setup] %s\n' "$*" >&2; }

want=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || want+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || want+=(libnginx-mod-http-echo)
for tool in curl aria2c fio rclone httpdirfs; do
  have "$tool" || want+=("$([ "$tool" = aria2c ] && echo aria2 || echo "$tool")")
done
if [ "${#want[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install ${want[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null || say "some packages did not install"
  else
    say "missing: ${want[*]} (sudo apt-get install ${want[*]})"
  fi
fi
if [ ! -x "$py" ]; then
  say "no venv at ${py%/bin/python} (set NETMOUNT_VENV): py-spy not installed"
elif [ ! -x "$(dirname "$py")/py-spy" ]; then
  say "pip install py-spy into ${py%/bin/python}"
  "$py" -m pip install -q py-spy 2>&1 | grep -v '^WARNING: Location' || true
fi
say "ready"
