#!/usr/bin/env bash
# Run one campaign as the driver of a Ray job: `farm-job TARGET_DIR [--config FILE] [-- FARM_RUN_ARGS...]`.
#
# Why this exists: farm needs the target as a git repo living with the driver, but a job's
# working_dir arrives without .git (uploads must exclude it), and an image's copy is
# read-mostly and lost with the pod. So the first job copies TARGET_DIR into
# $FARM_WORK_DIR/<name>, commits it as the baseline, and later jobs resume that repo
# (keep $FARM_WORK_DIR on a volume: the farm/<campaign>/* branches live there).
#
# --config FILE replaces the target's farm.toml before the baseline commit (e.g. a
# cluster variant that pins trials to RTX 4090 nodes). Installed as /usr/local/bin/farm-job
# in the farm image; scripts/submit.sh runs it from the uploaded working_dir instead.
set -euo pipefail

usage() { sed -n '2p' "$0" | sed 's/^# //'; }

[ $# -ge 1 ] || { usage >&2; exit 2; }
case $1 in -h | --help) usage; exit 0 ;; esac
src=$1
shift
config=""
if [ "${1:-}" = "--config" ]; then
  config=${2:?--config needs a file}
  shift 2
fi
if [ "${1:-}" = "--" ]; then shift; fi

[ -f "$src/farm.toml" ] || { echo "farm-job: $src has no farm.toml" >&2; exit 2; }
[ -z "$config" ] || [ -f "$config" ] || { echo "farm-job: no config file $config" >&2; exit 2; }

repo=${FARM_WORK_DIR:-$HOME/farm-work}/$(basename "$(cd "$src" && pwd)")
if [ ! -d "$repo/.git" ]; then
  mkdir -p "$repo"
  # Caches and a stray local store are not part of the target.
  tar -C "$src" --exclude=.git --exclude=.farm --exclude=.cache --exclude=__pycache__ -cf - . |
    tar -C "$repo" -xf -
  [ -z "$config" ] || cp "$config" "$repo/farm.toml"
  git -C "$repo" init -q -b main
  git -C "$repo" add -A
  # A fixed identity and date give the same files the same baseline sha in every job.
  GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
    git -C "$repo" -c user.name=farm -c user.email=farm@localhost \
    commit -q -m "farm-job: baseline of $(basename "$repo")"
  echo "farm-job: made $repo a git repo (baseline $(git -C "$repo" rev-parse --short HEAD))"
else
  echo "farm-job: resuming in $repo (remove it to start from the shipped files)"
fi
exec farm run "$repo" "$@"
