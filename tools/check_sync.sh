#!/usr/bin/env bash
# Fails when the committed package or notebooks differ from what nbdev_export / nbdev_clean would make of them.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$tmp"
(cd "$tmp" && nbdev_export && nbdev_clean >/dev/null)
status=0
if ! diff -r -x __pycache__ "$tmp/sde_diffusion" "$top/sde_diffusion"; then
  echo "sde_diffusion/ is out of sync with nbs/: run nbdev_export and commit the result." >&2; status=1
fi
if ! diff -r -x .ipynb_checkpoints "$tmp/nbs" "$top/nbs" >/dev/null; then
  diff -rq -x .ipynb_checkpoints "$tmp/nbs" "$top/nbs" >&2 || true
  echo "Notebooks are not clean: run nbdev_clean (no outputs, no execution counts) and commit." >&2; status=1
fi
[ $status -eq 0 ] && echo "export and notebooks in sync"
exit $status
