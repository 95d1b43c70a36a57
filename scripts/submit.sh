#!/usr/bin/env bash
# Submit a campaign to a running Ray cluster as a Ray job (docs/gpu-cluster.md).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/submit.sh [options] [-- FARM_RUN_ARGS...]

Uploads this repo (without .git, .venv, runs/ and caches) as the job's working_dir and
runs `farm run` on TARGET as the job's driver, on the cluster's head node. The cluster
must run the farm image (docker/Dockerfile): `farm` resolves through the cluster's PATH.

options:
  --target DIR    target directory inside this repo (default: examples/eclip)
  --config FILE   farm.toml to use instead of TARGET's (default: k8s/eclip.farm.toml when
                  TARGET is examples/eclip, which pins trials to RTX 4090 nodes)
  --store URL     store URL (default: $FARM_STORE_URL; required, e.g. redis://farm-redis:6379/0)
  --campaign ID   campaign name (default: farm.toml's)
  --address URL   Ray job server (default: $RAY_ADDRESS, e.g. http://127.0.0.1:8265)
  --no-wait       return after submitting instead of following the job's logs
  -h, --help      this text

environment:
  RAY_ADDRESS        the Ray job server, as for `ray job submit`
  FARM_STORE_URL     the store URL when --store is not given
  ANTHROPIC_API_KEY  passed to the job as a runtime_env variable only if set (it then
                     shows in the job's details on the dashboard); on Kubernetes prefer
                     the farm-anthropic Secret on the head pod (k8s/raycluster.yaml)
  RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
                     the cluster's token (token auth); either one turns on
                     RAY_AUTH_MODE=token for this submission unless RAY_AUTH_MODE is set

example:
  RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_TOKEN=$(cat token) \
    scripts/submit.sh --store redis://farm-redis:6379/0 -- --max-candidates 100
EOF
}

die() {
  echo "submit.sh: $*" >&2
  exit 2
}

cd "$(dirname "$0")/.."  # the repo root is the working_dir that gets uploaded

target=examples/eclip
config=""
store=${FARM_STORE_URL:-}
campaign=""
address=${RAY_ADDRESS:-}
wait=(--)
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --target) target=${2:?--target needs a directory}; shift 2 ;;
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --store) store=${2:?--store needs a URL}; shift 2 ;;
    --campaign) campaign=${2:?--campaign needs a name}; shift 2 ;;
    --address) address=${2:?--address needs a URL}; shift 2 ;;
    --no-wait) wait=(--no-wait --); shift ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

[ -n "$address" ] || die "no Ray address: set RAY_ADDRESS or pass --address"
[ -n "$store" ] || die "no store: set FARM_STORE_URL or pass --store (the job needs a shared store)"
case $store in
  sqlite:*) die "a sqlite store would live and die with the job's working_dir; use redis://" ;;
esac
target=${target%/}
[ -f "$target/farm.toml" ] || die "$target has no farm.toml (TARGET must be inside $(pwd))"
case $target in /* | ../*) die "TARGET must be a relative path inside $(pwd)" ;; esac
if [ -z "$config" ] && [ "$target" = examples/eclip ]; then
  config=k8s/eclip.farm.toml
fi
[ -z "$config" ] || [ -f "$config" ] || die "no config file $config"

# The runtime_env goes through a private temp file, not argv, so that a key in it is never
# visible in `ps` or echoed; python's json escapes it. Everything not needed on the cluster
# stays here; .git must go (DESIGN.md: uploads do not skip it): farm-job rebuilds the
# target's repo on the head node instead.
runtime_env=$(mktemp)  # mode 0600
trap 'rm -f "$runtime_env"' EXIT
python3 - "$runtime_env" <<'PY'
import json, os, sys
env = {"excludes": [".git", ".venv", "runs", ".farm", "**/__pycache__", "**/.cache",
                    "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache"]}
if os.environ.get("ANTHROPIC_API_KEY"):
    env["env_vars"] = {"ANTHROPIC_API_KEY": os.environ["ANTHROPIC_API_KEY"]}
with open(sys.argv[1], "w") as f:
    json.dump(env, f)
PY

if [ -z "${RAY_AUTH_MODE:-}" ] && [ -n "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]; then
  export RAY_AUTH_MODE=token  # ray job submit sends the token only in token mode
fi

job=(bash docker/farm-job.sh "$target")
[ -z "$config" ] || job+=(--config "$config")
job+=(-- --store "$store")
[ -z "$campaign" ] || job+=(--campaign "$campaign")
job+=("$@")

notes="store $store${ANTHROPIC_API_KEY:+, ANTHROPIC_API_KEY set}${RAY_AUTH_MODE:+, auth $RAY_AUTH_MODE}"
echo "submit.sh: $address: farm run $target${config:+ with $config}; $notes" >&2
ray job submit --address "$address" --working-dir . --runtime-env "$runtime_env" \
  "${wait[@]}" "${job[@]}"
