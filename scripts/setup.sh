#!/usr/bin/env bash
# One-time (idempotent) setup for a fresh machine: a virtualenv with atpflow and its
# test dependencies, and the local services the tests use (Redis; kubectl for the
# manifest tests). Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "setup: installing atpflow and its dev dependencies"
.venv/bin/python -m pip install --quiet -e '.[dev]'
missing=$(.venv/bin/python -c "from dataflows.runner import missing_compiled_parts as m; print(', '.join(m()))")
if [ -z "$missing" ]; then
  echo "setup: compiled parts built (schemas/_avro.pyx, operators/_sort.pyx, operators/_order.pyx, operators/_project.pyx, sinks/_kafka.pyx)"
else
  echo "setup: WARNING: not built: $missing (no C compiler?); atpflow runs on fastavro and pure Python, slower" >&2
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }
apt_install() {
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $* from Debian packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
      || { as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
  else
    echo "setup: please install $* (no apt-get here)" >&2; return 1
  fi
}

# Redis on 127.0.0.1:6379 (tests use a real server; nothing is kept on disk).
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  echo "setup: starting redis-server on 127.0.0.1:6379"
  mkdir -p /tmp/atpflow-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/atpflow-redis --logfile /tmp/atpflow-redis/redis.log
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

# kubectl renders the kustomize overlays in the manifest tests.
command -v kubectl >/dev/null 2>&1 || apt_install kubernetes-client || true
echo "setup: done"
