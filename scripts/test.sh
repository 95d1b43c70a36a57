#!/usr/bin/env bash
# The whole test suite. Tests need a real Redis on loopback: start one if none answers.
set -euo pipefail
cd "$(dirname "$0")/.."
export FARM_TEST_REDIS_URL="${FARM_TEST_REDIS_URL:-redis://127.0.0.1:6379/13}"
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  if ! command -v redis-server >/dev/null; then
    echo "test.sh: installing redis-server (Debian package)"
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi
# Trials run under bubblewrap (strict isolation); the sandbox and attack tests need it.
if ! command -v bwrap >/dev/null; then
  echo "test.sh: installing bubblewrap (Debian package)"
  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null
fi
# The dashboard test scrapes a campaign with a real Prometheus; it skips only without one.
if ! command -v prometheus >/dev/null; then
  echo "test.sh: installing prometheus (Debian package)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) >/dev/null \
    || echo "test.sh: could not install prometheus; the dashboard test will skip"
fi
exec .venv/bin/python -m pytest "$@"
