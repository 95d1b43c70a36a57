#!/usr/bin/env bash
# The whole test suite, with the real services and tools it needs (Debian packages,
# installed once when missing): Redis on loopback (started if none answers), bubblewrap
# (trials run under it), Prometheus and promtool (dashboard, alert and config tests), and
# ShellCheck for the job scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
export FARM_TEST_REDIS_URL="${FARM_TEST_REDIS_URL:-redis://127.0.0.1:6379/13}"

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
missing=()
redis_up || command -v redis-server >/dev/null || missing+=(redis-server)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} (Debian packages)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}") \
    >/dev/null || echo "test.sh: could not install all of ${missing[*]}; tests that need them fail or skip"
fi
if ! redis_up; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
fi
exec .venv/bin/python -m pytest "$@"
