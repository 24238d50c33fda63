# Sourced by scripts/test and scripts/demo: install what is missing, safe to run twice.
#   - fuse3 + libfuse2 from apt (when root and missing)
#   - a venv ($NETMOUNT_VENV, default .venv) with torch==2.13.0 (CPU) and netmount[test]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NETMOUNT_VENV:-$here/.venv}"
say() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v fusermount3 >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q 'libfuse.so.2'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing fuse3 and libfuse2 with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse2 >/dev/null
  else
    say "fuse3/libfuse2 missing and not root: install them with: sudo apt-get install fuse3 libfuse2"
  fi
fi

stamp="$venv/.netmount-installed"
want="$(cat "$here/setup.cfg" "$here/scripts/constraints.txt" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "venv $venv is up to date"
else
  if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    python3 -m venv "$venv"
  fi
  say "installing torch==2.13.0 (CPU) and netmount[test] into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -m pip install -q -c "$here/scripts/constraints.txt" -e "$here[test]" 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c "import torch, transformers, fuse, netmount" \
    || { say "installation failed"; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
