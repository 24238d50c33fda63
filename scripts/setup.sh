# Sourced by scripts/test and scripts/demo: install what is missing, safe to run twice.
#   - python3 + python3-venv, fuse3 + libfuse3-3 from apt (when root and missing)
#   - nginx from apt (built with the slice module; for `netmount cache-proxy` and its tests)
#   - a venv ($NETMOUNT_VENV, default .venv) with torch==2.13.0 (CPU) and netmount[test]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NETMOUNT_VENV:-$here/.venv}"
say() { printf '[setup] %s\n' "$*" >&2; }

have_libfuse3() { { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q 'libfuse3.so.3'; }
pkgs=()
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
command -v fusermount3 >/dev/null 2>&1 || pkgs+=(fuse3)
have_libfuse3 || pkgs+=(libfuse3-3)
# nginx lives in /usr/sbin, which an ordinary user's PATH often lacks
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || pkgs+=(nginx)
if [ "${#pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing with apt-get: ${pkgs[*]}"
    apt-get update -qq
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${pkgs[@]}" >/dev/null; then
      # newer releases name the library package otherwise (libfuse3-4 on Debian 13): fuse3 pulls it
      say "retrying without libfuse3-3 (fuse3 depends on the library under its current name)"
      rest=(fuse3)
      for p in "${pkgs[@]}"; do [ "$p" = libfuse3-3 ] || [ "$p" = fuse3 ] || rest+=("$p"); done
      apt-get install -y -qq "${rest[@]}" >/dev/null
    fi
  else
    say "missing: ${pkgs[*]}; install them with: sudo apt-get install ${pkgs[*]}"
  fi
fi
if ! command -v nginx >/dev/null 2>&1 && [ -x /usr/sbin/nginx ]; then
  export PATH="$PATH:/usr/sbin"
fi
if command -v nginx >/dev/null 2>&1 && ! nginx -V 2>&1 | grep -q -- '--with-http_slice_module'; then
  say "warning: $(command -v nginx) lacks the slice module that netmount cache-proxy needs"
fi

# pip, its output less one line of noise (a configured index that is not there); its exit
# status kept, so a failed install stops here with pip's own error
pip_q() { "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
# pip shows what a build backend warns, and setuptools warns on every editable install of this
# flat layout (its meta path finder strategy, setuptools/command/editable_wheel.py) an
# eleven-line "Editable installation. ... Please be careful with folders in your working
# directory" block: information, nothing to act on.  This filter drops that one warning, by the
# start of its message, in pip and in the build backend; every other warning and error shows.
EDITABLE_QUIET="ignore:Editable installation"

stamp="$venv/.netmount-installed"
want="$(cat "$here/setup.cfg" "$here/scripts/constraints.txt" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "venv $venv is up to date"
else
  if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    python3 -m venv "$venv"
  fi
  say "installing torch==2.13.0 (CPU build) and netmount[test] into $venv"
  pip_q install -q --upgrade pip || say "could not upgrade pip: going on with the venv's own"
  # The CPU build, from a wheel or index pip already knows, else from PyTorch's CPU index:
  # plain `pip install torch` on Linux pulls gigabytes of CUDA libraries a CPU run never uses.
  if ! "$venv/bin/python" -m pip install -q "torch==2.13.0+cpu" >/dev/null 2>&1; then
    say "torch 2.13.0+cpu is not on the configured indexes: using PyTorch's CPU index"
    pip_q install -q --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"
  fi
  PYTHONWARNINGS="$EDITABLE_QUIET" pip_q install -q -c "$here/scripts/constraints.txt" -e "$here[test]"
  "$venv/bin/python" -c "import torch, transformers, netmount.mounting.fs" \
    || { say "installation failed"; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
