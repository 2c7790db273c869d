#!/usr/bin/env bash
# Run CI (.ci/run) on fresh clones of this repository, as a new user or the CI machine would, and print its figures.
#
#   tools/fresh_clone_ci.sh                 # one run on an otherwise idle machine
#   tools/fresh_clone_ci.sh --load 1 --runs 3   # three runs, each with one busy process competing for the CPU
#   tools/fresh_clone_ci.sh --commit 1c191d1    # a given commit instead of HEAD (runs started apart test one HEAD)
#
# Each run clones HEAD into a new temporary folder (no .venv, no book/_build, no node_modules), points the model cache
# at an empty folder (SDE_DIFFUSION_CACHE), runs `.ci/run` there and keeps its log. The summary gives, per run, the exit
# status and the "CI times" line that .ci/run prints (install, make test, make book, browser test, total), plus the
# notebook times tools/execute.py wrote (book/_build/execution_times.json, slowest first).
set -uo pipefail
runs=1 load=0 keep=0 commit=HEAD
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --load) load="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --commit) commit="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--load N] [--keep] [--commit REV]" >&2; exit 2 ;;
  esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
rev="$(git -C "$repo" rev-parse --verify "$commit^{commit}")" || { echo "no such commit: $commit" >&2; exit 2; }
out="${TMPDIR:-/tmp}/fresh_clone_ci.$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
busy=()
for _ in $(seq 1 "$load"); do
  ( trap 'exit 0' TERM; while :; do :; done ) &
  busy+=($!)
done
trap 'for p in "${busy[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done' EXIT
failed=0
for r in $(seq 1 "$runs"); do
  dir="$out/run$r"
  git clone -q "$repo" "$dir/repo" && git -C "$dir/repo" checkout -q "$rev"
  start=$(date +%s)
  ( cd "$dir/repo" && SDE_DIFFUSION_CACHE="$dir/cache" .ci/run ) > "$dir/ci.log" 2>&1
  rc=$?
  wall=$(( $(date +%s) - start ))
  [ $rc -eq 0 ] || failed=$((failed + 1))
  echo "run $r (${rev:0:7}): exit $rc in ${wall} s (load $load) -- $(grep -h '^CI times' "$dir/ci.log" || echo 'no CI times line: see '"$dir/ci.log")"
  times="$dir/repo/book/_build/execution_times.json"
  if [ -f "$times" ]; then
    python3 - "$times" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
rows = sorted(((v["seconds"], k) for k, v in t.items()), reverse=True)
print("  notebooks: " + ", ".join(f"{k.split('/')[-1].removesuffix('.ipynb')} {s:.0f}" for s, k in rows)
      + f"; total {sum(s for s, _ in rows):.0f} s")
EOF
  fi
  [ $keep -eq 1 ] || rm -rf "$dir/repo/.venv" "$dir/repo/node_modules"
done
echo "$((runs - failed)) of $runs runs green; logs in $out"
[ $failed -eq 0 ]
