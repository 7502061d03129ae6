#!/usr/bin/env bash
# Installs everything nmi's demo and tests need on a fresh Debian machine, idempotently:
# the Debian packages (iptables for both backends, iproute2, conntrack, curl, a C toolchain for
# python-iptables' sdist) and a virtual environment in .venv with nmi and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v iptables-legacy >/dev/null || need_apt+=(iptables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v conntrack >/dev/null || need_apt+=(conntrack)
command -v curl >/dev/null || need_apt+=(curl)
command -v gcc >/dev/null || need_apt+=(gcc)
[ -f "/usr/include/python3.11/Python.h" ] || python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages ${need_apt[*]} (run as root to install them)" >&2
  fi
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  echo "bootstrap: installing nmi and its test extras into .venv (log: .venv/pip.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[test]'; } \
      > .venv/pip.log 2>&1; then
    tail -n 30 .venv/pip.log >&2
    echo "bootstrap: pip install failed (full log: .venv/pip.log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
